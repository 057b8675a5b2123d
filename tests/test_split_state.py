"""Splitting shards in the shard state machine (coordinator.split, issue 19
item 3): Freeze, Import, Activate and AbortSplit, applied to real
ShardStates the way the Raft log would, commands pickled as Raft pickles
them. What must hold (docs/resharding.md): one owner per FID at every
step, per-FID order, dedup and idempotency keys carried over, nothing lost
and nothing doubled, an import sent twice changing nothing twice, and an
abort giving the old shards back everything."""

from __future__ import annotations

import errno as E
import pickle
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator import scheduler, split
from coordinator.state import (
    AbortSplit,
    Activate,
    AssignRound,
    Cancel,
    CancelRefused,
    Complete,
    Completion,
    Freeze,
    Import,
    Item,
    Kind,
    Outcome,
    Requester,
    ShardConfig,
    ShardState,
    SplitReply,
    State,
    Submit,
)
from hsm.fid import Fid
from hsm.ring import Ring

FS = "lustre1"
VNODES = 64
OLD = Ring(2, VNODES, 1)
NEW = OLD.with_shard_added(1)  # version 2, 3 shards
FREEZE = dict(version=2, shards=2, added=1, vnodes=VNODES)


def fid(n: int) -> Fid:
    return Fid(0x200000400, n, 0)


def item(n: int, kind: Kind = Kind.ARCHIVE, key: str = "", ctime: int = 0, initiator: str = "t") -> Item:
    return Item(FS, fid(n), kind, archive_id=1, requester=Requester(initiator, cookie=0), key=key,
                hsm_ctime=ctime)


def apply(state: ShardState, cmd: object) -> list[object]:
    """Apply *cmd* as a replica would: pickled through the log first."""
    return state.apply(pickle.loads(pickle.dumps(cmd, protocol=5))).replies


def world() -> list[ShardState]:
    return [ShardState(ShardConfig(shard=k, archive_ids=frozenset({1, 2}))) for k in range(3)]


def submit(shards: list[ShardState], ring: Ring, *items: Item, now: float = 1.0) -> list[object]:
    out = []
    for it in items:
        out += apply(shards[ring.shard_of(it.fid)], Submit(now, (it,)))
    return out


def dispatch(state: ShardState, agent: str = "a", n: int = 1000, now: float = 2.0) -> list[int]:
    planned = scheduler.plan(state, [scheduler.Offer(agent, (), {Kind.ARCHIVE: n, Kind.RESTORE: n,
                                                                 Kind.REMOVE: n})], now)
    apply(state, AssignRound(now, planned))
    return [i for _a, ids in planned for i in ids]


def finish(state: ShardState, ids: Iterable[int], now: float = 3.0, agent: str = "a") -> None:
    done = []
    for i in ids:
        a = state.actions[i]
        copy = (f"obj-{i}", 1, 10, "", 0, 0, 0o100600, "/f") if a.kind == Kind.ARCHIVE else None
        done.append(Completion(i, a.attempt, copy=copy))
    apply(state, Complete(now, tuple(done), agent))


def moving(n: int) -> bool:
    return OLD.shard_of(fid(n)) != NEW.shard_of(fid(n))


#: files 1..N: about a third move to shard 2
N = 120
MOVERS = [n for n in range(1, N + 1) if moving(n)]
STAYERS = [n for n in range(1, N + 1) if not moving(n)]


def test_the_file_numbers_cover_both_cases() -> None:
    assert len(MOVERS) > 20 and len(STAYERS) > 40
    assert all(NEW.shard_of(fid(n)) == 2 for n in MOVERS)


def split_all(shards: list[ShardState], most: int = split.CHUNK_ACTIONS, now: float = 10.0) -> None:
    """The whole protocol, as a driver would run it: Freeze everywhere, each
    old shard's export in chunks to the new shard, Activate everywhere."""
    for s in shards:
        assert apply(s, Freeze(now, **FREEZE))[0].error == ""  # type: ignore[attr-defined]
    send_exports(shards, most, now)
    for s in shards:
        reply = apply(s, Activate(now, 2))[0]
        assert isinstance(reply, SplitReply) and reply.error == "", reply


