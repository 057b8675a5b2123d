"""Coordinator replica configuration: a YAML file plus command-line flags.

The file format is documented in docs/cluster-config.md; in short::

    cluster:                      # identical on every replica (hsm-coordinator init writes it)
      name: hsm
      shards: 8
      vnodes: 4096
      password_file: /etc/hsm-coordinator/raft-password
      replicas:
        - {id: hsm-0, api: "hsm-0:7600", raft: "hsm-0:7700"}
        - ...
    replica_id: hsm-0             # default: the short host name
    data_dir: /var/lib/hsm-coordinator
    listen: 0.0.0.0:7600          # default: this replica's api address
    raft_bind: 10.0.0.5           # default: this replica's raft host; one address, never 0.0.0.0
    archive_ids: [1]
    default_archive_id: 1
    max_attempts: 3
    max_terminal: 100000
    remember_ends: 100000         # files whose last successful action answers late duplicates
    remember_for: 3600            # seconds such an answer stays valid
    progress_timeout: 600         # no progress for this long: the action is stopped and requeued (0: never)
    agent_grace: 60               # a silent agent keeps its actions this long; its lease ends before
    heartbeat_interval: 5
    propose_timeout: 10
    raft: {election_min: 1.0, election_max: 2.0, ...}   # coordinator.raft.RaftTuning fields
    tls:                          # mutual TLS on the gRPC port (hsm-coordinator certs); paths may
      ca: tls/ca.pem              # name {replica_id}; relative ones are from this file's directory
      cert: tls/{replica_id}.pem
      key: tls/{replica_id}.key
    insecure: false               # true instead of tls: plain text, nobody checked (warned at start);
                                  # one of the two is required
    user_request_mask: [restore]  # what a certificate of role user may request
    metrics_listen: 0.0.0.0:9600  # Prometheus metrics at http://HOST:PORT/metrics (default: none)
    log_level: info
    log_format: text              # or json: one object per line (hsm.logsetup)
"""

from __future__ import annotations

import dataclasses
import math
import os
import reprlib
import secrets
import stat
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from coordinator import placement as placing
from coordinator.cluster import ClusterSpec, ReplicaSpec, new_cluster_id, split_addr
from coordinator.node import NodeConfig, local_hostname
from coordinator.raft import RaftTuning, check_addr
from coordinator.raft.encryptor import MAX_PASSWORDS, split_passwords
from coordinator.roles import check_mask
from hsm.logsetup import LOG_FORMATS
from hsm.metrics import split_host_port
from hsm.ring import DEFAULT_VNODES, MAX_POINTS, MAX_VNODES
from hsm.tls import TlsError, TlsFiles

#: the certificate ``init_cluster`` issues for the cluster's first admin (hsmctl)
ADMIN_CERT = "admin"


class ConfigError(ValueError):
    """A configuration problem, worded for the admin who has to fix it."""


LOG_LEVELS = ("debug", "info", "warning", "error")
_SIMPLE = {
    "replica_id": str, "data_dir": str, "listen": str, "raft_bind": str, "archive_ids": tuple,
    "default_archive_id": int, "max_attempts": int, "max_terminal": int, "remember_ends": int,
    "remember_for": float, "agent_grace": float,
    "heartbeat_interval": float, "propose_timeout": float, "progress_timeout": float,
    "metrics_listen": str,
}
_TOP = set(_SIMPLE) | {"cluster", "raft", "log_level", "log_format", "tls", "insecure", "user_request_mask"}
_CLUSTER = {"id", "name", "shards", "vnodes", "password_file", "password", "replicas", "replication", "placement"}


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlevel = 3


def _show(value: Any) -> str:
    """*value* in a message: short, whatever it is (YAML anchors make a
    few lines of text into a structure whose full repr never ends)."""
    return _REPR.repr(value)


