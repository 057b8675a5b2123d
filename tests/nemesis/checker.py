"""The nemesis's rules (issue 14), as pure functions of the run's records:
no process, no network, only the records in the run directory and the
files they name (the simfs tree, the archive tree).

The records are independent witnesses, which is the point: the clients'
acknowledgements (``acks.jsonl``), the files as written (``files.jsonl``),
the movers' own runs (the agents' logs, :mod:`tests.nemesis.history`), the
cluster's view after each cycle (``snapshots/<cycle>.json``) and the data
itself. A defect shows as two of them disagreeing; each rule names the
disagreement a storage admin would notice:

``lost``
    an acknowledged action the cluster no longer lists (or, after the
    final settle, one that never ended); an action seen ended in an
    earlier snapshot and gone since; a cancel answered NOT_FOUND for an
    action the cluster had acknowledged.
``two_terminal_states``
    an action that ended one way and later shows another state; a cancel
    told the action had ended one way while the cluster says another.
``run_twice``
    two runs of one action at once (any agents, any attempts), or one
    attempt run on two agents. While an agent is frozen (SIGSTOP) its run
    is not counted: it cannot stop itself before SIGCONT. After SIGCONT it
    gets :data:`RESUME_SLACK` seconds to notice that its lease ran out and
    stop (without success): a frozen process cannot do better, and that
    it then published nothing is what ``torn_object``/``wrong_content``
    check. A run that *starts* after SIGCONT counts in full (an assignment
    that waited in a frozen agent's socket is stale; starting it is the
    defect). The pause is the snapshot's own fault (``pause_agent``).
``torn_object``
    an archive object whose data is not the file's data, or whose
    checksum xattr does not match its data. The object's name only ever
    gets a complete object (temp + rename), so this holds while archives
    run too. A leftover ``<obj>_tmp*`` is not a violation (:func:`notes`).
``missing_object``
    the newest ARCHIVE of a file SUCCEEDED, no REMOVE was asked after it,
    and its archive object is not there: a restore would fail.
``wrong_content``
    a file that is not released but does not hold the data it was written
    with (files are never written again); or a released file whose last
    restore SUCCEEDED although nothing released it since (its ctime is
    not after the restore's end).
``divergence``
    two replicas at the same applied index of a shard with different
    digests. ``not_converged``, after the final settle only: replicas at
    different applied indexes, or a replica that did not answer.
``not_recovered``
    the cluster did not take writes on every shard and answer on every
    replica within the bound after the heal.
``not_settled`` (found by the runner, which waits for it)
    actions still WAITING, STARTED or CANCELING when the settle bound
    (45 s) after the heal passed, the workload paused: work stuck, as the
    37 actions left CANCELING for 90 s after a full disk was freed.

Checks that depend on when something happened are made once: an action's
runs are judged in the cycle it is first seen ended (its runs are closed
by then: the rig's settle waits for that) or at the final check.
Conditions that persist (an object still torn) are found again in later
cycles, with the same kind, subject and detail; the report lists each
(kind, subject) once, with the number of later cycles that found it again.

:func:`history` renders what the records say about a violation's subject
as a timeline, in seconds from the run's first record.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from agentd.movers.posix import CHECKSUM_XATTR, object_path
from hsm.fid import Fid, FidError
from hsm.hsmflags import HS
from hsm.simfs import XATTR_HSM, HsmAttrs
from tests.nemesis.history import Event, Run, is_run_line

Record = Mapping[str, Any]

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELED")
#: seconds an agent gets after SIGCONT to stop a run whose lease ran out
#: while it was frozen (its lease watch runs at least every 0.5 s, the
#: mover stops at its next chunk)
RESUME_SLACK = 2.0
#: how far before a subject's first record a fault is still shown in its
#: history (an agent's grace, 8 s, plus 3 s of silence, and some)
FAULT_LEAD = 15.0
#: agent warnings shown at most in a history of something that is not an
#: action or a file (a partition makes agents warn a lot)
MAX_EVENT_LINES = 40


@dataclass(frozen=True)
class Violation:
    kind: str  # "lost", "two_terminal_states", "run_twice", "torn_object", "divergence", ...
    subject: str  # "action 123", "fid [0x..]", "shard 2", "cluster", a replica or agent
    detail: str  # one line


# ---------------------------------------------------------------------------
# small helpers


def clock(t: float) -> str:
    """A unix time as the local time of day, to the millisecond."""
    return datetime.fromtimestamp(t).strftime("%H:%M:%S.%f")[:-3]


def _fid_key(text: object) -> str:
    """A FID as Lustre prints it (so that ``0x1:0x2:0x0`` and
    ``[0x1:0x2:0x0]`` are one key); the text as given if it is no FID."""
    try:
        return str(Fid.parse(str(text)))
    except FidError:
        return str(text)


def _aid(rec: Record, key: str = "action_id") -> int:
    try:
        return int(rec.get(key) or 0)
    except (TypeError, ValueError):
        return 0


def _t(rec: Record) -> float:
    try:
        return float(rec.get("t") or 0.0)
    except (TypeError, ValueError):
        return 0.0


def _acked_as(a: Record) -> str:
    return (f"{a.get('op', '?')} of {a.get('fid', '?')} acknowledged to {a.get('client', '?')} at {clock(_t(a))} "
            f"as {a.get('outcome', '?')} (key {a.get('key', '?')})")


def _held(row: Record) -> str:
    parts = []
    if row.get("agent"):
        parts.append(f"agent {row['agent']}")
    if row.get("attempt"):
        parts.append(f"attempt {row['attempt']}")
    if row.get("errno"):
        parts.append(f"errno {row['errno']}" + (f" {row['error']!r}" if row.get("error") else ""))
    return f" ({', '.join(parts)})" if parts else ""


def _cycle(snapshot: Record) -> str:
    return f"cycle {snapshot.get('cycle', '?')}"


def _sha256(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _rows(snapshot: Record) -> dict[int, Record]:
    return {_aid(r): r for r in snapshot.get("actions") or []}


def _pauses(snapshot: Record) -> list[tuple[str, float, float]]:
    """(agent, SIGSTOP, SIGCONT) of the snapshot's fault, if it froze an agent."""
    f = snapshot.get("fault") or {}
    if f.get("kind") != "pause_agent" or f.get("start") is None or f.get("heal") is None:
        return []
    return [(str(f.get("target", "")), float(f["start"]), float(f["heal"]))]


