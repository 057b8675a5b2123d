"""hsm-spaced: keep a simfs tree below its watermarks (docs/space.md).

    hsm-spaced SIMFS_ROOT [--high 0.9] [--low 0.7] [--capacity SIZE] [--interval 10]
               [--once [--wait [--deadline S]]] [--archive-id N] [--max-archives N]
               [--coordinators ADDR,...] [--tls-ca PEM --tls-cert PEM --tls-key PEM] ...
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

from hsm import logsetup

log = logging.getLogger(__name__)

PROG = "hsm-spaced"
DEFAULT_COORDINATORS = "127.0.0.1:7600"
EXIT_USAGE = 2

HELP = """\
Keep the simfs tree SIMFS_ROOT below its watermarks. When the usage is above
--high, release archived, clean files, least recently used first (last use:
atime, or mtime when later), until the usage is below --low; when those run
out, ask the coordinator to archive the least recently used unarchived (or
dirty) files, at most --max-archives at once, and release them once they
are archived. Between --low and --high nothing is done, unless a drain that
started above --high is still on (kept in the status file: a drain goes on
in the next run, --once or a restarted daemon).

Never released: a dirty, unarchived, already released, never_release
(hsmctl set --norelease) or lost file, nor one being written (modified and
not closed yet). The usage is what the files hold (st_blocks) against
--capacity, or the file system's (statvfs, as df) without it.

It scans the tree once, then follows it with inotify and the coordinator's
HSM event log (consumer --consumer): no scan per round. A round runs every
--interval seconds, and at once when the tree grows above --high. After each
round it writes SIMFS_ROOT/.simfs/space/status.json: `hsmctl space` prints it.
--once: one scan, one round, a summary; with --wait it also waits for the
archives it asked for (the next run, resuming the drain, releases them).

Stops on SIGTERM or SIGINT. Exit status: 0 done, 1 (--once) an archive it
asked for was refused or failed, 2 usage error.
"""

_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([KMGTPE]?)(?:i?B)?", re.IGNORECASE)
_UNITS = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}


def parse_size(text: str) -> int:
    """``10G``, ``500M``, ``1.5T``, ``4096`` (binary units: K is 1024; KiB,
    KB and K are the same) -> bytes, > 0."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(
            f"not a size: {text!r} (a number of bytes with an optional unit K, M, G, T, P: 500M, 10G, 1.5T)")
    value = int(float(m.group(1)) * 1024 ** _UNITS[m.group(2).upper()])
    if value <= 0:
        raise argparse.ArgumentTypeError(f"the capacity must be more than 0 bytes, not {text!r}")
    return value


def _fraction(text: str) -> float:
    """``0.9`` or ``90%`` -> 0.9, in (0, 1]."""
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a fraction: {text!r} (0.9, or 90%)") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1] (a fraction of the capacity, or 1%%-100%%), "
                                         f"not {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= 100_000:
        raise argparse.ArgumentTypeError(f"must be 1-100000, not {text!r}")
    return value


