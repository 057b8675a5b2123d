"""The MDT bridge's pure protocol (bridge/core.py): action lists in, batched
submits and cancels out, items the MDT holds ended when nobody else will,
bounded backlog, the MDT's max_requests stall and active_request_timeout
reported. The lists are built with the codec (tests/test_lustre_hal.py
checks it against the header layout)."""

from __future__ import annotations

import errno as E
import struct
from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from bridge.core import (
    BridgeConfig,
    BridgeCore,
    Cancel,
    EndAtMdt,
    Report,
    Submit,
    Watch,
    initiator_of,
)
from hsm.fid import Fid
from hsm.hsmflags import HSMA
from hsm.lustre.hal import ActionItem, ActionList, build_hal

EOF_LEN = (1 << 64) - 1


def item(n: int, action: int = HSMA.ARCHIVE, data: bytes = b"") -> ActionItem:
    fid = Fid(0x200000400, n, 0)
    return ActionItem(action, fid, fid, 0, EOF_LEN, cookie=0x1000 + n, gid=0, data=data)


def hal(*items: ActionItem, fsname: str = "lustre", archive_id: int = 1) -> bytes:
    return build_hal(ActionList(fsname, archive_id, tuple(items)))


@dataclass
class Res:
    outcome: str
    action_id: int = 0
    errno: int = 0
    reason: str = ""


def core(**kw: object) -> BridgeCore:
    return BridgeCore(BridgeConfig(fsnames=frozenset({"lustre"}), **kw))  # type: ignore[arg-type]


def only(out: list[object], cls: type) -> list:  # type: ignore[type-arg]
    return [i for i in out if isinstance(i, cls)]


def test_items_go_in_batches_with_the_mdt_cookie_as_key() -> None:
    c = core(batch_size=2, batch_delay=0.05)
    out = c.on_list(0.0, hal(item(1), item(2), item(3), item(4, HSMA.RESTORE), item(5)))
    subs = only(out, Submit)
    assert [len(s.items) for s in subs] == [2, 2], "full batches go at once"
    assert c.on_tick(0.01) == [], "a partial batch waits batch_delay"
    (last,) = only(c.on_tick(0.06), Submit)
    assert [r.item.cookie for r in last.items] == [0x1005]
    r = subs[0].items[0]
    assert (r.fsname, r.archive_id, r.key) == ("lustre", 1, ("lustre", 0x1001))
    assert initiator_of("lustre") == "lustre:lustre"


def test_a_cancel_item_becomes_a_cancel_of_its_cookie() -> None:
    c = core()
    out = c.on_list(0.0, hal(item(7, HSMA.CANCEL)))
    assert not only(out, Submit)
    (cancel,) = only(c.on_tick(1.0), Cancel)
    assert cancel.items[0].item.cookie == 0x1007
    assert c.on_cancelled(1.1, cancel.batch) == [] and c.backlog == 0


def test_a_cancel_waits_for_the_answer_to_its_items_submit() -> None:
    """An archive and its cancel in one list (or the cancel while the
    archive's submit is unanswered): the cancel goes only after the
    coordinator created the action, else it would find nothing to cancel."""
    c = core()
    c.on_list(0.0, hal(item(1)))
    c.on_list(0.01, hal(item(1, HSMA.CANCEL)))
    out = c.on_tick(1.0)
    (sub,) = only(out, Submit)
    assert not only(out, Cancel) and not only(c.on_tick(2.0), Cancel)
    out = c.on_submitted(2.1, sub.batch, [Res("CREATED", 1001)])
    (cancel,) = only(out, Cancel)
    assert cancel.items[0].item.cookie == 0x1001


def test_refused_and_not_needed_items_are_ended_at_the_mdt() -> None:
    c = core()
    c.on_list(0.0, hal(item(1), item(2), item(3)))
    (sub,) = only(c.on_tick(1.0), Submit)
    out = c.on_submitted(1.1, sub.batch, [Res("CREATED", 1001), Res("REJECTED", 0, E.EPERM, "not allowed"),
                                          Res("NOT_NEEDED")])
    ends = only(out, EndAtMdt)
    assert [(e.item.item.cookie, e.errval) for e in ends] == [(0x1002, E.EPERM), (0x1003, 0)]
    assert only(out, Watch) == [Watch((1001,))]
    assert any(r.code == "rejected" for r in only(out, Report))
    assert c.counters["created"] == 1 and c.counters["rejected"] == 1


