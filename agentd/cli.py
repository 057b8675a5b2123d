"""``agentd``: the HSM mover daemon's command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from agentd.config import (
    ENV_CLUSTER,
    ENV_COORDINATORS,
    LOG_LEVELS,
    AgentConfig,
    ConfigError,
    Override,
    load_config,
)
from hsm import __version__, gctune, logsetup, stall

log = logging.getLogger("agentd")

_DESCRIPTION = """\
The HSM mover daemon. It connects to the coordinator replicas, pulls HSM
actions (archive, restore, remove) as it has free slots, moves the data with
a mover plugin, and reports progress and completion.

Settings come from the YAML file given with --config, then the environment
(HSM_COORDINATORS), then these flags; a flag wins. Every file key is described
in the module documentation of agentd.config (and the README).
"""

_EPILOG = """\
movers:
  null     complete every action at once without moving data (benchmarks
           and tests only; --null-delay SECONDS makes each take that long)
  posix    copy files into an archive tree under --archive-root, in the
           lhsmtool_posix v1 layout (existing lhsmtool_posix archives work
           unchanged). Options: --bandwidth-limit, and in the file
           mover.chunk_size, mover.checksum.
  command  run a site command per action, like lhsmtool_cmd: --archive-cmd,
           --restore-cmd, --remove-cmd (a kind whose slots are not 0 needs
           its command). A command is split like a shell line (no shell
           runs; use sh -c '...' for one) and these placeholders are
           replaced in each argument:
             {fid}         the file's FID, [0x200000400:0x1:0x0]
             {fid_bare}    the FID without brackets
             {path}        ARCHIVE: a path that reads the file's data;
                           RESTORE/REMOVE: the file's open-by-FID path
             {dest}        RESTORE only: the volatile file to write into
             {archive_id}  the archive id       {fsname}  file system name
             {action_id}   the action's id      {attempt} attempt number
             {kind}        archive, restore or remove
             {offset} {length}  the extent (length -1: to end of file)
             {data}        the request's hints (key=value,...)
           Exit 0 is success, 75 a transient failure (retried), another
           code 1..133 the errno. A stdout line "progress DONE [TOTAL]"
           reports progress.

backends:
  simfs    a simulated Lustre tree (--fs-root DIR)
  lustre   a Lustre client mount through liblustreapi: --backend lustre
           --mount DIR --fsname NAME [--liblustreapi PATH]. Actions come
           from the MDT through hsm-bridge and are begun, progressed and
           ended at the MDT by cookie (llapi_hsm_action_begin/progress/end);
           an action without a lustre:NAME cookie fails with EINVAL. Needs
           root. --copytool-handle fake (default) does not register with the
           MDT; register does, for an archive id no request uses
           (--register-archive-id N).

signals:
  SIGTERM/SIGINT stop taking work, wait up to drain_timeout (30 s) for the
  running actions, cancel what is left (given back to the coordinator to
  run elsewhere), report it, and exit 0. A second signal cancels the running
  actions at once. Exit status 1 if a mover ignored its cancel, 2 for a
  configuration error.
  SIGUSR1 writes the stack of every thread to standard error and goes on
  (the same is logged by itself when the event loop has not run for
  $HSM_STALL_DUMP_AFTER seconds, default 20, 0: never).

