"""agentd configuration: a YAML file, the ``HSM_COORDINATORS`` environment
variable and command-line flags, merged in that order (a flag wins over the
environment, which wins over the file) and checked once into a frozen
:class:`AgentConfig`.

Every problem is a :class:`ConfigError` whose message names the key and
where its value came from (the file, the environment or the flag), e.g.
``/etc/agentd.yaml: mover.archive_root: required for the posix mover``.

Reference (every key is optional unless marked *required*):

``agent_id`` (string)
    Stable id of this agent in the cluster; keep it the same across restarts
    so the coordinator can give a restarted agent its running actions back.
    Default: the short host name. Flag ``--agent-id``.
``coordinators`` (list of ``host:port``, or one comma-separated string)
    Coordinator replicas to open a Work stream to (IPv6 as ``[::1]:7600``).
    Default ``["127.0.0.1:7600"]``. Environment ``HSM_COORDINATORS``
    (comma-separated) overrides the file; flag ``--coordinators`` overrides both.
``cluster_id`` (string)
    The id of the cluster this agent works for (``hsm-coordinator local``
    prints it; ``cluster.id`` in the coordinators' ``coordinator.yaml``).
    A replica of another cluster is refused, and refuses the agent. Default
    empty: the first replica that welcomes the agent names the cluster, and
    every other replica must belong to the same one. Environment
    ``HSM_CLUSTER``; flag ``--cluster-id``.
``archive_ids`` (list of integers 1..4294967295)
    Archive ids this agent serves. Default ``[]``: every archive id.
    Flag ``--archive-id N`` (repeatable) replaces the list.
``tags`` (list of strings)
    Tags this agent serves: an action whose data names a tag (``tag=NAME``,
    set by the requester or by a policy rule) goes only to an agent that
    serves it, one of them by consistent hashing (when that agent leaves,
    only its tags move). A tape restore's ``volume=`` goes to one agent the
    same way. The agent also takes untagged work. 1 to 64 characters each,
    no ``,``, ``=`` or space; at most 64. Default ``[]``. Flag ``--tags
    a,b`` replaces the list.
``slots`` (mapping)
    How many actions of each kind may run at once: ``archive`` (default 4),
    ``restore`` (default 4), ``remove`` (default 2). 0 means "never take
    this kind"; at least one must be positive. Flag
    ``--slots archive=8,restore=2`` sets the kinds it names.
``backend`` (mapping, *required*)
    The file system the agent works on.

    ``type``
        ``simfs`` (default): a simulated Lustre tree; ``lustre``: a Lustre
        client mount through liblustreapi (``agentd.lustre_backend``).
        Flag ``--backend``.
    ``root`` (simfs, *required*)
        The simfs root directory. Flag ``--fs-root``.
    ``mount`` (lustre, *required*)
        The Lustre client mount point (it has ``.lustre/fid``). Flag ``--mount``.
    ``fsname`` (lustre, *required*)
        The file system's name: the agent takes only its actions, and
        begins and ends them at the MDT with the cookies of the requester
        ``lustre:<fsname>`` (hsm-bridge's). Flag ``--fsname``.
    ``library`` (lustre)
        liblustreapi to load. Default: environment ``HSM_LIBLUSTREAPI``, else
        ``liblustreapi.so.1``. Flag ``--liblustreapi``.
    ``copytool_handle`` (lustre, ``fake`` or ``register``; default ``fake``)
        How agentd gets the copytool handle ``llapi_hsm_action_begin``
        needs: ``fake`` builds one from the mount without registering (as
        coordinatool's movers do; the MDT never sends this node a list);
        ``register`` registers with the MDT for ``register_archive_id``
        (see ``agentd.lustre_backend`` for the risks of each). Flag
        ``--copytool-handle``.
    ``register_archive_id`` (lustre, with ``copytool_handle: register``)
        An archive id no request ever uses (1..2147483647). Flag
        ``--register-archive-id``.
``mover`` (mapping, *required*)
    How data is moved. ``type`` is ``posix`` (default) or ``command``
    (flag ``--mover``).

    posix mover keys: copies files into an archive tree in the
    ``lhsmtool_posix`` v1 layout.

    ``archive_root`` (*required*)
        Root directory of the archive. Flag ``--archive-root``.
    ``chunk_size`` (size, default ``1MiB``)
        Bytes per read/write.
    ``bandwidth_limit`` (size per second, default 0 = unlimited)
        Cap on each transfer's rate. Flag ``--bandwidth-limit``.
    ``progress_interval`` (seconds, default: the top-level ``progress_interval``)
        How often the mover reports bytes moved.
    ``progress_bytes`` (size, default ``64MiB``; 0 = only by time)
        Also report after this many bytes.
    ``checksum`` (algorithm name, or ``false``; default ``sha256``)
        Checksum stored with each archived object (user xattr
        ``user.hsm.checksum``) and verified on restore; any ``hashlib``
        algorithm. ``false`` archives without checksums (needed when the
        archive file system has no user xattrs).
    ``pack_below`` (size, default 0 = off)
        Archives of whole files smaller than this go into shared container
        objects (``<archive_root>/containers/``, docs/packing.md) instead of
        an object each; at most ``64M``.
    ``pack_files`` (integer, default 1000), ``pack_bytes`` (size, default ``64MiB``)
        A container is written once it holds this many files or bytes ...
    ``pack_idle`` (seconds, default 2)
        ... or once no file came for this long.

    null mover keys: completes every action at once without moving data
    (benchmarks and tests only; the file's HSM state is not touched).

    ``delay`` (seconds, default 0)
        How long each action "takes".

    command mover keys: runs a site command per action, like
    ``lhsmtool_cmd`` (see ``agentd.movers.command``). Each command is a
    string split like a shell line (no shell runs: write ``sh -c '...'`` for
    one) in which these placeholders are replaced: ``{fid}`` (the FID,
    ``[0x200000400:0x1:0x0]``), ``{fid_bare}`` (without brackets), ``{path}``
    (archive: a path reading the file's data; restore/remove: the file's
    open-by-FID path), ``{dest}`` (restore only: the volatile file to write
    the data into), ``{fsname}``, ``{archive_id}``, ``{action_id}``,
    ``{attempt}``, ``{kind}`` (``archive``, ``restore``, ``remove``),
    ``{offset}`` and ``{length}`` (the extent, -1: to end of file) and
    ``{data}`` (the request's hints). Exit 0 is success, 75 a transient
    failure that is retried, another code 1..133 the errno; a stdout line
    ``progress <bytes_done> [<bytes_total>]`` reports progress.

    ``archive_cmd``, ``restore_cmd``, ``remove_cmd``
        The command for each kind; required for every kind whose
        ``slots`` entry is positive (set that slot count to 0 to not take
        the kind). Flags ``--archive-cmd``, ``--restore-cmd``, ``--remove-cmd``.
    ``timeout`` (seconds, default 0 = none)
        Kill a command that runs longer; the action fails with ETIMEDOUT.
    ``kill_grace`` (seconds, default 5)
        Time between SIGTERM and SIGKILL when a command is cancelled or
        times out.
``heartbeat_interval`` (seconds, default 5)
    Heartbeat period when the coordinator's Welcome does not set one (the
    coordinator's value wins).
``progress_interval`` (seconds, default 2)
    At most one progress report per action per interval is sent to the
    coordinator; the final byte count always rides in the completion.
``drain_timeout`` (seconds, default 30)
    On SIGTERM/SIGINT, how long running actions may finish before they are
    cancelled. A second signal cancels them at once.
``reconnect_min_delay``, ``reconnect_max_delay`` (seconds, default 0.2 and 5)
    Bounds of the jittered exponential backoff between reconnections.
``log_level`` (string, default ``INFO``)
    ``DEBUG``, ``INFO``, ``WARNING``, ``ERROR`` or ``CRITICAL``. Flag ``--log-level``.
``log_format`` (string, default ``text``)
    ``text`` or ``json`` (one JSON object per line, with ``action_id``,
    ``attempt``, ``kind`` and ``fid`` on every line about an action;
    hsm/logsetup.py). Flag ``--log-format``.
``metrics_listen`` (``HOST:PORT``, default none)
    Serve Prometheus metrics at ``http://HOST:PORT/metrics`` (agentd/metrics.py).
    Flag ``--metrics-listen``.

Sizes are integers (bytes) or strings with a binary suffix: ``512K``,
``4M``, ``1GiB``, ``10MB`` (K, M, G, T are powers of 1024).

Example (``agentd.yaml``)::

    agent_id: mover01
    coordinators:
      - hsm-0.example.net:7600
      - hsm-1.example.net:7600
      - hsm-2.example.net:7600
    archive_ids: [1]
    slots:
      archive: 8
      restore: 8
      remove: 2
    backend:
      type: simfs
      root: /srv/simfs
    mover:
      type: posix
      archive_root: /srv/archive
      chunk_size: 4MiB
      bandwidth_limit: 200M
    progress_interval: 2
    drain_timeout: 30
    log_level: INFO

On a Lustre client (root; the MDT's requests arrive through hsm-bridge)::

    backend:
      type: lustre
      mount: /mnt/lustre
      fsname: lustre
      library: /usr/lib64/liblustreapi.so.1   # default: $HSM_LIBLUSTREAPI, liblustreapi.so.1
      copytool_handle: fake                   # or register, with register_archive_id

The same agent with a site script instead::

    mover:
      type: command
      archive_cmd: /opt/hsm/put {path} {fid} {archive_id}
      restore_cmd: /opt/hsm/get {fid} {dest} {archive_id}
      remove_cmd: /opt/hsm/rm {fid} {archive_id}
      timeout: 3600
"""

