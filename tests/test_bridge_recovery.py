"""The bridge's pure parts added for take-over: the MDT's active requests
parsed, what a bridge sends when it becomes active, and its lease keeper."""

from __future__ import annotations

import errno as E
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge import cli
from bridge.core import BridgeConfig, BridgeCore
from bridge.lease import Ask, GiveBack, LeaseKeeper
from bridge.recovery import plan
from hsm.fid import Fid
from hsm.hsmflags import HSMA, LUSTRE_EOF
from hsm.lustre import active_requests as ar
from hsm.lustre.hal import ActionItem, ActionList, build_hal, parse_hal

# Lines as mdt_hsm_active_requests_proc_show (lustre/mdt/mdt_hsm_cdt_requests.c)
# prints them: "fid="DFID" dfid="DFID" compound/cookie=%#llx/%#llx action=%s
# archive#=%d flags=%#llx extent=%#llx-%#llx gid=%#llx data=[%s] canceled=%d
# uuid=%s done=%llu\n"; DFID is "[%#llx:0x%x:0x%x]", %#llx prints 0 as "0",
# data is hai_dump_data_field's "%02X" pairs in a 12-byte buffer.
ARCHIVE_LINE = ("fid=[0x200000401:0x1a:0x0] dfid=[0x200000401:0x1a:0x0] compound/cookie=0/0x5f3c1a2b00000007 "
                "action=ARCHIVE archive#=3 flags=0 extent=0-0xffffffffffffffff gid=0 data=[] canceled=0 "
                "uuid=0b1c5d2e-8f8a-4a5b-9c1d-2e3f4a5b6c7d done=0")
RESTORE_LINE = ("fid=[0x200000402:0x2:0x0] dfid=[0x200000402:0x5:0x0] compound/cookie=0x9/0x5f3c1a2b00000008 "
                "action=RESTORE archive#=1 flags=0x1 extent=0x1000-0x2000 gid=0x3e8 data=[414243] canceled=1 "
                "uuid=a done=4096")
CUT_LINE = ("fid=[0:0x0:0x0] dfid=[0:0x0:0x0] compound/cookie=0/0x9 action=REMOVE archive#=1 flags=0 "
            "extent=0-0xffffffffffffffff gid=0 data=[7461673D31] canceled=0 uuid=a done=0")


def test_a_kernel_line_parses_field_by_field() -> None:
    a = ar.parse_line(ARCHIVE_LINE)
    assert a.item == ActionItem(HSMA.ARCHIVE, Fid(0x200000401, 0x1A), Fid(0x200000401, 0x1A), 0, LUSTRE_EOF,
                                0x5F3C1A2B00000007, 0, b"")
    assert (a.archive_id, a.flags, a.compound_id, a.canceled, a.done, a.data_complete) == (3, 0, 0, False, 0, True)
    r = ar.parse_line(RESTORE_LINE, "lustre", 0)
    assert r.item == ActionItem(HSMA.RESTORE, Fid(0x200000402, 2), Fid(0x200000402, 5), 0x1000, 0x2000,
                                0x5F3C1A2B00000008, 0x3E8, b"ABC")
    assert (r.fsname, r.mdt_index, r.flags, r.compound_id, r.canceled, r.done) == ("lustre", 0, 1, 9, True, 4096)


def test_data_dumped_at_the_kernels_limit_may_be_cut() -> None:
    """hai_dump_data_field stops at 5 bytes: a 5-byte dump may hide more."""
    cut = ar.parse_line(CUT_LINE)
    assert cut.item.data == b"tag=1" and not cut.data_complete
    assert cut.item.fid == Fid(0, 0, 0), "the zero FID prints its sequence as 0"


def test_lctl_output_names_the_file_system_and_mdt_of_each_line() -> None:
    text = (f"mdt.lustre-MDT0000.hsm.active_requests=\n{ARCHIVE_LINE}\n"
            f"mdt.lustre-MDT0001.hsm.active_requests=\n{RESTORE_LINE}\n"
            "mdt.scratch-MDT0000.hsm.active_requests=\n")
    parsed = ar.parse(text)
    assert parsed.errors == ()
    assert [(r.fsname, r.mdt_index, r.item.action) for r in parsed.requests] == [
        ("lustre", 0, HSMA.ARCHIVE), ("lustre", 1, HSMA.RESTORE)]
    # lctl -n: no headers, the caller names the file system
    assert [r.fsname for r in ar.parse(f"{ARCHIVE_LINE}\n", fsname="lustre").requests] == ["lustre"]
    assert [r.fsname for r in ar.parse(f"{ARCHIVE_LINE}\n").requests] == [""]