def _clip(message: str, most: int = 500) -> str:
    """Another module's message about a value from the file: at most *most* characters."""
    return message if len(message) <= most else message[:most] + "..."


def _key(key: Any) -> str:
    return key if isinstance(key, str) and key.isprintable() and len(key) <= 80 else _show(key)


def _unknown(where: str, raw: dict[Any, Any], known: Any) -> None:
    unknown = sorted((_key(k) for k in set(raw) - set(known)), key=str)
    if unknown:
        shown = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        raise ConfigError(f"{where}unknown setting(s): {shown} (known: {', '.join(sorted(known))})")


def _check(name: str, value: Any, typ: type) -> Any:
    if typ is float and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):  # .nan, .inf: no duration or count
            raise ConfigError(f"{name}: expected a finite number, got {_show(value)}")
        return float(value)
    if typ is tuple:
        if not isinstance(value, list | tuple) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{name}: expected a list of integers, got {_show(value)}")
        return tuple(value)
    if not isinstance(value, typ) or (isinstance(value, bool) and typ is not bool):
        raise ConfigError(f"{name}: expected {typ.__name__}, got {_show(value)}")
    return value


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not UTF-8 text") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {str(exc)[:500]}") from None
    except Exception as exc:  # a tagged value its constructor cannot make (2020-13-45, !!int x), deep nesting
        raise ConfigError(f"{p}: not valid YAML: {type(exc).__name__}: {str(exc)[:200]}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{p}: expected a mapping of settings at the top level")
    return loaded or {}


def read_password(path: str | Path) -> str:
    p = Path(path)
    try:
        st = p.stat()
        text = p.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cluster.password_file: cannot read {_clip(str(p), 300)}: {exc.strerror}") from None
    except ValueError as exc:  # a NUL in the path, a file that is not UTF-8
        raise ConfigError(f"cluster.password_file: cannot read {_show(str(p))}: {exc}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"cluster.password_file: {p} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); "
                          "chmod 600 it")
    return _passwords(text, f"cluster.password_file: {p}")


def _passwords(text: str, where: str) -> str:
    """A password file's text, checked: one password per line (the first
    seals the Raft messages, the others are accepted too: a rotation,
    docs/cluster-config.md), each of 16 characters or more."""
    passwords = split_passwords(text)
    if not passwords:
        raise ConfigError(f"{where} holds fewer than 16 characters")
    if len(passwords) > MAX_PASSWORDS:
        raise ConfigError(f"{where} holds {len(passwords)} passwords, at most {MAX_PASSWORDS} (the first "
                          "seals, the others are accepted): remove the old ones")
    for n, pw in enumerate(passwords, 1):
        if len(pw) < 16:
            raise ConfigError(f"{where}: " + ("the password" if len(passwords) == 1 else f"password {n} (line {n})")
                              + " holds fewer than 16 characters")
    if len(set(passwords)) != len(passwords):
        raise ConfigError(f"{where} holds the same password twice")
    return passwords[0] if len(passwords) == 1 else "\n".join(passwords)