def send_exports(shards: list[ShardState], most: int, now: float, stop_after: int | None = None) -> None:
    for old in shards[:2]:
        exported = old.split_export()
        assert exported is not None
        bundles = exported.get(2, [])
        chunks = list(split.chunks(bundles, most)) or [()]
        for c, chunk in enumerate(chunks):
            if stop_after is not None and c >= stop_after:
                return
            apply(shards[2], Import(now, 2, old.config.shard, c, c == len(chunks) - 1, chunk))


def live(shards: list[ShardState]) -> dict[int, tuple[int, Kind, State]]:
    """Every non-terminal action of the cluster: id -> (file, kind, state)."""
    out: dict[int, tuple[int, Kind, State]] = {}
    for s in shards:
        for a in s.actions.values():
            if not a.state.terminal:
                assert a.id not in out, f"action {a.id} kept on two shards"
                out[a.id] = (a.fid.oid, a.kind, a.state)
    return out


def load(shards: list[ShardState]) -> None:
    """Work on every file: an archive (keyed), a restore queued behind it
    on every third file, some archives done (catalog copies, ended
    actions), one running."""
    for n in range(1, N + 1):
        submit(shards, OLD, item(n, key=f"k{n}"))
        if n % 3 == 0:
            submit(shards, OLD, item(n, Kind.RESTORE, key=f"r{n}"))
    for s in shards[:2]:
        started = dispatch(s, n=10)
        finish(s, started[:8])


def test_a_split_hands_every_moving_file_over_whole_and_nothing_else() -> None:
    shards = world()
    load(shards)
    # the running actions end first (the drain): here, before the freeze
    for s in shards[:2]:
        finish(s, [i for i, a in s.actions.items() if a.state == State.STARTED])
    before = live(shards)
    order = {n: [a.id for a in shards[OLD.shard_of(fid(n))].actions_of_fid(FS, fid(n))] for n in range(1, N + 1)}
    copies = {n: [c.values() for c in shards[OLD.shard_of(fid(n))].catalog.of(FS, fid(n))] for n in range(1, N + 1)}
    assert any(copies[n] for n in MOVERS)
    split_all(shards)
    after = live(shards)
    assert after == before  # nothing lost, nothing doubled, same ids
    for n in range(1, N + 1):
        owner = shards[NEW.shard_of(fid(n))]
        assert [a.id for a in owner.actions_of_fid(FS, fid(n))] == order[n], f"file {n}: order"
        assert [c.values() for c in owner.catalog.of(FS, fid(n))] == copies[n]
        for other in shards:
            if other is not owner:
                assert other.actions_of_fid(FS, fid(n)) == [] and other.catalog.of(FS, fid(n)) == ()
    for s in shards:
        s.check_invariants()
    # the moved actions' ids are recorded on the old shards (tombstones)
    moved_ids = {i for i, (n, _k, _s) in before.items() if moving(n)}
    assert moved_ids and moved_ids <= set(shards[0].moved_to) | set(shards[1].moved_to)
    assert {shards[OLD.shard_of(fid(before[i][0]))].moved_to[i] for i in moved_ids} == {2}


def test_keys_and_dedup_answer_the_same_after_a_split() -> None:
    shards = world()
    load(shards)
    first = {n: submit(shards, OLD, item(n, key=f"k{n}"))[0] for n in MOVERS}
    restore_ids = {n: shards[OLD.shard_of(fid(n))].actions_of_fid(FS, fid(n))[-1].id
                   for n in MOVERS if n % 3 == 0}
    for s in shards[:2]:
        finish(s, [i for i, a in s.actions.items() if a.state == State.STARTED])
    split_all(shards)
    for n in MOVERS:
        again = submit(shards, NEW, item(n, key=f"k{n}"))[0]
        assert again == first[n]  # the retried submit gets its first answer on the new shard
    for n, rid in restore_ids.items():
        joined = submit(shards, NEW, item(n, Kind.RESTORE, initiator="other"))[0]
        assert joined.outcome == Outcome.JOINED and joined.action_id == rid  # type: ignore[attr-defined]
    # the old shard refuses a moved file and names its owner; a new file there goes on as ever
    refused = apply(shards[OLD.shard_of(fid(MOVERS[0]))], Submit(20.0, (item(MOVERS[0], Kind.RESTORE),)))[0]
    assert refused.outcome == Outcome.REJECTED and refused.errno == E.ESTALE  # type: ignore[attr-defined]
    assert "belongs to shard 2 since ring version 2" in refused.reason  # type: ignore[attr-defined]
    stay = STAYERS[0]
    assert submit(shards, NEW, item(stay, Kind.RESTORE))[0].outcome == Outcome.CREATED  # type: ignore[attr-defined]
    for s in shards:
        s.check_invariants()


