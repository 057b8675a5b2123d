"""Fuzzing the configuration files (issue 13, item 6): ``coordinator.yaml``
(``coordinator.config.load``) and ``agentd.yaml`` (``agentd.config.load_config``).

What is fuzzed
==============

* **Documents**: a valid configuration with one to four random changes: a
  setting removed, an unknown one added (its key a string, a number, null or
  a boolean), a known one (at any depth: ``cluster.replicas[1].raft``,
  ``raft.election_min``, ``mover.chunk_size``, ...) set to any YAML value:
  null, booleans, integers from -10**30 to 10**30 and 2**63, 2**64, NaN and
  infinities, strings with control characters, bad addresses
  (``0.0.0.0:7700``, ``h:0``, ``[::1]:99999``, ``a b:1``), bad paths,
  timestamps, lists and mappings nested several levels deep. agentd also
  gets random ``HSM_COORDINATORS`` and ``HSM_CLUSTER`` environments and
  command-line overrides.
* **Text**: the YAML of a valid configuration with bytes inserted,
  flipped or cut; and documents that are YAML but not data: bytes that are
  not UTF-8, ``!!python/object`` and other tags, bad timestamps, integers
  of 5,000 digits, 3,000 levels of nesting, recursive anchors, an alias
  bomb, duplicate keys, a top level that is not a mapping.

What every load must do
=======================

Return a configuration the daemon can run with (``usable_coordinator``,
``usable_agent``: every duration finite, every address one the Raft
adapter or gRPC takes, a ring that can be built, a checksum algorithm
whose digest can be written, ...) or raise the module's ``ConfigError``
with a message of at most ``MAX_MESSAGE`` characters; never another
exception, never a hang.

Two tests are not random: every known setting, alone, set to each value
worth trying (``HINTS``, ``ANY_VALUES``) and removed.

Budget: a fixed (derandomized) set of examples, about 12 s for the file on
2 cores; ``HSM_FUZZ_EXAMPLES=N`` runs N random examples per test and the
longer value list (2000: about 1.5 minutes).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import hashlib
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agentd.config as acfg
import coordinator.config as ccfg
from coordinator.cluster import split_addr
from coordinator.raft import RaftTuning, check_addr
from hsm.logsetup import LOG_FORMATS
from hsm.ring import MAX_POINTS, MAX_VNODES

_DEEP = int(os.environ.get("HSM_FUZZ_EXAMPLES", "0"))


def fuzz_settings(default: int) -> settings:
    return settings(max_examples=_DEEP or default, derandomize=not _DEEP, deadline=None,
                    database=None if not _DEEP else settings.default.database,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


#: the longest error message a load may give
MAX_MESSAGE = 2000


@pytest.fixture(scope="module")
def where(tmp_path_factory: Any) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("fuzz-config")
    pw = d / "raft-password"
    pw.write_text("0123456789abcdef0123456789\n")
    pw.chmod(0o600)
    (d / "archive").mkdir()
    (d / "simfs").mkdir()
    yield d


# ---------------------------------------------------------------------------
# any YAML value

ADDRESSES = ["127.0.0.1:7600", "0.0.0.0:7700", "[::1]:7700", "[::]:7700", "h:0", "h:65536", "host:99999",
             "a b:1", ":7700", "127.0.0.1", "127.0.0.1:", "x" * 300 + ":1", "h:1:2", "[::1:7700", "é:7700",
             "h:+1", "h: 1", "h:٣", "localhost:65535"]
STRINGS = ADDRESSES + ["", " ", "~", "-5", "1e999", "nan", ".inf", "yes", "off", "4MiB", "1G", "-1K",
                       "99999999999999999999T", "sha256", "shake_128", "md5", "none", "INFO", "info",
                       "x\x00y", "/nonexistent/dir", "/", "relative/path", "{fid}", "{fid:99}", "{nope}",
                       "cp {path} '{fid}", "posix", "command", "null", "simfs", "lustre", "fake", "register"]

#: values worth trying for a setting, by its key
DURATIONS = [0, -1, 0.0001, 1e308, math.nan, math.inf, -math.inf, "5", "5s", ".nan", True]
SIZES = [0, -1, 4095, 4096, "4K", "4095", "1G", "1025M", "1T", "1.5M", "4 MiB", "4MB", " 4M ", "4k", "-1K",
         "9" * 5000, 1 << 64]
HINTS: dict[str, list[Any]] = {
    "checksum": ["sha256", "shake_128", "shake_256", "md5", "none", "off", True, False, "SHA256", "blake2s",
                 "sm3", "nope", "sha\x00"],
    "chunk_size": SIZES, "bandwidth_limit": SIZES, "progress_bytes": SIZES,
    "archive_cmd": ["cp {path} {dest}", "{fid:>9999999}", "{fid:99999999999999999999}", "{fid!r}", "{fid!z}",
                    "{fid.x}", "{0}", "{}", "sh -c 'x", "{fid:{path}}", "'{fid}'", "echo {{fid}}", "{", "}"],
    "type": ["posix", "command", "null", "simfs", "lustre", "POSIX", ""],
    "coordinators": [ADDRESSES, ",".join(ADDRESSES[:3]), "127.0.0.1:7600,,", []],
    "api": ADDRESSES, "raft": ADDRESSES, "listen": ADDRESSES,
    "raft_bind": ["0.0.0.0", "127.0.0.1", "", "h:1", "[::1]", "::1", "a b", "localhost"],
    "fsname": ["lustre", "", "toolongname", "a b", "é"], "copytool_handle": ["fake", "register", "FAKE", ""],
    "register_archive_id": [0, 1, 77, 1 << 31, -1], "archive_ids": [[], [0], [1, 1], [1 << 32], 3, [True]],
    "log_level": ["info", "INFO", "debug", "loud", "Warning"],
    "log_format": ["text", "json", "JSON", "xml", "", 1],
    "metrics_listen": ["0.0.0.0:9600", "127.0.0.1:0", "[::]:9600", "9600", "h:", ":1", "h:99999", "h:x", ""],
    "agent_id": ["a", "x" * 129, "a b", "é", ""], "cluster_id": ["", "fuzz-cluster", "-x", "x" * 65],
    "vnodes": [0, 1, 999, 1000, 65536, 65537, 1 << 20, -1], "shards": [0, 1, 999, 1000, -1, 1 << 40],
    "data_dir": ["", "x\x00", "/tmp"], "password": ["", "short", "x" * 16],
    "password_file": ["", "/nonexistent", "relative", "x\x00"],
    "id": ["c0", "c1", 0, None, "fuzz cluster", "-x"],
    "election_min": DURATIONS, "election_max": DURATIONS, "heartbeat": DURATIONS, "tick": DURATIONS,
    "leader_fallback": DURATIONS, "connection_timeout": DURATIONS, "agent_grace": DURATIONS,
    "heartbeat_interval": DURATIONS, "propose_timeout": DURATIONS, "progress_timeout": DURATIONS,
    "remember_for": DURATIONS, "progress_interval": DURATIONS, "drain_timeout": DURATIONS,
    "reconnect_min_delay": DURATIONS, "reconnect_max_delay": DURATIONS, "timeout": DURATIONS,
    "kill_grace": DURATIONS, "delay": DURATIONS,
}
for _k in ("restore_cmd", "remove_cmd"):
    HINTS[_k] = HINTS["archive_cmd"]

SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(-(10 ** 30), 10 ** 30), st.sampled_from([-1, 0, 1, 2, 4095, 4096, 65536, 1 << 20, 1 << 31, 1 << 32,
                                                          (1 << 63) - 1, 1 << 63, 1 << 64, -(1 << 63)]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e-300, 1e308, 0.5, -2.5]),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=12),
    st.sampled_from(STRINGS),
    st.dates(), st.datetimes(),
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.one_of(st.text(max_size=8), st.integers(), st.none(), st.booleans()), inner, max_size=4), max_leaves=12)
KEYS = st.one_of(st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12), st.integers(),
                 st.none(), st.booleans(), st.floats(allow_nan=False))


# ---------------------------------------------------------------------------
# documents: a valid one, changed


def coordinator_doc(where: Path) -> dict[str, Any]:
    return {
        "cluster": {"id": "fuzz-cluster", "name": "t", "shards": 4, "vnodes": 64,
                    "password_file": str(where / "raft-password"),
                    "replicas": [{"id": "c0", "api": "127.0.0.1:7600", "raft": "127.0.0.1:7700"},
                                 {"id": "c1", "api": "127.0.0.1:7601", "raft": "127.0.0.1:7710"}]},
        "replica_id": "c0", "data_dir": str(where / "data"), "listen": "0.0.0.0:7600", "raft_bind": "127.0.0.1",
        "archive_ids": [1, 2], "default_archive_id": 1, "max_attempts": 3, "max_terminal": 1000,
        "remember_ends": 100, "remember_for": 60, "progress_timeout": 600, "agent_grace": 60,
        "heartbeat_interval": 5, "propose_timeout": 10,
        "raft": {"heartbeat": 0.1, "election_min": 1.0, "election_max": 2.0}, "log_level": "info",
        "insecure": True,  # plain text is said, never implied
    }


#: the settings each mapping knows (a change may add any of them)
COORDINATOR_KEYS: dict[tuple[str, ...], list[str]] = {
    (): sorted(ccfg._TOP),
    ("cluster",): sorted(ccfg._CLUSTER),
    ("raft",): [f.name for f in dataclasses.fields(RaftTuning)],
    ("cluster", "replicas", "*"): ["id", "api", "raft"],
}


def agent_doc(where: Path, mover: str = "posix", backend: str = "simfs") -> dict[str, Any]:
    movers = {
        "posix": {"type": "posix", "archive_root": str(where / "archive"), "chunk_size": "4MiB",
                  "bandwidth_limit": "200M", "checksum": "sha256", "progress_interval": 2, "progress_bytes": "64M"},
        "command": {"type": "command", "archive_cmd": "cp {path} /arch/{fid_bare}",
                    "restore_cmd": "cp /arch/{fid_bare} {dest}", "remove_cmd": "rm /arch/{fid_bare}",
                    "timeout": 3600, "kill_grace": 5},
        "null": {"type": "null", "delay": 0.1},
    }
    backends = {
        "simfs": {"type": "simfs", "root": str(where / "simfs")},
        "lustre": {"type": "lustre", "mount": "/mnt/lustre", "fsname": "lustre", "copytool_handle": "register",
                   "register_archive_id": 77},
    }
    return {
        "agent_id": "mover01", "coordinators": ["127.0.0.1:7600", "[::1]:7601"], "cluster_id": "fuzz-cluster",
        "archive_ids": [1], "slots": {"archive": 2, "restore": 2, "remove": 1},
        "backend": backends[backend], "mover": movers[mover],
        "heartbeat_interval": 5, "progress_interval": 2, "drain_timeout": 30, "reconnect_min_delay": 0.2,
        "reconnect_max_delay": 5, "log_level": "INFO",
    }


AGENT_KEYS: dict[tuple[str, ...], list[str]] = {
    (): list(acfg._TOP_KEYS),
    ("slots",): list(acfg._SLOT_KEYS),
    ("backend",): sorted({k for keys in acfg._BACKEND_KEYS.values() for k in keys}),
    ("mover",): sorted({k for keys in acfg._MOVER_KEYS.values() for k in keys}),
}


def _mappings(doc: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], dict[Any, Any]]]:
    """Every mapping in *doc* with its path (list items as '*' for KEYS)."""
    if isinstance(doc, dict):
        yield path, doc
        for k, v in doc.items():
            yield from _mappings(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _mappings(v, (*path, i))


def _pattern(path: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple("*" if isinstance(p, int) else str(p) for p in path)


def value_for(key: Any) -> st.SearchStrategy[Any]:
    hints = HINTS.get(key) if isinstance(key, str) else None
    return VALUES if hints is None else st.sampled_from(hints) | VALUES


@st.composite
def changed(draw: st.DrawFn, doc: dict[str, Any], known: dict[tuple[str, ...], list[str]]) -> dict[str, Any]:
    """*doc* with one to four random changes."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 4))):
        maps = list(_mappings(doc))
        if not maps:
            break
        path, target = draw(st.sampled_from(maps))
        how = draw(st.sampled_from(["set", "set", "set", "add", "delete", "unknown"]))
        if how == "set" and target:
            key = draw(st.sampled_from(list(target)))
            target[key] = draw(value_for(key))
        elif how == "add":
            keys = known.get(_pattern(path), [])
            if keys:
                key = draw(st.sampled_from(keys))
                target[key] = draw(value_for(key))
        elif how == "delete" and target:
            del target[draw(st.sampled_from(list(target)))]
        elif how == "unknown":
            target[draw(KEYS)] = draw(VALUES)
    return doc


def dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


@st.composite
def mangled_text(draw: st.DrawFn, text: str) -> bytes:
    """*text* with bytes inserted, flipped or cut."""
    raw = text.encode()
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(raw)))
        how = draw(st.integers(0, 2))
        if how == 0:
            raw = raw[:at] + draw(st.binary(min_size=1, max_size=8) | st.sampled_from(
                [b"\t", b"\n  ", b": ", b"- ", b"{", b"[", b"&a ", b"*a", b"!!python/none ", b"\xff", b"---\n"])) + raw[at:]
        elif how == 1 and at < len(raw):
            raw = raw[:at] + bytes([raw[at] ^ draw(st.integers(1, 255))]) + raw[at + 1:]
        else:
            raw = raw[:at]
    return raw


def alias_bomb(doc: dict[str, Any], key: str, depth: int = 40) -> str:
    """*doc* with *key* set to a few lines of anchors whose value, written
    out, has 2**depth elements."""
    doc = {k: v for k, v in doc.items() if k != key}
    parts = ['&a0 ["x", "x"]'] + [f"&a{i} [*a{i - 1}, *a{i - 1}]" for i in range(1, depth)]
    return dump(doc) + f"{key}: [{', '.join(parts)}]\n"


#: YAML that is not quite data (``{doc}`` is the valid document's text)
ODD_TEXTS = [
    b"", b"---\n", b"~\n", b"[1, 2]\n", b"just a string\n", b"42\n", b"\xff\xfe\x00bad", b"key: \xe9t\xe9\n",
    b"data_dir: !!python/object/apply:os.system [echo hi]\n", b"max_attempts: 2020-99-99\n",
    b"agent_grace: !!timestamp 2020-01-01T99:99\n", b"max_attempts: !!int x\n", b"agent_grace: !!float x\n",
    b"max_attempts: " + b"9" * 5000 + b"\n", b"archive_ids: " + b"[" * 3000 + b"]" * 3000 + b"\n",
    b"archive_ids: &a [*a]\n", b"archive_ids: !!set {1, 2}\n", b"archive_ids: !!binary AAAA\n",
    b"cluster: {replicas: &r [*r]}\n", b"? [a, b]\n: 1\n", b"<<: 5\n", b"a: 1\na: 2\n", b"\t- x\n",
    b"{doc}\nmax_attempts: 2\n", b"{doc}\n---\nmax_attempts: 2\n", b"{doc}\ndata_dir: " + b"d" * 100_000 + b"\n",
]


