"""The catalog of a shard (coordinator.catalog): copies by file, one per
archive id, filters and paging, bounds, snapshots, memory per copy."""

from __future__ import annotations

import pickle
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.catalog import MAX_KEY, Catalog, Copy, CopyError, Query
from hsm.fid import Fid


def fid(n: int) -> Fid:
    return Fid(0x200000400, n, 0)


def copy(archive_id: int = 1, dv: int = 1, size: int = 100, archived: float = 1000.0, **kw: object) -> Copy:
    return Copy(archive_id, "", dv, size, "sha256:" + "ab" * 32, archived, **kw)  # type: ignore[arg-type]


def test_one_copy_per_archive_id_the_newest_replaces() -> None:
    cat = Catalog()
    assert cat.record("fs1", fid(1), copy(2)) is None
    assert cat.record("fs1", fid(1), copy(1)) is None
    old = cat.record("fs1", fid(1), copy(1, dv=2))
    assert old is not None and old.data_version == 1
    assert [(c.archive_id, c.data_version) for c in cat.of("fs1", fid(1))] == [(1, 2), (2, 1)]
    assert len(cat) == 2
    assert cat.drop("fs1", fid(1), 2) == 1 and len(cat) == 1
    assert cat.drop("fs1", fid(1)) == 1 and cat.of("fs1", fid(1)) == () and len(cat) == 0
    assert cat.drop("fs1", fid(9)) == 0


@pytest.mark.parametrize("bad,words", [
    (Copy(0, "", 1, 1), "archive id 0"),
    (Copy(1, "k" * (MAX_KEY + 1), 1, 1), "object key longer"),
    (Copy(1, "", 1, 1, path="/a\0b"), "path holds a NUL"),
    (Copy(1, "", 1, -1), ">= 0"),
])
def test_a_copy_out_of_bounds_is_refused_and_changes_nothing(bad: Copy, words: str) -> None:
    cat = Catalog()
    cat.record("fs1", fid(1), copy())
    with pytest.raises(CopyError, match=words):
        cat.record("fs1", fid(1), bad)
    assert cat.of("fs1", fid(1)) == (copy(),) and len(cat) == 1


def test_filters() -> None:
    cat = Catalog()
    cat.record("fs1", fid(1), copy(1, size=10, archived=100.0, uid=5, path="/proj/a/f1"))
    cat.record("fs1", fid(2), copy(2, size=5000, archived=200.0, uid=6, path="/proj/ab/f2"))
    cat.record("fs1", fid(3), copy(1, size=70, archived=300.0, uid=5, path="/proj/a"))

    def ls(**q: object) -> list[int]:
        rows, _ = cat.query(Query(**q))  # type: ignore[arg-type]
        return [k[1].oid for k, _c in rows]

    assert ls() == [1, 2, 3]
    assert ls(archive_id=1) == [1, 3]
    assert ls(archived_before=200.0) == [1]
    assert ls(archived_after=200.0) == [2, 3]
    assert ls(min_size=70) == [2, 3] and ls(max_size=70) == [1, 3]
    assert ls(uid=6) == [2]
    assert ls(path_prefix="/proj/a") == [1, 3]  # /proj/ab is not under /proj/a
    assert ls(path_prefix="/proj/a/") == [1, 3]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 40), st.integers(1, 3), st.integers(0, 10)), max_size=80),
       st.integers(1, 7), st.integers(0, 3))
def test_paging_gives_every_matching_copy_once_in_order(ops: list[tuple[int, int, int]], limit: int,
                                                        want_archive: int) -> None:
    cat = Catalog()
    model: dict[tuple[int, int], int] = {}
    for n, archive_id, size in ops:
        if size == 0:
            cat.drop("fs1", fid(n), archive_id)
            model.pop((n, archive_id), None)
        else:
            cat.record("fs1", fid(n), copy(archive_id, size=size))
            model[(n, archive_id)] = size
    q = Query(archive_id=want_archive)
    got: list[tuple[int, int, int]] = []
    after = None
    for _ in range(200):
        rows, after = cat.query(q, after, limit)
        got += [(k[1].oid, c.archive_id, c.size) for k, c in rows]
        if after is None:
            break
    expected = sorted((n, a, s) for (n, a), s in model.items() if not want_archive or a == want_archive)
    assert got == expected
    assert len(cat) == len(model)