@pytest.mark.parametrize("bad", [
    ARCHIVE_LINE.replace("action=ARCHIVE", "action=MIGRATE"),
    ARCHIVE_LINE.replace("0x5f3c1a2b00000007", "0x1" + "0" * 16),  # cookie past 2^64
    ARCHIVE_LINE.replace("data=[]", "data=[ABC]"),  # odd hex
    ARCHIVE_LINE.replace("data=[]", "data=[414243444546]"),  # longer than the kernel prints
    ARCHIVE_LINE.replace("archive#=3", "archive#=-1"),
    ARCHIVE_LINE[:80],  # truncated
    "fid=[0x1:0x1:0x0] garbage",
])
def test_a_line_that_is_not_a_request_is_reported_and_the_others_kept(bad: str) -> None:
    parsed = ar.parse(f"{ARCHIVE_LINE}\n{bad}\n{RESTORE_LINE}\n", fsname="lustre")
    assert len(parsed.requests) == 2 and len(parsed.errors) == 1 and parsed.errors[0].startswith("line 2: ")


@given(st.text(max_size=400))
def test_parsing_never_raises(text: str) -> None:
    ar.parse(text, fsname="lustre")


# -- what a bridge sends when it becomes active ---------------------------------


def item(cookie: int, action: int = HSMA.ARCHIVE, data: bytes = b"") -> ActionItem:
    return ActionItem(action, Fid(0x200000401, cookie), Fid(0x200000401, cookie), 0, LUSTRE_EOF, cookie, 0, data)


def active(*reqs: tuple[ActionItem, int], fsname: str = "lustre", canceled: int = 0, cut: bool = False) -> str:
    lines = [f"mdt.{fsname}-MDT0000.hsm.active_requests="]
    for it, archive in reqs:
        data = it.data[:5].hex().upper()
        if cut:
            data = "7461673D31"
        lines.append(f"fid=[{it.fid.seq:#x}:0x{it.fid.oid:x}:0x0] dfid=[{it.dfid.seq:#x}:0x{it.dfid.oid:x}:0x0] "
                     f"compound/cookie=0/{it.cookie:#x} action={HSMA(it.action).name} archive#={archive} "
                     f"flags=0 extent=0-0xffffffffffffffff gid=0 data=[{data}] canceled={canceled} uuid=x done=0")
    return "\n".join(lines) + "\n"


def cookies(lists: list[bytes]) -> list[int]:
    return [it.cookie for raw in lists for it in parse_hal(raw).items]


def test_journaled_items_the_mdt_no_longer_holds_are_dropped_and_lost_ones_recovered() -> None:
    journal = [build_hal(ActionList("lustre", 1, (item(1), item(2), item(3))))]
    text = active((item(2), 1), (item(3), 1), (item(4), 1), (item(5), 1))
    p = plan(journal, ar.parse(text), {"lustre"}, (0,))
    assert cookies(p.lists) == [2, 3, 4, 5], "1 ended at the MDT: not sent again; 4 and 5 were in a dead pipe"
    assert (p.journal_checked, p.journal_kept, p.journal_dropped, p.recovered, p.ends) == (True, 2, 1, 2, [])
    recovered = parse_hal(p.lists[1])
    assert (recovered.fsname, recovered.archive_id) == ("lustre", 1)


def test_without_the_active_requests_the_journal_is_sent_again_whole() -> None:
    journal = [build_hal(ActionList("lustre", 1, (item(1),)))]
    p = plan(journal, None, {"lustre"}, (0,))
    assert p.lists == journal and not p.journal_checked


def test_other_file_systems_and_archive_ids_are_another_copytools() -> None:
    text = active((item(1), 1)) + active((item(2), 2)) + active((item(3), 1), fsname="scratch")
    p = plan([], ar.parse(text), {"lustre"}, (1,))
    assert cookies(p.lists) == [1] and p.skipped == 2


def test_items_that_cannot_be_forwarded_as_asked_are_ended_at_the_mdt() -> None:
    canceled = plan([], ar.parse(active((item(1), 1), canceled=1)), {"lustre"}, (0,))
    cut = plan([], ar.parse(active((item(2, data=b"tag=12345"), 1), cut=True)), {"lustre"}, (0,))
    for p, cookie in ((canceled, 1), (cut, 2)):
        assert p.lists == [] and [(e.request.item.cookie, e.errval) for e in p.ends] == [(cookie, E.ECANCELED)]
    exact = plan([], ar.parse(active((item(3, data=b"abc"), 1))), {"lustre"}, (0,))
    assert [it.data for raw in exact.lists for it in parse_hal(raw).items] == [b"abc"]