# ---------------------------------------------------------------------------
# coordinator.yaml


def usable_coordinator(cfg: Any, level: str) -> None:
    """A loaded configuration is one a replica can start with."""
    c = cfg.cluster
    assert 1 <= c.shards <= 999 and 1 <= c.vnodes <= MAX_VNODES and c.shards * c.vnodes <= MAX_POINTS, \
        (c.shards, c.vnodes)
    assert len(c.password) >= 16
    me = cfg.me
    for r in c.replicas:
        split_addr(r.api)
        for shard in (0, c.shards - 1):
            check_addr(r.raft_addr(shard), "Raft address")
    if cfg.raft_bind:
        check_addr(f"{cfg.raft_bind}:{split_addr(me.raft)[1]}", "raft_bind")
    if cfg.listen:
        split_addr(cfg.listen)
    assert "\x00" not in str(cfg.data_dir)
    for name in ("remember_for", "progress_timeout", "agent_grace", "heartbeat_interval", "propose_timeout"):
        value = getattr(cfg, name)
        assert math.isfinite(value) and value >= 0, (name, value)
    for f in dataclasses.fields(RaftTuning):
        value = getattr(cfg.raft, f.name)
        assert not isinstance(value, float) or math.isfinite(value), (f.name, value)
    cfg.raft.validate()
    assert cfg.archive_ids and all(1 <= a <= 0xFFFFFFFF for a in cfg.archive_ids)
    assert cfg.default_archive_id in cfg.archive_ids
    assert cfg.max_attempts >= 1 and cfg.max_terminal >= 0 and cfg.remember_ends >= 0
    assert level.level in ccfg.LOG_LEVELS and level.format in LOG_FORMATS