def test_a_snapshot_carries_it() -> None:
    cat = Catalog()
    for n in range(1, 50):
        cat.record("fs1", fid(n), copy(1 + n % 2, dv=n, path=f"/d/f{n}"))
    cat.query(Query())
    back = pickle.loads(pickle.dumps(cat, protocol=pickle.HIGHEST_PROTOCOL))
    assert list(back) == list(cat) and len(back) == len(cat)
    assert back.query(Query(), None, 10) == cat.query(Query(), None, 10)


def test_memory_per_copy_is_bounded() -> None:
    """A copy as the posix mover records it (default key, a sha256 and a
    path of ~60 bytes): its objects in memory, measured, stay under 600
    bytes; the figure per copy per replica is what the catalog bench
    reports."""
    n = 20_000
    paths = [f"/project{n % 7}/run{n % 13:02d}/file{n:06d}.dat" for n in range(n)]
    cat = Catalog()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        cat.record("fs1", fid(i + 1), Copy(1, "", i, 4096, "sha256:" + f"{i:064x}", 1.7e9 + i, path=paths[i]))
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert used / n < 600, f"{used / n:.0f} bytes per copy"


# -- the shard state machine writes it in the command that ends the action --------------------------

from coordinator.raft.serializer import _decode_state as load_state  # noqa: E402
from coordinator.raft.serializer import _encode_state as dump_state  # noqa: E402
from coordinator.state import (  # noqa: E402
    AssignRound,
    Complete,
    Completion,
    Item,
    Kind,
    Requester,
    ShardConfig,
    ShardState,
    Submit,
)

FS = "lustre1"
FACTS = ("0001/0000/0400/0000/0002/0000/0x200000400:0x1:0x0", 7, 4096, "sha256:" + "cd" * 32, 1000, 100, 0o100644,
         "/proj/a.dat")


def _run(state: ShardState, n: int, kind: Kind, archive_id: int = 1, now: float = 10.0) -> int:
    """Submit one action of *kind* for FID n and hand it to agent a; its id."""
    item = Item(FS, fid(n), kind, archive_id=archive_id, requester=Requester("t", cookie=n, uid=1000, gid=100),
                data_version=7)
    reply = state.apply(Submit(now, (item,))).replies[0]
    aid: int = reply.action_id  # type: ignore[attr-defined]
    state.apply(AssignRound(now, (("a", (aid,)),)))
    return aid


def _end(state: ShardState, aid: int, errno: int = 0, facts: tuple[object, ...] | None = None,
         now: float = 20.0) -> None:
    attempt = state.get(aid).attempt  # type: ignore[union-attr]
    state.apply(Complete(now, (Completion(aid, attempt, errno, "", False, 4096, False, facts),), "a"))


def test_an_archive_that_succeeds_records_its_copy_with_what_the_mover_said() -> None:
    state = ShardState(ShardConfig(archive_ids=frozenset({1, 2})))
    aid = _run(state, 1, Kind.ARCHIVE)
    assert state.catalog.of(FS, fid(1)) == ()  # nothing while it runs
    _end(state, aid, facts=FACTS, now=20.0)
    (c,) = state.catalog.of(FS, fid(1))
    assert (c.archive_id, c.key, c.data_version, c.size, c.checksum, c.archived) == (
        1, FACTS[0], 7, 4096, FACTS[3], 20.0)
    assert (c.uid, c.gid, c.mode, c.path, c.offset, c.length) == (1000, 100, 0o100644, "/proj/a.dat", 0, -1)


def test_a_failed_archive_records_nothing_and_a_mover_that_says_nothing_gets_the_actions_facts() -> None:
    state = ShardState(ShardConfig(archive_ids=frozenset({1})))
    _end(state, _run(state, 1, Kind.ARCHIVE), errno=5, facts=FACTS)
    assert state.catalog.of(FS, fid(1)) == ()
    _end(state, _run(state, 2, Kind.ARCHIVE), facts=None)
    (c,) = state.catalog.of(FS, fid(2))
    assert (c.key, c.data_version, c.size, c.uid, c.gid, c.path) == ("", 7, 4096, 1000, 100, "")


