"""The nemesis's rules (tests/nemesis/checker.py) and the movers' record
(tests/nemesis/history.py), on hand-made records: no cluster, no process.

A checker that flags nothing passes every nemesis run, and one that flags
the ordinary passes none; so each rule gets a case it must flag and a near
miss it must let through (two runs of one action that touch end to start,
a temporary object beside a running archive, an acknowledgement written
after the snapshot's listing, a file released again after its restore).
Archive objects and files are real files under tmp_path, in the posix
mover's layout and a simfs tree.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest

from agentd.movers.posix import CHECKSUM_XATTR, object_path
from hsm.fid import Fid
from hsm.simfs import SimFS
from tests.nemesis.checker import RESUME_SLACK, Violation, check_cycle, history, notes, run_twice
from tests.nemesis.history import Event, Run, overlaps, read_agent_log

T0 = 1_700_000_000.0  # the run's start in these records
BOUND = 30.0  # recovery bound (s)
FID = "[0x200000400:0x1:0x0]"
FID2 = "[0x200000400:0x2:0x0]"


# ---------------------------------------------------------------------------
# records as the rig and the workload write them


def snap(cycle: int, actions: list[dict[str, Any]], *, t: float = 100.0, fault: dict[str, Any] | None = None,
         digests: dict[str, Any] | None = None, recovered: float | None = 2.0) -> dict[str, Any]:
    f = fault or {"kind": "split", "target": "r1", "start": T0 + t - 40, "heal": T0 + t - 30, "detail": "r1 apart"}
    d = digests if digests is not None else {r: [[10, "d0"], [20, "e0"]] for r in ("r1", "r2", "r3")}
    return {"cycle": cycle, "t": T0 + t, "fault": f, "actions": actions, "digests": d, "recovered_after": recovered,
            "unavailable": 1.0}


def row(aid: int, state: str = "SUCCEEDED", *, fid: str = FID, kind: str = "ARCHIVE", agent: str = "a1",
        attempt: int = 1, ended: float = 0.0) -> dict[str, Any]:
    return {"action_id": aid, "fid": fid, "kind": kind, "state": state, "agent": agent, "attempt": attempt,
            "errno": 0, "error": "", "ended": ended or (T0 + 50 if state in ("SUCCEEDED", "FAILED", "CANCELED") else 0)}


def ack(t: float, op: str, aid: int, *, fid: str = FID, outcome: str = "CREATED", target: int = 0,
        **extra: Any) -> dict[str, Any]:
    return {"t": T0 + t, "client": "c1", "op": op, "key": f"c1-{op}-{t}", "fid": fid, "path": "/fs/f0",
            "action_id": aid, "outcome": outcome, "target": target, **extra}


def check(s: dict[str, Any], acks: list[dict[str, Any]] | None = None, *, files: list[dict[str, Any]] | None = None,
          runs: list[Run] | None = None, archive: Path | None = None, seen: dict[int, str] | None = None,
          final: bool = False) -> list[Violation]:
    return check_cycle(s, acks or [], files or [], runs or [], archive or Path("/nonexistent"),
                       {} if seen is None else seen, BOUND, final=final)


def kinds(found: list[Violation]) -> list[tuple[str, str]]:
    return [(v.kind, v.subject) for v in found]


def run(agent: str, aid: int, attempt: int, start: float, end: float | None, outcome: str = "succeeded") -> Run:
    return Run(agent, aid, attempt, T0 + start, None if end is None else T0 + end,
               outcome if end is not None else "running", kind="ARCHIVE", fid=FID)


# ---------------------------------------------------------------------------
# lost


def test_acknowledged_action_missing_from_the_snapshot_is_lost() -> None:
    found = check(snap(1, [row(1001)]), [ack(10, "archive", 1001), ack(11, "archive", 2002, fid=FID2)])
    assert kinds(found) == [("lost", "action 2002")]
    assert "acknowledged to c1" in found[0].detail and "does not list it" in found[0].detail


def test_an_ack_written_after_the_heal_waits_for_the_next_cycle() -> None:
    """The listing may predate it: the same ack, later than the heal,
    is not judged against this snapshot, and the next one lists it."""
    s1 = snap(1, [row(1001)])
    late = ack(100 - 30 + 1, "archive", 2002, fid=FID2)  # one second after the heal
    assert check(s1, [late]) == []
    assert check(snap(2, [row(1001), row(2002, "WAITING")], t=200.0), [late]) == []


def test_at_the_final_check_an_acknowledged_action_must_have_ended() -> None:
    acks = [ack(10, "archive", 1001), ack(11, "restore", 1002, outcome="JOINED")]
    s = snap(9, [row(1001, "STARTED"), row(1002, "SUCCEEDED", kind="RESTORE")])
    assert check(s, acks) == []  # still running, mid-run: fine
    found = check(s, acks, final=True)
    assert kinds(found) == [("lost", "action 1001")]
    assert "still STARTED (agent a1, attempt 1) after the final settle" in found[0].detail


def test_rejected_and_given_up_requests_promise_nothing() -> None:
    acks = [ack(10, "archive", 0, outcome="REJECTED"),
            {"t": T0 + 12, "client": "c1", "op": "restore", "key": "k", "fid": FID, "gave_up": True}]
    assert check(snap(1, []), acks, final=True) == []


def test_an_action_seen_ended_then_gone_is_lost() -> None:
    seen: dict[int, str] = {}
    assert check(snap(1, [row(7001)]), seen=seen) == []
    found = check(snap(2, [], t=200.0), seen=seen)
    assert kinds(found) == [("lost", "action 7001")]
    assert "SUCCEEDED in an earlier snapshot" in found[0].detail


def test_cancel_answered_not_found_for_an_acknowledged_action_is_lost() -> None:
    acks = [ack(10, "archive", 1001), ack(12, "cancel", 0, outcome="NOT_FOUND", target=1001)]
    found = check(snap(1, [row(1001, "CANCELED")]), acks)
    assert kinds(found) == [("lost", "action 1001")]
    assert "answered NOT_FOUND" in found[0].detail
    # a cancel of an id nobody was given: NOT_FOUND is the right answer
    assert check(snap(1, []), [ack(12, "cancel", 0, outcome="NOT_FOUND", target=4242)]) == []


# ---------------------------------------------------------------------------
# two terminal states


def test_an_action_that_ended_one_way_then_another_has_two_terminal_states() -> None:
    seen: dict[int, str] = {}
    assert check(snap(1, [row(1001, "STARTED")]), seen=seen) == []
    assert check(snap(2, [row(1001, "SUCCEEDED")], t=200.0), seen=seen) == []
    assert check(snap(3, [row(1001, "SUCCEEDED")], t=300.0), seen=seen) == []
    assert seen == {1001: "SUCCEEDED"}
    found = check(snap(4, [row(1001, "FAILED")], t=400.0), seen=seen)
    assert kinds(found) == [("two_terminal_states", "action 1001")]
    assert "was SUCCEEDED in an earlier snapshot and is FAILED" in found[0].detail
    assert seen == {1001: "SUCCEEDED"}  # the first one seen stays


def test_an_ended_action_running_again_has_two_terminal_states() -> None:
    seen = {1001: "CANCELED"}
    found = check(snap(2, [row(1001, "WAITING")]), seen=seen)
    assert kinds(found) == [("two_terminal_states", "action 1001")]


def test_a_cancel_told_canceled_must_stay_canceled() -> None:
    acks = [ack(10, "archive", 1001), ack(11, "cancel", 0, outcome="CANCEL_DONE", target=1001, state="CANCELED")]
    found = check(snap(1, [row(1001, "SUCCEEDED")]), acks)
    assert kinds(found) == [("two_terminal_states", "action 1001")]
    assert "answered CANCEL_DONE" in found[0].detail
    # CANCEL_SENT promises no end: if the copy finished first, SUCCEEDED wins
    sent = [ack(10, "archive", 1001), ack(11, "cancel", 0, outcome="CANCEL_SENT", target=1001, state="CANCELING")]
    assert check(snap(1, [row(1001, "SUCCEEDED")]), sent) == []


# ---------------------------------------------------------------------------
# run twice


def test_two_runs_of_one_action_at_once_are_flagged() -> None:
    runs = [run("a1", 1001, 1, 10, 25, "errno 125 (lease)"), run("a2", 1001, 2, 22, 30)]
    found = check(snap(1, [row(1001, agent="a2", attempt=2)]), runs=runs)
    assert kinds(found) == [("run_twice", "action 1001")]
    assert "attempt 1 on a1" in found[0].detail and "attempt 2 on a2" in found[0].detail
    assert "ran together for 3.000 s" in found[0].detail


def test_runs_touching_end_to_start_are_not_an_overlap() -> None:
    runs = [run("a1", 1001, 1, 10, 22, "errno 125 (lease)"), run("a2", 1001, 2, 22, 30)]
    assert check(snap(1, [row(1001, agent="a2", attempt=2)]), runs=runs) == []


def test_one_attempt_on_two_agents_is_flagged_even_apart_in_time() -> None:
    runs = [run("a1", 1001, 1, 10, 12, "errno 5 (EIO)"), run("a2", 1001, 1, 20, 30)]
    found = check(snap(1, [row(1001)]), runs=runs)
    assert kinds(found) == [("run_twice", "action 1001")]
    assert "attempt 1 ran on a1" in found[0].detail
    # the same attempt twice on one agent (a restarted agent given it back) is no second agent
    again = [run("a1", 1001, 1, 10, 12, "errno 5 (EIO)"), run("a1", 1001, 1, 20, 30)]
    assert check(snap(1, [row(1001)]), runs=again) == []


def test_a_run_left_open_counts_until_the_snapshot() -> None:
    runs = [run("a1", 1001, 1, 10, None), run("a2", 1001, 2, 40, 50)]
    found = check(snap(1, [row(1001, agent="a2", attempt=2)]), runs=runs)
    assert kinds(found) == [("run_twice", "action 1001")]
    assert "still open" in found[0].detail


def test_runs_are_judged_once_when_their_action_has_ended() -> None:
    """Not while the action runs (its runs are not all closed yet), once
    when it is first seen ended, never again (a cycle's records stay)."""
    runs = [run("a1", 1001, 1, 10, 25, "errno 125 (lease)"), run("a2", 1001, 2, 22, 30)]
    seen: dict[int, str] = {}
    assert check(snap(1, [row(1001, "STARTED", agent="a2", attempt=2)]), runs=runs, seen=seen) == []
    assert kinds(check(snap(2, [row(1001, agent="a2", attempt=2)], t=200.0), runs=runs, seen=seen)) == [
        ("run_twice", "action 1001")]
    assert check(snap(3, [row(1001, agent="a2", attempt=2)], t=300.0), runs=runs, seen=seen) == []


def test_the_final_check_judges_actions_that_never_ended() -> None:
    runs = [run("a1", 1001, 1, 10, 25, "errno 125 (lease)"), run("a2", 1001, 2, 22, 30)]
    found = check(snap(9, [row(1001, "STARTED")]), [ack(5, "archive", 1001)], runs=runs, final=True)
    assert sorted(kinds(found)) == [("lost", "action 1001"), ("run_twice", "action 1001")]


PAUSE = {"kind": "pause_agent", "target": "a1", "start": T0 + 20, "heal": T0 + 34, "detail": "SIGSTOP a1"}


def test_a_frozen_agent_that_stops_at_sigcont_did_not_run_twice() -> None:
    """a1 frozen 20..34 s mid-copy; a2 takes the action at 32 s; a1, woken,
    finds its lease long gone and stops within the slack."""
    runs = [run("a1", 1001, 1, 10, 34 + RESUME_SLACK / 2, "errno 125 (agent a1 lost its lease)"),
            run("a2", 1001, 2, 32, 45)]
    assert check(snap(1, [row(1001, agent="a2", attempt=2)], fault=PAUSE), runs=runs) == []


def test_a_frozen_agent_that_goes_on_after_sigcont_ran_twice() -> None:
    s = snap(1, [row(1001, agent="a2", attempt=2)], fault=PAUSE)
    published = [run("a1", 1001, 1, 10, 35), run("a2", 1001, 2, 32, 45)]  # it succeeded: it went on copying
    assert kinds(check(s, runs=published)) == [("run_twice", "action 1001")]
    slow = [run("a1", 1001, 1, 10, 34 + RESUME_SLACK + 1, "errno 125 (lease)"), run("a2", 1001, 2, 32, 45)]
    assert kinds(check(s, runs=slow)) == [("run_twice", "action 1001")]
    # the pause of another agent excuses nothing
    other = [run("a3", 1001, 1, 10, 35, "errno 125 (lease)"), run("a2", 1001, 2, 32, 45)]
    assert kinds(run_twice(other, T0 + 100, [("a1", T0 + 20, T0 + 34)])) == [("run_twice", "action 1001")]


# ---------------------------------------------------------------------------
# archive objects


def put_object(archive: Path, fid: str, data: bytes, suffix: str = "") -> Path:
    obj = object_path(archive, Fid.parse(fid))
    obj.parent.mkdir(parents=True, exist_ok=True)
    path = obj.with_name(obj.name + suffix)
    path.write_bytes(data)
    return path


def file_rec(fid: str, data: bytes, path: str | Path) -> dict[str, Any]:
    """The workload's record of a file (the file at *path* is the caller's)."""
    return {"t": T0 + 1, "fid": fid, "path": str(path), "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def plain_file(tmp: Path, fid: str, data: bytes) -> dict[str, Any]:
    """A file holding *data* (no HSM state: never released) and its record."""
    path = tmp / "files" / fid.strip("[]").replace(":", "_")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return file_rec(fid, data, path)


def test_an_object_that_is_not_the_files_data_is_torn(tmp_path: Path) -> None:
    data = os.urandom(4096)
    put_object(tmp_path, FID, data[:1000])
    found = check(snap(1, [row(1001)]), files=[plain_file(tmp_path, FID, data)], archive=tmp_path)
    assert kinds(found) == [("torn_object", f"fid {FID}")]
    assert "holds 1000 bytes" in found[0].detail and "4096 bytes" in found[0].detail


def test_a_tmp_beside_a_running_archive_is_not_torn_and_only_noted_once_idle(tmp_path: Path) -> None:
    data = os.urandom(4096)
    put_object(tmp_path, FID, data)
    put_object(tmp_path, FID, data[:100], "_tmp.2")
    files = [plain_file(tmp_path, FID, data)]
    running = snap(1, [row(1001), row(1002, "STARTED", attempt=2)])
    assert check(running, files=files, archive=tmp_path) == []
    assert notes(running, files, [], tmp_path) == []
    idle = snap(2, [row(1001), row(1002, "FAILED", attempt=2)], t=200.0)
    assert check(idle, files=files, archive=tmp_path) == []
    assert notes(idle, files, [], tmp_path) == [
        f"fid {FID}: temporary objects left beside its archive object, no archive of it running: "
        f"{object_path(tmp_path, Fid.parse(FID)).name}_tmp.2"]
    # an open run of an archive is an archive running, whatever the listing says
    assert notes(idle, files, [run("a1", 1003, 1, 150, None)], tmp_path) == []


def test_an_object_whose_checksum_is_not_its_data_is_torn(tmp_path: Path) -> None:
    data = os.urandom(4096)
    obj = put_object(tmp_path, FID, data)
    try:
        os.setxattr(obj, CHECKSUM_XATTR, f"sha256:{hashlib.sha256(data).hexdigest()}".encode())
    except OSError as e:
        pytest.skip(f"no user xattrs here: {e}")
    files = [plain_file(tmp_path, FID, data)]
    assert check(snap(1, [row(1001)]), files=files, archive=tmp_path) == []
    os.setxattr(obj, CHECKSUM_XATTR, f"sha256:{hashlib.sha256(b'other').hexdigest()}".encode())
    found = check(snap(1, [row(1001)]), files=files, archive=tmp_path)
    assert kinds(found) == [("torn_object", f"fid {FID}")]
    assert "a restore would refuse it" in found[0].detail


def test_a_succeeded_archive_without_its_object_is_missing(tmp_path: Path) -> None:
    files = [plain_file(tmp_path, FID, b"x" * 10)]
    found = check(snap(1, [row(1001)]), files=files, archive=tmp_path)
    assert kinds(found) == [("missing_object", f"fid {FID}")]
    # removed afterwards: no object is what the remove promised
    removed = snap(1, [row(1001), row(2001, kind="REMOVE")])
    assert check(removed, files=files, archive=tmp_path) == []
    # never archived: nothing to miss
    assert check(snap(1, [row(1001, "FAILED")]), files=files, archive=tmp_path) == []


# ---------------------------------------------------------------------------
# file contents


@pytest.fixture
def fs(tmp_path: Path) -> SimFS:
    return SimFS.create(tmp_path / "fs", "fs1")


def released_file(fs: SimFS, name: str, data: bytes) -> tuple[Path, str]:
    path = fs.root / name
    path.write_bytes(data)
    fid = fs.fid_of(path)
    begin = fs.archive_begin(fid, 1)
    fs.archive_end(fid, begin.data_version, 0)
    fs.release(path)
    return path, str(fid)


def test_a_file_holding_other_data_has_wrong_content(fs: SimFS) -> None:
    data = os.urandom(5000)
    path = fs.root / "f0"
    path.write_bytes(data)
    fid = str(fs.fid_of(path))
    files = [file_rec(fid, data, str(path))]
    assert check(snap(1, []), files=files) == []
    path.write_bytes(b"\0" * 5000)  # what a restore writing the wrong bytes would leave
    found = check(snap(1, []), files=files)
    assert kinds(found) == [("wrong_content", f"fid {fid}")]
    assert "holds 5000 bytes" in found[0].detail


def test_a_released_file_is_not_compared(fs: SimFS) -> None:
    data = os.urandom(5000)
    path, fid = released_file(fs, "f0", data)
    assert path.read_bytes() != data  # a released file has no data
    assert check(snap(1, []), files=[file_rec(fid, data, str(path))]) == []


def test_a_file_still_released_after_its_restore_succeeded_has_wrong_content(fs: SimFS) -> None:
    data = os.urandom(5000)
    path, fid = released_file(fs, "f0", data)
    now = time.time()
    files = [file_rec(fid, data, str(path))]
    acks = [ack(10, "restore", 3001, fid=fid)]
    # the restore ended after the release and nothing released the file since
    found = check(snap(1, [row(3001, kind="RESTORE", fid=fid, ended=now + 5)]), acks, files=files)
    assert kinds(found) == [("wrong_content", f"fid {fid}")]
    assert "still released" in found[0].detail
    # the file was released again after the restore ended (its ctime is later)
    assert check(snap(1, [row(3001, kind="RESTORE", fid=fid, ended=now - 5)]), acks, files=files) == []
    # a later restore, given up: the file was released for it
    gave_up = {"t": T0 + 20, "client": "c1", "op": "restore", "key": "k2", "fid": fid, "gave_up": True}
    assert check(snap(1, [row(3001, kind="RESTORE", fid=fid, ended=now + 5)]), [*acks, gave_up], files=files) == []


# ---------------------------------------------------------------------------
# replicas and recovery


def test_same_applied_index_with_different_digests_is_divergence() -> None:
    d = {"r1": [[10, "aaaa"], [20, "bbbb"]], "r2": [[10, "aaaa"], [20, "cccc"]], "r3": None}
    found = check(snap(1, [], digests=d))
    assert kinds(found) == [("divergence", "shard 1")]
    assert "r1 and r2 applied shard 1 up to index 20" in found[0].detail


def test_replicas_at_different_indexes_are_not_compared_until_the_end() -> None:
    d = {"r1": [[10, "aaaa"]], "r2": [[11, "zzzz"]], "r3": [[11, "zzzz"]]}
    assert check(snap(1, [], digests=d)) == []
    found = check(snap(9, [], digests={**d, "r3": None}), final=True)
    assert kinds(found) == [("not_converged", "shard 0"), ("not_converged", "r3")]
    assert "r1 10, r2 11" in found[0].detail


def test_recovery_beyond_the_bound_or_never_is_flagged() -> None:
    assert check(snap(1, [], recovered=BOUND - 1)) == []
    late = check(snap(1, [], recovered=BOUND + 1))
    assert kinds(late) == [("not_recovered", "cluster")]
    assert "31.0 s after the heal of split on r1" in late[0].detail
    assert kinds(check(snap(1, [], recovered=None))) == [("not_recovered", "cluster")]


# ---------------------------------------------------------------------------
# the movers' record


def log_line(t: float, msg: str, level: str = "INFO", logger: str = "agentd.core") -> str:
    ms = int(round((t % 1) * 1000))
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(int(t)))},{ms:03d} {level} {logger}: {msg}"