def load_coordinator(path: Path, overrides: dict[str, Any] | None = None) -> None:
    try:
        cfg, level = ccfg.load(path, overrides)
    except ccfg.ConfigError as exc:
        message = str(exc)
        assert message and len(message) <= MAX_MESSAGE, f"{len(message)} characters: {message[:300]}"
        assert "Traceback" not in message
        return
    usable_coordinator(cfg, level)


@fuzz_settings(300)
@given(data=st.data())
def test_fuzz_coordinator_yaml(where: Path, data: st.DataObject) -> None:
    doc = data.draw(changed(coordinator_doc(where), COORDINATOR_KEYS), label="document")
    path = where / "coordinator.yaml"
    path.write_text(dump(doc))
    load_coordinator(path)


@fuzz_settings(150)
@given(data=st.data())
def test_fuzz_coordinator_yaml_text(where: Path, data: st.DataObject) -> None:
    text = dump(coordinator_doc(where))
    raw = data.draw(mangled_text(text) | st.sampled_from(ODD_TEXTS).map(lambda t: t.replace(b"{doc}", text.encode())),
                    label="text")
    path = where / "coordinator.yaml"
    path.write_bytes(raw)
    load_coordinator(path)


@pytest.mark.parametrize("key", ["archive_ids", "log_level", "agent_grace", "raft", "cluster"])
@pytest.mark.timeout(30)  # the full repr of what the aliases make would never end
def test_an_alias_bomb_in_coordinator_yaml_is_a_short_config_error(where: Path, key: str) -> None:
    path = where / "bomb.yaml"
    path.write_text(alias_bomb(coordinator_doc(where), key))
    with pytest.raises(ccfg.ConfigError) as err:
        ccfg.load(path)
    assert len(str(err.value)) <= MAX_MESSAGE


