"""Formatting for hsmctl: action lines, rich tables and the ``--json`` documents.

JSON keys are a stable interface for scripts (documented in ``hsmctl
--help``); add keys, never rename or remove them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any

from hsm.hsmflags import state_words

if TYPE_CHECKING:
    # Imported where used: the local commands (state, set, release) print
    # paths with path_text() and need no gRPC.
    from hsm.v1 import coordinator_pb2 as cpb
    from hsm.v1 import types_pb2 as tpb

log = logging.getLogger(__name__)

STATE_ORDER = ("WAITING", "STARTED", "CANCELING", "SUCCEEDED", "FAILED", "CANCELED")
KIND_ORDER = ("ARCHIVE", "RESTORE", "REMOVE")


# ---------------------------------------------------------------------------
# File names

# What path_text() escapes: backslash, C0/C1 control characters (newline,
# tab, ESC...) and the bytes that are not UTF-8 (os.fsdecode() turns each
# into a lone surrogate U+DC80..U+DCFF).
_UNPRINTABLE = re.compile("[\\\\\x00-\x1f\x7f-\x9f\udc80-\udcff]")
_NAMED = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
_BAD_BYTE = re.compile("[\udc80-\udcff]")


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    named = _NAMED.get(ch)
    if named is not None:
        return named
    if ord(ch) >= 0xDC80:  # an undecodable byte
        return f"\\x{ord(ch) - 0xDC00:02x}"
    return "".join(f"\\x{b:02x}" for b in ch.encode())


def path_text(path: str | bytes | os.PathLike[str]) -> str:
    """A file name as hsmctl prints it, in every message, listing and
    ``--json`` document: unchanged when it is printable UTF-8 without a
    backslash (so output stays byte for byte what lfs prints), else with
    each byte that is not UTF-8 as ``\\xNN``, newline, tab and CR as ``\\n``,
    ``\\t``, ``\\r``, other control characters as the ``\\xNN`` of their bytes,
    and a backslash as ``\\\\``: the escapes of bash's ``$'...'`` quoting, so
    ``$'fs/d/bad\\xffname'`` names the file again, and one line is one file."""
    text = os.fsdecode(path)
    if _UNPRINTABLE.search(text) is None:
        return text
    return _UNPRINTABLE.sub(_escape, text)


def plain_text(message: str) -> str:
    """A message safe to print on any stream: undecodable bytes (from a
    file name that reached it without path_text(), e.g. in an OS error) as
    ``\\xNN``, the way path_text() shows them."""
    if _BAD_BYTE.search(message) is None:
        return message
    return _BAD_BYTE.sub(_escape, message)


# ---------------------------------------------------------------------------
# Small formatters


def flag_words(flags: int) -> list[str]:
    return state_words(flags)


def format_age(seconds: float) -> str:
    """``"42s"``, ``"5m07s"``, ``"3h02m"``, ``"4d01h"``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_bytes(n: int) -> str:
    """``"512B"``, ``"1.5KiB"``, ``"3.0GiB"``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{int(value)}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{n}B"  # pragma: no cover - loop always returns


def format_queue(action: tpb.Action) -> str:
    """A waiting action's place: ``"queue 3/120 ~40s"`` (3rd of 120 in the
    queue it starts from, expected to start in about 40 s; no ``~`` part
    without an estimate); "" when it is not in a queue."""
    if not action.queue_position:
        return ""
    text = f"queue {action.queue_position}/{action.queue_length}"
    return text + f" ~{format_age(action.start_estimate)}" if action.start_estimate > 0 else text


def queue_words(action: tpb.Action) -> str:
    """What ``hsmctl action`` adds to a waiting action's line:
    ``", queue position 3 of 120, starts in about 40s"``."""
    text = f", queue position {action.queue_position} of {action.queue_length}"
    if action.start_estimate > 0:
        text += f", starts in about {format_age(action.start_estimate)}"
    return text


def format_progress(action: tpb.Action) -> str:
    """``"-"`` before any progress, ``"1.0MiB/4.0MiB 25%"`` while running;
    a waiting action's place in its queue (:func:`format_queue`). An
    archive of several copies says which copy first: ``"copy 2/2 ..."``."""
    from hsm.v1 import types_pb2

    if action.copies > 1 and action.state in (types_pb2.WAITING, types_pb2.STARTED, types_pb2.CANCELING):
        rest = _progress(action)
        return f"copy {action.copies_done + 1}/{action.copies}" + ("" if rest == "-" else " " + rest)
    return _progress(action)


def _progress(action: tpb.Action) -> str:
    if action.queue_position:
        return format_queue(action)
    done, total = action.bytes_done, action.bytes_total
    if not done and not total:
        return "-"
    if not total:
        return format_bytes(done)
    pct = min(100, done * 100 // total)
    return f"{format_bytes(done)}/{format_bytes(total)} {pct}%"


def errno_text(value: int) -> str:
    """``"EPERM (Operation not permitted)"``."""
    import errno as _errno

    name = _errno.errorcode.get(value, f"errno {value}")
    return f"{name} ({os.strerror(value)})"


def error_text(message: str, value: int) -> str:
    """An agent's or coordinator's error with its errno:
    ``"disk full (errno ENOSPC)"``, or ``"ENOSPC (No space left on device)"``
    when there is no message."""
    import errno as _errno

    if message and value:
        return f"{message} (errno {_errno.errorcode.get(value, value)})"
    if value:
        return errno_text(value)
    return message


def fid_text(fid: tpb.Fid) -> str:
    from hsm.client import fid_from_proto

    return str(fid_from_proto(fid))


# ---------------------------------------------------------------------------
# JSON documents


def action_to_dict(action: tpb.Action) -> dict[str, Any]:
    """An action for ``--json``; ``extent`` is null for the whole file."""
    from hsm.client import kind_name, state_name

    extent = None
    if action.HasField("extent"):
        extent = {"offset": action.extent.offset, "length": action.extent.length}
    return {
        "action_id": action.action_id,
        "fsname": action.fsname,
        "fid": fid_text(action.fid),
        "kind": kind_name(action.kind),
        "archive_id": action.archive_id,
        "extent": extent,
        "data": action.data.decode("utf-8", "backslashreplace"),
        "flags": action.flags,
        "priority": action.priority,
        "requesters": [
            {
                "initiator": r.initiator,
                "cookie": r.cookie,
                "uid": r.uid,
                "gid": r.gid,
                "projid": r.projid,
                "when": r.when,
            }
            for r in action.requesters
        ],
        "state": state_name(action.state),
        "agent": action.agent,
        "attempt": action.attempt,
        "created": action.created,
        "started": action.started,
        "ended": action.ended,
        "bytes_done": action.bytes_done,
        "bytes_total": action.bytes_total,
        "errno": action.errno,
        "error": action.error,
        "shard": action.shard,
        # a waiting action that may start now: 1 = next in its queue; null otherwise
        "queue_position": action.queue_position or None,
        "queue_length": action.queue_length if action.queue_position else None,
        "start_estimate": action.start_estimate or None,  # seconds from now; null: no estimate
        # an archive of several copies: how many in all and made (null: one copy)
        "copies": action.copies or None,
        "copies_done": action.copies_done if action.copies else None,
        # a restore that read other copies first: their archive ids
        "copies_failed": list(action.copies_failed),
    }


def _slots(slots: cpb.Slots) -> dict[str, int]:
    return {"archive": slots.archive, "restore": slots.restore, "remove": slots.remove}


def agent_to_dict(agent: cpb.AgentInfo) -> dict[str, Any]:
    return {
        "agent_id": agent.agent_id,
        "host": agent.host,
        "archive_ids": list(agent.archive_ids),
        "slots": _slots(agent.slots),
        "running": _slots(agent.running),
        "version": agent.version,
        "connected_since": agent.connected_since,
        "last_seen": agent.last_seen,
        "replica": agent.replica,
        "draining": agent.draining,
        "tags": list(agent.tags),
    }


def drain_to_dict(agent_id: str, drain: bool, reply: cpb.DrainAgentResponse) -> dict[str, Any]:
    """``agent drain|resume --json``: the agent's state after the call
    (``active``, ``draining`` or ``drained``, as ``hsmctl agents`` shows it)
    and what it still runs."""
    state = ("draining" if held(reply.running) else "drained") if drain else "active"
    return {
        "agent_id": reply.agent_id or agent_id,
        "state": state,
        "draining": reply.draining,
        "running": _slots(reply.running),
    }


def counts_to_list(counts: Iterable[cpb.KindCount]) -> list[dict[str, Any]]:
    from hsm.client import kind_name, state_name

    return [
        {"kind": kind_name(c.kind), "state": state_name(c.state), "count": c.count}
        for c in counts
    ]


def status_to_dict(
    status: cpb.StatusResponse, info: cpb.ClusterInfoResponse | None = None
) -> dict[str, Any]:
    addresses = {r.id: r.address for r in info.replicas} if info is not None else {}
    return {
        "replica": status.replica,
        "cluster_id": status.cluster_id,
        "version": status.version,
        "control": status.control,
        "counts": counts_to_list(status.counts),
        "agents": [agent_to_dict(a) for a in status.agents],
        "shards": [
            {
                "shard": s.shard,
                "leader": s.leader,
                "leader_address": addresses.get(s.leader, ""),
                "commit_index": s.commit_index,
                "applied_index": s.applied_index,
                "counts": counts_to_list(s.counts),
                "problem": s.problem,
                "members": list(s.members),  # its Raft group with a placement; empty: every replica
                "seen_by": s.replica,
            }
            for s in status.shards
        ],
        "replicas": [{"id": r.id, "address": r.address} for r in info.replicas]
        if info is not None
        else [],
        "event_consumers": [{"name": c.name, "lag": c.lag, "missed": c.missed, "since": c.since}
                            for c in status.consumers],
    }


def submit_result_to_dict(result: cpb.SubmitResult) -> dict[str, Any]:
    from hsm.client import outcome_name

    return {
        "outcome": outcome_name(result.outcome),
        "action_id": result.action_id,
        "errno": result.errno,
        "reason": result.reason,
    }


def write_json(stream: IO[str], document: Any) -> None:
    json.dump(document, stream, indent=2, sort_keys=False)
    stream.write("\n")


def write_json_array(stream: IO[str], items: Iterator[dict[str, Any]]) -> int:
    """Stream a JSON array, one element at a time (for long listings)."""
    count = 0
    stream.write("[")
    for item in items:
        stream.write(",\n  " if count else "\n  ")
        stream.write(json.dumps(item, sort_keys=False))
        count += 1
    stream.write("\n]\n" if count else "]\n")
    return count


# ---------------------------------------------------------------------------
# Text listings

ACTION_COLUMNS = (
    ("ID", 10, ">"),
    ("KIND", 7, "<"),
    ("STATE", 9, "<"),
    ("FID", 26, "<"),
    ("ARCH", 4, ">"),
    ("AGENT", 16, "<"),
    ("TRY", 3, ">"),
    ("REQ", 3, ">"),
    ("PROGRESS", 20, ">"),
    ("AGE", 7, ">"),
)


def _row(values: Iterable[str]) -> str:
    cells = []
    for (_name, width, align), value in zip(ACTION_COLUMNS, values, strict=True):
        cells.append(f"{value:{align}{width}}")
    return " ".join(cells).rstrip()


def action_header() -> str:
    return _row(name for name, _w, _a in ACTION_COLUMNS)


def action_line(action: tpb.Action, now: float | None = None) -> str:
    """One line of ``hsmctl actions``: id, KIND, state, fid, archive id,
    agent, attempt, requesters, progress, age."""
    from hsm.client import kind_name, state_name

    now = time.time() if now is None else now
    return _row(
        (
            str(action.action_id),
            kind_name(action.kind),
            state_name(action.state).lower(),
            fid_text(action.fid),
            str(action.archive_id),
            action.agent or "-",
            str(action.attempt),
            str(len(action.requesters)),
            format_progress(action),
            format_age(now - action.created) if action.created else "-",
        )
    )


# ---------------------------------------------------------------------------
# Rich tables


def emit(console: Any, *renderables: Any) -> None:
    """Print rich renderables without the trailing blanks tables pad lines with."""
    with console.capture() as capture:
        for renderable in renderables:
            console.print(renderable)
    text = "\n".join(line.rstrip() for line in capture.get().split("\n"))
    console.file.write(text)
    console.file.flush()


def make_console(stream: IO[str] | None = None) -> Any:
    from rich.console import Console

    kwargs: dict[str, Any] = {"file": stream, "highlight": False}
    target = stream if stream is not None else __import__("sys").stdout
    if not (hasattr(target, "isatty") and target.isatty()):
        # Pipes and files: plain text, wide enough for every table.
        kwargs.update(width=200, no_color=True, force_terminal=False)
    return Console(**kwargs)


def _cells(*values: object) -> list[Any]:
    """Table cells as plain text: ids and FIDs in brackets are not markup."""
    from rich.text import Text

    return [Text(str(v)) for v in values]


def _counts_table(title: str, counts: Iterable[cpb.KindCount]) -> Any:
    from rich.table import Table

    from hsm.client import kind_name, state_name

    grid: dict[tuple[str, str], int] = {}
    for c in counts:
        grid[(kind_name(c.kind), state_name(c.state))] = grid.get(
            (kind_name(c.kind), state_name(c.state)), 0
        ) + c.count
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    table.add_column("KIND")
    for state in STATE_ORDER:
        table.add_column(state, justify="right")
    table.add_column("TOTAL", justify="right")
    for kind in KIND_ORDER:
        row = [grid.get((kind, state), 0) for state in STATE_ORDER]
        table.add_row(*_cells(kind, *row, sum(row)))
    totals = [sum(grid.get((k, s), 0) for k in KIND_ORDER) for s in STATE_ORDER]
    table.add_row(*_cells("all", *totals, sum(totals)))
    return table


def held(slots: cpb.Slots) -> int:
    """Actions of every kind in a per-kind count (e.g. what an agent runs)."""
    return int(slots.archive + slots.restore + slots.remove)


def agent_state(a: cpb.AgentInfo) -> str:
    """active / draining (still running actions) / drained (idle: safe to
    stop) / gone (in its grace period or drained and disconnected)."""
    if a.draining:
        return "draining" if held(a.running) else "drained"
    return "active" if a.replica else "gone"


def agents_table(agents: Iterable[cpb.AgentInfo], now: float | None = None) -> Any:
    from rich.table import Table

    now = time.time() if now is None else now
    agents = list(agents)
    table = Table(title=f"Agents ({len(agents)})", title_justify="left", box=None, pad_edge=False)
    for name, justify in (
        ("AGENT", "left"),
        ("STATE", "left"),
        ("HOST", "left"),
        ("ARCHIVES", "left"),
        ("SLOTS a/r/rm", "right"),
        ("RUNNING a/r/rm", "right"),
        ("REPLICA", "left"),
        ("UP", "right"),
        ("SEEN", "right"),
        ("VERSION", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for a in sorted(agents, key=lambda a: a.agent_id):
        table.add_row(*_cells(
            a.agent_id,
            agent_state(a),
            a.host or "-",
            ",".join(str(i) for i in a.archive_ids) or "all",
            f"{a.slots.archive}/{a.slots.restore}/{a.slots.remove}",
            f"{a.running.archive}/{a.running.restore}/{a.running.remove}",
            a.replica or "-",
            format_age(now - a.connected_since) if a.connected_since else "-",
            f"{format_age(now - a.last_seen)} ago" if a.last_seen else "-",
            a.version or "-",
        ))
    return table


def shards_table(status: cpb.StatusResponse, info: cpb.ClusterInfoResponse | None) -> Any:
    from rich.table import Table

    from hsm.v1 import types_pb2 as tpb

    addresses = {r.id: r.address for r in info.replicas} if info is not None else {}
    shards = list(status.shards)
    if not shards and info is not None:
        shards = list(info.shards)
    table = Table(title=f"Shards ({len(shards)})", title_justify="left", box=None, pad_edge=False)
    # a cluster with a placement (each shard's group on some of the replicas) shows each group
    placed = any(s.members for s in shards)
    columns = [("SHARD", "right"), ("LEADER", "left"), ("ADDRESS", "left"), ("COMMIT", "right"),
               ("APPLIED", "right"), ("ACTIVE", "right")] + ([("GROUP", "left")] if placed else [])
    for name, justify in columns:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for s in sorted(shards, key=lambda s: s.shard):
        active = sum(c.count for c in s.counts if c.state not in (tpb.SUCCEEDED, tpb.FAILED, tpb.CANCELED))
        row = [
            s.shard,
            s.leader or "(none)",
            addresses.get(s.leader, "-") if s.leader else "-",
            s.commit_index,
            s.applied_index,
            active,
        ]
        if placed:
            row.append(",".join(s.members))
        table.add_row(*_cells(*row))
    return table


def render_status(
    console: Any, status: cpb.StatusResponse, info: cpb.ClusterInfoResponse | None
) -> None:
    leaderless = [s.shard for s in status.shards if not s.leader]
    header = (
        f"Coordinator: control {status.control or 'unknown'}, "
        f"answered by {status.replica or '?'} (version {status.version or '?'})"
    )
    if status.cluster_id:
        header += f", cluster {status.cluster_id}"
    if info is not None:
        header += f", {len(info.replicas)} replicas, {info.shard_count} shards"
    from rich.text import Text

    parts: list[Any] = [Text(header)]
    if leaderless:
        parts.append(Text(
            f"WARNING: {len(leaderless)} shard(s) without a leader: "
            + ",".join(str(s) for s in leaderless)
        ))
    for s in status.shards:
        if s.problem:
            parts.append(Text(f"WARNING: shard {s.shard} on {s.replica or status.replica or 'this replica'}: "
                              f"{s.problem}"))
    for c in status.consumers:
        if c.missed:
            parts.append(Text(f"WARNING: event consumer {c.name} missed {c.missed} record(s): the retention dropped "
                              "them before it acknowledged them"))
    tables = [_counts_table("Queue", status.counts), agents_table(status.agents), shards_table(status, info)]
    if status.consumers:
        tables.append(consumers_table(status.consumers))
    for table in tables:
        parts.extend([Text(""), table])
    emit(console, *parts)


def consumers_table(consumers: Iterable[cpb.ConsumerStatus], now: float | None = None) -> Any:
    """HSM event consumers: records kept after each one's cursors (lag),
    records it lost to the retention (missed), since when it is registered."""
    from rich.table import Table

    now = time.time() if now is None else now
    table = Table(title="Event consumers", title_justify="left")
    for name, justify in (("CONSUMER", "left"), ("LAG", "right"), ("MISSED", "right"), ("REGISTERED", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for c in consumers:
        table.add_row(*_cells(c.name, c.lag, c.missed, format_age(now - c.since) + " ago" if c.since else "-"))
    return table