def _archive_id(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid archive id {text!r}") from None
    if not 1 <= value <= (1 << 32) - 1:
        raise argparse.ArgumentTypeError(f"invalid archive id {text!r}: 1 to 4294967295")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", metavar="SIMFS_ROOT", help="the simfs tree to keep below its watermarks")
    p.add_argument("--high", type=_fraction, default=0.9, metavar="FRACTION",
                   help="start releasing above this usage (0.9 or 90%%; default 0.9)")
    p.add_argument("--low", type=_fraction, default=0.7, metavar="FRACTION",
                   help="release until the usage is below this (default 0.7); below --high")
    p.add_argument("--capacity", type=parse_size, metavar="SIZE",
                   help="the tree's capacity (10G, 500M, ...): the usage is then what its files hold; "
                        "default: the file system's size and usage (statvfs, as df)")
    p.add_argument("--interval", type=_seconds, default=10.0, metavar="SECONDS",
                   help="a round every SECONDS at least (default 10)")
    p.add_argument("--once", action="store_true", help="one scan, one round, print what was done, exit")
    p.add_argument("--wait", action="store_true",
                   help="with --once: wait for the archives asked for (the next run releases them)")
    p.add_argument("--deadline", type=_seconds, metavar="SECONDS", help="with --wait: stop waiting after SECONDS")
    p.add_argument("-v", "--verbose", action="store_true", help="with --once: one line per file released or archived")
    p.add_argument("--archive-id", type=_archive_id, default=1, metavar="N",
                   help="archive to use for files never archived (default 1; a file archived before keeps its own)")
    p.add_argument("--max-archives", type=_count, default=16, metavar="N",
                   help="archives asked for and not ended, at most (default 16)")
    p.add_argument("--retry-after", type=_seconds, default=300.0, metavar="SECONDS",
                   help="a failed archive or a refused release is tried again after SECONDS (default 300)")
    p.add_argument("--consumer", default="hsm-spaced", metavar="NAME",
                   help="its name as a consumer of the HSM event log (default hsm-spaced; one per tree)")
    p.add_argument("--coordinators", metavar="ADDR[,ADDR]",
                   default=os.environ.get("HSM_COORDINATORS") or DEFAULT_COORDINATORS,
                   help=f"coordinator replicas, HOST:PORT,... (env HSM_COORDINATORS, default {DEFAULT_COORDINATORS})")
    p.add_argument("--tls-ca", metavar="PEM", help="mutual TLS: the cluster CA's certificate (env HSM_TLS_CA)")
    p.add_argument("--tls-cert", metavar="PEM", help="mutual TLS: this daemon's certificate (env HSM_TLS_CERT)")
    p.add_argument("--tls-key", metavar="PEM", help="mutual TLS: its key (env HSM_TLS_KEY)")
    p.add_argument("--timeout", type=_seconds, default=30.0, metavar="SECONDS",
                   help="each call to the coordinator gives up after this long (default 30)")
    p.add_argument("--log-level", default=None, choices=("debug", "info", "warning", "error"),
                   help="default info (--once: warning)")
    p.add_argument("--log-format", default="text", choices=logsetup.LOG_FORMATS)
    return p


def _check(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Cross-option checks: p.error (exit 2) on the first problem."""
    if not args.low < args.high:
        p.error(f"--low ({args.low:g}) must be below --high ({args.high:g})")
    if args.wait and not args.once:
        p.error("--wait goes with --once (the daemon follows its archives through the event log)")
    if args.deadline is not None and not args.wait:
        p.error("--deadline goes with --wait")
    if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", args.consumer):
        p.error(f"--consumer {args.consumer!r}: 1-64 of A-Z a-z 0-9 - _ . @")


def _bytes(n: int) -> str:
    from hsmctl.output import format_bytes

    return format_bytes(n)


def path_text(path: str) -> str:
    from hsmctl.output import path_text as text

    return text(path)


def _usage_line(used: int, capacity: int, high: float, low: float) -> str:
    return (f"used {_bytes(used)} of {_bytes(capacity)} ({100 * used / capacity:.0f}%), "
            f"high {100 * high:.0f}%, low {100 * low:.0f}%")


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    _check(p, args)
    from hsm.simfs import NotASimfsTree, SimFS

    try:
        fs = SimFS.open(args.root)
    except (NotASimfsTree, OSError, ValueError) as exc:
        p.error(f"{args.root}: not a simfs tree: {exc}")
    logsetup.setup(args.log_level or ("warning" if args.once else "info"), args.log_format)
    from hsm.client import CoordinatorClient, InvalidArgument
    from hsm.tls import TlsError, TlsFiles
    from spaced.daemon import Settings, SpaceDaemon

    try:
        tls = TlsFiles.from_args(args.tls_ca, args.tls_cert, args.tls_key)
        client = CoordinatorClient(args.coordinators, timeout=args.timeout, initiator=f"{PROG}@{socket.gethostname()}",
                                   retry_unavailable=min(10.0, args.timeout), tls=tls)
    except (TlsError, InvalidArgument) as exc:
        p.error(str(exc))
    if fs.cluster_id:
        client.expect_cluster(fs.cluster_id, f"the simfs tree {fs.root}")
    settings = Settings(high=args.high, low=args.low, capacity=args.capacity, interval=args.interval,
                        archive_id=args.archive_id, max_archives=args.max_archives, retry_after=args.retry_after,
                        consumer=args.consumer)
    with client:
        daemon = SpaceDaemon(fs, settings, client, once=args.once)
        if not args.once:
            return _serve(daemon)
        try:
            return _once(daemon, args)
        finally:
            daemon.close()


def _once(daemon: Any, args: argparse.Namespace) -> int:
    out = daemon.run_once()
    s = daemon.settings
    said = [f"{PROG}: {daemon.root}: {daemon.plan.files} files; "
            + _usage_line(out.used_before, out.capacity, s.high, s.low)]
    if not out.draining and not out.released and not out.archives and not out.refused:
        said.append("below the high watermark: nothing to do" if out.used_before <= s.high * out.capacity
                    else "below the low watermark once the pending releases are done: nothing to do")
    if out.released or out.refused:
        said.append(f"released {out.released} file(s), {_bytes(out.released_bytes)}"
                    + (f"; {out.refused} refused (changed since they were seen)" if out.refused else ""))
    if out.archives:
        ids = ", ".join(str(i) for i in out.archive_ids[:10]) + (" ..." if len(out.archive_ids) > 10 else "")
        said.append(f"archives asked for: {out.archives} file(s), {_bytes(out.archive_bytes)} (actions {ids})")
    if out.not_queued:
        why = f" ({daemon.submit_error})" if daemon.submit_error else " (refused: -v says why)"
        said.append(f"archives not queued: {out.not_queued} file(s){why}; the next run asks again")
    status = 1 if out.not_queued else 0
    if args.wait and out.archives:
        w = daemon.wait_archives(args.deadline)
        said.append(f"archived {w.succeeded}, failed {w.failed}"
                    + (f", still running {w.unfinished} (--deadline passed)" if w.unfinished else "")
                    + f" in {w.seconds:.1f}s")
        if w.failed or w.unfinished:
            status = 1
        daemon.write_status()
    used, capacity = daemon.usage()
    if out.draining or out.released or out.archives:
        tail = ""
        if used >= s.low * capacity:
            ready = daemon.plan.release_candidates
            tail = (f"; still above low: {ready} archived file(s) to release on the next run" if ready
                    else "; still above low: nothing more can be released now")
        said.append("now " + _usage_line(used, capacity, s.high, s.low) + tail)
    if args.verbose:
        for r in daemon.journal or ():
            said.append(f"  {r['action']} {path_text(r['path'])} ({_bytes(r['bytes'])})"
                        + (f": {r['detail']}" if r["detail"] else ""))
    print("\n".join(said), flush=True)
    return status


def _serve(daemon: Any) -> int:
    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        daemon.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    s = daemon.settings
    log.info("%s on %s (fsname %s): high %.0f%%, low %.0f%%, capacity %s, a round every %g s, pid %d",
             PROG, daemon.root, daemon.fs.fsname, 100 * s.high, 100 * s.low,
             f"{s.capacity} bytes" if s.capacity else "of the file system", s.interval, os.getpid())
    rc: int = daemon.run()
    log.info("stopped")
    return rc


if __name__ == "__main__":
    sys.exit(main())