def write_log(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_agent_log_reads_runs_and_the_lines_about_them(tmp_path: Path) -> None:
    log = write_log(tmp_path / "a1.log", [
        log_line(T0 + 1, f"action 1001/1 ARCHIVE {FID} started: archive 1, whole file, from r1"),
        log_line(T0 + 2, f"action 2002/1 ARCHIVE {FID2} started: archive 1, whole file, from r1"),
        log_line(T0 + 3.5, f"action 1001/1 ARCHIVE {FID} succeeded: 4096 bytes in 2.50 s"),
        log_line(T0 + 4, f"action 2002/1 ARCHIVE {FID2} ended with errno 5 (EIO), retry: 0 bytes in 2.00 s"),
        log_line(T0 + 5, "stream to r2 lost", "WARNING", "agentd.daemon"),
        "a traceback line without a timestamp",
    ])
    runs, events = read_agent_log("a1", log, {1001})
    assert [(r.action_id, r.attempt, r.start - T0, r.end, r.outcome, r.kind, r.fid) for r in runs] == [
        (1001, 1, 1.0, T0 + 3.5, "succeeded", "ARCHIVE", FID)]
    assert [e.text for e in events] == [f"action 1001/1 ARCHIVE {FID} started: archive 1, whole file, from r1",
                                        f"action 1001/1 ARCHIVE {FID} succeeded: 4096 bytes in 2.50 s",
                                        "stream to r2 lost"]
    every, _ = read_agent_log("a1", log)
    assert [(r.action_id, r.outcome) for r in every] == [(1001, "succeeded"), (2002, "errno 5 (EIO)")]
    assert read_agent_log("a1", tmp_path / "none.log", None) == ([], [])


@pytest.mark.parametrize("renumbered", [
    f"action 1001/2 ARCHIVE {FID}: attempt 1 of it is still running here; it continues as attempt 2",
    "action 1001/2: attempt 1 of it is still running here; it continues as attempt 2",  # before the kind and FID
])
def test_an_attempt_continued_under_a_new_number_is_two_touching_runs(tmp_path: Path, renumbered: str) -> None:
    log = write_log(tmp_path / "a1.log", [
        log_line(T0 + 1, f"action 1001/1 ARCHIVE {FID} started: archive 1, whole file, from r1"),
        log_line(T0 + 5, renumbered),
        log_line(T0 + 9, f"action 1001/2 ARCHIVE {FID} succeeded: 4096 bytes in 8.00 s"),
    ])
    runs, _ = read_agent_log("a1", log, None)
    assert [(r.attempt, r.start - T0, (r.end or 0) - T0, r.outcome) for r in runs] == [
        (1, 1.0, 5.0, "continued as attempt 2"), (2, 5.0, 9.0, "succeeded")]
    assert overlaps(runs, T0 + 100) == []


def test_a_run_open_when_the_agent_started_again_ends_there_at_the_latest(tmp_path: Path) -> None:
    started = log_line(T0 + 1, f"action 1001/1 ARCHIVE {FID} started: archive 1, whole file, from r1")
    restart = log_line(T0 + 20, "agentd 0.1: agent a1 on host, coordinators x, archive ids all, slots archive=1 "
                                "restore=1 remove=1, mover posix, file system fs1, mutual TLS", logger="agentd.daemon")
    other = Run("a2", 1001, 2, T0 + 25, T0 + 30, "succeeded")
    runs, _ = read_agent_log("a1", write_log(tmp_path / "a1.log", [started, restart]), None)
    assert (runs[0].end, runs[0].cut) == (None, T0 + 20)
    assert overlaps([*runs, other], T0 + 100) == []
    # without the restart line the run is open, and it overlaps
    runs, _ = read_agent_log("a1", write_log(tmp_path / "b.log", [started]), None)
    assert overlaps([*runs, other], T0 + 100) == ["action 1001: attempt 1 on a1 and attempt 2 on a2 ran together "
                                                  "for 5.0 s"]


# ---------------------------------------------------------------------------
# the history a person reads


def test_history_of_a_run_twice_is_a_sorted_timeline_in_seconds_from_the_start() -> None:
    runs = [run("a1", 1001, 1, 10, 25, "errno 125 (agent a1 lost its lease)"), run("a2", 1001, 2, 22, 30)]
    acks = [ack(5, "archive", 1001), ack(6, "archive", 2002, fid=FID2)]
    files = [file_rec(FID, b"data", "/fs/f0"), file_rec(FID2, b"other", "/fs/f1")]
    snaps = [snap(1, [row(1001, "STARTED"), row(2002, fid=FID2)], t=21.0,
                  fault={"kind": "split", "target": "r1+a1", "start": T0 + 12, "heal": T0 + 20, "detail": "x"}),
             snap(2, [row(1001, agent="a2", attempt=2), row(2002, fid=FID2)], t=40.0,
                  fault={"kind": "kill9_replica", "target": "r2", "start": T0 + 500, "heal": T0 + 510,
                         "detail": "far later"})]
    events = [Event(T0 + 23, "a1", "action 1001/1: no leader of shard 1 renewed this agent's lease"),
              Event(T0 + 24, "a2", "stream to r3 lost"),
              Event(T0 + 10, "a1", f"action 1001/1 ARCHIVE {FID} started: archive 1, whole file, from r1")]
    found = check(snaps[1], acks, runs=runs, seen={})
    assert kinds(found) == [("run_twice", "action 1001")]
    v = found[0]
    text = history(v, acks, files, runs, snaps, events)
    lines = text.splitlines()
    assert lines[0] == f"run_twice: action 1001: {v.detail}"
    body = [ln.split(None, 2) for ln in lines[2:]]
    times = [float(b[0]) for b in body]
    assert times == sorted(times)
    said = [f"{b[0]} {b[1]} {b[2]}" for b in body]
    assert said == [
        "+0.000 client file f0 [0x200000400:0x1:0x0] written: 4 bytes, sha256 "
        + hashlib.sha256(b"data").hexdigest()[:16],
        f"+4.000 c1 archive of {FID} acknowledged: CREATED action 1001 (key c1-archive-5)",
        f"+9.000 a1 action 1001 attempt 1 ARCHIVE {FID} started",
        "+11.000 nemesis cycle 1: fault split on r1+a1: x",
        "+19.000 nemesis cycle 1: healed split on r1+a1 (recovered after 2.0 s)",
        "+20.000 cluster cycle 1 snapshot: action 1001 ARCHIVE STARTED (agent a1, attempt 1)",
        f"+21.000 a2 action 1001 attempt 2 ARCHIVE {FID} started",
        "+22.000 a1 action 1001/1: no leader of shard 1 renewed this agent's lease",
        "+24.000 a1 action 1001 attempt 1 ended after 15.00 s: errno 125 (agent a1 lost its lease)",
        "+29.000 a2 action 1001 attempt 2 succeeded after 8.00 s",
        "+39.000 cluster cycle 2 snapshot: action 1001 ARCHIVE SUCCEEDED (agent a2, attempt 2), ended at +49.000",
    ]


def test_history_of_a_divergence_shows_the_shards_digests_where_replicas_disagreed() -> None:
    good = {r: [[10, "aaaa"]] for r in ("r1", "r2", "r3")}
    bad = {"r1": [[12, "bbbb"]], "r2": [[12, "cccc"]], "r3": [[12, "bbbb"]]}
    snaps = [snap(1, [], t=50.0, digests=good), snap(2, [], t=100.0, digests=bad)]
    v = check(snaps[1])[0]
    assert (v.kind, v.subject) == ("divergence", "shard 0")
    text = history(v, [], [], [], snaps, [])
    assert "cycle 2 shard 0: r1 at 12 bbbb, r2 at 12 cccc, r3 at 12 bbbb" in text
    assert "cycle 1 shard 0" not in text
    assert "nemesis  cycle 2: fault split on r1" in text


def test_snapshots_are_written_as_changes_and_read_back_whole(tmp_path: Path) -> None:
    from tests.nemesis.runner import SnapshotFiles
    a, b, c = row(1001, "STARTED"), row(2002, "WAITING"), row(3003, "SUCCEEDED")
    listings = [[a, b], [{**a, "state": "SUCCEEDED"}, b, c], [c], [c]]
    files = SnapshotFiles(tmp_path)
    for n, actions in enumerate(listings, 1):
        files.write(snap(n, actions, t=float(n)))
    assert [s["actions"] for s in SnapshotFiles.read(tmp_path)] == listings
    sizes = [len((tmp_path / f"{n}.json").read_text()) for n in (1, 2, 3, 4)]
    assert sizes[3] < sizes[0], "an unchanged listing is not written again"


def test_a_violation_that_lasts_is_listed_once_with_the_cycles_that_found_it_again(tmp_path: Path) -> None:
    from tests.nemesis import report as reportmod
    from tests.nemesis.runner import CycleResult, Nemesis, Options
    printed: list[str] = []
    nem = Nemesis(Options(cycles=3, seed=1, run_dir=tmp_path), out=printed.append)
    lost = Violation("lost", "action 1001", "acknowledged, never listed")
    torn = Violation("torn_object", "fid [0x200000400:0x1:0x0]", "size 10, expected 20")
    for n, found in ((1, [lost]), (2, [lost, torn]), (3, [lost])):
        nem._record(CycleResult(n, {"kind": "kill9_agent", "target": "a1", "start": 1.0, "heal": 2.0}, 0.5, 0.1,
                                None, 1.0, 0, 10, True, found, 5.0), 3)
    assert [(n, v.kind) for n, v in nem.violations] == [(1, "lost"), (2, "torn_object")]
    assert sum("acknowledged, never listed" in line for line in printed) == 1
    assert sum("found in an earlier cycle already" in line for line in printed) == 2
    rep = reportmod.build(seed=1, cycles=3, run_dir=tmp_path, started=0.0, setup_seconds=0.0, results=nem.results,
                          violations=nem.violations, skipped={}, recovery_bound=20.0, acks=[], notes={},
                          first_history=None, repeats=nem.repeats)
    text = reportmod.markdown(rep)
    assert "- cycle 1: **lost** action 1001: acknowledged, never listed (found again in 2 later cycles)" in text
    assert "- cycle 2: **torn_object** fid [0x200000400:0x1:0x0]: size 10, expected 20\n" in text + "\n"
    assert "2 violation(s)" in text