#: values every setting is tried with, beside its own hints
ANY_VALUES: list[Any] = [None, True, False, -1, 0, 1 << 64, -(10 ** 30), math.nan, math.inf, 0.5, "", " ", "x\x00",
                         "x" * 3000, "é", [], {}, [[]], {"a": 1}, [1, "a"], datetime.date(2020, 1, 1)]
if not _DEEP:  # the default run: one of each kind
    ANY_VALUES = [None, True, -1, 1 << 64, math.nan, "", "x\x00", "x" * 3000, [1, "a"], {"a": 1},
                  datetime.date(2020, 1, 1)]


def _each_setting(doc: dict[str, Any], known: dict[tuple[str, ...], list[str]],
                  only: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    """(where, changed doc) for every known setting of every mapping of
    *doc* (of the first list item; under *only* when given) set to each of
    its hints and ANY_VALUES, and removed."""
    for path, _target in list(_mappings(doc)):
        if any(isinstance(p, int) and p > 0 for p in path) or (only and path[:1] not in [(o,) for o in only]):
            continue
        for key in known.get(_pattern(path), []):
            for value in [*HINTS.get(key, []), *ANY_VALUES, "<removed>"]:
                new = copy.deepcopy(doc)
                t = new
                for p in path:
                    t = t[p]
                if value == "<removed>":
                    t.pop(key, None)
                else:
                    t[key] = value
                yield f"{'.'.join(map(str, (*path, key)))} = {value!r:.60}", new


def test_every_coordinator_setting_with_every_odd_value(where: Path) -> None:
    """Not random: each setting, alone, set to each value worth trying."""
    path = where / "table.yaml"
    n = 0
    for what, doc in _each_setting(coordinator_doc(where), COORDINATOR_KEYS):
        path.write_text(dump(doc))
        try:
            load_coordinator(path)
        except Exception as exc:
            raise AssertionError(f"{what}: {type(exc).__name__}: {exc}") from exc
        n += 1
    assert n > 500


# ---------------------------------------------------------------------------
# agentd.yaml


def usable_agent(cfg: acfg.AgentConfig) -> None:
    """A loaded configuration is one agentd can run with."""
    assert re.fullmatch(r"[A-Za-z0-9_.@:-]{1,128}", cfg.agent_id), cfg.agent_id
    assert cfg.coordinators
    for a in cfg.coordinators:
        acfg.check_address(a)
    assert all(1 <= a <= 0xFFFFFFFF for a in cfg.archive_ids)
    assert cfg.slots.total > 0 and min(cfg.slots.archive, cfg.slots.restore, cfg.slots.remove) >= 0
    for name in ("heartbeat_interval", "progress_interval", "drain_timeout", "reconnect_min_delay",
                 "reconnect_max_delay"):
        value = getattr(cfg, name)
        assert math.isfinite(value) and value >= 0, (name, value)
    assert cfg.reconnect_min_delay <= cfg.reconnect_max_delay
    assert cfg.log_level in acfg.LOG_LEVELS
    b = cfg.backend
    assert b is not None and b.type in ("simfs", "lustre")
    if b.type == "simfs":
        assert b.root
    else:
        assert b.mount and acfg.valid_fsname(b.fsname)
    m = cfg.mover
    if isinstance(m, acfg.PosixMoverConfig):
        assert 4096 <= m.chunk_size <= 1 << 30 and m.bandwidth_limit >= 0 and m.progress_bytes >= 0
        if m.progress_interval is not None:
            assert math.isfinite(m.progress_interval) and m.progress_interval > 0
        if m.checksum is not None:
            hashlib.new(m.checksum).hexdigest()  # the posix mover writes this digest
    elif isinstance(m, acfg.CommandMoverConfig):
        assert math.isfinite(m.timeout) and math.isfinite(m.kill_grace)
    else:
        assert isinstance(m, acfg.NullMoverConfig) and math.isfinite(m.delay)
    # the daemon builds its mover from it
    from agentd.daemon import make_mover

    try:
        make_mover(cfg)
    except acfg.ConfigError:
        pass


def load_agent(path: Path | None, environ: dict[str, str] | None = None,
               overrides: tuple[acfg.Override, ...] = ()) -> None:
    try:
        cfg = acfg.load_config(str(path) if path else None, overrides, environ or {})
    except acfg.ConfigError as exc:
        message = str(exc)
        assert message and len(message) <= MAX_MESSAGE, f"{len(message)} characters: {message[:300]}"
        assert "Traceback" not in message
        return
    usable_agent(cfg)


ENV_VALUES = st.one_of(st.sampled_from(["", " ", ",", "127.0.0.1:7600,[::1]:7601", "h:0", "a,b", "x" * 300,
                                        "fuzz-cluster", "bad cluster", "-x"]),
                       st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=20))
