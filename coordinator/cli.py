"""``hsm-coordinator``: create a cluster, run a replica, or run a whole local
system."""

from __future__ import annotations

import os

# We start children with fork+exec only; gRPC's fork handlers are not needed
# and would log "skipping fork() handlers" at every spawn.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import hsm  # noqa: E402
from coordinator import config as cfgmod  # noqa: E402
from coordinator.certs import CA_DAYS, CERT_DAYS, ROLES  # noqa: E402
from hsm import gctune, logsetup, sdnotify, stall  # noqa: E402

EPILOG = """\
commands:
  init    create a cluster: writes coordinator.yaml and raft-password for every replica
  run     one coordinator replica, from the config file plus flags
  member  add or remove a replica in every shard's Raft group (replacing a dead replica)
  shard   move one shard's group member to another replica, while the cluster serves
  replica drain a replica (its shards move off it) before retiring it, or undo that
  rebalance  show the replicas' load and what the rebalancer does next; switch it on or off
  local   a complete system in the foreground: 3 replicas x 8 shards, N agentd
          with the posix mover, a simulated Lustre tree (simfs) and an archive
  certs   a cluster CA and the certificates it issues (init, issue, show)

examples:
  hsm-coordinator local --dir /tmp/hsm
  hsm-coordinator init --shards 8 --replica hsm-0=10.0.0.1:7600:7700 \\
      --replica hsm-1=10.0.0.2:7600:7700 --replica hsm-2=10.0.0.3:7600:7700 --out /etc/hsm-coordinator
  hsm-coordinator run --config /etc/hsm-coordinator/coordinator.yaml --replica-id hsm-0
  hsm-coordinator certs init --dir /etc/hsm-coordinator/ca
  hsm-coordinator certs issue --dir /etc/hsm-coordinator/ca --name hsm-0 --role replica --host 10.0.0.1

exit codes: 0 clean stop, 1 runtime error, 2 bad usage or configuration
"""