def test_frozen_files_take_no_request_and_do_not_start_but_running_ones_finish() -> None:
    shards = world()
    load(shards)
    old = shards[OLD.shard_of(fid(MOVERS[0]))]
    running = [i for i, a in old.actions.items() if a.state == State.STARTED]
    running_moving = [i for i in running if moving(old.actions[i].fid.oid)]
    assert running_moving, "the load leaves a moving file running"
    for s in shards:
        apply(s, Freeze(5.0, **FREEZE))
    # a new request for a moving file: refused, nothing queued
    n = MOVERS[0]
    r = apply(old, Submit(5.0, (item(n, Kind.RESTORE, key="late"),)))[0]
    assert r.outcome == Outcome.REJECTED and r.errno == E.EBUSY and "moving to shard 2" in r.reason  # type: ignore
    assert "late" not in old.keys
    # the same key retried still gets its first answer (answering creates nothing)
    assert apply(old, Submit(5.0, (item(n, key=f"k{n}"),)))[0].outcome in (Outcome.CREATED, Outcome.JOINED)  # type: ignore
    # the new shard serves nothing yet
    r = apply(shards[2], Submit(5.0, (item(n, Kind.RESTORE),)))[0]
    assert r.outcome == Outcome.REJECTED and r.errno == E.EBUSY  # type: ignore[attr-defined]
    # the scheduler starts no waiting action of a moving file; the others go on
    started = dispatch(old, now=6.0)
    assert started and not any(moving(old.actions[i].fid.oid) for i in started)
    # a waiting moving action cannot be canceled now; a staying one can
    waiting = next(a for a in old.actions.values() if a.state == State.WAITING and moving(a.fid.oid))
    refused = apply(old, Cancel(6.0, action_ids=(waiting.id,)))
    assert len(refused) == 1 and isinstance(refused[0], CancelRefused) and "retry" in refused[0].reason
    assert waiting.state == State.WAITING
    # not drained: no export, no activation
    assert old.split_busy() == len(running_moving)
    assert old.split_export() is None
    assert "still have a running action" in apply(old, Activate(7.0, 2))[0].error  # type: ignore[attr-defined]
    old.check_invariants()
    # the running ones end (a failure with retry requeues: still frozen, not ready)
    first, *rest = running_moving
    apply(old, Complete(8.0, (Completion(first, old.actions[first].attempt, E.EIO, retry=True),), "a"))
    assert old.actions[first].state == State.WAITING and first not in {i for q in old.ready.values() for i in q}
    finish(old, rest, now=8.0)
    finish(old, [i for i in started], now=8.0)
    assert old.split_busy() == 0
    old.check_invariants()
    other = shards[1 - old.config.shard]
    finish(other, [i for i, a in other.actions.items() if a.state == State.STARTED])
    before = live(shards)
    send_exports(shards, 7, 9.0)
    for s in shards:
        assert apply(s, Activate(9.0, 2))[0].error == ""  # type: ignore[attr-defined]
    assert live(shards) == before
    # the requeued action runs on its new shard, its attempt count carried
    assert shards[2].actions[first].attempt == 1
    assert first in dispatch(shards[2], now=10.0)
    for s in shards:
        s.check_invariants()


def test_an_import_sent_twice_or_started_over_changes_nothing_twice() -> None:
    once, twice = world(), world()
    for shards in (once, twice):
        load(shards)
        for s in shards[:2]:
            finish(s, [i for i, a in s.actions.items() if a.state == State.STARTED])
        for s in shards:
            apply(s, Freeze(5.0, **FREEZE))
    send_exports(once, 5, 6.0)
    # a leader change mid-export: two chunks sent, then the whole export again
    send_exports(twice, 5, 6.0, stop_after=2)
    assert "have not handed over their last chunk" in apply(twice[2], Activate(6.5, 2))[0].error  # type: ignore
    send_exports(twice, 5, 7.0)
    send_exports(twice, 5, 7.5)  # and once more, all of it
    for shards in (once, twice):
        for s in shards:
            assert apply(s, Activate(8.0, 2))[0].error == ""  # type: ignore[attr-defined]
            assert apply(s, Activate(8.0, 2))[0].error == ""  # type: ignore[attr-defined]  # a retry
    assert live(once) == live(twice)
    assert once[2].keys == twice[2].keys
    assert [a.id for a in once[2].actions.values()] == [a.id for a in twice[2].actions.values()]
    for s in twice:
        s.check_invariants()