def _cluster(raw: Any, base: Path | None) -> ClusterSpec:
    if not isinstance(raw, dict):
        raise ConfigError("cluster: required, a mapping (name, shards, password_file, replicas); "
                          "create one with `hsm-coordinator init`")
    _unknown("cluster: ", raw, _CLUSTER)
    if "password" in raw:
        password = _check("cluster.password", raw["password"], str)
        password = _passwords(password, "cluster.password")
    elif "password_file" in raw:
        pf = Path(_check("cluster.password_file", raw["password_file"], str))
        if not pf.is_absolute() and base is not None:
            pf = base / pf
        password = read_password(pf)
    else:
        raise ConfigError("cluster: password_file is required (the Raft peers' shared secret)")
    if "\n" in password and not raw.get("id"):
        raise ConfigError("cluster.id is required while the password file holds more than one password: without "
                          "it the cluster's id is derived from the password and would change during the rotation "
                          "(clients would refuse the replicas). Add id: with the id hsmctl status shows")
    reps = raw.get("replicas")
    if not isinstance(reps, list) or not reps:
        raise ConfigError("cluster.replicas: a list of {id, api, raft} is required")
    replicas = []
    for n, r in enumerate(reps):
        if not isinstance(r, dict) or set(r) != {"id", "api", "raft"}:
            raise ConfigError(f"cluster.replicas[{n}]: expected exactly the keys id, api, raft; got {_show(r)}")
        if not isinstance(r["id"], str | int) or isinstance(r["id"], bool):
            raise ConfigError(f"cluster.replicas[{n}].id: expected a name, got {_show(r['id'])}")
        for key in ("api", "raft"):
            addr = _check(f"cluster.replicas[{n}].{key}", r[key], str)
            try:
                split_addr(addr)
                if key == "raft":  # what the Raft adapter binds and dials: one address, no spaces, no IPv6
                    check_addr(ReplicaSpec("", addr, addr).raft_addr(0), "a Raft address")
            except ValueError as exc:
                raise ConfigError(f"cluster.replicas[{n}].{key}: {_clip(str(exc))}") from None
        replicas.append(ReplicaSpec(str(r["id"]), r["api"], r["raft"]))
    vnodes = _check("cluster.vnodes", raw.get("vnodes", DEFAULT_VNODES), int)
    if not 1 <= vnodes <= MAX_VNODES:
        raise ConfigError(f"cluster.vnodes: must be between 1 and {MAX_VNODES}, got {vnodes}")
    shards = _check("cluster.shards", raw.get("shards", 8), int)
    try:
        spec = ClusterSpec(
            name=_check("cluster.name", raw.get("name", "hsm"), str),
            id=_check("cluster.id", raw.get("id", ""), str),
            shards=shards,
            replicas=tuple(replicas),
            password=password,
            vnodes=vnodes,
            placement=_placement(raw, [r.id for r in replicas], shards),
        )
    except ValueError as exc:
        raise ConfigError(f"cluster: {_clip(str(exc))}") from None
    if spec.shards * vnodes > MAX_POINTS:
        raise ConfigError(f"cluster: {spec.shards} shards x {vnodes} vnodes is more than the ring's "
                          f"{MAX_POINTS} points; use at most {MAX_POINTS // spec.shards} vnodes")
    return spec


def _placement(raw: dict[str, Any], replicas: list[str], shards: int) -> placing.Placement:
    """``cluster.placement`` (shard -> its group's replica ids, the
    preferred leader first), or the one ``cluster.replication: R`` spreads
    over the replicas in their order (coordinator.placement.spread), or ()
    when neither is given: every replica holds every shard."""
    r = raw.get("replication")
    if r is not None:
        r = _check("cluster.replication", r, int)
        if r not in placing.GROUP_SIZES or r > len(replicas):
            raise ConfigError(f"cluster.replication: {r}: a shard's group has 1, 3, 5 or 7 members, at most the "
                              f"{len(replicas)} replica(s) (an even group survives no more failures than one a "
                              "member smaller)")
    given = raw.get("placement")
    if given is None:
        return placing.spread(replicas, shards, r) if r is not None and r < len(replicas) else ()
    if isinstance(given, dict):
        if any(not isinstance(k, int) or isinstance(k, bool) for k in given):
            raise ConfigError("cluster.placement: keys are shard numbers (0, 1, ...), each with the list of its "
                              "group's replica ids, its preferred leader first")
        missing = [i for i in range(shards) if i not in given]
        extra = sorted(k for k in given if not 0 <= k < shards)
        if missing or extra:
            raise ConfigError(f"cluster.placement: every shard 0..{shards - 1} once"
                              + (f"; missing {', '.join(map(str, missing[:10]))}" if missing else "")
                              + (f"; no shard {', '.join(map(str, extra[:10]))}" if extra else ""))
        rows = [given[i] for i in range(shards)]
    elif isinstance(given, list):
        rows = given
    else:
        raise ConfigError(f"cluster.placement: expected shard -> [replica ids], got {_show(given)}")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, list) or not all(isinstance(m, str | int) and not isinstance(m, bool) for m in row):
            raise ConfigError(f"cluster.placement: shard {i}: expected a list of replica ids, got {_show(row)}")
        out.append(tuple(str(m) for m in row))
    wrong = placing.problems(out, replicas, shards)
    if r is not None and out and len(out[0]) != r:
        wrong.insert(0, f"replication is {r} but the placement's groups have {len(out[0])} members")
    if wrong:
        raise ConfigError("cluster.placement: " + "; ".join(wrong[:5]) +
                          (f"; and {len(wrong) - 5} more" if len(wrong) > 5 else ""))
    return tuple(out)