from __future__ import annotations

import difflib
import hashlib
import math
import os
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hsm.hsmflags import HSMA
from hsm.logsetup import LOG_FORMATS
from hsm.metrics import split_host_port
from hsm.tls import ENV_CA, ENV_CERT, ENV_KEY, TlsError, TlsFiles, identity_of
from hsm.wire import FSNAME_RULE, valid_fsname

DEFAULT_COORDINATOR = "127.0.0.1:7600"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
ENV_COORDINATORS = "HSM_COORDINATORS"
ENV_CLUSTER = "HSM_CLUSTER"
_U32 = (1 << 32) - 1


class ConfigError(Exception):
    """A configuration problem, worded for the admin who has to fix it."""


@dataclass(frozen=True, slots=True)
class SlotsConfig:
    """Concurrent actions per kind."""

    archive: int = 4
    restore: int = 4
    remove: int = 2

    def for_kind(self, kind: int) -> int:
        if kind == HSMA.ARCHIVE:
            return self.archive
        if kind == HSMA.RESTORE:
            return self.restore
        if kind == HSMA.REMOVE:
            return self.remove
        return 0

    @property
    def total(self) -> int:
        return self.archive + self.restore + self.remove


@dataclass(frozen=True, slots=True)
class BackendConfig:
    type: str = "simfs"
    root: str = ""  # simfs
    mount: str = ""  # lustre
    fsname: str = ""
    library: str = ""  # empty: $HSM_LIBLUSTREAPI, else liblustreapi.so.1
    copytool_handle: str = "fake"  # or "register"
    register_archive_id: int | None = None


