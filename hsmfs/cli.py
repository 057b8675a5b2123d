"""hsm-mount: mount a simfs tree so that reading a released file brings it back.

    hsm-mount SIMFS_ROOT MOUNTPOINT [--initiator ID] [--no-block]
              [--stall-timeout SECONDS] [--coordinators ADDR,...] ...

It stays in the foreground (run it under systemd, or with ``&``) until
SIGTERM, SIGINT or ``fusermount3 -u MOUNTPOINT``. On a signal, every reader
still blocked on a restore gets EIO at once and the tree is unmounted (lazily
if files are still open: they are served until closed; a second signal
aborts them).
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hsm import logsetup

log = logging.getLogger("hsmfs")

PROG = "hsm-mount"
DEFAULT_COORDINATORS = "127.0.0.1:7600"
EXIT_USAGE = 2
EXIT_NO_FUSE = 69  # EX_UNAVAILABLE

HELP = """\
Mount the simfs tree SIMFS_ROOT at MOUNTPOINT. Reading a released file through
the mount asks the coordinator for a restore (flagged blocking, like Lustre's
HSM_REQ_BLOCKING, with this mount's --initiator) and blocks until the file is
back; the read then returns the restored bytes. Several readers, on this
mount or others, of one file make one restore. A reader gets EIO when the
restore fails, or when it makes no progress (no state change, no bytes moved,
no step up its queue) for --stall-timeout seconds: a restore that moves is
waited for however long it takes. With --no-block the restore is still asked
for and the read fails at once with ENODATA (Lustre's policy=NBR).

Writes and truncates of a released file restore it first, as on Lustre; stat
shows its size with no blocks; unlink removes it (its archive copy stays).

The mount stays in the foreground. SIGTERM or SIGINT: readers still blocked
get EIO at once, then the tree is unmounted. Needs /dev/fuse and libfuse3
(Debian: apt-get install fuse3); root, or a user allowed to mount FUSE.
"""


def _fuse_class() -> Any:
    """mfusepy's FUSE, with ``direct_io`` set on the open files of released
    files (``HsmOps.uncached``): their reads, and their errors, reach the
    reader as they happen. (mfusepy loads libfuse when imported: made here,
    once the mount needs it.)"""
    import mfusepy

    class Fuse(mfusepy.FUSE):  # type: ignore[misc]
        def open(self, path: bytes, fip: Any) -> int:
            fi = fip.contents
            fi.fh = self.operations.open(path.decode(self.encoding, self.errors), fi.flags)
            if self.operations.uncached(fi.fh):
                fi.direct_io = 1
            return 0

    return Fuse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", metavar="SIMFS_ROOT", help="the simfs tree (made by hsmctl or the demo)")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an empty directory")
    p.add_argument("--initiator", metavar="ID", default=None,
                   help="who asks for the restores (one per simulated OST, say ost0); "
                        f"default {PROG}@HOST")
    p.add_argument("--no-block", action="store_true",
                   help="do not wait for restores: ask for them and fail the read with ENODATA")
    p.add_argument("--stall-timeout", type=_seconds, default=None, metavar="SECONDS",
                   help="a blocked reader gets EIO after this long without progress of its restore "
                        "(default 300)")
    p.add_argument("--coordinators", metavar="ADDR[,ADDR]",
                   default=os.environ.get("HSM_COORDINATORS") or DEFAULT_COORDINATORS,
                   help=f"coordinator replicas, HOST:PORT,... (env HSM_COORDINATORS, default {DEFAULT_COORDINATORS})")
    p.add_argument("--tls-ca", metavar="PEM", help="mutual TLS: the cluster CA's certificate (env HSM_TLS_CA)")
    p.add_argument("--tls-cert", metavar="PEM", help="mutual TLS: this mount's certificate (env HSM_TLS_CERT)")
    p.add_argument("--tls-key", metavar="PEM", help="mutual TLS: its key (env HSM_TLS_KEY)")
    p.add_argument("--timeout", type=_seconds, default=30.0, metavar="SECONDS",
                   help="each call to the coordinator gives up after this long (default 30)")
    p.add_argument("--allow-other", action="store_true", help="let users other than the mounter use the mount")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--log-format", default="text", choices=logsetup.LOG_FORMATS)
    return p


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def fuse_problem() -> str | None:
    """Why FUSE cannot be used here (None: it can)."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist (no FUSE in this kernel or container)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable and writable by this user"
    if shutil.which("fusermount3") is None and os.geteuid() != 0:
        return "fusermount3 is not installed (Debian: apt-get install fuse3)"
    try:
        import mfusepy  # noqa: F401  (loads libfuse)
    except (ImportError, OSError) as exc:
        return f"libfuse3 cannot be loaded ({exc}); Debian: apt-get install fuse3"
    return None


def unmount(mountpoint: str, lazy: bool = True) -> bool:
    """Unmount *mountpoint* (lazily: open files keep it until closed)."""
    if not os.path.ismount(mountpoint):
        return True
    tool = shutil.which("fusermount3")
    if tool:
        cmd = [tool, "-u", *(["-z"] if lazy else []), mountpoint]
        if subprocess.run(cmd, capture_output=True, check=False).returncode == 0:
            return True
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.umount2(os.fsencode(mountpoint), 2 if lazy else 0) == 0)  # 2: MNT_DETACH


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logsetup.setup(args.log_level, args.log_format)
    from hsm.simfs import NotASimfsTree, SimFS

    try:
        fs = SimFS.open(args.root)
    except (NotASimfsTree, OSError) as exc:
        print(f"{PROG}: {args.root}: not a simfs tree: {exc}", file=sys.stderr)
        return EXIT_USAGE
    mnt = Path(args.mountpoint)
    if not mnt.is_dir():
        print(f"{PROG}: {mnt}: not a directory", file=sys.stderr)
        return EXIT_USAGE
    if os.path.ismount(mnt):
        print(f"{PROG}: {mnt}: something is mounted there already", file=sys.stderr)
        return EXIT_USAGE
    if mnt.resolve() == Path(fs.root).resolve() or Path(fs.root).resolve() in mnt.resolve().parents:
        print(f"{PROG}: {mnt}: the mount point must not be inside the tree it mounts", file=sys.stderr)
        return EXIT_USAGE
    problem = fuse_problem()
    if problem:
        print(f"{PROG}: cannot mount: {problem}", file=sys.stderr)
        return EXIT_NO_FUSE
    from hsm.client import CoordinatorClient, InvalidArgument
    from hsm.tls import TlsError, TlsFiles
    from hsmfs.restorer import Restorer
    from hsmfs.waits import DEFAULT_STALL

    try:
        tls = TlsFiles.from_args(args.tls_ca, args.tls_cert, args.tls_key)
        initiator = args.initiator or f"{PROG}@{socket.gethostname()}"
        client = CoordinatorClient(args.coordinators, timeout=args.timeout, initiator=initiator,
                                   retry_unavailable=min(10.0, args.timeout), tls=tls)
    except (TlsError, InvalidArgument) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if fs.cluster_id:
        client.expect_cluster(fs.cluster_id, f"the simfs tree {fs.root}")
    restorer = Restorer(client, initiator, stall=args.stall_timeout or DEFAULT_STALL)
    return _serve(fs, mnt, restorer, args)


def _serve(fs: object, mnt: Path, restorer: object, args: argparse.Namespace) -> int:
    """libfuse's loop runs in a thread of its own, so that it leaves the
    signals to this one (it installs handlers only where none is set, and
    mfusepy resets SIGINT only from the main thread). First SIGTERM or
    SIGINT: blocked readers get EIO and the tree is unmounted lazily (open
    files keep the mount until closed); a second one, or 10 s without the
    loop ending: the process exits, which aborts the FUSE connection."""
    mount_fuse = _fuse_class()  # loads libfuse: fails here, in the main thread, when it cannot

    from hsmfs.ops import HsmOps
    from hsmfs.restorer import Restorer

    assert isinstance(restorer, Restorer)
    signals: list[int] = []
    wake = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        signals.append(signum)
        wake.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    ops = HsmOps(fs, restorer, block=not args.no_block)  # type: ignore[arg-type]
    options: dict[str, object] = {"foreground": True, "fsname": f"hsm-mount:{getattr(fs, 'fsname', 'simfs')}",
                                  "subtype": "hsm", "default_permissions": True}
    if args.allow_other:
        options["allow_other"] = True
    failed: list[str] = []

    def loop() -> None:
        try:
            mount_fuse(ops, os.fspath(mnt), **options)
        except Exception as exc:
            failed.append(str(exc) or type(exc).__name__)
        finally:
            wake.set()

    fuse = threading.Thread(target=loop, name="fuse", daemon=True)
    fuse.start()
    log.info("%s mounted on %s as initiator %s (%s, stall timeout %g s)", fs, mnt, restorer.initiator,
             "no-block" if args.no_block else "blocking", restorer.stall)
    while not signals and fuse.is_alive():
        wake.wait(1.0)
        wake.clear()
    if signals:
        log.info("%s: %s: blocked readers get EIO; unmounting", mnt, signal.Signals(signals[0]).name)
        restorer.close(f"{mnt} is being unmounted")
        if not unmount(os.fspath(mnt), lazy=True):
            log.error("%s: could not unmount; try fusermount3 -u -z %s", mnt, mnt)
        seen = len(signals)
        fuse.join(10.0)
        while fuse.is_alive() and len(signals) == seen:
            log.warning("%s: files are still open on the unmounted tree; they are served until closed "
                        "(send the signal again to abort them)", mnt)
            wake.wait(60.0)
            wake.clear()
        if fuse.is_alive():
            # exiting closes /dev/fuse: the kernel aborts the connection and
            # every request still open on it fails with ENOTCONN
            log.info("%s: aborting the files still open", mnt)
            logging.shutdown()
            os._exit(0)
    restorer.close(f"{mnt} is unmounted")
    if failed:
        print(f"{PROG}: {mnt}: mount failed: {failed[0]}", file=sys.stderr)
        return 1
    log.info("%s unmounted", mnt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