def _archive_ids(text: str) -> list[int]:
    try:
        ids = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not ids or any(i < 1 for i in ids):
        raise argparse.ArgumentTypeError("archive ids are integers >= 1")
    return ids


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hsm-coordinator",
        description="Replicated, sharded, external HSM coordinator for Lustre.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"hsm-coordinator {hsm.__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ini = sub.add_parser("init", help="create a cluster configuration",
                         description="Write coordinator.yaml and raft-password (mode 0600) into --out, and the "
                                     "cluster CA and certificates into --out/tls (unless --insecure). Copy them "
                                     "to every replica. Refuses to overwrite existing files.")
    ini.add_argument("--name", default="hsm", help="cluster name (default hsm)")
    ini.add_argument("--shards", type=int, default=8, help="shard count, fixed for the cluster's life (default 8)")
    ini.add_argument("--replica", action="append", required=True, metavar="ID=HOST:API_PORT:RAFT_PORT",
                     help="a replica (repeat: 3 or more replicas); shard i uses Raft port RAFT_PORT+i")
    ini.add_argument("--replication", type=int, metavar="R",
                     help="members of each shard's Raft group (1, 3, 5 or 7; default: every replica holds every "
                          "shard): with more replicas than R, each replica holds and applies only its shards, "
                          "and the placement is written out (cluster.placement)")
    ini.add_argument("--data-dir", default="/var/lib/hsm-coordinator", help="Raft data directory on each replica")
    ini.add_argument("--archive-ids", type=_archive_ids, default=[1], metavar="N[,N...]")
    ini.add_argument("--out", type=Path, required=True, help="directory to write the files into")
    ini.add_argument("--insecure", action="store_true",
                     help="no certificates: the gRPC ports speak plain text and check nobody (the replicas "
                          "warn at start); by default init also creates OUT/tls: the cluster CA, a "
                          "certificate per replica and one for an admin")

    run = sub.add_parser("run", help="run one coordinator replica",
                         description="Run one coordinator replica (config keys: docs/cluster-config.md; "
                                     "flags override the file). SIGTERM hands leadership over and stops; "
                                     "SIGUSR1 writes the stack of every thread to standard error and goes on "
                                     "(logged by itself when the event loop has not run for "
                                     "$HSM_STALL_DUMP_AFTER seconds, default 20, 0: never).")
    run.add_argument("--config", metavar="FILE", required=True, help="YAML config file (from `init`)")
    run.add_argument("--replica-id", help="this replica's id in cluster.replicas (default: short host name)")
    run.add_argument("--data-dir", help="where this replica keeps its Raft journals and snapshots")
    run.add_argument("--listen", metavar="HOST:PORT", help="gRPC API bind address (default: the replica's api)")
    run.add_argument("--raft-bind", metavar="HOST", help="host the Raft ports bind to")
    run.add_argument("--metrics-listen", metavar="HOST:PORT",
                     help="serve Prometheus metrics at http://HOST:PORT/metrics (default: none)")
    run.add_argument("--archive-ids", type=_archive_ids, metavar="N[,N...]", help="archive ids that exist")
    run.add_argument("--agent-grace", type=float, metavar="SECONDS",
                     help="how long a disconnected agent keeps its actions (default 60)")
    run.add_argument("--log-level", choices=cfgmod.LOG_LEVELS)
    run.add_argument("--log-format", choices=logsetup.LOG_FORMATS,
                     help="text (default) or json: one JSON object per line, with action_id, attempt, kind and fid "
                          "on every line about an action (log_format)")

    mem = sub.add_parser("member", help="add or remove a replica in every shard's Raft group",
                         description="Change the Raft membership of every shard by one replica. To replace a "
                                     "dead replica: `member remove` its Raft address, `member add` the new "
                                     "one's, put the new replica in cluster.replicas of every config file, "
                                     "start the new replica, then restart the others one at a time "
                                     "(docs/operations.md).")
    mem.add_argument("action", choices=("add", "remove"))
    mem.add_argument("--raft", required=True, metavar="HOST:PORT", help="the replica's Raft address for shard 0")
    mem.add_argument("--coordinators", required=True, metavar="ADDR[,ADDR]", help="API addresses of live replicas")
    mem.add_argument("--force", action="store_true",
                     help="change even when a group would be left without a majority of members reachable "
                          "now (it then commits nothing until they answer)")
    mem.add_argument("--tls-ca", metavar="PEM", help="mutual TLS: the cluster CA's certificate (env HSM_TLS_CA)")
    mem.add_argument("--tls-cert", metavar="PEM", help="mutual TLS: your certificate, role admin (env HSM_TLS_CERT)")
    mem.add_argument("--tls-key", metavar="PEM", help="mutual TLS: its key (env HSM_TLS_KEY)")

    shd = sub.add_parser("shard", help="move a shard's group member to another replica",
                         description="Move one member of a shard's Raft group to another replica while the "
                                     "cluster serves (docs/scale-out.md): the target joins the group and "
                                     "catches up from the leader, the leadership leaves the source, then the "
                                     "source is removed and closes its member (its journal is deleted). The "
                                     "group never counts fewer caught-up members than it had. Any replica "
                                     "takes the request; the shard's leader drives the move to the end, and "
                                     "a new leader carries it on.",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog="examples:\n"
                                "  hsm-coordinator shard move 3 hsm-0 hsm-4 --coordinators hsm-1:7600 --wait\n"
                                "  hsm-coordinator shard move 3 hsm-0 hsm-4 --abort --coordinators hsm-1:7600")
    ssub = shd.add_subparsers(dest="shard_command", required=True, metavar="move")
    mv = ssub.add_parser("move", help="move SHARD's member SOURCE to replica TARGET")
    mv.add_argument("shard", type=int, metavar="SHARD")
    mv.add_argument("source", metavar="SOURCE", help="replica id of the member that leaves")
    mv.add_argument("target", metavar="TARGET", help="replica id of the replica that joins")
    mv.add_argument("--abort", action="store_true",
                    help="undo the move SOURCE -> TARGET instead (only before it began removing SOURCE)")
    mv.add_argument("--wait", action="store_true", help="wait until the move is done (or aborted)")
    mv.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                    help="with --wait, give up waiting after this long (default 600; the move goes on)")
    mv.add_argument("--coordinators", required=True, metavar="ADDR[,ADDR]", help="API addresses of live replicas")
    mv.add_argument("--tls-ca", metavar="PEM", help="mutual TLS: the cluster CA's certificate (env HSM_TLS_CA)")
    mv.add_argument("--tls-cert", metavar="PEM", help="mutual TLS: your certificate, role admin (env HSM_TLS_CERT)")
    mv.add_argument("--tls-key", metavar="PEM", help="mutual TLS: its key (env HSM_TLS_KEY)")

    def tls_flags(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--coordinators", required=True, metavar="ADDR[,ADDR]",
                            help="API addresses of live replicas")
        parser.add_argument("--tls-ca", metavar="PEM", help="mutual TLS: the cluster CA's certificate (env HSM_TLS_CA)")
        parser.add_argument("--tls-cert", metavar="PEM",
                            help="mutual TLS: your certificate, role admin (env HSM_TLS_CERT)")
        parser.add_argument("--tls-key", metavar="PEM", help="mutual TLS: its key (env HSM_TLS_KEY)")

    rep_ = sub.add_parser("replica", help="drain a replica before retiring it (or undo the drain)",
                          description="Drain a replica: the rebalancer (run by shard 0's leader) moves every "
                                      "shard off it, one move at a time, each as `shard move` does. Once it "
                                      "holds no shard it can be stopped and removed from cluster.replicas. "
                                      "undrain lets it hold shards again (the rebalancer then fills it).")
    rsub = rep_.add_subparsers(dest="replica_command", required=True, metavar="drain|undrain")
    for name in ("drain", "undrain"):
        rp = rsub.add_parser(name, help=f"{name} replica ID")
        rp.add_argument("replica", metavar="ID")
        if name == "drain":
            rp.add_argument("--wait", action="store_true", help="wait until it holds no shard")
            rp.add_argument("--timeout", type=float, default=3600.0, metavar="SECONDS",
                            help="with --wait, give up waiting after this long (default 3600; the drain goes on)")
        tls_flags(rp)
    reb = sub.add_parser("rebalance", help="the rebalancer: each replica's load, its next step; on or off",
                         description="Show each replica's load (shards held, shards it is the preferred leader "
                                     "of), the drained replicas and the rebalancer's next step. With on or off, "
                                     "switch it (kept on shard 0, replicated). While on, shard 0's leader "
                                     "moves one shard at a time until every live replica holds and leads its "
                                     "share within one, and drained replicas hold nothing.")
    reb.add_argument("switch", nargs="?", choices=("on", "off"))
    tls_flags(reb)

    rsh = sub.add_parser("reshard", help="add shards while serving (a split), abort one, or show it",
                         description="Split the ring: add shards to a running cluster (docs/resharding.md). "
                                     "About ADD/(S+ADD) of the files move, each to a new shard, with its "
                                     "waiting actions, ended ones, idempotency keys and catalog copies; only "
                                     "they pause (their submits are retried by the clients) until the split "
                                     "is done, and running actions of moving files run to their end first. "
                                     "Shard 0's leader records the split and drives it (a new leader carries "
                                     "it on; a restart resumes it). Without --add or --abort: where the "
                                     "split stands. Each replica's Raft ports must leave room: replica's "
                                     "Raft port + shard index, for every shard of the new ring.",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog="examples:\n"
                                "  hsm-coordinator reshard --add 4 --wait --coordinators hsm-1:7600\n"
                                "  hsm-coordinator reshard --coordinators hsm-1:7600\n"
                                "  hsm-coordinator reshard --abort --coordinators hsm-1:7600")
    rsh.add_argument("--add", type=int, default=0, metavar="N", help="shards to add")
    rsh.add_argument("--abort", action="store_true",
                     help="undo the split that runs (only before any shard switched to the new ring)")
    rsh.add_argument("--wait", action="store_true", help="wait until the split is done (or aborted)")
    rsh.add_argument("--timeout", type=float, default=3600.0, metavar="SECONDS",
                     help="with --wait, give up waiting after this long (default 3600; the split goes on)")
    tls_flags(rsh)

    crt = sub.add_parser("certs", help="a cluster CA and the certificates it issues",
                         description="Create the cluster's certificate authority and issue certificates "
                                     "for mutual TLS. A certificate's common name is the identity it proves "
                                     "(a replica id, an agent id, a person); its role is one of "
                                     f"{', '.join(ROLES)}. Private keys are written mode 0600 and never "
                                     "overwritten. Keep the CA key (ca.key) off the cluster's hosts.",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog="examples:\n"
                                "  hsm-coordinator certs init --dir ca\n"
                                "  hsm-coordinator certs issue --dir ca --name hsm-0 --role replica "
                                "--host hsm-0.example.org --host 10.0.0.1\n"
                                "  hsm-coordinator certs issue --dir ca --name mover1 --role agent --out /etc/agentd\n"
                                "  hsm-coordinator certs show ca/hsm-0.pem --ca ca\n")
    csub = crt.add_subparsers(dest="certs_command", required=True, metavar="init|issue|show")
    ci = csub.add_parser("init", help="create the CA (ca.pem, ca.key)")
    ci.add_argument("--dir", type=Path, required=True, help="directory for ca.pem and ca.key (created if missing)")
    ci.add_argument("--name", default="hsm-coordinator CA", help="the CA's common name")
    ci.add_argument("--days", type=int, default=CA_DAYS, help=f"validity in days (default {CA_DAYS})")
    cs = csub.add_parser("issue", help="issue a certificate signed by the CA")
    cs.add_argument("--dir", type=Path, required=True, help="the CA's directory (from certs init)")
    cs.add_argument("--name", required=True, help="identity: the certificate's common name (an agent's id for "
                                                  "role agent, the replica id for role replica)")
    cs.add_argument("--role", required=True, choices=ROLES)
    cs.add_argument("--host", action="append", default=[], metavar="NAME|IP",
                    help="a DNS name or IP address the holder serves on (replicas; repeat)")
    cs.add_argument("--days", type=int, default=CERT_DAYS, help=f"validity in days (default {CERT_DAYS})")
    cs.add_argument("--out", type=Path, help="where to write NAME.pem and NAME.key (default: --dir)")
    cw = csub.add_parser("show", help="who a certificate names, its role, hosts and validity")
    cw.add_argument("cert", type=Path, nargs="+", help="PEM certificate file(s)")
    cw.add_argument("--ca", type=Path, metavar="DIR", help="also say whether the CA in DIR signed it")

    loc = sub.add_parser("local", help="run a complete local system in the foreground",
                         description="Start N coordinator replicas (processes) with S shards, M agentd "
                                     "processes (posix mover), a simfs tree at DIR/fs and an archive at "
                                     "DIR/archive. Prints the addresses to use with hsmctl --coordinators "
                                     "(or HSM_COORDINATORS). Ctrl-C or SIGTERM stops it.")
    loc.add_argument("--dir", required=True, type=Path, help="working directory (created if missing)")
    loc.add_argument("--replicas", type=int, default=3, metavar="N", help="coordinator replicas (default 3)")
    loc.add_argument("--shards", type=int, default=8, metavar="S", help="shards (default 8)")
    loc.add_argument("--agents", type=int, default=2, metavar="M", help="agentd processes (default 2)")
    loc.add_argument("--port", type=int, default=7600, metavar="PORT",
                     help="API port of the first replica; replica k uses PORT+k, Raft ports from PORT+100 "
                          "(default 7600; 0 picks free ports)")
    loc.add_argument("--archive-ids", type=_archive_ids, default=[1], metavar="N[,N...]")
    loc.add_argument("--fsname", default=None,
                     help="file system name of a new simfs tree, 1-8 of A-Z a-z 0-9 _ - (default: a unique "
                          "name such as sim4k2q9, so that two trees never share FIDs)")
    loc.add_argument("--log-level", choices=cfgmod.LOG_LEVELS, default="info")
    return p