@dataclass(frozen=True, slots=True)
class PosixMoverConfig:
    archive_root: str
    chunk_size: int = 1 << 20
    bandwidth_limit: int = 0  # bytes/s, 0: unlimited
    progress_interval: float | None = None  # None: the agent's progress_interval
    progress_bytes: int = 64 << 20  # 0: by time only
    checksum: str | None = "sha256"  # None: no checksum
    #: small-file packing (docs/packing.md): archives of files smaller than
    #: pack_below bytes go into containers (0: off)
    pack_below: int = 0
    pack_files: int = 1000
    pack_bytes: int = 64 << 20
    pack_idle: float = 2.0
    type: str = field(default="posix", init=False)


@dataclass(frozen=True, slots=True)
class CommandMoverConfig:
    archive_cmd: str | None = None
    restore_cmd: str | None = None
    remove_cmd: str | None = None
    timeout: float = 0.0  # 0: none
    kill_grace: float = 5.0
    type: str = field(default="command", init=False)


@dataclass(frozen=True, slots=True)
class NullMoverConfig:
    delay: float = 0.0  # seconds each action "takes"
    type: str = field(default="null", init=False)


MoverConfig = PosixMoverConfig | CommandMoverConfig | NullMoverConfig


def default_agent_id() -> str:
    """The short host name (``mover01`` for ``mover01.example.net``)."""
    return socket.gethostname().split(".")[0] or "agent"


@dataclass(frozen=True, slots=True)
class AgentConfig:
    agent_id: str = field(default_factory=default_agent_id)
    coordinators: tuple[str, ...] = (DEFAULT_COORDINATOR,)
    cluster_id: str = ""  # empty: the first replica that welcomes us names it
    archive_ids: tuple[int, ...] = ()  # empty: every archive id
    tags: tuple[str, ...] = ()  # served tags (an action's tag=): see the module's docstring
    slots: SlotsConfig = field(default_factory=SlotsConfig)
    backend: BackendConfig | None = None
    mover: MoverConfig | None = None
    heartbeat_interval: float = 5.0
    progress_interval: float = 2.0
    drain_timeout: float = 30.0
    reconnect_min_delay: float = 0.2
    reconnect_max_delay: float = 5.0
    log_level: str = "INFO"
    log_format: str = "text"  # or json (hsm.logsetup)
    #: mutual TLS to the coordinators (the CA, this agent's certificate, whose
    #: common name must be agent_id, and its key); None: plain text
    tls: TlsFiles | None = None
    #: HOST:PORT serving Prometheus metrics at /metrics; "" = none
    metrics_listen: str = ""


@dataclass(frozen=True, slots=True)
class Override:
    """One value set from outside the file: ``key`` is dotted (``mover.archive_root``),
    ``source`` names where it came from (``--archive-root``)."""

    key: str
    value: Any
    source: str


# --------------------------------------------------------------------------
# value checkers


class _Origins:
    """Where each dotted key's value came from, for error messages."""

    def __init__(self, default: str) -> None:
        self.default = default
        self.by_key: dict[str, str] = {}

    def of(self, key: str) -> str:
        # the most specific recorded source: "slots.archive", then "slots", ...
        parts = re.sub(r"\[\d+\]", "", key).split(".")
        while parts:
            src = self.by_key.get(".".join(parts))
            if src is not None:
                return src
            parts.pop()
        return self.default


