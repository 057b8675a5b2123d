"""Fixtures of the deploy checks: the Ansible roles rendered once per
session for a 3-coordinator, 2-mover cluster on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordinator.cluster import free_ports
from tests.deploy import deploylib as dl

SHARDS = 2


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
    fs_root: Path
    archive_root: Path
    static_units: Path
    proc_output: str


@pytest.fixture(scope="session")
def rendered_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RenderedCluster]:
    base = tmp_path_factory.mktemp("roles")
    taken: set[int] = set()
    coordinators = []
    for i in range(3):
        api = free_port_block(1, taken)
        raft = free_port_block(SHARDS, taken)
        coordinators.append(dl.CoordinatorHost(f"hsm-{i}", api, raft, base / f"hsm-{i}"))
    movers = [dl.MoverHost(f"mover{i}", base / f"mover{i}") for i in (1, 2)]
    fs_root, archive_root = base / "fs", base / "archive"
    static = base / "static-units"
    proc = dl.render_roles(base, coordinators, movers, fs_root=fs_root, archive_root=archive_root,
                           shards=SHARDS, static_out=static)
    assert proc.returncode == 0, dl.output(proc)
    yield RenderedCluster(base, coordinators, movers, fs_root, archive_root, static, dl.output(proc))