def setup_logging(level: str, filename: Path | None = None, fmt: str = "text") -> None:
    logsetup.setup(level, fmt, filename=filename)


def new_loop() -> asyncio.AbstractEventLoop:
    import uvloop

    return uvloop.new_event_loop()


async def _serve(cfg: object) -> int:
    from coordinator.node import NodeConfig
    from coordinator.server import start_replica

    assert isinstance(cfg, NodeConfig)
    gctune.tune_for_service()
    stall.enable_stack_dumps()
    stall_watch = stall.start(f"replica {cfg.replica_id}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    node = await start_replica(cfg)
    print(f"hsm-coordinator: replica {cfg.replica_id} serving on {node.address}", flush=True)

    async def notify_ready() -> None:
        await node.ready.wait()
        if not await sdnotify.notify_soon(f"READY=1\nSTATUS=serving on {node.address}, every shard has a leader"):
            if os.environ.get("NOTIFY_SOCKET"):
                logging.getLogger("coordinator").warning(
                    "READY=1 could not be sent to NOTIFY_SOCKET for 30 s: its queue stays full")

    async def watchdog(interval: float) -> None:
        while True:
            sdnotify.notify("WATCHDOG=1")  # dropped when the queue is full: the next one follows
            await asyncio.sleep(interval)

    tasks = [asyncio.create_task(notify_ready())]
    interval = sdnotify.watchdog_interval()
    if interval:
        tasks.append(asyncio.create_task(watchdog(interval)))
    await stop.wait()
    await sdnotify.notify_soon("STOPPING=1", within=2.0)
    logging.getLogger("coordinator").info("stopping: handing over leadership, draining")
    for t in tasks:
        t.cancel()
    await node.stop(grace=5.0, step_down=True)
    if stall_watch is not None:
        stall_watch.stop()
    return 0


Caller = Callable[[str, object, float], "tuple[Any, list[str]]"]


def _admin_caller(args: argparse.Namespace, what: str) -> Caller | None:
    """A function that calls a Coordinator method on the first of
    ``--coordinators`` that answers (an answer that refuses the request
    itself ends the tries): (response or None, the errors met). None after
    saying why when the TLS files cannot be read."""
    import grpc

    from hsm.tls import TlsError, TlsFiles, channel_credentials
    from hsm.v1 import coordinator_pb2_grpc

    try:
        tls = TlsFiles.from_args(args.tls_ca, args.tls_cert, args.tls_key)
        creds = channel_credentials(tls) if tls is not None else None
    except TlsError as exc:
        print(f"hsm-coordinator {what}: {exc}", file=sys.stderr)
        return None
    addrs = [a.strip() for a in args.coordinators.split(",") if a.strip()]
    final = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
             grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)

    def call(method: str, request: object, timeout: float) -> tuple[Any, list[str]]:
        errors = []
        for addr in addrs:
            try:
                with grpc.insecure_channel(addr) if creds is None else grpc.secure_channel(addr, creds) as ch:
                    return getattr(coordinator_pb2_grpc.CoordinatorStub(ch), method)(request, timeout=timeout), []
            except grpc.RpcError as exc:
                errors.append(f"{addr}: {exc.code().name}: {exc.details()}")
                if exc.code() in final:
                    break
        return None, errors or ["no coordinator address given"]

    return call