class _Checker:
    def __init__(self, origins: _Origins) -> None:
        self.origins = origins

    def fail(self, key: str, problem: str) -> ConfigError:
        source = self.origins.of(key)
        return ConfigError(f"{source}: {key}: {problem}" if source else f"{key}: {problem}")

    def mapping(self, value: Any, key: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(key, f"must be a mapping of keys to values, got {_show(value)}")
        for k in value:
            if not isinstance(k, str):
                raise self.fail(key, f"keys must be strings, got {_show(k)}")
        return dict(value)

    def unknown(self, data: Mapping[str, Any], known: Iterable[str], prefix: str, what: str) -> None:
        known = sorted(known)
        for k in data:
            if k not in known:
                full = f"{prefix}{k if isinstance(k, str) and len(k) <= 80 else _show(k)}"
                hint = difflib.get_close_matches(k, known, n=1) if isinstance(k, str) else []
                extra = f"; did you mean '{prefix}{hint[0]}'?" if hint else ""
                raise self.fail(full, f"unknown key{extra} ({what} keys: {', '.join(known)})")

    def string(self, value: Any, key: str, *, allow_empty: bool = False) -> str:
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, got {_show(value)}")
        text = str(value).strip()
        if not text and not allow_empty:
            raise self.fail(key, "must not be empty")
        return text

    def integer(self, value: Any, key: str, lo: int, hi: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, got {_show(value)}")
        if value < lo or (hi is not None and value > hi):
            rng = f">= {lo}" if hi is None else f"between {lo} and {hi}"
            raise self.fail(key, f"must be {rng}, got {value}")
        return int(value)

    def seconds(self, value: Any, key: str, *, allow_zero: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise self.fail(key, f"must be a number of seconds, got {_show(value)}")
        try:
            secs = float(value)
        except ValueError:
            raise self.fail(key, f"must be a number of seconds, got {_show(value)}") from None
        if not math.isfinite(secs) or secs < 0 or (secs == 0 and not allow_zero):
            need = ">= 0" if allow_zero else "> 0"
            raise self.fail(key, f"must be a number of seconds {need}, got {_show(value)}")
        return secs

    def size(self, value: Any, key: str) -> int:
        try:
            n = parse_size(value)
        except ValueError as exc:
            raise self.fail(key, str(exc)) from None
        return n


def _show(value: Any, most: int = 80) -> str:
    """*value* in a message: short, whatever the file held."""
    if isinstance(value, str):
        return repr(value[:most]) + (f"... ({len(value)} characters)" if len(value) > most else "")
    if value is None:
        return "nothing (null)"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value)
    return f"{text[:most]}{'...' if len(text) > most else ''} ({type(value).__name__})"


_SIZE_RE = re.compile(r"\s*([0-9]+)\s*(?:([KMGT])(?:I?B)?|B)?\s*", re.IGNORECASE)
_SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: Any) -> int:
    """``4096``, ``"512K"``, ``"4MiB"``, ``"1G"`` -> bytes (powers of 1024)."""
    if isinstance(value, bool):
        raise ValueError(f"must be a size in bytes, got {_show(value)}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must be a size >= 0, got {value}")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.fullmatch(value)
        if m:
            return int(m.group(1)) * _SIZE_UNITS.get((m.group(2) or "").upper(), 1)
    raise ValueError(
        f"must be a size in bytes such as 1048576, 512K, 4MiB or 1G, got {_show(value)}"
    )


_ADDR_RE = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9_.-]+)):([0-9]{1,5})")


def check_address(text: str) -> str:
    """Validate ``host:port`` (``[v6]:port`` for IPv6); raises ValueError."""
    m = _ADDR_RE.fullmatch(text) if len(text) <= 261 else None  # a DNS name is at most 253 characters
    if not m:
        raise ValueError(f"{_show(text)} is not host:port (e.g. 10.0.0.1:7600, hsm-0:7600, [::1]:7600)")
    port = int(m.group(3))
    if not 1 <= port <= 65535:
        raise ValueError(f"{_show(text)}: port {port} is not between 1 and 65535")
    return text


# --------------------------------------------------------------------------
# loading