def test_an_action_that_did_not_succeed_is_ended_at_the_mdt_once() -> None:
    c = core()
    c.on_list(0.0, hal(item(1), item(2)))
    (sub,) = only(c.on_tick(1.0), Submit)
    c.on_submitted(1.1, sub.batch, [Res("CREATED", 1001), Res("CREATED", 2001)])
    (end,) = c.on_action_ended(2.0, 1001, "CANCELED", E.ECANCELED)
    assert isinstance(end, EndAtMdt) and (end.item.item.cookie, end.errval) == (0x1001, E.ECANCELED)
    assert c.on_action_ended(2.1, 1001, "CANCELED", E.ECANCELED) == []
    assert c.on_action_ended(3.0, 2001, "SUCCEEDED", 0) == [], "its agent ended it"
    assert c.live() == []


def test_an_item_that_joined_a_successful_action_is_ended_ealready() -> None:
    c = core()
    c.on_list(0.0, hal(item(1)))
    c.on_list(0.0, hal(ActionItem(HSMA.ARCHIVE, Fid(0x200000400, 1, 0), Fid(0x200000400, 1, 0), 0, EOF_LEN,
                                  cookie=0x9999)))
    (sub,) = only(c.on_tick(1.0), Submit)
    c.on_submitted(1.1, sub.batch, [Res("CREATED", 1001), Res("JOINED", 1001)])
    (end,) = c.on_action_ended(2.0, 1001, "SUCCEEDED", 0)
    assert (end.item.item.cookie, end.errval) == (0x9999, E.EALREADY), "the creator's item its mover ended"


def test_joined_items_share_one_action_and_each_is_ended() -> None:
    c = core()
    c.on_list(0.0, hal(item(1, HSMA.RESTORE)))
    c.on_list(0.0, hal(ActionItem(HSMA.RESTORE, Fid(0x200000400, 1, 0), Fid(0x200000400, 1, 0), 0, EOF_LEN,
                                  cookie=0x9999)))
    (sub,) = only(c.on_tick(1.0), Submit)
    c.on_submitted(1.1, sub.batch, [Res("CREATED", 1001), Res("JOINED", 1001)])
    ends = c.on_action_ended(2.0, 1001, "FAILED", E.EIO)
    assert sorted(e.item.item.cookie for e in ends) == [0x1001, 0x9999]


def test_an_unreachable_coordinator_means_the_same_batch_later_and_no_reading() -> None:
    c = core(batch_size=10, max_backlog=20, retry_min=0.5, retry_max=2.0)
    (first,) = only(c.on_list(0.0, hal(*(item(n) for n in range(1, 11)))), Submit)  # a full batch goes
    only(c.on_list(0.0, hal(*(item(n) for n in range(11, 21)))), Submit)
    assert c.backlog == 20 and not c.reading_allowed(), "at max_backlog the shell stops reading the MDT"
    out = c.on_failed(0.1, first.batch, "connection refused")
    assert only(out, Report)[0].code == "unavailable"
    assert not only(c.on_tick(0.5), Submit), "not before the retry delay"
    (again,) = only(c.on_tick(0.7), Submit)
    assert again.items == first.items and again.batch != first.batch, "the same items, a new batch"
    assert c.backlog == 20


def test_bad_lists_are_reported_with_their_bytes_and_good_items_still_go() -> None:
    c = core()
    raw = bytearray(hal(item(1), item(2), item(3)))
    out = c.on_list(0.0, bytes(struct.pack_into("<I", raw, 0, 2) or raw))  # hal_version 2
    (bad,) = only(out, Report)
    assert bad.code == "bad_input" and "version" in bad.message
    assert c.backlog == 0
    # an unknown action in the middle: the other two go
    odd = ActionItem(99, Fid(0x200000400, 9, 0), Fid(0x200000400, 9, 0), 0, EOF_LEN, cookie=0x5)
    out = c.on_list(1.0, hal(item(1), odd, item(3)))
    assert only(out, Report)[0].code == "bad_input"
    (sub,) = only(c.on_tick(2.0), Submit)
    assert [r.item.cookie for r in sub.items] == [0x1001, 0x1003]
    # a file system this bridge does not serve: reported, nothing forwarded
    before = c.backlog
    out = c.on_list(3.0, hal(item(4), fsname="other"))
    assert only(out, Report) and c.backlog == before and c.counters["foreign_items"] == 1
    # a message recv refused (EPROTO): counted and reported, nothing else
    bad_before = c.counters["bad_input"]
    (rep,) = c.on_unreadable(4.0, "Protocol error")
    assert rep.code == "bad_input" and rep.level == "error" and "Protocol error" in rep.message
    assert c.counters["bad_input"] == bad_before + 1 and c.backlog == before