def _member(args: argparse.Namespace) -> int:
    from hsm.v1 import coordinator_pb2

    call = _admin_caller(args, "member")
    if call is None:
        return 2
    req = coordinator_pb2.ChangeMembershipRequest(add=args.action == "add", raft=args.raft, force=args.force)
    resp, errors = call("ChangeMembership", req, 120.0)
    if resp is not None:
        verb = "added to" if req.add else "removed from"
        print(f"{args.raft} {verb} the Raft groups of shards {', '.join(map(str, resp.shards))}")
        return 0
    for e in errors:
        print(f"hsm-coordinator member: {e}", file=sys.stderr)
    print("hsm-coordinator member: the change is safe to repeat once the shards have leaders", file=sys.stderr)
    return 1


def _shard(args: argparse.Namespace) -> int:
    import time

    from hsm.v1 import coordinator_pb2

    call = _admin_caller(args, "shard")
    if call is None:
        return 2
    req = coordinator_pb2.MoveShardRequest(shard=args.shard, source=args.source, target=args.target, abort=args.abort)
    resp, errors = call("MoveShard", req, 60.0)
    if resp is None:
        for e in errors:
            print(f"hsm-coordinator shard: {e}", file=sys.stderr)
        return 1
    assert isinstance(resp, coordinator_pb2.MoveShardResponse)
    print(f"shard {resp.shard}: {resp.move or 'no move runs'}; group {', '.join(resp.members)} "
          f"(leader {resp.leader})")
    if not args.wait:
        return 0
    want = [args.target if m == args.source else m for m in resp.members if m != args.target] \
        if not args.abort else [m for m in resp.members if m != args.target]
    end = time.monotonic() + args.timeout
    last = resp.move  # (printed above)
    while time.monotonic() < end:
        time.sleep(0.5)
        info, _e = call("ClusterInfo", coordinator_pb2.ClusterInfoRequest(), 5.0)
        if not isinstance(info, coordinator_pb2.ClusterInfoResponse):
            continue
        row = next((r for r in info.shards if r.shard == args.shard), None)
        if row is None:
            continue
        if row.move != last and row.move:
            print(f"shard {args.shard}: {row.move}")
            last = row.move
        if not row.move and sorted(row.members) == sorted(want):
            print(f"shard {args.shard}: {'aborted' if args.abort else 'moved'}; group {', '.join(row.members)}")
            return 0
    print(f"hsm-coordinator shard: the move is not done after {args.timeout:g} s; it goes on "
          "(hsmctl status shows each shard's group)", file=sys.stderr)
    return 1