_TOP_KEYS = (
    "agent_id",
    "coordinators",
    "cluster_id",
    "archive_ids",
    "tags",
    "slots",
    "backend",
    "mover",
    "heartbeat_interval",
    "progress_interval",
    "drain_timeout",
    "reconnect_min_delay",
    "reconnect_max_delay",
    "log_level",
    "log_format",
    "tls",
    "metrics_listen",
)
_SLOT_KEYS = ("archive", "restore", "remove")
#: tags an agent may serve (the coordinator's limit too)
MAX_TAGS = 64
_BACKEND_KEYS = {
    "simfs": ("type", "root"),
    "lustre": ("type", "mount", "fsname", "library", "copytool_handle", "register_archive_id"),
}
_MOVER_KEYS = {
    "posix": (
        "type",
        "archive_root",
        "chunk_size",
        "bandwidth_limit",
        "progress_interval",
        "progress_bytes",
        "checksum",
        "pack_below",
        "pack_files",
        "pack_bytes",
        "pack_idle",
    ),
    "command": ("type", "archive_cmd", "restore_cmd", "remove_cmd", "timeout", "kill_grace"),
    "null": ("type", "delay"),
}


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            dup = key in seen
        except TypeError:
            dup = False
        if dup:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {_show(key)} appears twice", key_node.start_mark
            )
        try:
            seen.add(key)
        except TypeError:
            pass
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