def placement_yaml(placement: placing.Placement) -> str:
    """The ``placement:`` block of ``cluster:`` as init writes it (one line per shard)."""
    lines = ["  placement:                  # shard: [its Raft group's replicas, the preferred leader first]\n"]
    lines += [f"    {i}: [{', '.join(members)}]\n" for i, members in enumerate(placement)]
    return "".join(lines)


def _raft(raw: Any) -> RaftTuning:
    if raw is None:
        return RaftTuning()
    if not isinstance(raw, dict):
        raise ConfigError("raft: expected a mapping of Raft tuning settings")
    fields = {f.name: f for f in dataclasses.fields(RaftTuning)}
    _unknown("raft: ", raw, fields)
    values = {}
    for k, v in raw.items():
        default = getattr(RaftTuning(), k)
        values[k] = _check(f"raft.{k}", v, type(default))
    tuning = RaftTuning(**values)
    try:
        tuning.validate()
    except ValueError as exc:
        raise ConfigError(f"raft: {exc}") from None
    return tuning


class LogSettings(NamedTuple):
    level: str  # debug, info, warning, error
    format: str  # text, json (hsm.logsetup)


def load(path: str | Path | None, overrides: dict[str, Any] | None = None) -> tuple[NodeConfig, LogSettings]:
    """Read *path* and apply *overrides* (None values are ignored).
    Returns the node config and how to log."""
    raw: dict[str, Any] = dict(read_yaml(path)) if path is not None else {}
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    _unknown("", raw, _TOP)
    base = Path(path).resolve().parent if path is not None else None
    cluster = _cluster(raw.get("cluster"), base)
    log_level = raw.get("log_level", "info")
    if not isinstance(log_level, str) or log_level.lower() not in LOG_LEVELS:
        raise ConfigError(f"log_level: expected one of {', '.join(LOG_LEVELS)}, got {_show(log_level)}")
    log_level = log_level.lower()
    log_format = raw.get("log_format", "text")
    if not isinstance(log_format, str) or log_format.lower() not in LOG_FORMATS:
        raise ConfigError(f"log_format: expected one of {', '.join(LOG_FORMATS)}, got {_show(log_format)}")
    values: dict[str, Any] = {}
    for name, typ in _SIMPLE.items():
        if name in raw:
            values[name] = _check(name, raw[name], typ)
    values.setdefault("replica_id", local_hostname())
    if "data_dir" not in values:
        raise ConfigError("data_dir: required (where this replica keeps its Raft journals and snapshots)")
    if not values["data_dir"] or "\0" in values["data_dir"]:
        raise ConfigError(f"data_dir: expected a directory, got {_show(values['data_dir'])}")
    values["data_dir"] = Path(values["data_dir"])
    if not any(r.id == values["replica_id"] for r in cluster.replicas):
        known = ", ".join(_key(r.id) for r in cluster.replicas[:20])
        raise ConfigError(f"replica_id: replica {_show(values['replica_id'])} is not in the cluster (replicas: {known})")
    values["tls"] = _tls(raw.get("tls"), raw.get("insecure", False), base, values["replica_id"])
    if "user_request_mask" in raw:
        try:
            values["user_request_mask"] = check_mask(raw["user_request_mask"])
        except ValueError as exc:
            raise ConfigError(_clip(str(exc))) from None
    cfg = NodeConfig(cluster=cluster, raft=_raft(raw.get("raft")), **values)
    validate(cfg)
    return cfg, LogSettings(log_level, log_format.lower())