def test_lines_without_a_file_system_for_a_bridge_of_several_are_refused() -> None:
    journal = [build_hal(ActionList("lustre", 1, (item(1),)))]
    p = plan(journal, ar.parse(active((item(2), 1)).split("\n", 1)[1]), {"lustre", "scratch"}, (0,))
    assert p.lists == journal and not p.journal_checked and "lctl -n" in p.reports[0]


def test_the_counters_summary_names_every_counter() -> None:
    core = BridgeCore(BridgeConfig(fsnames=frozenset({"lustre"})))
    assert core.summary() == "counters: nothing yet; backlog 0, forwarded and not ended 0"
    core.on_list(0.0, build_hal(ActionList("lustre", 1, (item(1), item(2)))))
    assert core.summary().startswith("counters: items 2, lists 1;")


# -- the lease keeper -------------------------------------------------------------


def test_a_keeper_is_active_once_it_holds_every_lease_and_renews_every_third() -> None:
    k = LeaseKeeper(("bridge:b", "bridge:a"), ttl=15)
    assert k.due(0.0) == [Ask("bridge:a"), Ask("bridge:b")] and k.due(0.0) == [], "one request in flight each"
    k.on_answer(0.1, "bridge:a", 0.0, True, "me", 15)
    assert not k.active
    k.on_answer(0.1, "bridge:b", 0.0, True, "me", 15)
    assert k.active and k.lost(0.1) is None
    assert k.due(4.9) == [] and k.next_time(1.0) == pytest.approx(5.0)
    assert k.due(5.0) == [Ask("bridge:a"), Ask("bridge:b")]


def test_an_active_keeper_counts_its_lease_from_before_it_asked_and_stops_before_it_ends() -> None:
    k = LeaseKeeper(("bridge:a",), ttl=15)
    k.due(0.0)
    k.on_answer(3.0, "bridge:a", 0.0, True, "me", 15)  # answered late: still counted from 0
    assert k.lost(12.9) is None
    assert "could not be renewed" in (k.lost(13.0) or ""), "2 s before the coordinator's 15"
    k.due(5.0)
    k.on_error(6.0, "bridge:a")  # renewals fail...
    assert k.lost(13.0) is not None, "...and nothing extends it"


def test_an_active_keeper_refused_its_lease_has_lost_it() -> None:
    k = LeaseKeeper(("bridge:a",), ttl=15)
    k.due(0.0)
    k.on_answer(0.0, "bridge:a", 0.0, True, "me", 15)
    k.due(5.0)
    assert k.on_answer(5.0, "bridge:a", 5.0, False, "other", 10) == []
    assert k.lost(5.0) == "the lease bridge:a is held by other"


def test_a_keeper_refused_one_lease_gives_the_others_back_and_waits_for_the_holder() -> None:
    k = LeaseKeeper(("bridge:a", "bridge:b"), ttl=15)
    k.due(0.0)
    assert k.on_answer(0.0, "bridge:a", 0.0, True, "me", 15) == []
    assert k.on_answer(0.0, "bridge:b", 0.0, False, "other", 2.0) == [GiveBack("bridge:a")]
    assert not k.active and k.lost(0.0) is None, "a standby has nothing to lose"
    assert k.due(1.0) == [] and k.next_time(1.0) == pytest.approx(2.05), "asks again when other's time is up"
    assert k.due(2.05) == [Ask("bridge:a"), Ask("bridge:b")]


@pytest.mark.parametrize("ttl", [0, 2.9, 3601])
def test_a_keeper_refuses_a_bad_ttl(ttl: float) -> None:
    with pytest.raises(ValueError):
        LeaseKeeper(("bridge:a",), ttl=ttl)


@pytest.mark.parametrize("args, says", [
    (["--lease-ttl", "1"], "the lease ttl must be 3-3600 s"),
    (["--active-requests-command", ""], "--active-requests-command: empty command"),
    (["--active-requests-command", "ssh 'mds1"], "--active-requests-command: No closing quotation"),
    (["--active-requests", "/x", "--active-requests-command", "cat /x"], "not allowed with argument"),
    (["--report-every", "0"], "--report-every must be > 0"),
])
def test_bad_bridge_options_exit_2_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   args: list[str], says: str) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--mount", str(tmp_path), "--fsname", "lustre", "--journal", str(tmp_path / "j"),
                  "--coordinators", "127.0.0.1:1", *args])
    assert exited.value.code == 2
    assert says in capsys.readouterr().err