OVERRIDE_KEYS = sorted({"agent_id", "coordinators", "cluster_id", "archive_ids", "slots.archive", "slots.restore",
                        "slots.remove", "backend.type", "backend.root", "backend.mount", "backend.fsname",
                        "mover.type", "mover.archive_root", "mover.archive_cmd", "mover.restore_cmd",
                        "mover.bandwidth_limit", "log_level", "backend.copytool_handle",
                        "backend.register_archive_id"})
OVERRIDES = st.lists(st.builds(lambda k, v: acfg.Override(k, v, f"--{k}"), st.sampled_from(OVERRIDE_KEYS),
                               st.one_of(st.sampled_from(STRINGS), st.integers(-5, 1 << 33),
                                         st.lists(st.integers(-1, 3), max_size=3))), max_size=3)


@fuzz_settings(300)
@given(data=st.data())
def test_fuzz_agentd_yaml(where: Path, data: st.DataObject) -> None:
    mover = data.draw(st.sampled_from(["posix", "command", "null"]), label="mover")
    backend = data.draw(st.sampled_from(["simfs", "lustre"]), label="backend")
    doc = data.draw(changed(agent_doc(where, mover, backend), AGENT_KEYS), label="document")
    env = data.draw(st.dictionaries(st.sampled_from([acfg.ENV_COORDINATORS, acfg.ENV_CLUSTER]), ENV_VALUES),
                    label="environment")
    overrides = tuple(data.draw(OVERRIDES, label="overrides"))
    path = where / "agentd.yaml"
    path.write_text(dump(doc))
    load_agent(path, env, overrides)