def test_an_abort_gives_the_old_shards_everything_back() -> None:
    shards = world()
    load(shards)
    for s in shards[:2]:
        finish(s, [i for i, a in s.actions.items() if a.state == State.STARTED])
    before = live(shards)
    ready_before = [sorted(i for q in s.ready.values() for i in q) for s in shards]
    for s in shards:
        apply(s, Freeze(5.0, **FREEZE))
    send_exports(shards, 5, 6.0, stop_after=3)
    assert shards[2].actions
    for s in shards:
        assert apply(s, AbortSplit(7.0, 2))[0].error == ""  # type: ignore[attr-defined]
    assert live(shards) == before
    assert [sorted(i for q in s.ready.values() for i in q) for s in shards] == ready_before
    assert not shards[2].actions and not shards[2].catalog.files and not shards[2].keys
    n = MOVERS[0]
    assert submit(shards, OLD, item(n, Kind.RESTORE))[0].outcome in (Outcome.CREATED, Outcome.JOINED)  # type: ignore
    for s in shards:
        s.check_invariants()
    # an import after the abort is refused; so is undoing an active split
    assert "not being filled" in apply(shards[2], Import(8.0, 2, 0, 0, True, ()))[0].error  # type: ignore
    split_all(shards, now=9.0)
    assert "cannot be undone" in apply(shards[0], AbortSplit(10.0, 2))[0].error  # type: ignore[attr-defined]


def test_a_new_shard_keeps_per_file_order_through_a_snapshot() -> None:
    shards = world()
    load(shards)
    for s in shards[:2]:
        finish(s, [i for i, a in s.actions.items() if a.state == State.STARTED])
    split_all(shards)
    new = shards[2]
    n = MOVERS[0]
    created = submit(shards, NEW, item(n, Kind.REMOVE))[0]
    assert created.outcome == Outcome.CREATED  # type: ignore[attr-defined]
    # the new shard's own ids come after every imported one
    assert created.action_id > max(i for i in new.actions if i % 1000 != 2)  # type: ignore[attr-defined]
    head, actions = new.export_parts()
    back = ShardState.import_parts(pickle.loads(pickle.dumps(head)), [pickle.loads(pickle.dumps(actions))])
    back.check_invariants()
    for m in MOVERS:
        assert [a.id for a in back.actions_of_fid(FS, fid(m))] == [a.id for a in new.actions_of_fid(FS, fid(m))]


def test_refusals_of_commands_out_of_place() -> None:
    shards = world()
    assert "not one of the" in apply(ShardState(ShardConfig(shard=5)), Freeze(1.0, **FREEZE))[0].error  # type: ignore
    assert "not a split" in apply(shards[0], Freeze(1.0, 1, 2, 1, VNODES))[0].error  # type: ignore
    assert "not being filled" in apply(shards[2], Import(1.0, 2, 0, 0, True, ()))[0].error  # type: ignore
    assert "no split" in apply(shards[0], Activate(1.0, 2))[0].error  # type: ignore
    apply(shards[2], Freeze(1.0, **FREEZE))
    assert "hands nothing" in apply(shards[2], Import(1.0, 2, 7, 0, True, ()))[0].error  # type: ignore
    apply(shards[0], Freeze(1.0, **FREEZE))
    assert "runs on this shard" in apply(shards[0], Freeze(1.0, 3, 3, 1, VNODES))[0].error  # type: ignore
    # a shard that holds files cannot be a new one
    busy = ShardState(ShardConfig(shard=2, archive_ids=frozenset({1})))
    busy.apply(Submit(1.0, (item(MOVERS[0]),)))
    assert "starts empty" in apply(busy, Freeze(1.0, **FREEZE))[0].error  # type: ignore[attr-defined]
    # a bundle of a file another shard gets is left out
    stay = STAYERS[0]
    wrong = (FS, fid(stay), (), (), (), ((1, "k", 1, 1, "", 1.0, 0, 1, 0, 0, 0o100600, "/x", "", 0),), ())
    reply = apply(shards[2], Import(1.0, 2, 0, 0, False, (wrong,)))[0]
    assert reply.count == 0 and "left out" in reply.error  # type: ignore[attr-defined]
    assert not shards[2].catalog.files