def _reshard(args: argparse.Namespace) -> int:
    import time

    from hsm.v1 import coordinator_pb2

    if args.add < 0 or (args.add and args.abort):
        print("hsm-coordinator reshard: give --add N (N >= 1) or --abort, not both", file=sys.stderr)
        return 2
    call = _admin_caller(args, "reshard")
    if call is None:
        return 2

    def ask(request: coordinator_pb2.ReshardRequest) -> coordinator_pb2.ReshardResponse | None:
        # shard 0 may be electing a leader (seconds): asked again meanwhile (a
        # split asked twice is the same split)
        end = time.monotonic() + 15.0
        while True:
            resp, errors = call("Reshard", request, 60.0)
            if resp is not None or time.monotonic() > end or not all(": UNAVAILABLE: " in e for e in errors):
                break
            time.sleep(0.5)
        for e in errors:
            print(f"hsm-coordinator reshard: {e}", file=sys.stderr)
        return resp  # type: ignore[no-any-return]

    def show(r: coordinator_pb2.ReshardResponse) -> str:
        line = f"ring: {r.shards} shards, version {r.ring_version}; " + (r.split or "no split ever ran")
        return line + (f"; waiting: {r.waiting}" if r.waiting else "")

    resp = ask(coordinator_pb2.ReshardRequest(add=args.add, abort=args.abort))
    if resp is None:
        return 1
    print(show(resp))
    if not args.wait or resp.phase in ("", "done", "aborted"):
        return 0
    end = time.monotonic() + args.timeout
    last = show(resp)
    while time.monotonic() < end:
        time.sleep(1.0)
        r = ask(coordinator_pb2.ReshardRequest())
        if r is None:
            continue
        if show(r) != last:
            last = show(r)
            print(last)
        if r.phase in ("done", "aborted"):
            return 0
    print(f"hsm-coordinator reshard: the split is not done after {args.timeout:g} s; it goes on "
          "(hsm-coordinator reshard shows where it stands)", file=sys.stderr)
    return 1