@fuzz_settings(150)
@given(data=st.data())
def test_fuzz_agentd_yaml_text(where: Path, data: st.DataObject) -> None:
    text = dump(agent_doc(where))
    raw = data.draw(mangled_text(text) | st.sampled_from(ODD_TEXTS).map(lambda t: t.replace(b"{doc}", text.encode())),
                    label="text")
    path = where / "agentd.yaml"
    path.write_bytes(raw)
    load_agent(path)


@pytest.mark.parametrize("key", ["archive_ids", "mover", "coordinators", "agent_id", "heartbeat_interval"])
@pytest.mark.timeout(30)  # the full repr of what the aliases make would never end
def test_an_alias_bomb_in_agentd_yaml_is_a_short_config_error(where: Path, key: str) -> None:
    path = where / "bomb.yaml"
    path.write_text(alias_bomb(agent_doc(where), key))
    with pytest.raises(acfg.ConfigError) as err:
        acfg.load_config(str(path), (), {})
    assert len(str(err.value)) <= MAX_MESSAGE


@pytest.mark.parametrize("mover, backend", [("posix", "simfs"), ("command", "lustre"), ("null", "simfs")])
def test_every_agentd_setting_with_every_odd_value(where: Path, mover: str, backend: str) -> None:
    """Not random: each setting, alone, set to each value worth trying (the
    top-level ones once, with the posix mover)."""
    path = where / "table.yaml"
    n = 0
    only = () if mover == "posix" else ("mover", "backend")
    for what, doc in _each_setting(agent_doc(where, mover, backend), AGENT_KEYS, only):
        path.write_text(dump(doc))
        try:
            load_agent(path)
        except Exception as exc:
            raise AssertionError(f"{what}: {type(exc).__name__}: {exc}") from exc
        n += 1
    assert n > 200


# ---------------------------------------------------------------------------
# regressions: what the fuzzing found, one test each

UNMAKEABLE_YAML = [b"\xff\xfe not UTF-8\n", b"max_attempts: 2020-99-99\n", b"max_attempts: !!int x\n",
                   b"agent_grace: !!timestamp 2020-01-01T99:99\n", b"archive_ids: " + b"[" * 3000 + b"]" * 3000 + b"\n",
                   b"max_attempts: " + b"9" * 5000 + b"\n"]


@pytest.mark.parametrize("text", UNMAKEABLE_YAML, ids=["not-utf8", "month-99", "int-x", "hour-99", "deep", "digits"])
def test_yaml_whose_values_cannot_be_made_is_a_config_error(where: Path, text: bytes) -> None:
    """UnicodeDecodeError, ValueError, AttributeError, RecursionError came
    out of the loaders (a traceback instead of a line and exit 2)."""
    path = where / "unmakeable.yaml"
    path.write_bytes(text)
    with pytest.raises(ccfg.ConfigError, match="UTF-8|not valid YAML"):
        ccfg.load(path)
    with pytest.raises(acfg.ConfigError, match="UTF-8|not valid YAML"):
        acfg.load_config(str(path), (), {})


def test_settings_whose_keys_are_not_strings_are_a_config_error(where: Path) -> None:
    """A key like ``1:`` or ``~:`` was a TypeError in both loaders."""
    path = where / "keys.yaml"
    for key in (1, None, True, 2.5):
        path.write_text(dump({**coordinator_doc(where), key: 1}))
        with pytest.raises(ccfg.ConfigError, match="unknown setting"):
            ccfg.load(path)
        path.write_text(dump({**agent_doc(where), key: 1}))
        with pytest.raises(acfg.ConfigError, match="unknown key"):
            acfg.load_config(str(path), (), {})
    path.write_text(dump({**coordinator_doc(where), "raft": {7: 1}}))
    with pytest.raises(ccfg.ConfigError, match="raft: unknown setting"):
        ccfg.load(path)


