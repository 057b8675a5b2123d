"""``hsm-bridge``: the MDT's HSM requests into the coordinator cluster."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from hsm import __version__, logsetup

DESCRIPTION = """\
Runs on a Lustre client node. Registers as the copytool of MOUNT, receives
the MDT's HSM action lists (archive, restore, remove, cancel) and forwards
every item to the hsm-coordinator cluster, keyed by the MDT's cookie: a
list replayed after a restart never makes a second action. Each list is
journaled (fsynced) before it is forwarded, and sent again after a crash.

One bridge per file system is active: it holds the coordinators' lease
"bridge:<fsname>". A second bridge started for the same file system stands
by (it does not register with the MDT) and takes over when the active one
stops or its lease lapses (--lease-ttl). A bridge that cannot renew its
lease unregisters at once and exits 1.

When it becomes active, the bridge reads the MDT's active requests
(--active-requests or --active-requests-command) and forwards the STARTED
items it does not have: those a bridge that died had not read yet, which
the MDT never sends again. Without either option they stay STARTED at the
MDT until its active_request_timeout, then fail.
"""

EPILOG = """\
MDT settings to change (lctl set_param on the MDS), and why:
  mdt.*.hsm.max_requests           the MDT sends nothing while this many of its
                                   items are STARTED (default 3): raise it to at
                                   least the sum of your movers' slots (1000+), so
                                   that the coordinator sees and schedules the
                                   whole queue. The bridge warns when the MDT
                                   stalls at --mdt-max-requests.
  mdt.*.hsm.active_request_timeout a STARTED item with no progress for this long
                                   is canceled silently (default 3600 s), and the
                                   mover's end then fails with ENOENT: set it
                                   above the longest transfer, queueing included
                                   (e.g. 2678400). The bridge reports items older
                                   than --mdt-active-request-timeout.
  mdt.*.hsm.policy                 keep NRA (no retry at the MDT): the coordinator
                                   retries (max_attempts).
  mdt.*.hsm.grace_delay            unchanged: the coordinator keeps its own record.

Reading the MDT's active requests (on the MDS, as root):
  lctl get_param mdt.<fsname>-MDT*.hsm.active_requests
  e.g. --active-requests-command "ssh mds1 lctl get_param mdt.lustre-MDT*.hsm.active_requests"
  or, on the MDS, --active-requests '/sys/kernel/debug/lustre/mdt/lustre-MDT*/hsm/active_requests'