def test_the_mdt_max_requests_stall_and_active_request_timeout_are_reported() -> None:
    c = core(mdt_max_requests=3, stall_after=30.0, mdt_active_request_timeout=3600.0)
    c.on_list(0.0, hal(item(1), item(2), item(3)))
    (sub,) = only(c.on_tick(1.0), Submit)
    c.on_submitted(1.1, sub.batch, [Res("CREATED", 1001), Res("CREATED", 2001), Res("CREATED", 3001)])
    assert not only(c.on_tick(20.0), Report)
    (stall,) = only(c.on_tick(31.0), Report)
    assert stall.code == "max_requests" and "max_requests (3)" in stall.message
    assert not only(c.on_tick(40.0), Report), "reported once, not every tick"
    late = [r for r in only(c.on_tick(3601.0), Report) if r.code == "active_request_timeout"]
    assert late and "ENOENT" in late[0].message and c.counters["mdt_timeouts"] == 3


def test_config_is_checked() -> None:
    with pytest.raises(ValueError):
        BridgeConfig(fsnames=frozenset())
    with pytest.raises(ValueError):
        BridgeConfig(fsnames=frozenset({"x"}), batch_size=10, max_backlog=5)


class NothingLost(RuleBasedStateMachine):
    """Any interleaving of lists, ticks, answers, failures and action ends:
    every item received is, at every step, either still live (to be sent,
    sent, or forwarded and not ended) or finished in exactly one way
    (ended by its action, ended at the MDT by the bridge, or a cancel
    taken); the backlog stays within bounds."""

    def __init__(self) -> None:
        super().__init__()
        self.c = core(batch_size=3, max_backlog=50)
        self.now = 0.0
        self.next = 1
        self.received: set[tuple[str, int]] = set()
        self.finished: set[tuple[str, int]] = set()
        self.actions: dict[int, list[tuple[str, int]]] = {}

    @rule(n=st.integers(1, 4), cancel=st.booleans())
    def a_list(self, n: int, cancel: bool) -> None:
        if not self.c.reading_allowed():
            return
        items = [item(self.next + i, HSMA.CANCEL if cancel else HSMA.ARCHIVE) for i in range(n)]
        self.next += n
        self.received |= {("lustre", i.cookie) for i in items}
        self.c.on_list(self.now, hal(*items))

    @rule(dt=st.floats(0.0, 2.0))
    def tick(self, dt: float) -> None:
        self.now += dt
        self.c.on_tick(self.now)

    @rule(data=st.data())
    def answer(self, data: st.DataObject) -> None:
        if not self.c._batches:
            return
        batch = data.draw(st.sampled_from(sorted(self.c._batches)))
        kind, items = self.c._batches[batch]
        if data.draw(st.booleans()):
            self.c.on_failed(self.now, batch, "down")
            return
        if kind == "cancel":
            self.c.on_cancelled(self.now, batch)
            self.finished |= {r.key for r in items}
            return
        results = []
        for r in items:
            outcome = data.draw(st.sampled_from(["CREATED", "JOINED", "REJECTED", "NOT_NEEDED"]))
            aid = r.item.cookie * 1000 if outcome in ("CREATED", "JOINED") else 0
            results.append(Res(outcome, aid, E.EPERM if outcome == "REJECTED" else 0, "no"))
        out = self.c.on_submitted(self.now, batch, results)
        for r, res in zip(items, results, strict=True):
            if res.action_id:
                self.actions.setdefault(res.action_id, []).append(r.key)
        self.finished |= {e.item.key for e in only(out, EndAtMdt)}

    @rule(data=st.data())
    def action_ends(self, data: st.DataObject) -> None:
        if not self.actions:
            return
        aid = data.draw(st.sampled_from(sorted(self.actions)))
        state = data.draw(st.sampled_from(["SUCCEEDED", "FAILED", "CANCELED"]))
        self.c.on_action_ended(self.now, aid, state, E.ECANCELED)
        self.finished |= set(self.actions.pop(aid))

    @invariant()
    def every_item_is_live_or_finished(self) -> None:
        live = [r.key for r in self.c.live()]
        assert len(live) == len(set(live)), "an item counted twice"
        assert set(live) | self.finished == self.received
        assert not set(live) & self.finished
        assert self.c.backlog <= 50 + 4


TestNothingLost = NothingLost.TestCase
TestNothingLost.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