@pytest.mark.parametrize("change", [
    {"agent_grace": math.nan}, {"propose_timeout": math.inf}, {"progress_timeout": math.nan},
    {"remember_for": -math.inf}, {"heartbeat_interval": math.nan},
    {"raft": {"tick": math.nan}}, {"raft": {"connection_timeout": math.inf}}, {"raft": {"leader_fallback": math.nan}},
])
def test_durations_that_are_not_finite_are_refused(where: Path, change: dict[str, Any]) -> None:
    """``.nan`` passed every ``< 0`` check: a NaN propose_timeout refused
    every proposal, a NaN progress_timeout crashed the reclaimer."""
    path = where / "nan.yaml"
    path.write_text(dump({**coordinator_doc(where), **change}))
    with pytest.raises(ccfg.ConfigError, match="finite"):
        ccfg.load(path)


@pytest.mark.parametrize("shards, vnodes", [(4, 0), (4, -1), (4, MAX_VNODES + 1), (999, 4096)])
def test_vnodes_outside_the_rings_limits_are_refused_at_load(where: Path, shards: int, vnodes: int) -> None:
    """They loaded, and the replica failed at start (RingError) or built a
    ring of a billion points."""
    doc = coordinator_doc(where)
    doc["cluster"].update(shards=shards, vnodes=vnodes, replicas=[{"id": "c0", "api": "h:7600", "raft": "h:7700"}])
    path = where / "vnodes.yaml"
    path.write_text(dump(doc))
    with pytest.raises(ccfg.ConfigError, match="vnodes"):
        ccfg.load(path)


@pytest.mark.parametrize("where_, value", [
    ("raft", "0.0.0.0:7700"), ("raft", "[::1]:7700"), ("raft", "a b:7700"),
    ("raft_bind", "0.0.0.0"), ("raft_bind", "a b"), ("raft_bind", "h:1"),
])
def test_raft_addresses_the_raft_adapter_refuses_are_refused_at_load(where: Path, where_: str, value: str) -> None:
    """They loaded, and the replica failed at start with a ValueError from
    the Raft adapter (one interface, host:port, no IPv6: its port + shard
    loses the brackets)."""
    doc = coordinator_doc(where)
    if where_ == "raft":
        doc["cluster"]["replicas"][0]["raft"] = value
    else:
        doc["raft_bind"] = value
    path = where / "raft.yaml"
    path.write_text(dump(doc))
    with pytest.raises(ccfg.ConfigError, match=where_):
        ccfg.load(path)


def test_paths_with_a_nul_are_config_errors(where: Path) -> None:
    path = where / "nul.yaml"
    doc = coordinator_doc(where)
    doc["data_dir"] = "data\x00dir"
    path.write_text(dump(doc))
    with pytest.raises(ccfg.ConfigError, match="data_dir"):
        ccfg.load(path)
    doc = coordinator_doc(where)
    doc["cluster"]["password_file"] = "pw\x00file"
    path.write_text(dump(doc))
    with pytest.raises(ccfg.ConfigError, match="password_file"):  # was ValueError: embedded null byte
        ccfg.load(path)


@pytest.mark.parametrize("algo", ["shake_128", "shake_256", "SHAKE_128"])
def test_a_checksum_without_a_fixed_digest_size_is_refused(where: Path, algo: str) -> None:
    """shake_128 loaded, and every archive then failed: its hexdigest needs a length."""
    doc = agent_doc(where)
    doc["mover"]["checksum"] = algo
    path = where / "shake.yaml"
    path.write_text(dump(doc))
    with pytest.raises(acfg.ConfigError, match="no fixed digest size"):
        acfg.load_config(str(path), (), {})


def test_long_values_are_shortened_in_config_errors(where: Path) -> None:
    path = where / "long.yaml"
    long = "x" * 100_000
    for doc, load, error in (
            ({**coordinator_doc(where), "replica_id": long}, lambda p: ccfg.load(p), ccfg.ConfigError),
            ({**coordinator_doc(where), "log_level": long}, lambda p: ccfg.load(p), ccfg.ConfigError),
            ({**agent_doc(where), "agent_id": long}, lambda p: acfg.load_config(str(p), (), {}), acfg.ConfigError),
            ({**agent_doc(where), "coordinators": [long + ":1"]}, lambda p: acfg.load_config(str(p), (), {}),
             acfg.ConfigError)):
        path.write_text(dump(doc))
        with pytest.raises(error) as err:
            load(path)
        assert len(str(err.value)) <= 500, str(err.value)[:200]
