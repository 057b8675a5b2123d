"""--log-format json (issue 15, hsm/logsetup.py): one JSON object per
line, and every line about an action carries its id, kind and FID as
fields. Checked on what a real replica and a real agent log while they
archive, fail, cancel and restore real files."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from agentd.config import ConfigError as AgentConfigError
from agentd.config import load_config
from hsm.logsetup import ActionFields, fields, json_formatter, setup
from hsm.v1 import types_pb2 as tpb
from tests.cluster import until
from tests.test_agentd import agent_config, registered, running_agent, submit, tree  # noqa: F401 - fixture

KiB = 1024


@contextmanager
def json_logs(level: str = "debug") -> Iterator[io.StringIO]:
    """The process's logging as a daemon with --log-format json sets it,
    into a buffer; pytest's own handlers back afterwards."""
    root = logging.getLogger()
    handlers, was = list(root.handlers), root.level
    buf = io.StringIO()
    setup(level, "json", stream=buf, force=True)
    try:
        yield buf
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(was)


def record(msg: str, *args: Any, **extra: Any) -> dict[str, Any]:
    r = logging.LogRecord("agentd.daemon", logging.INFO, __file__, 1, msg, args, None)
    for k, v in extra.items():
        setattr(r, k, v)
    ActionFields().filter(r)
    out: dict[str, Any] = json.loads(json_formatter().format(r))
    return out


def test_a_line_about_an_action_gets_its_fields_from_the_canonical_prefix() -> None:
    fid = "[0x200000400:0x1:0x0]"
    d = record("action %d/%d %s %s started: archive %d", 8001, 2, "ARCHIVE", fid, 1)
    assert (d["action_id"], d["attempt"], d["kind"], d["fid"]) == (8001, 2, "ARCHIVE", fid)
    assert d["level"] == "INFO" and d["logger"] == "agentd.daemon" and d["time"].endswith("Z")
    assert d["message"] == f"action 8001/2 ARCHIVE {fid} started: archive 1"
    d = record("shard %d: action %d: cancel held", 3, 7003)
    assert d["action_id"] == 7003 and "kind" not in d
    d = record("nothing about an action 12 in the middle")
    assert "action_id" not in d
    # given fields win over the message
    d = record("action 1/1 ARCHIVE %s: x", fid, **fields(55, 3, "RESTORE", "[0x1:0x2:0x0]"))
    assert (d["action_id"], d["attempt"], d["kind"], d["fid"]) == (55, 3, "RESTORE", "[0x1:0x2:0x0]")


def test_log_format_is_checked_where_it_is_configured(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="log format 'xml'"):
        setup("info", "xml")
    cfg = tmp_path / "agentd.yaml"
    cfg.write_text("backend: {root: /srv}\nmover: {type: 'null'}\nlog_format: JSON\n")
    assert load_config(str(cfg), environ={}).log_format == "json"
    cfg.write_text("backend: {root: /srv}\nmover: {type: 'null'}\nlog_format: xml\n")
    with pytest.raises(AgentConfigError, match="log_format"):
        load_config(str(cfg), environ={})


def test_every_line_a_replica_and_an_agent_log_about_an_action_carries_its_fields(
        coordinator_factory: Any, tree: Any) -> None:  # noqa: F811
    c = coordinator_factory(shards=2)
    files = [tree.add(f"f{i}", n) for i, n in enumerate((1, 300 * KiB))]
    gone, gone_fid, _ = tree.add("gone", 10)
    gone.unlink()  # its archive fails in the mover
    slow, slow_fid, _ = tree.add("slow", 4096 * KiB)
    with json_logs() as buf:
        with c.client(timeout=10) as client, running_agent(agent_config(
                c, tree, mover={"bandwidth_limit": 256 * KiB})):
            until(lambda: registered(client, "a1"), 10, "agent a1 to register")
            ids = [submit(client, fid, "archive") for _, fid, _ in files]
            bad = submit(client, gone_fid, "archive")
            assert {a.state for a in client.wait([*ids, bad], deadline=30).values()} == {tpb.SUCCEEDED, tpb.FAILED}
            long = submit(client, slow_fid, "archive")
            until(lambda: client.get_action(long).state == tpb.STARTED, 10, "the slow archive to start")
            client.cancel([long])
            assert client.wait([long], deadline=20)[long].state == tpb.CANCELED
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]  # every line is JSON
    about = [d for d in lines if d["message"].startswith("action ") or " action " in d["message"][:20]]
    assert len(about) >= 8, [d["message"] for d in lines]
    missing = [d["message"] for d in about if not {"action_id", "kind", "fid"} <= d.keys()]
    assert missing == []
    assert {d["logger"].split(".")[0] for d in about} >= {"agentd", "coordinator"}
    assert any(d["action_id"] == long and d.get("kind") == "ARCHIVE" and "cancel" in d["message"] for d in about)


def test_agentd_started_with_log_format_json_writes_json_lines(tmp_path: Any) -> None:
    """The daemon as a process: every line it writes to stderr is one JSON object."""
    import subprocess
    import sys

    from hsm.simfs import SimFS
    from tests.cluster import until

    SimFS.create(tmp_path / "fs", "simfs")
    err = tmp_path / "agentd.err"
    with open(err, "wb") as out:
        p = subprocess.Popen([sys.executable, "-m", "agentd.cli", "--coordinators", "127.0.0.1:1",
                              "--fs-root", str(tmp_path / "fs"), "--mover", "null", "--agent-id", "j1",
                              "--log-format", "json"], stderr=out, stdout=out)
    try:
        until(lambda: "stream to coordinator 127.0.0.1:1 lost" in err.read_text(), 20, "agentd's first warning")
    finally:
        p.terminate()
        p.wait(20)
    lines = [json.loads(x) for x in err.read_text().splitlines()]
    assert {d["logger"] for d in lines} >= {"agentd.daemon"}
    assert any(d["level"] == "WARNING" and "127.0.0.1:1" in d["message"] for d in lines)


def test_hsm_bridge_started_with_log_format_json_writes_json_lines(tmp_path: Any) -> None:
    """The bridge as a process, its coordinators unreachable (it stands by for its lease)."""
    import subprocess
    import sys

    from tests.cluster import until

    err = tmp_path / "bridge.err"
    with open(err, "wb") as out:
        p = subprocess.Popen([sys.executable, "-m", "bridge.cli", "--mount", str(tmp_path), "--fsname", "lustre",
                              "--coordinators", "127.0.0.1:1", "--journal", str(tmp_path / "journal"),
                              "--library", str(tmp_path / "no-liblustreapi.so"), "--log-format", "json"],
                             stderr=out, stdout=out)
    try:
        until(lambda: "standing by" in err.read_text(), 20, "the bridge's first warning")
    finally:
        p.terminate()
        p.wait(20)
    lines = [json.loads(x) for x in err.read_text().splitlines()]
    assert any(d["logger"] == "bridge.daemon" and d["level"] == "WARNING" for d in lines)