def test_facts_out_of_bounds_still_record_the_copy_without_them() -> None:
    state = ShardState(ShardConfig(archive_ids=frozenset({1})))
    bad = ("k" * (MAX_KEY + 1), *FACTS[1:])
    _end(state, _run(state, 1, Kind.ARCHIVE), facts=bad)
    (c,) = state.catalog.of(FS, fid(1))
    assert c.key == "" and c.data_version == 7


def test_a_second_archive_replaces_the_copy_and_a_remove_drops_only_its_archive() -> None:
    state = ShardState(ShardConfig(archive_ids=frozenset({1, 2})))
    _end(state, _run(state, 1, Kind.ARCHIVE, 1), facts=FACTS, now=20.0)
    _end(state, _run(state, 1, Kind.ARCHIVE, 2, now=30.0), facts=FACTS, now=40.0)
    _end(state, _run(state, 1, Kind.ARCHIVE, 1, now=50.0), facts=(FACTS[0], 9, *FACTS[2:]), now=60.0)
    assert [(c.archive_id, c.data_version, c.archived) for c in state.catalog.of(FS, fid(1))] == [
        (1, 9, 60.0), (2, 7, 40.0)]
    _end(state, _run(state, 1, Kind.REMOVE, 2, now=70.0), now=80.0)
    assert [c.archive_id for c in state.catalog.of(FS, fid(1))] == [1]
    _end(state, _run(state, 1, Kind.REMOVE, 1, now=90.0), errno=5, now=95.0)  # a failed remove keeps it
    assert [c.archive_id for c in state.catalog.of(FS, fid(1))] == [1]


def test_the_shard_snapshot_carries_the_catalog() -> None:
    state = ShardState(ShardConfig(archive_ids=frozenset({1})))
    for n in range(1, 6):
        _end(state, _run(state, n, Kind.ARCHIVE), facts=FACTS)
    back = load_state(dump_state(state))
    assert sorted((k, c) for k, c in back.catalog) == sorted((k, c) for k, c in state.catalog)
    assert len(back.catalog) == 5 and back.catalog.fsnames == {FS: 5}


def test_a_completion_journaled_before_the_catalog_existed_still_applies() -> None:
    old = pickle.loads(pickle.dumps(Completion(1, 1)))  # a journaled NamedTuple: its fields, positionally
    assert Completion(*tuple(old)[:7]).copy is None


def test_a_snapshot_slices_the_catalog_and_reads_the_format_before_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    from coordinator.raft import serializer

    st = ShardState(ShardConfig(archive_ids=frozenset({1, 2})))
    for n in range(1, 26):
        _end(st, _run(st, n, Kind.ARCHIVE), facts=FACTS)
    _end(st, _run(st, 3, Kind.ARCHIVE, archive_id=2), facts=FACTS)  # a file with two copies
    assert len(st.catalog) == 26 and len(st.catalog.files) == 25
    monkeypatch.setattr(serializer, "_SNAP_CHUNK", 10)
    blob = dump_state(st)
    fmt, parts, n_actions = pickle.loads(blob)
    assert fmt == "hsm-shard-state/3" and n_actions == 3  # 26 actions: 3 slices
    assert len(parts) == 1 + 3 + 3  # 25 files: 3 slices of the catalog, none in the head
    assert "catalog" not in pickle.loads(parts[0])
    back = load_state(blob)
    assert sorted((k, c.values()) for k, c in back.catalog) == sorted((k, c.values()) for k, c in st.catalog)
    assert len(back.catalog) == 26 and back.catalog.fsnames == {FS: 25}
    # a snapshot of the format before (the catalog pickled whole, in the head) still loads
    head, actions = st.export_parts()
    old = pickle.dumps(("hsm-shard-state/2", [pickle.dumps(head), pickle.dumps(actions)]))
    again = load_state(old)
    assert len(again.catalog) == 26 and [c.archive_id for c in again.catalog.of(FS, fid(3))] == [1, 2]
