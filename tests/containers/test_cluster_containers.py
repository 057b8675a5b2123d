"""Container system test (testcontainers): builds the image from the
repository's Dockerfile, runs 3 coordinators and an agent as containers on a
private network, runs a workload (archive, release, restore with hsmctl on a
simfs tree shared with the agent), stops one coordinator container (SIGTERM,
as Kubernetes does) and checks that nothing is lost: every action ends
SUCCEEDED and every byte comes back.

It needs a Docker engine. Where none is reachable it is skipped with the
reason (pytest -ra prints it); the process-based tests cover the same path
with the same commands: tests/deploy/test_units_cluster.py (a 3-replica
cluster started from the systemd units' ExecStart lines) and tests/test_e2e.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from hsm.hsmflags import HS
from hsm.simfs import SimFS

REPO = Path(__file__).resolve().parents[2]
REPLICAS = ["hsm-0", "hsm-1", "hsm-2"]
SHARDS = 4
API, RAFT = 7600, 7700


def _docker_unavailable() -> str | None:
    try:
        docker.from_env(timeout=5).ping()
    except Exception as e:  # noqa: BLE001 - any failure means no usable engine
        return (f"no Docker engine reachable ({type(e).__name__}: {e}); the same workload runs "
                "as processes in tests/deploy/test_units_cluster.py and tests/test_e2e.py")
    return None


UNAVAILABLE = _docker_unavailable()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")


def wait_for(what: str, cond: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    from testcontainers.core.image import DockerImage

    with DockerImage(path=str(REPO), tag="hsm-coordinator:containertest") as img:
        yield str(img.tag)


def _cluster_config(etc: Path) -> None:
    """coordinator.yaml as in docs/cluster-config.md, peers by network alias."""
    config = {
        "cluster": {
            "name": "containertest",
            "shards": SHARDS,
            # the entrypoint copies it to /tmp with mode 0600 for the hsm user
            "password_file": "/tmp/raft-password",
            "replicas": [{"id": r, "api": f"{r}:{API}", "raft": f"{r}:{RAFT}"} for r in REPLICAS],
        },
        "data_dir": "/var/lib/hsm-coordinator",
        "listen": f"0.0.0.0:{API}",
        "raft_bind": "0.0.0.0",
        "archive_ids": [1],
        "default_archive_id": 1,
        "agent_grace": 10,
        "heartbeat_interval": 1,
        "insecure": True,  # plain text on the test's own container network
    }
    etc.mkdir(parents=True)
    (etc / "coordinator.yaml").write_text(json.dumps(config))  # JSON is YAML
    (etc / "raft-password").write_text("containertest-raft-password\n")
    for f in etc.iterdir():
        f.chmod(0o644)


def _logs(container: Any) -> str:
    out, err = container.get_logs()
    return (out + err).decode(errors="replace")


def test_three_coordinators_and_an_agent_in_containers(image: str, tmp_path: Path) -> None:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.network import Network

    work = tmp_path / "work"
    etc = tmp_path / "etc"
    _cluster_config(etc)
    fs = SimFS.create(work / "fs", "ctrfs")
    (work / "archive").mkdir()
    addresses = ",".join(f"{r}:{API}" for r in REPLICAS)

    with Network() as net:
        coordinators: dict[str, Any] = {}
        agent = None
        try:
            for r in REPLICAS:
                c = (DockerContainer(image)
                     .with_network(net).with_network_aliases(r)
                     .with_volume_mapping(str(etc), "/etc/hsm-coordinator", "ro")
                     .with_command(["sh", "-c",
                                    "install -m 0600 /etc/hsm-coordinator/raft-password /tmp/raft-password && "
                                    "exec hsm-coordinator run --config /etc/hsm-coordinator/coordinator.yaml "
                                    f"--replica-id {r}"]))
                coordinators[r] = c.start()
            for r, c in coordinators.items():
                wait_for(f"{r} to serve", lambda c=c, r=r: f"replica {r} serving on" in _logs(c), 120)

            # the agent runs as root (a copytool) on the shared simfs tree and archive
            agent = (DockerContainer(image)
                     .with_network(net)
                     .with_kwargs(user="0:0")
                     .with_volume_mapping(str(work), str(work), "rw")
                     .with_command(["agentd", "--coordinators", addresses, "--agent-id", "mover1",
                                    "--fs-root", str(work / "fs"), "--archive-root", str(work / "archive"),
                                    "--slots", "archive=4,restore=4,remove=2"]))
            agent.start()

            def hsmctl(*args: str) -> tuple[int, str]:
                res = agent.exec(["env", f"HSM_COORDINATORS={addresses}", "hsmctl", *args])
                return res.exit_code, res.output.decode(errors="replace")

            def ready() -> bool:
                code, out = hsmctl("status", "--json")
                if code != 0:
                    return False
                status = json.loads(out)
                return (len(status["shards"]) == SHARDS and all(s["leader"] for s in status["shards"])
                        and [a["agent_id"] for a in status["agents"]] == ["mover1"])

            wait_for("a leader per shard and the agent registered", ready, 120)

            rng = random.Random(7)
            digests: dict[Path, str] = {}

            def write(n: int, sub: str) -> list[Path]:
                made = []
                for i in range(n):
                    f = fs.root / "data" / sub / f"f{i:03d}.bin"
                    f.parent.mkdir(parents=True, exist_ok=True)
                    payload = rng.randbytes(rng.choice([0, 100, 65_536, 400_000]))
                    f.write_bytes(payload)
                    digests[f] = hashlib.sha256(payload).hexdigest()
                    made.append(f)
                return made

            first = write(40, "before")
            code, out = hsmctl("archive", "--wait", "-r", str(fs.root / "data"))
            assert code == 0, out
            code, out = hsmctl("release", *map(str, first))
            assert code == 0, out
            half = len(first) // 2
            code, out = hsmctl("restore", "--wait", *map(str, first[:half]))
            assert code == 0, out

            # one coordinator goes away (docker stop: SIGTERM, then the grace period)
            coordinators["hsm-1"].get_wrapped_container().stop(timeout=60)
            assert coordinators["hsm-1"].get_wrapped_container().wait()["StatusCode"] == 0, \
                _logs(coordinators["hsm-1"])
            # hsmctl keeps listing all three replicas: a client must cope with a dead one
            second = write(20, "after")
            code, out = hsmctl("restore", "--wait", *map(str, first[half:]))
            assert code == 0, out
            code, out = hsmctl("archive", "--wait", *map(str, second))
            assert code == 0, out

            for f, digest in digests.items():
                state = fs.hsm_state(f)
                assert state.flags & HS.ARCHIVED and not state.flags & HS.RELEASED, f
                assert hashlib.sha256(f.read_bytes()).hexdigest() == digest, f"{f}: bytes differ"
            code, out = hsmctl("actions", "--all", "--json")
            assert code == 0, out
            actions = json.loads(out)
            assert {a["state"] for a in actions} == {"SUCCEEDED"}, out
            kinds = [a["kind"] for a in actions]
            assert kinds.count("ARCHIVE") == len(digests) and kinds.count("RESTORE") == len(first), kinds
        finally:
            if agent is not None:
                agent.stop()
            for c in coordinators.values():
                c.stop()
        assert os.listdir(work / "archive"), "objects were written to the archive"