# ---------------------------------------------------------------------------
# the rules


def check_cycle(snapshot: dict[str, Any], acks: Sequence[Record], files: Sequence[Record], runs: Sequence[Run],
                archive_root: Path, seen_terminal: dict[int, str], recovery_bound: float,
                final: bool = False) -> list[Violation]:
    """Every rule over one cycle's snapshot and everything recorded so far.
    *seen_terminal* (action id -> first terminal state seen) is kept by the
    caller across cycles and updated here. Acknowledgements after the
    fault's heal are left to the next cycle (the snapshot's listing may
    predate them), except at the *final* check, made once the workload
    stopped."""
    rows = _rows(snapshot)
    fault = snapshot.get("fault") or {}
    cutoff = float(fault.get("heal") or snapshot.get("t") or 0.0)
    now = float(snapshot.get("t") or 0.0) or max((r.end or r.start for r in runs), default=0.0)
    judged = set(seen_terminal)  # their runs were judged when they were first seen ended
    considered = [a for a in acks if final or _t(a) <= cutoff]
    out: list[Violation] = []
    out += lost(snapshot, rows, considered, seen_terminal, final)
    out += terminal_states(snapshot, rows, considered, seen_terminal)
    due = {i for i, r in rows.items() if r.get("state") in TERMINAL} - judged
    if final:
        due |= ({r.action_id for r in runs} | set(rows)) - judged
    out += run_twice([r for r in runs if r.action_id in due], now, _pauses(snapshot))
    out += objects(files, rows, archive_root)
    out += contents(files, rows, acks)
    out += digests(snapshot, final)
    out += recovery(snapshot, recovery_bound)
    return out


