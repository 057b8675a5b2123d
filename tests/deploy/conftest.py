"""Fixtures of the deploy checks: the Ansible roles rendered once per
session for a 3-coordinator, 2-mover cluster on 127.0.0.1, with the two
bridges (active and standby) of one file system, with mutual TLS: the
roles make the CA and the certificates."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordinator.cluster import _port_free, free_ports
from tests.deploy import deploylib as dl

SHARDS = 2
#: The file system the rendered bridges serve.
FSNAME = "deployfs"


def bridge_vars(base: Path) -> dict[str, dict[str, object]]:
    """Host variables of the two bridges of FSNAME: between them every
    option the role can put on hsm-bridge's command line (the first
    recovers through a command, the second through a file: those two
    exclude each other)."""
    return {
        "bridge1": {
            "hsm_bridge_fsnames": [FSNAME],
            "hsm_bridge_archive_ids": [1, 2],
            "hsm_bridge_holder": "bridge1",
            "hsm_bridge_lease_ttl": 10,
            "hsm_bridge_cluster_id": "deploy-test-cluster",
            "hsm_bridge_active_requests_command":
                f"ssh -o BatchMode=yes mds1 lctl get_param 'mdt.{FSNAME}-MDT*.hsm.active_requests'",
            "hsm_bridge_library": "/usr/lib64/liblustreapi.so.1",
            "hsm_bridge_batch_size": 500,
            "hsm_bridge_max_backlog": 50000,
            "hsm_bridge_report_every": 30,
            "hsm_bridge_log_level": "debug",
            "hsm_bridge_mdt_max_requests": 1000,
            "hsm_bridge_mdt_active_request_timeout": 2678400,
            "hsm_bridge_mdt_stall_after": 45,
        },
        "bridge2": {
            "hsm_bridge_fsnames": [FSNAME],
            "hsm_bridge_active_requests": [f"/var/lib/hsm-bridge/{FSNAME}-MDT*.active_requests",
                                           "/var/lib/hsm-bridge/active requests %h"],
            "hsm_bridge_journal": str(base / "bridge2" / "journal" / f"{FSNAME}.journal"),
        },
    }


def free_port_block(count: int, taken: set[int]) -> int:
    """First port of *count* consecutive free loopback ports (below the
    ephemeral range, like coordinator.cluster.free_ports), not in *taken*."""
    for _ in range(200):
        base = free_ports(count)
        ports = range(base, base + count)
        if not taken.intersection(ports):
            taken.update(ports)
            return base
    raise RuntimeError("no block of free loopback ports found")


@dataclass(frozen=True, slots=True)
class RenderedCluster:
    dir: Path
    coordinators: list[dl.CoordinatorHost]
    movers: list[dl.MoverHost]
    bridges: list[dl.BridgeHost]
    fs_root: Path
    archive_root: Path
    static_units: Path
    proc_output: str

    @property
    def ca_dir(self) -> Path:
        """The cluster CA the roles made on the "controller", and the admin
        certificate they issued next to it."""
        return self.dir / "ca"

    def admin_tls_env(self) -> dict[str, str]:
        """HSM_TLS_* for hsmctl with the admin certificate."""
        return {"HSM_TLS_CA": str(self.ca_dir / "ca.pem"), "HSM_TLS_CERT": str(self.ca_dir / "admin.pem"),
                "HSM_TLS_KEY": str(self.ca_dir / "admin.key")}


def render_cluster(base: Path) -> RenderedCluster:
    """Render the roles for the 3 + 2 cluster and its bridges under *base*,
    on loopback ports free now. The roles make the cluster CA and every
    certificate (hsm-coordinator certs) in ``base / "ca"``."""
    taken: set[int] = set()
    coordinators = []
    for i in range(3):
        api = free_port_block(1, taken)
        raft = free_port_block(SHARDS, taken)
        coordinators.append(dl.CoordinatorHost(f"hsm-{i}", api, raft, base / f"hsm-{i}"))
    movers = [dl.MoverHost(f"mover{i}", base / f"mover{i}") for i in (1, 2)]
    bridges = [dl.BridgeHost(name, base / name, hostvars) for name, hostvars in bridge_vars(base).items()]
    fs_root, archive_root = base / "fs", base / "archive"
    static = base / "static-units"
    proc = dl.render_roles(base, coordinators, movers, fs_root=fs_root, archive_root=archive_root,
                           shards=SHARDS, static_out=static, bridges=bridges)
    assert proc.returncode == 0, dl.output(proc)
    return RenderedCluster(base, coordinators, movers, bridges, fs_root, archive_root, static, dl.output(proc))


def ports_taken(cluster: RenderedCluster) -> list[int]:
    """The API and Raft ports of *cluster* something else listens on (or
    holds) now."""
    ports = [p for h in cluster.coordinators for p in (h.api_port, *range(h.raft_port, h.raft_port + SHARDS))]
    return [p for p in ports if not _port_free(p)]


@pytest.fixture(scope="session")
def rendered_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RenderedCluster]:
    yield render_cluster(tmp_path_factory.mktemp("roles"))