def _tls(raw: Any, insecure: Any, base: Path | None, replica_id: str) -> TlsFiles | None:
    """``tls: {ca, cert, key}`` (paths relative to the config file; ``{replica_id}``
    in a path is this replica's id, so one file serves every replica), or
    None with ``insecure: true``; one of the two must be given (plain text
    is never a default). Each file is read now: a missing or unreadable one
    stops the start with its name."""
    if not isinstance(insecure, bool):
        raise ConfigError(f"insecure: expected true or false, got {_show(insecure)}")
    if raw is None:
        if insecure:
            return None
        raise ConfigError("neither tls nor insecure: true is set. Add tls: {ca: ..., cert: ..., key: ...} naming "
                          "the cluster CA's certificate and this replica's certificate and key (PEM files from "
                          "hsm-coordinator certs init/issue; hsm-coordinator init makes them) to serve mutual TLS, "
                          "or insecure: true to run plain text, where nobody is checked (warned at start)")
    if insecure:
        raise ConfigError("tls and insecure: true both given; keep one")
    if not isinstance(raw, dict) or set(raw) != {"ca", "cert", "key"}:
        raise ConfigError(f"tls: expected exactly the keys ca, cert, key (PEM files from hsm-coordinator certs); "
                          f"got {_show(raw)}")
    paths = []
    for key in ("ca", "cert", "key"):
        value = _check(f"tls.{key}", raw[key], str).replace("{replica_id}", replica_id)
        p = Path(value)
        paths.append(base / p if base is not None and not p.is_absolute() else p)
    files = TlsFiles(*paths)
    try:
        files.read()
    except TlsError as exc:
        raise ConfigError(_clip(str(exc))) from None
    return files


def validate(cfg: NodeConfig) -> None:
    if not cfg.archive_ids or any(not 1 <= a <= 0xFFFFFFFF for a in cfg.archive_ids):
        raise ConfigError(f"archive_ids: need at least one id, each >= 1 (got {list(cfg.archive_ids)})")
    if cfg.default_archive_id not in cfg.archive_ids:
        raise ConfigError(f"default_archive_id {cfg.default_archive_id} is not in archive_ids {list(cfg.archive_ids)}")
    if cfg.listen:
        try:
            split_addr(cfg.listen)
        except ValueError:
            raise ConfigError(f"listen: expected host:port, got {_show(cfg.listen)}") from None
    if cfg.metrics_listen:
        try:
            split_host_port(cfg.metrics_listen)
        except ValueError as exc:
            raise ConfigError(_clip(str(exc))) from None
    if cfg.raft_bind:
        try:  # the host the Raft ports bind: one address
            check_addr(f"{cfg.raft_bind}:1", "raft_bind")
        except ValueError:
            raise ConfigError(f"raft_bind: expected one host name or address, got {_show(cfg.raft_bind)}") from None
    if cfg.max_attempts < 1:
        raise ConfigError("max_attempts: must be at least 1")
    if cfg.max_terminal < 0:
        raise ConfigError("max_terminal: must be >= 0")
    if cfg.remember_ends < 0 or cfg.remember_for < 0:
        raise ConfigError("remember_ends and remember_for: must be >= 0 (0: late duplicates are not answered)")
    if cfg.progress_timeout < 0:
        raise ConfigError("progress_timeout: must be >= 0 seconds (0: never reclaim)")
    if cfg.agent_grace <= 0 or cfg.heartbeat_interval <= 0 or cfg.propose_timeout <= 0:
        raise ConfigError("agent_grace, heartbeat_interval and propose_timeout must be > 0 seconds")


