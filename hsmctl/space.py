"""``hsmctl space [PATH]``: what hsm-spaced (the space manager, docs/space.md)
says of a simfs tree: its usage against the watermarks, what it released
and asked to archive, its last actions. It reads the status hsm-spaced
writes after each round (``ROOT/.simfs/space/status.json``); no coordinator
is asked."""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from pathlib import Path
from typing import IO, Any

from hsmctl.output import format_age, format_bytes, path_text

HELP = "what the space manager (hsm-spaced) did on a simfs tree: usage, watermarks, releases, archives"

EPILOG = """\
PATH: the tree's root or any path in it (default: the current directory).
prints:
  hsm-spaced on /lustre/fs (fsname fs1): running, pid 4242, up 2h03m; last round 4s ago
  used 8.1GiB of 10.0GiB (81%), high 90%, low 70%
  files 120344 indexed (3 busy); release candidates 5120 (1.9GiB), archive candidates 812
  released: last round 12 (1.2GiB), in all 3400 (30.1GiB) over 720 rounds, 2 refused
  archives: 40 asked for in all, 3 outstanding, 37 succeeded, 0 failed
  last actions:
    12s ago  released           data/a.h5  64.0MiB
    40s ago  archive requested  data/b.h5   1.0GiB  (action 17003 queued)
The first line says when hsm-spaced is not running: "stopped" (a clean stop), "last run
with --once", or "NOT RUNNING ... stale" (it died without a clean stop: what follows is
old). "draining" after the watermarks: a drain started above high goes on until low.
--json: the status document, plus "state" (running|stopped|once|stale), "age" (seconds
since it was written) and "status_file".
exit status: 0 a status was printed (hsm-spaced running, stopped cleanly, or --once);
  1 no status (hsm-spaced never ran on the tree) or a stale one; 4 PATH is not in a simfs tree"""

EXIT_OK, EXIT_FAILED, EXIT_NOT_HSM = 0, 1, 4


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", default=".", metavar="PATH",
                   help="the simfs tree (its root or any path in it; default: .)")
    p.add_argument("--json", action="store_true", help="the status document as JSON (see below)")


def _alive(pid: int) -> bool:
    """Is *pid* a live hsm-spaced here? (A pid reused by another program is not.)"""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's: alive
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc to tell: trust the pid
    return b"spaced" in cmdline


def state_of(doc: dict[str, Any]) -> str:
    """running, stopped, once or stale."""
    if doc.get("mode") == "once":
        return "once"
    if doc.get("stopped"):
        return "stopped"
    if doc.get("host") not in (None, socket.gethostname()):
        return "running"  # another host's: it cannot be checked from here
    return "running" if _alive(int(doc.get("pid") or 0)) else "stale"


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def render(doc: dict[str, Any], now: float) -> list[str]:
    """The report's lines."""
    state = state_of(doc)
    root = path_text(str(doc.get("root", "?")))
    pid = doc.get("pid")
    age = format_age(now - float(doc.get("updated") or now))
    if state == "running":
        head = f"running, pid {pid}, up {format_age(now - float(doc.get('started') or now))}"
        if doc.get("host") not in (None, socket.gethostname()):
            head += f" on {doc['host']}"
    elif state == "stopped":
        head = f"stopped {format_age(now - float(doc['stopped']))} ago (pid {pid}, a clean stop)"
    elif state == "once":
        head = f"last run with --once {age} ago (pid {pid})"
    else:
        head = (f"NOT RUNNING: pid {pid} is gone without a clean stop; this status is stale "
                f"(written {age} ago)")
    last = doc.get("last_round") or {}
    if state == "running" and last:
        head += f"; last round {format_age(now - float(last.get('time') or now))} ago"
    lines = [f"hsm-spaced on {root} (fsname {doc.get('fsname', '?')}): {head}"]
    used, capacity = int(doc.get("used") or 0), int(doc.get("capacity") or 0)
    high, low = float(doc.get("high") or 0), float(doc.get("low") or 0)
    usage = (f"used {format_bytes(used)} of {format_bytes(capacity)} ({_pct(used, capacity)}), "
             f"high {100 * high:.0f}%, low {100 * low:.0f}%")
    if doc.get("capacity_source") == "statvfs":
        usage += " (the file system's)"
    if doc.get("draining"):
        usage += "; draining (releasing down to low)"
    lines.append(usage)
    cand = doc.get("candidates") or {}
    busy = int(doc.get("busy") or 0)
    lines.append(f"files {doc.get('files', 0)} indexed" + (f" ({busy} busy)" if busy else "")
                 + f"; release candidates {cand.get('release', 0)} ({format_bytes(int(cand.get('release_bytes', 0)))}),"
                 f" archive candidates {cand.get('archive', 0)}")
    total = doc.get("total") or {}
    released = f"released: last round {last.get('released', 0)} ({format_bytes(int(last.get('released_bytes', 0)))})"
    released += (f", in all {total.get('released', 0)} ({format_bytes(int(total.get('released_bytes', 0)))})"
                 f" over {total.get('rounds', 0)} round(s)")
    if total.get("refused"):
        released += f", {total['refused']} refused"
    lines.append(released)
    arc = doc.get("archives") or {}
    lines.append(f"archives: {arc.get('requested', 0)} asked for in all, {arc.get('outstanding', 0)} outstanding, "
                 f"{arc.get('succeeded', 0)} succeeded, {arc.get('failed', 0)} failed"
                 + (f", {arc['not_queued']} not queued (refused, or the coordinator did not answer)"
                    if arc.get("not_queued") else ""))
    if doc.get("coordinator_error"):
        lines.append(f"coordinator: {doc['coordinator_error']}")
    recent = doc.get("recent") or []
    if recent:
        lines.append("last actions:")
        rows = [(format_age(now - float(r.get("time") or now)) + " ago", str(r.get("action", "")),
                 path_text(str(r.get("path", ""))), format_bytes(int(r.get("bytes") or 0)),
                 str(r.get("detail") or "")) for r in reversed(recent)]
        w0, w1, w2, w3 = (max(len(r[i]) for r in rows) for i in range(4))
        for when, what, path, size, detail in rows:
            lines.append(f"  {when:>{w0}}  {what:<{w1}}  {path:<{w2}}  {size:>{w3}}"
                         + (f"  ({detail})" if detail else ""))
    return lines


def run(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    from hsm.simfs import NotASimfsTree, SimFS
    from spaced import status_path

    try:
        root = SimFS.find_root(args.path)
    except (NotASimfsTree, OSError) as exc:
        print(f"hsmctl space: {exc}", file=err)
        return EXIT_NOT_HSM
    path = status_path(root)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        print(f"hsmctl space: no status from hsm-spaced in {path_text(str(root))}: it has not run on this tree "
              f"(start it: hsm-spaced {path_text(str(root))})", file=err)
        return EXIT_FAILED
    except (OSError, ValueError) as exc:
        print(f"hsmctl space: cannot read {path_text(str(path))}: {exc}", file=err)
        return EXIT_FAILED
    if not isinstance(doc, dict):
        print(f"hsmctl space: {path_text(str(path))} is not a status document", file=err)
        return EXIT_FAILED
    now = time.time()
    state = state_of(doc)
    if args.json:
        doc = dict(doc, state=state, age=max(0.0, now - float(doc.get("updated") or now)), status_file=str(path))
        print(json.dumps(doc, indent=1, sort_keys=True), file=out)
    else:
        print("\n".join(render(doc, now)), file=out)
    return EXIT_FAILED if state == "stale" else EXIT_OK