def lost(snapshot: Record, rows: Mapping[int, Record], acks: Iterable[Record], seen_terminal: Mapping[int, str],
         final: bool) -> list[Violation]:
    out: list[Violation] = []
    flagged: set[int] = set()
    acked: dict[int, Record] = {}
    for a in sorted(acks, key=_t):
        aid = _aid(a)
        if aid <= 0 or a.get("gave_up"):
            continue
        acked.setdefault(aid, a)
        if aid in flagged:
            continue
        row = rows.get(aid)
        if row is None:
            detail = f"{_acked_as(a)}, but the {_cycle(snapshot)} snapshot does not list it"
        elif final and row.get("state") not in TERMINAL:
            detail = f"{_acked_as(a)}, but it is still {row.get('state')}{_held(row)} after the final settle"
        else:
            continue
        flagged.add(aid)
        out.append(Violation("lost", f"action {aid}", detail))
    for a in sorted(acks, key=_t):
        target = _aid(a, "target")
        if a.get("op") == "cancel" and a.get("outcome") == "NOT_FOUND" and target in acked and target not in flagged:
            flagged.add(target)
            out.append(Violation("lost", f"action {target}", (
                f"a cancel by {a.get('client', '?')} at {clock(_t(a))} was answered NOT_FOUND, but the action was "
                f"{_acked_as(acked[target])}")))
    for aid, state in sorted(seen_terminal.items()):
        if aid not in rows and aid not in flagged:
            out.append(Violation("lost", f"action {aid}", (
                f"it was {state} in an earlier snapshot; the {_cycle(snapshot)} snapshot does not list it")))
    return out


def terminal_states(snapshot: Record, rows: Mapping[int, Record], acks: Iterable[Record],
                    seen_terminal: dict[int, str]) -> list[Violation]:
    out: list[Violation] = []
    flagged: set[int] = set()
    for aid, row in sorted(rows.items()):
        state = str(row.get("state", "?"))
        first = seen_terminal.get(aid)
        if first is None:
            if state in TERMINAL:
                seen_terminal[aid] = state
        elif state != first:
            flagged.add(aid)
            out.append(Violation("two_terminal_states", f"action {aid}", (
                f"{row.get('kind', '?')} of {row.get('fid', '?')} was {first} in an earlier snapshot and is "
                f"{state}{_held(row)} in the {_cycle(snapshot)} snapshot")))
    for a in sorted(acks, key=_t):
        target = _aid(a, "target")
        told = str(a.get("state") or ("CANCELED" if a.get("outcome") == "CANCEL_DONE" else ""))
        if a.get("op") != "cancel" or target in flagged or told not in TERMINAL:
            continue
        now = rows.get(target)
        if now is not None and now.get("state") != told:
            flagged.add(target)
            out.append(Violation("two_terminal_states", f"action {target}", (
                f"a cancel by {a.get('client', '?')} at {clock(_t(a))} was answered {a.get('outcome')}: the action "
                f"was {told}; the {_cycle(snapshot)} snapshot says {now.get('state')}{_held(now)}")))
    return out


def _live(run: Run, now: float, pauses: Sequence[tuple[str, float, float]]) -> list[tuple[float, float]]:
    """The stretches of time in which *run* may have been copying."""
    spans = [(run.start, run.until(now))]
    for agent, stop, cont in pauses:
        if agent != run.agent:
            continue
        upto = cont
        if (run.end is not None and run.outcome != "succeeded" and run.start <= stop
                and cont <= run.end <= cont + RESUME_SLACK):
            upto = run.end  # it stopped as soon as it could
        spans = [p for s, e in spans for p in ((s, min(e, stop)), (max(s, upto), e)) if p[1] > p[0]]
    return spans