@settings(max_examples=40, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["submit", "dispatch", "finish", "fail", "cancel"]),
                              st.integers(1, 40), st.sampled_from([Kind.ARCHIVE, Kind.RESTORE, Kind.REMOVE])),
                    max_size=80),
       during=st.lists(st.tuples(st.sampled_from(["submit", "dispatch", "finish", "cancel"]), st.integers(1, 40),
                                 st.sampled_from([Kind.ARCHIVE, Kind.RESTORE])), max_size=30),
       most=st.integers(1, 6), resend=st.booleans())
def test_any_history_splits_without_loss_or_double(ops: list[tuple[str, int, Kind]], during: list[tuple[str, int, Kind]],
                                                   most: int, resend: bool) -> None:
    shards = world()
    now = 1.0

    def run(op: str, n: int, kind: Kind) -> None:
        nonlocal now
        now += 0.1
        owner = shards[OLD.shard_of(fid(n))]
        if op == "submit":
            apply(owner, Submit(now, (item(n, kind, key=f"{n}-{kind}-{now}"),)))
        elif op == "dispatch":
            dispatch(owner, n=n % 4 + 1, now=now)
        elif op in ("finish", "fail"):
            running = [i for i, a in owner.actions.items() if a.state == State.STARTED][: n % 3 + 1]
            apply(owner, Complete(now, tuple(Completion(i, owner.actions[i].attempt, E.EIO if op == "fail" else 0,
                                                        retry=op == "fail") for i in running), "a"))
        else:
            ids = [a.id for a in owner.actions_of_fid(FS, fid(n))]
            if ids:
                apply(owner, Cancel(now, action_ids=(ids[-1],)))

    for op in ops:
        run(*op)
    for s in shards:
        apply(s, Freeze(now, **FREEZE))
    for op in during:  # the flood goes on while frozen
        run(*op)
    for s in shards[:2]:  # the drain: running actions end (those being canceled too)
        finish(s, [i for i, a in s.actions.items() if a.state in (State.STARTED, State.CANCELING)], now=now + 1)
        s.check_invariants()
    before = live(shards)
    order = {n: [a.id for a in shards[OLD.shard_of(fid(n))].actions_of_fid(FS, fid(n))] for n in range(1, 41)}
    send_exports(shards, most, now + 2)
    if resend:
        send_exports(shards, most, now + 3)
    for s in shards:
        assert apply(s, Activate(now + 4, 2))[0].error == ""  # type: ignore[attr-defined]
        s.check_invariants()
    assert live(shards) == before
    for n in range(1, 41):
        assert [a.id for a in shards[NEW.shard_of(fid(n))].actions_of_fid(FS, fid(n))] == order[n]
    # every waiting head is ready on its owner, and only there
    for s in shards:
        for q in s.ready.values():
            for i in q:
                assert NEW.shard_of(s.actions[i].fid) == s.config.shard


def test_chunks_never_cut_a_file() -> None:
    b = [(FS, fid(i), tuple(range(i % 4)), (), (), (), ()) for i in range(30)]
    got = list(split.chunks(b, 3))
    assert [x for c in got for x in c] == b
    for c in got:
        assert sum(max(1, len(x[2])) for x in c) <= 3 or len(c) == 1


def test_the_ranges_of_a_split_are_the_rings() -> None:
    for n in range(1, 400):
        f = fid(n)
        old, new = OLD.shard_of(f), NEW.shard_of(f)
        target = split.ranges_of(old, 2, 1, VNODES, 2).target(f)
        assert target == (new if new != old else None)
    assert split.sources_of(2, 2, 1, VNODES, 2) == (0, 1)


@pytest.mark.parametrize("shards,added", [(8, 4)])
def test_a_split_of_eight_to_twelve_moves_a_third_to_new_shards(shards: int, added: int) -> None:
    old = Ring(shards, 4096, 1)
    new = old.with_shard_added(added)
    fids = [fid(n) for n in range(1, 3001)]
    moved = [f for f in fids if old.shard_of(f) != new.shard_of(f)]
    assert abs(len(moved) / len(fids) - added / (shards + added)) < 0.05
    for f in moved[:200]:
        assert split.ranges_of(old.shard_of(f), shards, added, 4096, 2).target(f) == new.shard_of(f)