def _rebalance(args: argparse.Namespace) -> int:
    import time

    from hsm.v1 import coordinator_pb2

    what = "replica" if args.command == "replica" else "rebalance"
    call = _admin_caller(args, what)
    if call is None:
        return 2
    if args.command == "replica":
        req = coordinator_pb2.RebalanceRequest(drain=args.replica if args.replica_command == "drain" else "",
                                               undrain=args.replica if args.replica_command == "undrain" else "")
    else:
        req = coordinator_pb2.RebalanceRequest(enabled={"on": 1, "off": 2}.get(args.switch or "", 0))

    def ask(request: coordinator_pb2.RebalanceRequest) -> coordinator_pb2.RebalanceResponse | None:
        resp, errors = call("Rebalance", request, 30.0)
        for e in errors:
            print(f"hsm-coordinator {what}: {e}", file=sys.stderr)
        return resp  # type: ignore[no-any-return]

    resp = ask(req)
    if resp is None:
        return 1

    def show(r: coordinator_pb2.RebalanceResponse) -> None:
        print(f"rebalancer {'on' if r.enabled else 'off'}; drained: {', '.join(r.drained) or 'none'}")
        width = max((len(x.id) for x in r.replicas), default=7)
        print(f"{'REPLICA':<{width}}  SHARDS  LEADS")
        for x in r.replicas:
            print(f"{x.id:<{width}}  {x.shards:>6}  {x.leads:>5}" + ("  drained" if x.drained else ""))
        print(f"next: {r.next or 'nothing'}")

    show(resp)
    if not resp.enabled and args.command == "replica" and args.replica_command == "drain":
        print("the rebalancer is off: nothing moves until `hsm-coordinator rebalance on`", file=sys.stderr)
    if args.command != "replica" or args.replica_command != "drain" or not args.wait:
        return 0
    end = time.monotonic() + args.timeout
    while time.monotonic() < end:
        time.sleep(1.0)
        r = ask(coordinator_pb2.RebalanceRequest())
        if r is None:
            continue
        held = next((x.shards for x in r.replicas if x.id == args.replica), 0)
        if held == 0 and r.next in ("balanced", ""):
            print(f"replica {args.replica} holds no shard: it can be stopped")
            return 0
    print(f"hsm-coordinator replica: {args.replica} still holds shards after {args.timeout:g} s; the drain goes on",
          file=sys.stderr)
    return 1