exit status: 0 stopped by SIGTERM/SIGINT, 1 the MDT or the library failed or
the lease was lost (restart it: it stands by), 2 bad usage.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hsm-bridge", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"hsm-bridge {__version__}")
    p.add_argument("--mount", required=True, type=Path, metavar="DIR", help="the Lustre client mount point")
    p.add_argument("--fsname", required=True, action="append", metavar="NAME",
                   help="file system name served (repeatable); lists of others are reported and left alone")
    p.add_argument("--archive-id", type=int, action="append", metavar="N",
                   help="register for this archive id (repeatable; default: every archive id)")
    p.add_argument("--coordinators", default=os.environ.get("HSM_COORDINATORS", "127.0.0.1:7600"),
                   metavar="ADDR[,ADDR]", help="coordinator replicas (env HSM_COORDINATORS)")
    p.add_argument("--tls-ca", metavar="PEM", help="mutual TLS: the cluster CA's certificate (env HSM_TLS_CA)")
    p.add_argument("--tls-cert", metavar="PEM", help="mutual TLS: the bridge's certificate, role bridge "
                   "(env HSM_TLS_CERT)")
    p.add_argument("--tls-key", metavar="PEM", help="mutual TLS: its key (env HSM_TLS_KEY)")
    p.add_argument("--cluster-id", default=os.environ.get("HSM_CLUSTER") or None, metavar="ID",
                   help="forward only to the cluster with this id (env HSM_CLUSTER)")
    p.add_argument("--journal", type=Path, metavar="FILE",
                   help="where lists are journaled (default /var/lib/hsm-bridge/<fsname>.journal)")
    p.add_argument("--library", metavar="PATH",
                   help="liblustreapi to use (env HSM_LIBLUSTREAPI; default liblustreapi.so.1)")
    p.add_argument("--batch-size", type=int, default=1000, metavar="N", help="items per submit (default 1000)")
    p.add_argument("--max-backlog", type=int, default=100_000, metavar="N",
                   help="items waiting for the coordinators before the MDT is no longer read (default 100000)")
    p.add_argument("--mdt-max-requests", type=int, default=3, metavar="N",
                   help="the MDT's mdt.*.hsm.max_requests, to recognise its stall (default 3)")
    p.add_argument("--mdt-active-request-timeout", type=float, default=3600.0, metavar="SECONDS",
                   help="the MDT's mdt.*.hsm.active_request_timeout (default 3600)")
    p.add_argument("--mdt-stall-after", type=float, default=30.0, metavar="SECONDS",
                   help="report the MDT's max_requests stall after this long without a list (default 30)")
    p.add_argument("--holder", metavar="ID",
                   help="this bridge's name in the lease (default <hostname>:<pid>)")
    p.add_argument("--lease-ttl", type=float, default=15.0, metavar="SECONDS",
                   help="how long the lease lasts without a renewal (3-3600, default 15): the standby takes "
                        "over this long after the active bridge died")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--active-requests", action="append", metavar="PATH",
                     help="a file (glob allowed, repeatable) holding what 'lctl get_param "
                          "mdt.<fsname>-MDT*.hsm.active_requests' prints")
    src.add_argument("--active-requests-command", metavar="CMD",
                     help="a command printing it (run without a shell, split as a shell would)")
    p.add_argument("--report-every", type=float, default=60.0, metavar="SECONDS",
                   help="log the counters this often (default 60)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--log-format", default="text", choices=("text", "json"),
                   help="text (default) or json: one JSON object per line, with action_id, attempt, kind and fid "
                        "on every line about an action")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from bridge.core import BridgeConfig
    from bridge.daemon import Bridge, DaemonConfig
    from hsm.client import CoordinatorClient, InvalidArgument
    from hsm.lustre.api import LustreApi
    from hsm.tls import TlsFiles

    parser = build_parser()
    args = parser.parse_args(argv)
    logsetup.setup(args.log_level, args.log_format)
    try:
        core = BridgeConfig(fsnames=frozenset(args.fsname), batch_size=args.batch_size,
                            max_backlog=args.max_backlog, mdt_max_requests=args.mdt_max_requests,
                            mdt_active_request_timeout=args.mdt_active_request_timeout,
                            stall_after=args.mdt_stall_after)
        tls = TlsFiles.from_args(args.tls_ca, args.tls_cert, args.tls_key)
        client = CoordinatorClient(args.coordinators, cluster_id=args.cluster_id, initiator="hsm-bridge", tls=tls)
    except (ValueError, InvalidArgument) as exc:
        parser.error(str(exc))
    journal = args.journal or Path("/var/lib/hsm-bridge") / f"{'+'.join(sorted(args.fsname))}.journal"
    try:
        command = tuple(shlex.split(args.active_requests_command or ""))
    except ValueError as exc:
        parser.error(f"--active-requests-command: {exc}")
    if args.active_requests_command is not None and not command:
        parser.error("--active-requests-command: empty command")
    if args.report_every <= 0:
        parser.error("--report-every must be > 0")
    config = DaemonConfig(mount=args.mount, core=core, journal=journal,
                          archive_ids=tuple(args.archive_id or (0,)), holder=args.holder or "",
                          lease_ttl=args.lease_ttl, active_requests=tuple(args.active_requests or ()),
                          active_requests_command=command, report_every=args.report_every)
    try:
        bridge = Bridge(config, LustreApi(args.library), client)
    except ValueError as exc:
        client.close()
        parser.error(str(exc))

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await bridge.run(stop)

    try:
        return asyncio.run(run())
    except OSError as exc:
        print(f"hsm-bridge: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
