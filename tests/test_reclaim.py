"""Adaptive timeouts with a real coordinator and a real agentd process: a
stuck mover (the command mover running ``sleep``) is reclaimed after
``progress_timeout`` and, out of attempts, FAILS with ETIMEDOUT; a slow
transfer that keeps reporting progress runs to the end."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from hsm.client import CoordinatorClient, submit_item
from hsm.simfs import SimFS
from hsm.v1 import types_pb2 as T

SCRIPT = ('sh -c \'if [ "$1" = stuck ]; then exec sleep 60; fi; '
          'for i in 1 2 3 4 5 6 7 8 9 10; do echo progress $((i * 100)) 1000; sleep 0.4; done\' sh {data}')


def test_stuck_mover_is_reclaimed_and_a_slow_one_is_not(coordinator_factory: Any, tmp_path: Path) -> None:
    rc = coordinator_factory(progress_timeout=1.5, max_attempts=2)
    fs = SimFS.create(tmp_path / "fs", "fs1")
    stuck, slow = fs.root / "stuck", fs.root / "slow"
    stuck.write_bytes(b"s" * 1000)
    slow.write_bytes(b"w" * 1000)
    cfg = tmp_path / "agentd.yaml"
    cfg.write_text(yaml.safe_dump({
        "agent_id": "m1", "coordinators": [rc.address], "backend": {"type": "simfs", "root": str(fs.root)},
        "mover": {"type": "command", "archive_cmd": SCRIPT, "kill_grace": 1},
        "slots": {"archive": 2, "restore": 0, "remove": 0}, "progress_interval": 0.2,
    }))
    log = open(tmp_path / "agentd.log", "wb")  # noqa: SIM115
    agent = subprocess.Popen([sys.executable, "-m", "agentd.cli", "--config", str(cfg)], stdout=log, stderr=log,
                             env=dict(os.environ))
    try:
        with CoordinatorClient(rc.address) as client:
            ids = [r.action_id for r in client.submit([
                submit_item("fs1", fs.fid_of(stuck), "archive", data="stuck"),
                submit_item("fs1", fs.fid_of(slow), "archive", data="slow"),
            ])]
            final = client.wait(ids, deadline=60)
        s, w = final[ids[0]], final[ids[1]]
        assert s.state == T.FAILED and s.errno == errno.ETIMEDOUT and s.attempt == 2, s
        assert "no progress" in s.error
        assert w.state == T.SUCCEEDED and w.attempt == 1 and w.bytes_done == 1000, w
        # the stuck command was really stopped each time: no sleep left behind
        out = subprocess.run(["pgrep", "-f", "exec sleep 60|^sleep 60"], capture_output=True, text=True)
        assert out.stdout.strip() == "", "a reclaimed mover is still running"
    finally:
        agent.terminate()
        agent.wait(30)
        log.close()
