"""Several copies on a real coordinator with real agents (issue 18): each
archive id has its own agent and its own archive directory. An archive
with ``copies=2`` is archived only when both copies are made (the partial
state is visible meanwhile); a restore whose copy is corrupt or gone reads
the other copy."""

from __future__ import annotations

import hashlib
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from agentd.movers.posix import object_path
from hsm.client import CoordinatorClient, submit_item
from hsm.fid import Fid
from hsm.hsmflags import HS
from hsm.simfs import SimFS
from hsm.v1 import coordinator_pb2 as cpb
from hsm.v1 import types_pb2 as tpb
from tests.cluster import until
from tests.test_agentd import Tree, agent_config, registered, running_agent


def _two_archives(tmp_path: Path) -> tuple[Tree, Path]:
    fs = SimFS.create(tmp_path / "fs", fsname="simfs")
    for d in ("archive1", "archive2"):
        (tmp_path / d).mkdir()
    return Tree(fs, tmp_path / "archive1"), tmp_path / "archive2"


def _agent(c: Any, tree: Tree, archive: Path, agent_id: str, archive_id: int) -> Any:
    return running_agent(agent_config(c, Tree(tree.fs, archive), agent_id=agent_id, archive_ids=(archive_id,)))


def _submit(client: CoordinatorClient, fid: Fid, kind: str, archive_id: int, data: str = "") -> cpb.SubmitResult:
    (res,) = client.submit([submit_item("simfs", fid, kind, archive_id, data=data)])
    return res


def test_two_copies_archive_in_turn_and_a_corrupt_copy_is_restored_from_the_other(
        coordinator_factory: Any, tmp_path: Path) -> None:
    c = coordinator_factory(agent_grace=30.0)
    tree, archive2 = _two_archives(tmp_path)
    path, fid, data = tree.add("big.dat", 300_000)
    with c.client(timeout=10) as client, ExitStack() as stack:
        stack.enter_context(_agent(c, tree, tree.archive, "a1", 1))
        until(lambda: registered(client, "a1"), 10, "agent a1 to register")
        res = _submit(client, fid, "archive", 1, "copies=2")
        assert res.outcome == cpb.CREATED, res
        aid = res.action_id

        # only archive 1 has an agent: copy 1 is made, the action waits for
        # archive 2, and the file is not archived yet
        def waits_for_copy_2() -> tpb.Action | None:
            a = client.get_action(aid)
            return a if a.state == tpb.WAITING and a.copies_done == 1 else None

        a = until(waits_for_copy_2, 20, "copy 1 to be made")
        assert a.copies == 2 and a.archive_id == 2 and "copy 1 of 2 made in archive 1" in a.error
        assert not tree.fs.hsm_state(path).flags & HS.ARCHIVED
        assert object_path(tree.archive, fid).read_bytes() == data
        assert not object_path(archive2, fid).exists()
        assert [cp.archive_id for cp in (e.copy for e in client.copies_of(fid))] == [1]

        stack.enter_context(_agent(c, tree, archive2, "a2", 2))
        done = client.wait([aid], deadline=30)
        assert done[aid].state == tpb.SUCCEEDED, done[aid]
        flags = tree.fs.hsm_state(path).flags
        assert flags & HS.ARCHIVED and flags & HS.EXISTS and not flags & HS.DIRTY
        assert object_path(archive2, fid).read_bytes() == data
        copies = sorted((cp.archive_id, cp.key, cp.checksum) for cp in (e.copy for e in client.copies_of(fid)))
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        assert [(i, s) for i, _k, s in copies] == [(1, digest), (2, digest)]

        # corrupt copy 1 (same size, one byte flipped): the restore reads it,
        # its checksum does not match, and it reads copy 2
        tree.fs.release(path)
        obj1 = object_path(tree.archive, fid)
        raw = bytearray(obj1.read_bytes())
        raw[1000] ^= 0xFF
        obj1.write_bytes(bytes(raw))
        res = _submit(client, fid, "restore", 1)
        assert res.outcome == cpb.CREATED, res
        done = client.wait([res.action_id], deadline=30)
        r = done[res.action_id]
        assert r.state == tpb.SUCCEEDED, r
        assert list(r.copies_failed) == [1] and r.archive_id == 2
        assert path.read_bytes() == data
        assert not tree.fs.hsm_state(path).flags & HS.RELEASED

        # both copies bad: the restore fails and says why; the file stays released
        tree.fs.release(path)
        object_path(archive2, fid).unlink()
        res = _submit(client, fid, "restore", 1)
        done = client.wait([res.action_id], deadline=30)
        r = done[res.action_id]
        assert r.state == tpb.FAILED and list(r.copies_failed) == [1], r
        assert r.errno == 2 and "does not exist" in r.error  # ENOENT: copy 2 gone
        assert tree.fs.hsm_state(path).flags & HS.RELEASED


def test_copies_beyond_the_archive_ids_are_refused_with_a_reason(coordinator_factory: Any, tmp_path: Path) -> None:
    c = coordinator_factory()  # archive ids 1, 2, 3
    tree, _ = _two_archives(tmp_path)
    _path, fid, _data = tree.add("f", 10)
    with c.client(timeout=10) as client:
        res = _submit(client, fid, "archive", 1, "copies=4")
        assert res.outcome == cpb.REJECTED and "copies=4 needs 4 archive ids" in res.reason
        res = _submit(client, fid, "archive", 1, "copies=lots")
        assert res.outcome == cpb.REJECTED and "from 1 to 8" in res.reason
        assert not list(client.list_actions(include_terminal=True))