examples:
  agentd --config /etc/agentd.yaml
  agentd --coordinators hsm-0:7600,hsm-1:7600,hsm-2:7600 \\
         --fs-root /srv/simfs --archive-root /srv/archive --slots archive=8,restore=4
  agentd --backend lustre --mount /mnt/lustre --fsname lustre --archive-root /srv/archive
  agentd --fs-root /srv/simfs --mover command \\
         --archive-cmd '/opt/hsm/put {path} {fid}' --restore-cmd '/opt/hsm/get {fid} {dest}' \\
         --slots remove=0
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="agentd",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"agentd {__version__}")
    p.add_argument("--config", metavar="FILE", help="YAML configuration file")
    p.add_argument(
        "--coordinators",
        metavar="ADDR[,ADDR]",
        help=f"coordinator replicas, host:port comma-separated (env {ENV_COORDINATORS}; "
        "default 127.0.0.1:7600)",
    )
    p.add_argument("--agent-id", metavar="ID", help="stable agent id (default: short host name)")
    p.add_argument("--tls-ca", metavar="PEM", help="mutual TLS: the cluster CA's certificate (tls.ca; "
                   "environment HSM_TLS_CA)")
    p.add_argument("--tls-cert", metavar="PEM", help="mutual TLS: this agent's certificate, issued for its "
                   "agent id (tls.cert; HSM_TLS_CERT)")
    p.add_argument("--tls-key", metavar="PEM", help="mutual TLS: its key (tls.key; HSM_TLS_KEY)")
    p.add_argument("--cluster-id", metavar="ID",
                   help=f"work only for the cluster with this id (env {ENV_CLUSTER}; default: the "
                   "cluster of the first replica that answers)")
    p.add_argument("--backend", choices=("simfs", "lustre"),
                   help="file system backend (backend.type; default simfs)")
    p.add_argument("--fs-root", metavar="DIR", help="simfs backend: root of the simfs tree (backend.root)")
    p.add_argument("--mount", metavar="DIR", help="lustre backend: the Lustre client mount point (backend.mount)")
    p.add_argument("--fsname", metavar="NAME",
                   help="lustre backend: the file system's name; actions are begun and ended at its MDT "
                   "with the cookies of the requester lustre:NAME (backend.fsname)")
    p.add_argument("--liblustreapi", metavar="PATH",
                   help="lustre backend: liblustreapi to load (backend.library; default $HSM_LIBLUSTREAPI, "
                   "else liblustreapi.so.1)")
    p.add_argument("--copytool-handle", choices=("fake", "register"),
                   help="lustre backend: fake (default) builds the copytool handle begin needs from the mount, "
                   "without registering with the MDT; register registers for --register-archive-id "
                   "(backend.copytool_handle)")
    p.add_argument("--register-archive-id", metavar="N",
                   help="lustre backend with --copytool-handle register: an archive id no request uses")
    p.add_argument("--mover", choices=("posix", "command", "null"), help="mover plugin (default posix)")
    p.add_argument("--null-delay", metavar="SECONDS", help="null mover: seconds each action takes (default 0)")
    p.add_argument("--archive-root", metavar="DIR", help="posix mover: root of the archive tree")
    p.add_argument(
        "--archive-id",
        metavar="N",
        action="append",
        help="serve this archive id (repeatable; default: every archive id)",
    )
    p.add_argument("--tags", metavar="TAG[,TAG...]",
                   help="tags this agent serves: actions whose data names one (tag=TAG) go only to agents serving "
                        "it, one of them by consistent hashing; it takes untagged work too (default: none)")
    p.add_argument(
        "--slots",
        metavar="KIND=N[,...]",
        help="concurrent actions per kind, e.g. archive=4,restore=4,remove=2 "
        "(kinds not named keep their value; 0: never take that kind)",
    )
    p.add_argument(
        "--bandwidth-limit",
        metavar="BYTES",
        help="posix mover: bytes per second per transfer, e.g. 100M (0: unlimited)",
    )
    p.add_argument("--archive-cmd", metavar="CMD", help="command mover: command for ARCHIVE")
    p.add_argument("--restore-cmd", metavar="CMD", help="command mover: command for RESTORE")
    p.add_argument("--remove-cmd", metavar="CMD", help="command mover: command for REMOVE")
    p.add_argument("--log-format", choices=("text", "json"),
                   help="text (default) or json: one JSON object per line, with action_id, attempt, kind and fid "
                        "on every line about an action (log_format)")
    p.add_argument("--metrics-listen", metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (metrics_listen; default none)")
    p.add_argument(
        "--log-level",
        metavar="LEVEL",
        help=f"one of {', '.join(LOG_LEVELS)} (default INFO)",
    )
    return p


def _parse_slots(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        kind, sep, num = part.partition("=")
        kind = kind.strip().lower()
        if not sep or kind not in ("archive", "restore", "remove"):
            raise ConfigError(
                f"--slots: expected KIND=N[,KIND=N...] with KIND archive, restore or remove, got {part!r}"
            )
        num = num.strip()
        if not num.isdigit():
            raise ConfigError(f"--slots: {kind}={num!r}: N must be a whole number >= 0")
        out[kind] = int(num)
    if not out:
        raise ConfigError("--slots: expected KIND=N[,KIND=N...], e.g. archive=4,restore=4,remove=2")
    return out


def overrides_from_args(args: argparse.Namespace) -> list[Override]:
    """The flags given, as config overrides (raises ConfigError)."""
    ov: list[Override] = []
    if args.coordinators is not None:
        ov.append(Override("coordinators", args.coordinators, "--coordinators"))
    if args.agent_id is not None:
        ov.append(Override("agent_id", args.agent_id, "--agent-id"))
    for flag, key in (("tls_ca", "ca"), ("tls_cert", "cert"), ("tls_key", "key")):
        value = getattr(args, flag, None)
        if value is not None:
            ov.append(Override(f"tls.{key}", value, f"--{flag.replace('_', '-')}"))
    if args.cluster_id is not None:
        ov.append(Override("cluster_id", args.cluster_id, "--cluster-id"))
    if args.mover is not None:
        ov.append(Override("mover.type", args.mover, "--mover"))
    if args.backend is not None:
        ov.append(Override("backend.type", args.backend, "--backend"))
    if args.fs_root is not None:
        ov.append(Override("backend.root", args.fs_root, "--fs-root"))
    for flag, key in (("mount", "mount"), ("fsname", "fsname"), ("liblustreapi", "library"),
                      ("copytool_handle", "copytool_handle")):
        v = getattr(args, flag)
        if v is not None:
            ov.append(Override(f"backend.{key}", v, f"--{flag.replace('_', '-')}"))
    if args.register_archive_id is not None:
        v = args.register_archive_id.strip()
        if not v.isdigit():
            raise ConfigError(f"--register-archive-id: {v!r} is not an archive id (a number)")
        ov.append(Override("backend.register_archive_id", int(v), "--register-archive-id"))
    if args.archive_root is not None:
        ov.append(Override("mover.archive_root", args.archive_root, "--archive-root"))
    if args.archive_id is not None:
        ids: list[int] = []
        for v in args.archive_id:
            v = v.strip()
            if not v.isdigit():
                raise ConfigError(f"--archive-id: {v!r} is not an archive id (a number 1..4294967295)")
            ids.append(int(v))
        ov.append(Override("archive_ids", ids, "--archive-id"))
    if args.tags is not None:
        ov.append(Override("tags", [t.strip() for t in args.tags.split(",") if t.strip()], "--tags"))
    if args.slots is not None:
        for kind, n in _parse_slots(args.slots).items():
            ov.append(Override(f"slots.{kind}", n, "--slots"))
    if args.bandwidth_limit is not None:
        ov.append(Override("mover.bandwidth_limit", args.bandwidth_limit, "--bandwidth-limit"))
    if args.null_delay is not None:
        ov.append(Override("mover.delay", args.null_delay, "--null-delay"))
    for kind in ("archive", "restore", "remove"):
        v = getattr(args, f"{kind}_cmd")
        if v is not None:
            ov.append(Override(f"mover.{kind}_cmd", v, f"--{kind}-cmd"))
    if args.log_level is not None:
        ov.append(Override("log_level", args.log_level, "--log-level"))
    if args.log_format is not None:
        ov.append(Override("log_format", args.log_format, "--log-format"))
    if args.metrics_listen is not None:
        ov.append(Override("metrics_listen", args.metrics_listen, "--metrics-listen"))
    return ov


def config_from_args(argv: Sequence[str] | None = None) -> AgentConfig:
    """Parse flags and load the configuration (raises ConfigError)."""
    args = build_parser().parse_args(argv)
    return load_config(args.config, overrides_from_args(args))


def setup_logging(level: str, fmt: str = "text") -> None:
    logsetup.setup(level, fmt, stream=sys.stderr)


async def _serve(config: AgentConfig) -> int:
    from agentd.daemon import Agent, make_backend, make_mover

    backend = make_backend(config)
    mover = make_mover(config)
    agent = Agent(config, backend, mover)
    gctune.tune_for_service()
    stall.enable_stack_dumps()
    stall_watch = stall.start(f"agent {config.agent_id}")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, agent, sig)
    try:
        status = await agent.run()
    finally:
        if stall_watch is not None:
            stall_watch.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    close = getattr(backend, "close", None)
    if close is not None and status == 0:
        close()  # unregister from the MDT (lustre); not while a mover thread still runs
    return status


def _on_signal(agent: object, sig: signal.Signals) -> None:
    from agentd.daemon import Agent

    assert isinstance(agent, Agent)
    if agent.stopping:
        log.info("received %s again: cancelling the running actions now", sig.name)
    else:
        log.info("received %s: stopping", sig.name)
    agent.stop()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = config_from_args(argv)
    except ConfigError as exc:
        print(f"agentd: error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.log_format)
    import uvloop

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            status = runner.run(_serve(config))
    except ConfigError as exc:
        print(f"agentd: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # interrupted before the signal handlers were set
        return 130
    if status != 0:
        # a mover thread ignored its cancel: do not hang on it at exit
        logging.shutdown()
        sys.stderr.flush()
        os._exit(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
