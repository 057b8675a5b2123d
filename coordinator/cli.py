"""``hsm-coordinator``: run a coordinator replica, or a whole local system."""

from __future__ import annotations

import os

# We start agentd children with fork+exec only; gRPC's fork handlers are not
# needed and would log "skipping fork() handlers" at every spawn.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import argparse  # noqa: E402
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import hsm
from coordinator import config as cfgmod
from coordinator.node import CoordinatorNode

EPILOG = """\
commands:
  run     one coordinator replica, from a config file plus flags
  local   a complete system in the foreground: a coordinator, N agentd with
          the posix mover, a simulated Lustre tree (simfs) and an archive

examples:
  hsm-coordinator local --dir /tmp/hsm --agents 2
  hsm-coordinator run --config /etc/hsm/coordinator.yaml
  hsm-coordinator run --listen 0.0.0.0:7600 --archive-ids 1,2

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

    run = sub.add_parser("run", help="run one coordinator replica",
                         description="Run one coordinator replica (config file keys are documented in "
                                     "the README; flags override the file).")
    run.add_argument("--config", metavar="FILE", help="YAML config file")
    run.add_argument("--replica-id", help="this replica's name (default: short host name)")
    run.add_argument("--listen", metavar="HOST:PORT", help="gRPC API address (default 127.0.0.1:7600)")
    run.add_argument("--archive-ids", type=_archive_ids, metavar="N[,N...]", help="archive ids that exist (default 1)")
    run.add_argument("--default-archive-id", type=int, metavar="N")
    run.add_argument("--agent-grace", type=float, metavar="SECONDS",
                     help="how long a disconnected agent keeps its actions (default 60)")
    run.add_argument("--max-attempts", type=int, metavar="N", help="starts per action before it fails (default 3)")
    run.add_argument("--log-level", choices=cfgmod.LOG_LEVELS)

    loc = sub.add_parser("local", help="run a complete local system in the foreground",
                         description="Start a coordinator, N agentd processes (posix mover), a simfs tree at "
                                     "DIR/fs and an archive at DIR/archive. Prints the address to use with "
                                     "hsmctl --coordinators (or HSM_COORDINATORS). Ctrl-C or SIGTERM stops it.")
    loc.add_argument("--dir", required=True, type=Path, help="working directory (created if missing)")
    loc.add_argument("--agents", type=int, default=2, metavar="N", help="agentd processes to start (default 2)")
    loc.add_argument("--listen", default="127.0.0.1:7600", metavar="HOST:PORT",
                     help="coordinator address (default 127.0.0.1:7600; port 0 picks a free one)")
    loc.add_argument("--archive-ids", type=_archive_ids, default=[1], metavar="N[,N...]")
    loc.add_argument("--fsname", default="simfs", help="file system name of a new simfs tree (default simfs)")
    loc.add_argument("--log-level", choices=cfgmod.LOG_LEVELS, default="warning")
    return p


def setup_logging(level: str, filename: Path | None = None) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        filename=filename,
    )


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.new_event_loop()


async def _serve(node: CoordinatorNode) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    print(f"hsm-coordinator: replica {node.config.replica_id} serving on {node.address}", flush=True)
    await stop.wait()
    await node.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        overrides = {
            "replica_id": args.replica_id,
            "listen": args.listen,
            "archive_ids": tuple(args.archive_ids) if args.archive_ids else None,
            "default_archive_id": args.default_archive_id,
            "agent_grace": args.agent_grace,
            "max_attempts": args.max_attempts,
            "log_level": args.log_level,
        }
        try:
            cfg, level = cfgmod.load(args.config, overrides)
        except cfgmod.ConfigError as exc:
            print(f"hsm-coordinator: configuration error: {exc}", file=sys.stderr)
            return 2
        setup_logging(level)
        try:
            with asyncio.Runner(loop_factory=_new_loop) as runner:
                return runner.run(_serve(CoordinatorNode(cfg)))
        except OSError as exc:
            print(f"hsm-coordinator: {exc}", file=sys.stderr)
            return 1

    from coordinator.local import LocalSystem, run_foreground

    if args.agents < 0:
        print("hsm-coordinator: --agents must be >= 0", file=sys.stderr)
        return 2
    args.dir.mkdir(parents=True, exist_ok=True)
    (args.dir / "logs").mkdir(exist_ok=True)
    setup_logging(args.log_level, args.dir / "logs" / "coordinator.log")
    system = LocalSystem(dir=args.dir.resolve(), agents=args.agents, listen=args.listen,
                         archive_ids=tuple(args.archive_ids), fsname=args.fsname)
    try:
        with asyncio.Runner(loop_factory=_new_loop) as runner:
            return runner.run(run_foreground(system, lambda s: print(s, flush=True)))
    except (OSError, RuntimeError) as exc:
        print(f"hsm-coordinator local: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