def _together(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> tuple[float, float]:
    """Seconds two runs' stretches overlap, and when the overlap began."""
    both, first = 0.0, 0.0
    for s1, e1 in a:
        for s2, e2 in b:
            d = min(e1, e2) - max(s1, s2)
            if d > 0:
                first = max(s1, s2) if both == 0 else min(first, max(s1, s2))
                both += d
    return both, first


def _run_text(r: Run) -> str:
    end = "still open" if r.end is None else r.outcome
    return f"attempt {r.attempt} on {r.agent} (from {clock(r.start)}, {end})"


def run_twice(runs: Iterable[Run], now: float,
              pauses: Sequence[tuple[str, float, float]] = ()) -> list[Violation]:
    """One violation per action with two runs at once, or one attempt on
    two agents: the first such pair, and how many more."""
    by_action: dict[int, list[Run]] = {}
    for r in runs:
        by_action.setdefault(r.action_id, []).append(r)
    out: list[Violation] = []
    for aid, rs in sorted(by_action.items()):
        rs.sort(key=lambda r: (r.start, r.agent))
        live = [_live(r, now, pauses) for r in rs]
        bad: list[str] = []
        for i, r1 in enumerate(rs):
            for j in range(i + 1, len(rs)):
                r2 = rs[j]
                both, since = _together(live[i], live[j])
                if both > 0:
                    bad.append(f"{_run_text(r1)} and {_run_text(r2)} ran together for {both:.3f} s "
                               f"from {clock(since)}")
                elif r1.attempt == r2.attempt and r1.agent != r2.agent:
                    bad.append(f"attempt {r1.attempt} ran on {r1.agent} (from {clock(r1.start)}) and on {r2.agent} "
                               f"(from {clock(r2.start)})")
        if bad:
            more = f" (and {len(bad) - 1} more pairs)" if len(bad) > 1 else ""
            out.append(Violation("run_twice", f"action {aid}", bad[0] + more))
    return out


def _by_fid(files: Iterable[Record]) -> dict[str, Record]:
    return {_fid_key(f.get("fid")): f for f in files if f.get("fid")}


def objects(files: Iterable[Record], rows: Mapping[int, Record], archive_root: Path) -> list[Violation]:
    """torn_object and missing_object, for every file the workload wrote."""
    by_fid: dict[str, list[Record]] = {}
    for row in rows.values():
        by_fid.setdefault(_fid_key(row.get("fid")), []).append(row)
    out: list[Violation] = []
    for key, f in _by_fid(files).items():
        try:
            obj = object_path(archive_root, Fid.parse(key))
        except FidError:
            continue
        subject, want = f"fid {key}", str(f.get("sha256", ""))
        name = obj.relative_to(archive_root)
        try:
            digest, size = _sha256(obj)
        except FileNotFoundError:
            acts = by_fid.get(key, [])
            done = [r for r in acts if r.get("kind") == "ARCHIVE" and r.get("state") == "SUCCEEDED"]
            if done:
                last = max(done, key=_aid)
                if not any(r.get("kind") == "REMOVE" and _aid(r) > _aid(last) for r in acts):
                    out.append(Violation("missing_object", subject, (
                        f"archive action {_aid(last)} SUCCEEDED{_held(last)}, no remove was asked after it, "
                        f"and there is no archive object {name}")))
            continue
        if digest != want:
            out.append(Violation("torn_object", subject, (
                f"archive object {name} holds {size} bytes with sha256 {digest[:16]}, the file was written with "
                f"{f.get('size', '?')} bytes, sha256 {want[:16]}")))
            continue
        try:
            mark = os.getxattr(obj, CHECKSUM_XATTR).decode(errors="replace")
        except OSError:
            continue  # no checksum (or no xattrs here): nothing more to compare
        algo, _, value = mark.partition(":")
        try:
            actual = digest if algo == "sha256" else hashlib.new(algo, obj.read_bytes()).hexdigest()
        except ValueError:
            actual = ""
        if value != actual:
            out.append(Violation("torn_object", subject, (
                f"archive object {name} holds the file's data, but its {CHECKSUM_XATTR} is {mark[:40]!r} "
                f"(a restore would refuse it)")))
    return out


def _hsm_flags(fd: int) -> int:
    try:
        raw = os.getxattr(fd, XATTR_HSM)
    except OSError:
        return 0
    try:
        return HsmAttrs.unpack(raw).flags
    except ValueError:
        return 0


def contents(files: Iterable[Record], rows: Mapping[int, Record], acks: Iterable[Record]) -> list[Violation]:
    """wrong_content, for every file the workload wrote."""
    last_restore: dict[str, Record] = {}
    for a in sorted(acks, key=_t):  # stable: lines of one instant keep their order
        if a.get("op") == "restore":
            last_restore[_fid_key(a.get("fid"))] = a
    out: list[Violation] = []
    for key, f in _by_fid(files).items():
        if not f.get("path"):
            continue
        path, want = Path(str(f["path"])), str(f.get("sha256", ""))
        subject = f"fid {key}"
        r = last_restore.get(key)
        row = rows.get(_aid(r)) if r is not None and not r.get("gave_up") else None
        restored = row is not None and row.get("state") == "SUCCEEDED"
        after = f" (its last restore, action {_aid(r)}, SUCCEEDED)" if restored and r is not None else ""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            out.append(Violation("wrong_content", subject, f"{path} is gone (the workload never deletes a file)"))
            continue
        try:
            if not _hsm_flags(fd) & HS.RELEASED:
                h = hashlib.sha256()
                size = 0
                while chunk := os.read(fd, 1 << 20):
                    h.update(chunk)
                    size += len(chunk)
                if h.hexdigest() != want and not _hsm_flags(fd) & HS.RELEASED:  # not released meanwhile
                    out.append(Violation("wrong_content", subject, (
                        f"{path.name} holds {size} bytes with sha256 {h.hexdigest()[:16]}, not the "
                        f"{f.get('size', '?')} bytes it was written with (sha256 {want[:16]}){after}")))
            elif restored and row is not None and os.fstat(fd).st_ctime <= float(row.get("ended") or 0.0):
                out.append(Violation("wrong_content", subject, (
                    f"{path.name} is still released, but its restore (action {_aid(row)}) SUCCEEDED at "
                    f"{clock(float(row.get('ended') or 0.0))}{_held(row)} and nothing released it since")))
        finally:
            os.close(fd)
    return out


def digests(snapshot: Record, final: bool) -> list[Violation]:
    """divergence (same applied index, different digests) and, at the
    final check, not_converged."""
    views: Mapping[str, Any] = snapshot.get("digests") or {}
    answered = {rid: v for rid, v in sorted(views.items()) if v is not None}
    out: list[Violation] = []
    for shard in range(max((len(v) for v in answered.values()), default=0)):
        at = {rid: (int(v[shard][0]), str(v[shard][1])) for rid, v in answered.items() if len(v) > shard}
        by_index: dict[int, dict[str, str]] = {}
        for rid, (index, digest) in at.items():
            by_index.setdefault(index, {})[rid] = digest
        for index, ds in sorted(by_index.items()):
            if len(set(ds.values())) > 1:
                who = ", ".join(f"{rid} {d[:12]}" for rid, d in ds.items())
                out.append(Violation("divergence", f"shard {shard}", (
                    f"{' and '.join(ds)} applied shard {shard} up to index {index} and their digests differ: {who} "
                    f"({_cycle(snapshot)} snapshot)")))
        if final and len(by_index) > 1:
            out.append(Violation("not_converged", f"shard {shard}", (
                "after the final settle the replicas stand at different applied indexes: "
                + ", ".join(f"{rid} {i}" for rid, (i, _) in at.items()))))
    if final:
        for rid, v in sorted(views.items()):
            if v is None:
                out.append(Violation("not_converged", rid, f"{rid} did not answer for its digests after the final "
                                                           f"settle ({_cycle(snapshot)})"))
    return out


def recovery(snapshot: Record, bound: float) -> list[Violation]:
    f = snapshot.get("fault") or {}
    what = f"{f.get('kind', '?')} on {f.get('target') or 'nothing'}"
    rec = snapshot.get("recovered_after")
    if rec is None:
        return [Violation("not_recovered", "cluster", (
            f"{_cycle(snapshot)}: not every shard took a write and not every replica answered within {bound:g} s "
            f"of the heal of {what}"))]
    if float(rec) > bound:
        return [Violation("not_recovered", "cluster", (
            f"{_cycle(snapshot)}: every shard took a write and every replica answered only {float(rec):.1f} s "
            f"after the heal of {what}, more than the bound of {bound:g} s"))]
    return []


def notes(snapshot: Record, files: Iterable[Record], runs: Iterable[Run], archive_root: Path) -> list[str]:
    """What is worth a line in the report but is no violation: temporary
    objects left beside an archive object while no archive of that file
    runs (an attempt killed mid-copy leaves its ``_tmp.<attempt>``; the
    next successful archive of the file deletes it)."""
    rows = _rows(snapshot)
    running = {_fid_key(r.get("fid")) for r in rows.values()
               if r.get("kind") == "ARCHIVE" and r.get("state") not in TERMINAL}
    for run in runs:
        if run.end is None and run.cut is None:
            row = rows.get(run.action_id)
            fid = run.fid or (str(row.get("fid")) if row is not None else "")
            kind = run.kind or (str(row.get("kind")) if row is not None else "")
            if kind == "ARCHIVE":
                running.add(_fid_key(fid))
    out = []
    for key in _by_fid(files):
        if key in running:
            continue
        try:
            obj = object_path(archive_root, Fid.parse(key))
        except FidError:
            continue
        try:
            left = sorted(e.name for e in os.scandir(obj.parent) if e.name.startswith(obj.name + "_tmp"))
        except FileNotFoundError:
            continue
        if left:
            out.append(f"fid {key}: temporary objects left beside its archive object, no archive of it running: "
                       + ", ".join(left))
    return out


# ---------------------------------------------------------------------------
# the history of a violation


_ACTION_SUBJECT = re.compile(r"^action (\d+)$")
_FID_SUBJECT = re.compile(r"^fid (\S+)$")
_SHARD_SUBJECT = re.compile(r"^shard (\d+)$")
_CYCLE = re.compile(r"\bcycle (\d+)\b")


@dataclass(frozen=True)
class _Line:
    when: float
    who: str
    text: str
    #: among lines of one millisecond: a run's start first, its end last,
    #: so that an agent's lines read in the order it logged them
    rank: int = 1


def _mentions(text: str, ids: set[int], fids: set[str]) -> bool:
    for m in re.finditer(r"\baction (\d+)\b", text):
        if int(m[1]) in ids:
            return True
    return any(f in text or f[1:-1] in text for f in fids)


def history(v: Violation, acks: Sequence[Record], files: Sequence[Record], runs: Sequence[Run],
            snapshots: Sequence[Record], events: Sequence[Event]) -> str:
    """The records about *v*'s subject, one line per event, oldest first,
    in seconds from the run's first record: for an action or a file, its
    file record, acknowledgements, runs, its action rows as each snapshot
    saw them (changes only), the faults around them and the agents' lines
    about it; for a shard, its digests in the snapshots where replicas
    disagreed; for the cluster, a replica or an agent, the faults and
    recoveries of the cycle the violation names (or of every cycle) and
    that host's warnings."""
    firsts = [_t(x) for x in (*acks, *files)] + [r.start for r in runs] + [e.when for e in events]
    firsts += [float((s.get("fault") or {}).get("start") or s.get("t") or 0.0) for s in snapshots]
    t0 = min((t for t in firsts if t > 0), default=0.0)
    ids: set[int] = set()
    fids: set[str] = set()
    m_action, m_fid = _ACTION_SUBJECT.match(v.subject), _FID_SUBJECT.match(v.subject)
    rows_seen = [r for s in snapshots for r in s.get("actions") or []]
    if m_action:
        ids = {int(m_action[1])}
        fids = {_fid_key(r.get("fid")) for r in rows_seen if _aid(r) in ids}
        fids |= {_fid_key(a.get("fid")) for a in acks if _aid(a) in ids}
        fids |= {_fid_key(r.fid) for r in runs if r.action_id in ids and r.fid}
    elif m_fid:
        fids = {_fid_key(m_fid[1])}
        ids = {_aid(r) for r in rows_seen if _fid_key(r.get("fid")) in fids}
        ids |= {_aid(a) for a in acks if _fid_key(a.get("fid")) in fids and _aid(a)}
        ids |= {r.action_id for r in runs if r.fid and _fid_key(r.fid) in fids}
    lines: list[_Line] = []

    # what the clients wrote and were told (an action's file may be much
    # older than the action: it does not widen the window of faults shown)
    written: list[_Line] = []
    for f in files:
        if _fid_key(f.get("fid")) in fids:
            written.append(_Line(_t(f), str(f.get("client", "client")), (
                f"file {Path(str(f.get('path', '?'))).name} {f.get('fid')} written: {f.get('size', '?')} bytes, "
                f"sha256 {str(f.get('sha256', ''))[:16]}")))
    if m_fid:
        lines += written
    for a in acks:
        if m_action:
            if _aid(a) not in ids and _aid(a, "target") not in ids:
                continue
        elif _fid_key(a.get("fid")) not in fids:
            continue
        who = str(a.get("client", "client"))
        if a.get("gave_up"):
            text = f"{a.get('op')} of {a.get('fid')} given up unacknowledged (key {a.get('key')})"
        elif a.get("op") == "cancel":
            state = f", the action now {a['state']}" if a.get("state") else ""
            text = f"cancel of action {_aid(a, 'target')} acknowledged: {a.get('outcome')}{state}"
        else:
            got = f" action {_aid(a)}" if _aid(a) else ""
            text = f"{a.get('op')} of {a.get('fid')} acknowledged: {a.get('outcome')}{got} (key {a.get('key')})"
        lines.append(_Line(_t(a), who, text))

    # what the movers did
    for r in runs:
        if r.action_id not in ids:
            continue
        what = f"{r.kind} {r.fid} " if r.kind else ""
        lines.append(_Line(r.start, r.agent, f"action {r.action_id} attempt {r.attempt} {what}started", 0))
        if r.end is not None:
            took = f"after {r.end - r.start:.2f} s"
            how = f"succeeded {took}" if r.outcome == "succeeded" else f"ended {took}: {r.outcome}"
            lines.append(_Line(r.end, r.agent, f"action {r.action_id} attempt {r.attempt} {how}", 2))
        elif r.cut is not None:
            lines.append(_Line(r.cut, r.agent, f"action {r.action_id} attempt {r.attempt}: no end logged; "
                                               "the agent started again here"))
        else:
            lines.append(_Line(r.start, r.agent, f"action {r.action_id} attempt {r.attempt}: no end logged"))

    # what the cluster listed
    last: dict[int, tuple[Any, ...] | None] = {}
    for s in snapshots:
        when = float(s.get("t") or 0.0)
        rows = _rows(s)
        for aid in sorted(ids):
            row = rows.get(aid)
            seen = None if row is None else (row.get("state"), row.get("agent"), row.get("attempt"),
                                              row.get("errno"))
            if aid not in last and row is None:
                continue
            if last.get(aid, ()) == seen:
                continue
            last[aid] = seen
            if row is None:
                text = f"{_cycle(s)} snapshot: action {aid} not listed"
            else:
                ended = float(row.get("ended") or 0.0)
                end = f", ended at {ended - t0:+.3f}" if ended else ""
                text = (f"{_cycle(s)} snapshot: action {aid} {row.get('kind', '?')} {row.get('state', '?')}"
                        f"{_held(row)}{end}")
            lines.append(_Line(when, "cluster", text))

    # a shard's digests where its replicas disagreed
    m_shard = _SHARD_SUBJECT.match(v.subject)
    if m_shard:
        shard = int(m_shard[1])
        for s in snapshots:
            views = s.get("digests") or {}
            cells: list[tuple[str, int | None, str]] = []
            for rid, view in sorted(views.items()):
                if view is None or len(view) <= shard:
                    cells.append((rid, None, ""))
                else:
                    cells.append((rid, int(view[shard][0]), str(view[shard][1])))
            answered = [c for c in cells if c[1] is not None]
            same = {(c[1], c[2]) for c in answered}
            if len(same) > 1 or len(answered) < len(cells):
                text = ", ".join(f"{rid} no answer" if i is None else f"{rid} at {i} {d[:12]}" for rid, i, d in cells)
                lines.append(_Line(float(s.get("t") or 0.0), "cluster", f"{_cycle(s)} shard {shard}: {text}"))

    # the window the faults and agents' lines are shown in
    focus = [x.when for x in lines]
    m_cycle = _CYCLE.search(v.detail)
    for s in snapshots:
        if m_cycle and str(s.get("cycle")) == m_cycle[1] and not (ids or fids):
            f = s.get("fault") or {}
            focus += [float(f.get("start") or s.get("t") or 0.0), float(s.get("t") or 0.0)]
    lo, hi = (min(focus) - FAULT_LEAD, max(focus) + 1.0) if focus else (float("-inf"), float("inf"))

    fault_times: set[float] = set()
    for s in snapshots:
        f = s.get("fault") or {}
        start, heal = float(f.get("start") or 0.0), float(f.get("heal") or 0.0)
        if not start or heal < lo or start > hi:
            continue
        fault_times |= {round(start, 3), round(heal, 3)}
        if f.get("kind") == "final":
            lines.append(_Line(start, "nemesis", f"{_cycle(s)}: {f.get('detail') or 'final settle'}"))
            continue
        lines.append(_Line(start, "nemesis", f"{_cycle(s)}: fault {f.get('kind')} on {f.get('target')}: "
                                             f"{f.get('detail', '')}"))
        rec = s.get("recovered_after")
        got = "not recovered within the bound" if rec is None else f"recovered after {float(rec):.1f} s"
        lines.append(_Line(heal, "nemesis", f"{_cycle(s)}: healed {f.get('kind')} on {f.get('target')} ({got})"))

    host: list[_Line] = []
    for e in sorted(events, key=lambda e: e.when):
        if e.agent == "nemesis":
            if lo <= e.when <= hi and round(e.when, 3) not in fault_times:
                lines.append(_Line(e.when, e.agent, e.text))
        elif is_run_line(e.text):
            continue  # the runs say it
        elif ids or fids:
            # an action's lines name it; a file's name the file (or one of its actions)
            if _mentions(e.text, ids, set() if m_action else fids):
                lines.append(_Line(e.when, e.agent, e.text))
        elif not m_shard and lo <= e.when <= hi and v.subject in ("cluster", e.agent):
            host.append(_Line(e.when, e.agent, e.text))
    if len(host) > MAX_EVENT_LINES:  # the last ones: closest to what went wrong
        lines.append(_Line(host[0].when, "checker", f"({len(host) - MAX_EVENT_LINES} earlier agent lines "
                                                    "not shown)"))
        host = host[-MAX_EVENT_LINES:]
    lines += host

    if not m_fid:
        lines = written + lines
    lines.sort(key=lambda x: (x.when, x.rank))  # stable: records of one instant keep the order above
    began = f"{datetime.fromtimestamp(t0):%Y-%m-%d %H:%M:%S}" if t0 else "?"
    out = [f"{v.kind}: {v.subject}: {v.detail}",
           f"history of {v.subject}, in seconds from the run's first record ({began}):"]
    out += [f"  {x.when - t0:+9.3f}  {x.who:<8} {x.text}" for x in lines]
    if not lines:
        out.append("  (no record mentions it)")
    return "\n".join(out)