def read_config_file(path: str) -> dict[str, Any]:
    """Parse a YAML config file into a plain dict (not yet checked)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"{path}: not valid YAML{where}: {what}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except Exception as exc:  # a tagged value its constructor cannot make (2020-13-45, !!int x), deep nesting
        raise ConfigError(f"{path}: not valid YAML: {type(exc).__name__}: {str(exc)[:200]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of keys (agent_id, coordinators, ...), "
            f"got {_show(data)}"
        )
    return data


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        child = node.get(p)
        if not isinstance(child, dict):
            child = {}
            node[p] = child
        node = child
    node[parts[-1]] = value


def load_config(
    path: str | None = None,
    overrides: Iterable[Override] = (),
    environ: Mapping[str, str] | None = None,
) -> AgentConfig:
    """Read *path* (if given), apply ``HSM_COORDINATORS`` from *environ*
    (default ``os.environ``) and then *overrides*, and check the result.

    Raises :class:`ConfigError` naming the key and its source on any problem.
    """
    environ = os.environ if environ is None else environ
    source = f"config file {path}" if path else ""
    data: dict[str, Any] = read_config_file(path) if path else {}
    origins = _Origins(source)
    file_mover_type = file_backend_type = None
    if isinstance(data.get("mover"), dict):
        file_mover_type = data["mover"].get("type", "posix")
    if isinstance(data.get("backend"), dict):
        file_backend_type = data["backend"].get("type", "simfs")

    env_coord = environ.get(ENV_COORDINATORS)
    if env_coord is not None and env_coord.strip():
        data["coordinators"] = env_coord
        origins.by_key["coordinators"] = f"environment {ENV_COORDINATORS}"

    for env, key in ((ENV_CA, "ca"), (ENV_CERT, "cert"), (ENV_KEY, "key")):
        value = environ.get(env)
        if value is not None and value.strip():
            _set_dotted(data, f"tls.{key}", value.strip())
            origins.by_key[f"tls.{key}"] = f"environment {env}"

    env_cluster = environ.get(ENV_CLUSTER)
    if env_cluster is not None and env_cluster.strip():
        data["cluster_id"] = env_cluster.strip()
        origins.by_key["cluster_id"] = f"environment {ENV_CLUSTER}"

    for ov in overrides:
        if ov.key == "mover.type" and isinstance(data.get("mover"), dict):
            if ov.value != file_mover_type:
                # switching mover type from the command line: the file's
                # settings of the other mover do not apply.
                data["mover"] = {}
        if ov.key == "backend.type" and isinstance(data.get("backend"), dict):
            if ov.value != file_backend_type:
                data["backend"] = {}  # likewise for the backend's settings
        _set_dotted(data, ov.key, ov.value)
        origins.by_key[ov.key] = ov.source
    return _check(data, _Checker(origins))


def _check(data: dict[str, Any], c: _Checker) -> AgentConfig:
    c.unknown(data, _TOP_KEYS, "", "top-level")
    kw: dict[str, Any] = {}

    if "agent_id" in data:
        agent_id = c.string(data["agent_id"], "agent_id")
        if not re.fullmatch(r"[A-Za-z0-9_.@:-]{1,128}", agent_id):
            raise c.fail(
                "agent_id",
                f"{_show(agent_id)} may only use letters, digits and _ . @ : - (at most 128)",
            )
        kw["agent_id"] = agent_id

    if "coordinators" in data:
        kw["coordinators"] = _check_coordinators(data["coordinators"], c)

    if "cluster_id" in data:
        cluster_id = c.string(data["cluster_id"], "cluster_id", allow_empty=True)
        if cluster_id and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", cluster_id):
            raise c.fail("cluster_id", f"{_show(cluster_id)} is not a cluster id (1 to 64 of A-Z a-z 0-9 . _ -)")
        kw["cluster_id"] = cluster_id

    if "archive_ids" in data:
        raw = data["archive_ids"]
        if raw is None:
            raw = []
        if isinstance(raw, int) and not isinstance(raw, bool):
            raw = [raw]
        if not isinstance(raw, list | tuple):
            raise c.fail("archive_ids", f"must be a list of archive ids, got {_show(raw)}")
        ids: list[int] = []
        for i, v in enumerate(raw):
            n = c.integer(v, f"archive_ids[{i}]", 0, _U32)
            if n == 0:
                raise c.fail(
                    f"archive_ids[{i}]",
                    "archive id 0 is not an archive; leave the list empty to serve every archive id",
                )
            if n not in ids:
                ids.append(n)
        kw["archive_ids"] = tuple(ids)

    if "tags" in data:
        raw = data["tags"]
        if raw is None:
            raw = []
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list | tuple):
            raise c.fail("tags", f"must be a list of tags, got {_show(raw)}")
        if len(raw) > MAX_TAGS:
            raise c.fail("tags", f"{len(raw)} tags, at most {MAX_TAGS}")
        tags: list[str] = []
        for i, v in enumerate(raw):
            tag = c.string(v, f"tags[{i}]")
            if not re.fullmatch(r"[!-~]{1,64}", tag) or any(ch in tag for ch in ",="):
                raise c.fail(f"tags[{i}]", f"{_show(tag)} is not a tag (1 to 64 printable ASCII characters, "
                                          "no ',', '=' or space)")
            if tag not in tags:
                tags.append(tag)
        kw["tags"] = tuple(tags)

    if data.get("tls") is not None:
        t = c.mapping(data["tls"], "tls")
        c.unknown(t, ("ca", "cert", "key"), "tls.", "tls")
        got = {k: c.string(t[k], f"tls.{k}") for k in ("ca", "cert", "key") if t.get(k) is not None}
        if len(got) != 3:
            missing = ", ".join(k for k in ("ca", "cert", "key") if k not in got)
            raise c.fail("tls", f"needs ca, cert and key (PEM files; flags --tls-ca, --tls-cert, --tls-key); "
                         f"missing: {missing}")
        files = TlsFiles(Path(got["ca"]), Path(got["cert"]), Path(got["key"]))
        try:
            _, cert_pem, _ = files.read()
        except TlsError as exc:
            raise c.fail("tls", str(exc)) from None
        kw["tls"] = files
        kw["_tls_name"] = _cert_name(cert_pem)

    if "slots" in data:
        s = c.mapping(data["slots"], "slots")
        c.unknown(s, _SLOT_KEYS, "slots.", "slots")
        d = SlotsConfig()
        slots = SlotsConfig(
            archive=c.integer(s.get("archive", d.archive), "slots.archive", 0, 100000),
            restore=c.integer(s.get("restore", d.restore), "slots.restore", 0, 100000),
            remove=c.integer(s.get("remove", d.remove), "slots.remove", 0, 100000),
        )
        if slots.total == 0:
            raise c.fail("slots", "every slot count is 0: this agent could never take an action")
        kw["slots"] = slots
    slots_cfg: SlotsConfig = kw.get("slots", SlotsConfig())

    if "backend" not in data:
        raise c.fail("backend", "required: set backend.root (flag --fs-root) to the simfs root, or "
                     "backend.type lustre with backend.mount and backend.fsname (flags --backend lustre "
                     "--mount DIR --fsname NAME)")
    b = c.mapping(data["backend"], "backend")
    btype = c.string(b.get("type", "simfs"), "backend.type")
    if btype not in _BACKEND_KEYS:
        raise c.fail("backend.type", f"unknown backend {_show(btype)} (known: {', '.join(_BACKEND_KEYS)})")
    for k in b:
        if k not in _BACKEND_KEYS[btype]:
            owner = [t for t, keys in _BACKEND_KEYS.items() if k in keys]
            if owner:
                raise c.fail(f"backend.{k}", f"is a key of the {owner[0]} backend, but backend.type is "
                             f"{btype!r} (set backend.type: {owner[0]}, flag --backend {owner[0]})")
    c.unknown(b, _BACKEND_KEYS[btype], "backend.", f"{btype} backend")
    if btype == "lustre":
        kw["backend"] = _check_lustre(b, c)
    else:
        if "root" not in b or b["root"] is None:
            raise c.fail("backend.root", "required: the root directory of the simfs tree (flag --fs-root)")
        kw["backend"] = BackendConfig(type=btype, root=c.string(b["root"], "backend.root"))

    if "mover" not in data:
        raise c.fail("mover", "required: set mover.type and its keys (e.g. --archive-root DIR)")
    m = c.mapping(data["mover"], "mover")
    mtype = c.string(m.get("type", "posix"), "mover.type")
    if mtype not in _MOVER_KEYS:
        raise c.fail("mover.type", f"unknown mover {_show(mtype)} (known: {', '.join(_MOVER_KEYS)})")
    for k in m:
        if k not in _MOVER_KEYS[mtype]:
            owner = [t for t, keys in _MOVER_KEYS.items() if k in keys]
            if owner:
                raise c.fail(
                    f"mover.{k}",
                    f"is a key of the {owner[0]} mover, but mover.type is {mtype!r} "
                    f"(set mover.type: {owner[0]}, flag --mover {owner[0]})",
                )
    c.unknown(m, _MOVER_KEYS[mtype], "mover.", f"{mtype} mover")
    if mtype == "posix":
        kw["mover"] = _check_posix(m, c)
    elif mtype == "null":
        kw["mover"] = NullMoverConfig(delay=c.seconds(m.get("delay", 0.0), "mover.delay", allow_zero=True))
    else:
        kw["mover"] = _check_command(m, c, slots_cfg)

    for key in ("heartbeat_interval", "progress_interval", "reconnect_min_delay", "reconnect_max_delay"):
        if key in data:
            kw[key] = c.seconds(data[key], key)
    if "drain_timeout" in data:
        kw["drain_timeout"] = c.seconds(data["drain_timeout"], "drain_timeout", allow_zero=True)
    lo = kw.get("reconnect_min_delay", 0.2)
    hi = kw.get("reconnect_max_delay", 5.0)
    if lo > hi:
        raise c.fail(
            "reconnect_min_delay",
            f"{lo:g} s is more than reconnect_max_delay ({hi:g} s)",
        )

    if "log_level" in data:
        level = c.string(data["log_level"], "log_level").upper()
        if level not in LOG_LEVELS:
            raise c.fail("log_level", f"{_show(data['log_level'])} is not one of {', '.join(LOG_LEVELS)}")
        kw["log_level"] = level

    if "log_format" in data:
        fmt = c.string(data["log_format"], "log_format").lower()
        if fmt not in LOG_FORMATS:
            raise c.fail("log_format", f"{_show(data['log_format'])} is not one of {', '.join(LOG_FORMATS)}")
        kw["log_format"] = fmt

    if "metrics_listen" in data:
        listen = c.string(data["metrics_listen"], "metrics_listen")
        try:
            split_host_port(listen)
        except ValueError as exc:
            raise c.fail("metrics_listen", str(exc).split(": ", 1)[1]) from None
        kw["metrics_listen"] = listen

    tls_name = kw.pop("_tls_name", None)
    if tls_name is not None:
        agent_id = kw.get("agent_id") or default_agent_id()
        if tls_name != agent_id:
            raise c.fail("tls.cert", f"the certificate names {tls_name!r} but agent_id is {agent_id!r}: an "
                         "agent works only under the id its certificate names (set agent_id, flag "
                         f"--agent-id {tls_name}, or issue a certificate for {agent_id!r})")
    return AgentConfig(**kw)


def _cert_name(pem: bytes) -> str:
    from cryptography import x509

    return identity_of(x509.load_pem_x509_certificate(pem)).name


def _check_lustre(b: dict[str, Any], c: _Checker) -> BackendConfig:
    for key, what in (("mount", "the Lustre client mount point (flag --mount)"),
                      ("fsname", "the file system's name (flag --fsname)")):
        if b.get(key) is None:
            raise c.fail(f"backend.{key}", f"required for the lustre backend: {what}")
    mount = c.string(b["mount"], "backend.mount")
    fsname = c.string(b["fsname"], "backend.fsname")
    if not valid_fsname(fsname):
        raise c.fail("backend.fsname", f"{_show(fsname)} is not a Lustre fsname ({FSNAME_RULE})")
    library = "" if b.get("library") is None else c.string(b["library"], "backend.library")
    handle = c.string(b.get("copytool_handle", "fake"), "backend.copytool_handle").lower()
    if handle not in ("fake", "register"):
        raise c.fail("backend.copytool_handle", f"must be fake or register, got {_show(b['copytool_handle'])}")
    reg: int | None = None
    if b.get("register_archive_id") is not None:
        reg = c.integer(b["register_archive_id"], "backend.register_archive_id", 1, 0x7FFFFFFF)
    if handle == "register" and reg is None:
        raise c.fail("backend.register_archive_id",
                     "required with copytool_handle register: an archive id no request uses "
                     "(the MDT would send such requests to agentd; flag --register-archive-id)")
    if handle == "fake" and reg is not None:
        raise c.fail("backend.register_archive_id", "only used with copytool_handle register")
    return BackendConfig(type="lustre", mount=mount, fsname=fsname, library=library,
                         copytool_handle=handle, register_archive_id=reg)


def _check_coordinators(raw: Any, c: _Checker) -> tuple[str, ...]:
    if isinstance(raw, str):
        items: list[Any] = [p for p in raw.split(",") if p.strip()]
    elif isinstance(raw, list | tuple):
        items = list(raw)
    else:
        raise c.fail("coordinators", f"must be a list of host:port addresses, got {_show(raw)}")
    if not items:
        raise c.fail("coordinators", "needs at least one host:port address")
    out: list[str] = []
    for i, item in enumerate(items):
        key = f"coordinators[{i}]"
        addr = c.string(item, key)
        try:
            check_address(addr)
        except ValueError as exc:
            raise c.fail(key, str(exc)) from None
        if addr not in out:
            out.append(addr)
    return tuple(out)


def _check_posix(m: dict[str, Any], c: _Checker) -> PosixMoverConfig:
    if "archive_root" not in m or m["archive_root"] is None:
        raise c.fail(
            "mover.archive_root",
            "required for the posix mover: the archive's root directory (flag --archive-root)",
        )
    root = c.string(m["archive_root"], "mover.archive_root")
    d = PosixMoverConfig(archive_root=root)
    chunk = c.size(m.get("chunk_size", d.chunk_size), "mover.chunk_size")
    if chunk < 4096 or chunk > (1 << 30):
        raise c.fail("mover.chunk_size", f"must be between 4K and 1G, got {chunk} bytes")
    pint = m.get("progress_interval")
    return PosixMoverConfig(
        archive_root=root,
        chunk_size=chunk,
        bandwidth_limit=c.size(m.get("bandwidth_limit", 0) or 0, "mover.bandwidth_limit"),
        progress_interval=None if pint is None else c.seconds(pint, "mover.progress_interval"),
        progress_bytes=c.size(m.get("progress_bytes", d.progress_bytes), "mover.progress_bytes"),
        checksum=_check_checksum(m.get("checksum", d.checksum), c),
        **_check_packing(m, c, d),
    )


def _check_packing(m: dict[str, Any], c: _Checker, d: PosixMoverConfig) -> dict[str, Any]:
    below = c.size(m.get("pack_below", 0) or 0, "mover.pack_below")
    if below > 64 << 20:
        raise c.fail("mover.pack_below", f"must be at most 64M (small files), got {below} bytes")
    files = c.integer(m.get("pack_files", d.pack_files), "mover.pack_files", 1, 1_000_000)
    most = c.size(m.get("pack_bytes", d.pack_bytes), "mover.pack_bytes")
    if not 1 <= most <= 16 << 30:
        raise c.fail("mover.pack_bytes", f"must be between 1 and 16G, got {most} bytes")
    idle = c.seconds(m.get("pack_idle", d.pack_idle), "mover.pack_idle")
    return {"pack_below": below, "pack_files": files, "pack_bytes": most, "pack_idle": idle}


def _check_checksum(value: Any, c: _Checker) -> str | None:
    if value is None or value is False:
        return None
    if value is True:
        return "sha256"
    algo = c.string(value, "mover.checksum").lower()
    if algo in ("none", "off", "false", "no"):
        return None
    fixed = sorted(a for a in hashlib.algorithms_guaranteed if not a.startswith("shake"))
    try:
        hasher = hashlib.new(algo)
    except (ValueError, TypeError):
        raise c.fail(
            "mover.checksum",
            f"unknown checksum algorithm {_show(value)}; use one of {', '.join(fixed)}, or false for none",
        ) from None
    if not hasher.digest_size:  # shake_*: its hexdigest needs a length, the mover would fail every archive
        raise c.fail("mover.checksum", f"{algo} has no fixed digest size; use one of {', '.join(fixed)}")
    return algo


def _check_command(m: dict[str, Any], c: _Checker, slots: SlotsConfig) -> CommandMoverConfig:
    cmds: dict[str, str | None] = {}
    for kind in _SLOT_KEYS:
        key = f"{kind}_cmd"
        v = m.get(key)
        cmds[key] = None if v is None else c.string(v, f"mover.{key}")
        if cmds[key] is None and getattr(slots, kind) > 0:
            raise c.fail(
                f"mover.{key}",
                f"required by the command mover while slots.{kind} is {getattr(slots, kind)} "
                f"(give a command with --{kind}-cmd, or set slots {kind}=0 to not take {kind} actions)",
            )
    timeout = m.get("timeout")
    timeout = 0.0 if timeout is None else c.seconds(timeout, "mover.timeout", allow_zero=True)
    kill_grace = c.seconds(m.get("kill_grace", 5.0), "mover.kill_grace", allow_zero=True)
    from agentd.movers.command import CommandTemplate

    for kind, code in zip(_SLOT_KEYS, (HSMA.ARCHIVE, HSMA.RESTORE, HSMA.REMOVE), strict=True):
        text = cmds[f"{kind}_cmd"]
        if text is not None:
            try:
                CommandTemplate.parse(code, text)
            except ValueError as exc:
                raise c.fail(f"mover.{kind}_cmd", str(exc)) from None
    return CommandMoverConfig(
        archive_cmd=cmds["archive_cmd"],
        restore_cmd=cmds["restore_cmd"],
        remove_cmd=cmds["remove_cmd"],
        timeout=timeout,
        kill_grace=kill_grace,
    )
