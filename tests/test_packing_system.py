"""Small-file packing on a real cluster with agentd processes (issue 18):
small archives gathered into containers, each file's catalog entry naming
its slice, a restore reading that slice, a remove leaving the container;
an agent killed -9 while it gathers loses nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentd.movers.packer import CONTAINERS_DIR, read_index
from hsm.hsmflags import HS
from hsm.v1 import types_pb2 as T
from tests.cluster import until
from tests.test_system_agents import Rig

pytestmark = pytest.mark.slow  # real processes, seconds per test


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path, agent_grace=2.0)
    try:
        yield r
    finally:
        r.close()


def packing(rig: Rig, idle: float, files: int = 10) -> dict[str, Any]:
    return {"type": "posix", "archive_root": str(rig.archive), "pack_below": "64K", "pack_files": files,
            "pack_idle": idle}


def catalog_slices(rig: Rig, fids: list[Any]) -> dict[str, T.Copy]:
    assert rig.client is not None
    out = {}
    for fid in fids:
        (entry,) = rig.client.copies_of(fid)
        out[str(fid)] = entry.copy
    return out


def test_small_archives_share_containers_and_each_restores_from_its_slice(rig: Rig) -> None:
    rig.start()
    rig.agent("a1", slots="archive=40,restore=4,remove=4", mover=packing(rig, idle=0.5))
    files = [rig.file(f"s{i}", 500 + 97 * i) for i in range(30)]
    big = rig.file("big", 200_000)  # above pack_below: its own object
    ids = rig.submit("archive", [f for _p, f, _d in files] + [big[1]])
    assert rig.client is not None
    done = rig.client.wait(ids, deadline=60)
    assert all(a.state == T.SUCCEEDED for a in done.values()), done
    made = sorted((rig.archive / CONTAINERS_DIR).glob("*/*/*.pack"))
    assert 3 <= len(made) <= 6, made  # 30 files, 10 a container (a few more when a batch went idle)
    slices = catalog_slices(rig, [f for _p, f, _d in files])
    for path, fid, data in files:
        c = slices[str(fid)]
        assert c.container and c.key == c.container and c.size == len(data)
        container = rig.archive / c.container
        assert container.read_bytes()[c.slot:c.slot + c.size] == data
        assert any(e["fid"] == str(fid) and e["offset"] == c.slot for e in read_index(container))
        assert rig.fs.hsm_state(path).flags & HS.ARCHIVED
    (bigc,) = rig.client.copies_of(big[1])
    assert not bigc.copy.container
    path, fid, _data = files[0]
    stat = rig.hsmctl("catalog", "stat", str(path))
    c = slices[str(fid)]
    assert stat.returncode == 0 and f"archive 1: packed in container {c.container} at offset {c.slot}" in stat.stdout

    # restores read their slices
    back = files[:5]
    for path, _fid, _data in back:
        rig.fs.release(path)
    ids = rig.submit("restore", [f for _p, f, _d in back])
    done = rig.client.wait(ids, deadline=60)
    assert all(a.state == T.SUCCEEDED for a in done.values()), done
    assert all(path.read_bytes() == data for path, _f, data in back)

    # a remove forgets the copy and leaves the container for its other files
    path, fid, _data = files[7]
    ids = rig.submit("remove", [fid])
    assert rig.client.wait(ids, deadline=60)[ids[0]].state == T.SUCCEEDED
    assert rig.client.copies_of(fid) == []
    assert (rig.archive / slices[str(fid)].container).exists()
    other = next(f for p, f, _d in files if slices[str(f)].container == slices[str(fid)].container and f != fid)
    assert rig.client.copies_of(other)


def test_an_agent_killed_while_it_packs_loses_nothing(rig: Rig) -> None:
    rig.start()
    # a1 gathers for an hour: its files sit in its packer, nothing written
    rig.agent("a1", slots="archive=40,restore=2,remove=2", mover=packing(rig, idle=3600, files=1000))
    files = [rig.file(f"k{i}", 1000 + i) for i in range(12)]
    ids = rig.submit("archive", [f for _p, f, _d in files])
    until(lambda: rig.running_on(ids, "a1", progress=False), 20, "all twelve archives started on a1")
    rig.cluster.kill_agent("a1")
    assert not list((rig.archive / CONTAINERS_DIR).glob("*/*/*.pack"))
    assert not any(rig.fs.hsm_state(p).flags & HS.ARCHIVED for p, _f, _d in files)
    # the actions come back once a1's grace ends; a2 packs them
    rig.agent("a2", slots="archive=40,restore=2,remove=2", mover=packing(rig, idle=0.3, files=1000))
    assert rig.client is not None
    done = rig.client.wait(ids, deadline=60)
    assert all(a.state == T.SUCCEEDED for a in done.values()), done
    slices = catalog_slices(rig, [f for _p, f, _d in files])
    for path, fid, data in files:
        c = slices[str(fid)]
        container = rig.archive / c.container
        assert container.read_bytes()[c.slot:c.slot + c.size] == data
        assert any(e["fid"] == str(fid) for e in read_index(container))
        assert rig.fs.hsm_state(path).flags & HS.ARCHIVED


def test_compaction_rewrites_a_container_once_half_of_it_is_dead(rig: Rig) -> None:
    rig.start()
    rig.agent("a1", slots="archive=40,restore=4,remove=10", mover=packing(rig, idle=30, files=10))
    files = [rig.file(f"c{i}", 1000 + i) for i in range(20)]
    ids = rig.submit("archive", [f for _p, f, _d in files])
    assert rig.client is not None
    assert all(a.state == T.SUCCEEDED for a in rig.client.wait(ids, deadline=60).values())
    slices = catalog_slices(rig, [f for _p, f, _d in files])
    boxes = sorted({c.container for c in slices.values()})
    assert len(boxes) == 2  # ten files each: written when full
    first = [(p, f, d) for p, f, d in files if slices[str(f)].container == boxes[0]]
    dead, alive = first[:6], first[6:]
    ids = rig.submit("remove", [f for _p, f, _d in dead])
    assert all(a.state == T.SUCCEEDED for a in rig.client.wait(ids, deadline=60).values())
    base = ("catalog", "compact", "--archive-root", str(rig.archive), "--archive-id", "1", "--min-age", "0")

    dry = rig.hsmctl(*base, "--dry-run")
    assert dry.returncode == 0, dry
    assert f"would compact {boxes[0]} (60% dead, 4 live files)" in dry.stdout
    assert dry.stdout.rstrip().endswith("2 containers: 1 kept, 1 would compact")
    assert (rig.archive / boxes[0]).exists()

    done = rig.hsmctl(*base, "--yes")
    assert done.returncode == 0, done
    assert f"compacted {boxes[0]} (60% dead, 4 live files) -> containers/1--/" in done.stdout
    assert not (rig.archive / boxes[0]).exists() and (rig.archive / boxes[1]).exists()
    moved = catalog_slices(rig, [f for _p, f, _d in alive])
    new = {c.container for c in moved.values()}
    assert len(new) == 1 and boxes[0] not in new
    (box,) = new
    assert {e["fid"] for e in read_index(rig.archive / box)} == {str(f) for _p, f, _d in alive}
    # the moved files restore from the new container
    for path, _f, _d in alive:
        rig.fs.release(path)
    ids = rig.submit("restore", [f for _p, f, _d in alive])
    assert all(a.state == T.SUCCEEDED for a in rig.client.wait(ids, deadline=60).values())
    assert all(path.read_bytes() == data for path, _f, data in alive)
