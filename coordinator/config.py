"""Coordinator configuration: a YAML file plus command-line flags.

Keys (all optional; flags override the file)::

    replica_id: c1            # this replica's name (default: short host name)
    listen: 0.0.0.0:7600      # gRPC API address (clients, agents, health)
    archive_ids: [1, 2]       # archive ids that exist; requests for others are refused
    default_archive_id: 1     # used when neither the request nor the file names one
    max_attempts: 3           # starts per action before it FAILS with its last errno
    max_terminal: 100000      # ended actions kept per shard for listing and retries
    agent_grace: 60           # seconds a disconnected agent keeps its running actions
    heartbeat_interval: 5     # seconds between agent heartbeats
    shards: 1                 # shards in this process
    log_level: info           # debug, info, warning, error
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from coordinator.node import NodeConfig, local_hostname


class ConfigError(ValueError):
    """A configuration problem, worded for the admin who has to fix it."""


_EXTRA = {"log_level"}
LOG_LEVELS = ("debug", "info", "warning", "error")


def _check(name: str, value: Any, typ: type) -> Any:
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if typ is tuple:
        if not isinstance(value, list | tuple) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{name}: expected a list of integers, got {value!r}")
        return tuple(value)
    if not isinstance(value, typ) or isinstance(value, bool) and typ is not bool:
        raise ConfigError(f"{name}: expected {typ.__name__}, got {value!r}")
    return value


def load(path: str | Path | None, overrides: dict[str, Any] | None = None) -> tuple[NodeConfig, str]:
    """Read *path* (may be None) and apply *overrides* (None values are
    ignored). Returns the node config and the log level."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: expected a mapping of settings at the top level")
        raw.update(loaded or {})
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    fields = {f.name: f for f in dataclasses.fields(NodeConfig)}
    unknown = sorted(set(raw) - set(fields) - _EXTRA)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)} (known: {', '.join(sorted(set(fields) | _EXTRA))})")
    raw.setdefault("replica_id", local_hostname())
    log_level = str(raw.pop("log_level", "info")).lower()
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"log_level: expected one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        default = getattr(NodeConfig(), name)
        values[name] = _check(name, value, type(default))
    cfg = NodeConfig(**values)
    validate(cfg)
    return cfg, log_level


def validate(cfg: NodeConfig) -> None:
    if not cfg.archive_ids or any(not 1 <= a <= 0xFFFFFFFF for a in cfg.archive_ids):
        raise ConfigError(f"archive_ids: need at least one id, each >= 1 (got {list(cfg.archive_ids)})")
    if cfg.default_archive_id not in cfg.archive_ids:
        raise ConfigError(f"default_archive_id {cfg.default_archive_id} is not in archive_ids {list(cfg.archive_ids)}")
    if ":" not in cfg.listen:
        raise ConfigError(f"listen: expected host:port, got {cfg.listen!r}")
    if cfg.max_attempts < 1:
        raise ConfigError("max_attempts: must be at least 1")
    if cfg.max_terminal < 0:
        raise ConfigError("max_terminal: must be >= 0")
    if cfg.agent_grace <= 0 or cfg.heartbeat_interval <= 0:
        raise ConfigError("agent_grace and heartbeat_interval must be > 0 seconds")
    if not 1 <= cfg.shards <= 999:
        raise ConfigError("shards: must be between 1 and 999")