def _certs(args: argparse.Namespace) -> int:
    from coordinator import certs

    try:
        if args.certs_command == "init":
            path = certs.init_ca(args.dir, args.name, args.days)
            print(f"wrote {path} (give it to every replica, agent and client) and {args.dir / certs.CA_KEY} "
                  "(mode 0600: keep it off the cluster's hosts)")
        elif args.certs_command == "issue":
            cert, key = certs.issue(args.dir, args.name, args.role, args.out, tuple(args.host), args.days)
            print(f"wrote {cert} and {key} (mode 0600): {args.name}, role {args.role}, "
                  f"valid {args.days} days" + (f", hosts {', '.join(args.host)}" if args.host else ""))
        else:
            print("\n".join(certs.describe(p, args.ca) for p in args.cert))
    except certs.CertError as exc:
        print(f"hsm-coordinator certs: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"hsm-coordinator certs: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "init":
        try:
            replicas = [cfgmod.parse_replica(r) for r in args.replica]
            cfg_path, pw_path = cfgmod.init_cluster(args.out, args.name, args.shards, replicas,
                                                    data_dir=args.data_dir, archive_ids=tuple(args.archive_ids),
                                                    tls=not args.insecure, replication=args.replication)
        except cfgmod.ConfigError as exc:
            print(f"hsm-coordinator init: {exc}", file=sys.stderr)
            return 2
        spec = cfgmod.load(cfg_path, {"replica_id": replicas[0].id})[0].cluster
        groups = (f", each in a group of {spec.replication}" if spec.placement else "")
        print(f"wrote {cfg_path} and {pw_path} ({len(replicas)} replicas, {args.shards} shards{groups}, "
              f"cluster id {spec.cluster_id})")
        if not args.insecure:
            tls = args.out / "tls"
            print(f"wrote the cluster CA and certificates in {tls}: one per replica, and {cfgmod.ADMIN_CERT}.pem "
                  f"(role admin) for hsmctl; issue agents' with hsm-coordinator certs issue --dir {tls} "
                  "--name AGENT_ID --role agent, then move ca.key off this host (it signs certificates: it belongs "
                  "on no replica)")
        print("copy both files" + ("" if args.insecure else " and the tls directory") + " to every replica, "
              f"then on each: hsm-coordinator run --config {cfg_path} --replica-id ID")
        return 0

    if args.command == "member":
        return _member(args)

    if args.command == "shard":
        return _shard(args)

    if args.command in ("replica", "rebalance"):
        return _rebalance(args)

    if args.command == "reshard":
        return _reshard(args)

    if args.command == "certs":
        return _certs(args)

    if args.command == "run":
        overrides = {
            "replica_id": args.replica_id,
            "data_dir": args.data_dir,
            "listen": args.listen,
            "raft_bind": args.raft_bind,
            "metrics_listen": args.metrics_listen,
            "archive_ids": tuple(args.archive_ids) if args.archive_ids else None,
            "agent_grace": args.agent_grace,
            "log_level": args.log_level,
            "log_format": args.log_format,
        }
        try:
            cfg, logging_ = cfgmod.load(args.config, overrides)
        except cfgmod.ConfigError as exc:
            print(f"hsm-coordinator: configuration error: {exc}", file=sys.stderr)
            return 2
        setup_logging(logging_.level, fmt=logging_.format)
        try:
            with asyncio.Runner(loop_factory=new_loop) as runner:
                return runner.run(_serve(cfg))
        except OSError as exc:
            print(f"hsm-coordinator: {exc}", file=sys.stderr)
            return 1
        except Exception as exc:  # RaftStorageError and friends: say it, no traceback
            logging.getLogger("coordinator").exception("fatal")
            print(f"hsm-coordinator: {exc}", file=sys.stderr)
            return 1

    from coordinator.local import LocalSystem, run_foreground

    if args.agents < 0 or args.replicas < 1 or not 1 <= args.shards <= 999:
        print("hsm-coordinator local: need --replicas >= 1, --agents >= 0, --shards 1..999", file=sys.stderr)
        return 2
    args.dir.mkdir(parents=True, exist_ok=True)
    system = LocalSystem(dir=args.dir.resolve(), replicas=args.replicas, shards=args.shards, agents=args.agents,
                         port=args.port, archive_ids=tuple(args.archive_ids), fsname=args.fsname,
                         log_level=args.log_level)
    try:
        with asyncio.Runner(loop_factory=new_loop) as runner:
            return runner.run(run_foreground(system, lambda s: print(s, flush=True)))
    except (OSError, RuntimeError, cfgmod.ConfigError) as exc:
        print(f"hsm-coordinator local: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