def init_cluster(out: Path, name: str, shards: int, replicas: list[ReplicaSpec], vnodes: int = DEFAULT_VNODES,
                 data_dir: str = "/var/lib/hsm-coordinator", archive_ids: tuple[int, ...] = (1,),
                 extra: dict[str, Any] | None = None, tls: bool = False,
                 replication: int | None = None) -> tuple[Path, Path]:
    """Write ``coordinator.yaml`` and ``raft-password`` (0600) into *out*.
    Refuses to overwrite either. Returns both paths. With *tls*, also the
    cluster CA and certificates in ``out/tls`` (``coordinator.certs``): one
    per replica (role replica, valid for its API host) and ``admin`` (role
    admin, for hsmctl); the config names them (``tls:``). Without it the
    config says ``insecure: true``."""
    placement: placing.Placement = ()
    if replication is not None and replication != len(replicas):
        placement = _placement({"replication": replication}, [r.id for r in replicas], shards)
    try:
        ClusterSpec(name, shards, tuple(replicas), "x" * 16, vnodes, placement=placement)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    out.mkdir(parents=True, exist_ok=True)
    cfg_path, pw_path = out / "coordinator.yaml", out / "raft-password"
    for p in (cfg_path, pw_path):
        if p.exists():
            raise ConfigError(f"{p} already exists; refusing to overwrite a cluster's configuration")
    tls_dir = out / "tls"
    if tls:
        from coordinator import certs

        try:
            certs.init_ca(tls_dir)
            for r in replicas:
                certs.issue(tls_dir, r.id, "replica", hosts=(split_addr(r.api)[0],))
            certs.issue(tls_dir, ADMIN_CERT, "admin")
        except certs.CertError as exc:
            raise ConfigError(str(exc)) from None
    fd = os.open(pw_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    doc: dict[str, Any] = {
        "cluster": {
            "id": new_cluster_id(), "name": name, "shards": shards, "vnodes": vnodes, "password_file": str(pw_path.resolve()),
            "replicas": [{"id": r.id, "api": r.api, "raft": r.raft} for r in replicas],
        },
        "data_dir": data_dir,
        "archive_ids": list(archive_ids),
        "default_archive_id": archive_ids[0],
        "log_level": "info",
    }
    if tls:
        d = tls_dir.resolve()
        doc["tls"] = {"ca": str(d / "ca.pem"), "cert": str(d / "{replica_id}.pem"), "key": str(d / "{replica_id}.key")}
    else:
        doc["insecure"] = True
    doc.update(extra or {})
    header = ("# hsm-coordinator cluster configuration (docs/cluster-config.md).\n"
              "# Identical on every replica; each sets its own replica_id (flag --replica-id,\n"
              "# default: the short host name).\n")
    text = yaml.safe_dump(doc, sort_keys=False)
    if placement:  # after cluster.replicas, one line per shard
        at = text.index("\ndata_dir:") + 1
        text = text[:at] + f"  replication: {replication}\n" + placement_yaml(placement) + text[at:]
    cfg_path.write_text(header + text)
    return cfg_path, pw_path


def parse_replica(text: str) -> ReplicaSpec:
    """``ID=HOST:API_PORT:RAFT_PORT`` (``hsm-0=10.0.0.1:7600:7700``)."""
    rid, sep, rest = text.partition("=")
    parts = rest.rsplit(":", 2)
    if not sep or not rid or len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        raise ConfigError(f"--replica {text!r}: expected ID=HOST:API_PORT:RAFT_PORT, e.g. hsm-0=10.0.0.1:7600:7700")
    host = parts[0]
    return ReplicaSpec(rid, f"{host}:{parts[1]}", f"{host}:{parts[2]}")
