"""Striped archives on a real coordinator with real agents (issue 18,
item 5; docs/striping.md): a file above the policy's ``striping.above`` is
archived by every agent at once, one part each at a time, sealed into one
object with the file's checksum, cataloged, and restored byte for byte; a
file written while its parts are copied is archived again from the start;
an agent stopped mid-stripe has its part run elsewhere."""

from __future__ import annotations

import hashlib
import re
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from agentd.movers.posix import object_path
from hsm.client import CoordinatorClient, submit_item
from hsm.hsmflags import HS
from hsm.simfs import SimFS
from hsm.v1 import coordinator_pb2 as cpb
from hsm.v1 import types_pb2 as tpb
from tests.cluster import until
from tests.test_agentd import AgentThread, Tree, agent_config, registered, running_agent

MiB = 1 << 20


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    fs = SimFS.create(tmp_path / "fs", fsname="simfs")
    (tmp_path / "archive").mkdir()
    return Tree(fs, tmp_path / "archive")


#: parts of 1 MiB (the least part size) for files of at least 2 MiB
POLICY = "striping: {above: 2M, part_size: 1M, max_parts: 64}\n"


def _agents(stack: ExitStack, c: Any, tree: Tree, client: CoordinatorClient, n: int, **mover: Any) -> list[Any]:
    out = []
    for i in range(1, n + 1):
        out.append(stack.enter_context(running_agent(agent_config(
            c, tree, agent_id=f"a{i}", mover={"chunk_size": 256 * 1024, **mover}))))
        until(lambda i=i: registered(client, f"a{i}"), 10, f"agent a{i} to register")  # type: ignore[misc]
    return out


def parts_checksum(data: bytes, part: int = MiB) -> str:
    """A striped object's checksum: sha256 of its parts' sha256 digests (agentd.movers.posix.PartsHasher)."""
    digests = b"".join(hashlib.sha256(data[i:i + part]).digest() for i in range(0, len(data), part))
    return f"sha256/{part}:{hashlib.sha256(digests).hexdigest()}"


def _parts_by_agent(caplog: Any) -> dict[str, int]:
    """Which agent copied how many parts, from the coordinator's log lines."""
    out: dict[str, int] = {}
    for rec in caplog.records:
        m = re.search(r"part \d+ of \d+ \(bytes \d+ to \d+\) assigned to (\S+)", rec.getMessage())
        if m:
            out[m.group(1)] = out.get(m.group(1), 0) + 1
    return out


def test_a_large_file_is_archived_by_every_agent_and_restored(coordinator_factory: Any, tree: Tree,
                                                              caplog: Any) -> None:
    caplog.set_level("INFO", logger="coordinator.node")
    c = coordinator_factory(agent_grace=30.0)
    path, fid, data = tree.add("big.dat", 8 * MiB + 12345)
    small_path, small_fid, small = tree.add("small.dat", MiB)
    with c.client(timeout=10) as client, ExitStack() as stack:
        assert client.set_policy(POLICY).version >= 1
        _agents(stack, c, tree, client, 3)
        res = client.submit([submit_item("simfs", fid, "archive", 1), submit_item("simfs", small_fid, "archive", 1)])
        assert [r.outcome for r in res] == [cpb.CREATED, cpb.CREATED]
        done = client.wait([r.action_id for r in res], deadline=60)
        big, little = done[res[0].action_id], done[res[1].action_id]
        assert big.state == tpb.SUCCEEDED and little.state == tpb.SUCCEEDED, (big, little)
        # 9 parts (8 of 1 MiB and the rest), over the three agents; the small file is not striped
        spread = _parts_by_agent(caplog)
        assert sum(spread.values()) == 9 and sorted(spread) == ["a1", "a2", "a3"], spread
        assert big.attempt == 2  # the anchor, then the seal: the parts are not attempts of the action
        obj = object_path(tree.archive, fid)
        assert obj.read_bytes() == data
        assert not list(obj.parent.glob("*_tmp*"))  # the parts' object became the object
        (entry,) = client.copies_of(fid)
        assert (entry.copy.checksum, entry.copy.size) == (parts_checksum(data), len(data))
        assert object_path(tree.archive, small_fid).read_bytes() == small
        flags = tree.fs.hsm_state(path).flags
        assert flags & HS.ARCHIVED and not flags & HS.DIRTY

        # released, then restored from the sealed object, byte for byte
        tree.fs.release(path)
        (r,) = client.submit([submit_item("simfs", fid, "restore", 1)])
        assert client.wait([r.action_id], deadline=30)[r.action_id].state == tpb.SUCCEEDED
        assert path.read_bytes() == data
        assert small_path.read_bytes() == small

        # a corrupt byte in the object: the restore checks the parts' checksum and refuses it
        tree.fs.release(path)
        raw = bytearray(obj.read_bytes())
        raw[5 * MiB + 7] ^= 0xFF
        obj.write_bytes(bytes(raw))
        (r,) = client.submit([submit_item("simfs", fid, "restore", 1)])
        bad = client.wait([r.action_id], deadline=30)[r.action_id]
        assert bad.state == tpb.FAILED and "checksum" in bad.error, bad
        assert tree.fs.hsm_state(path).flags & HS.RELEASED


def test_a_file_written_while_its_parts_are_copied_is_archived_again_from_the_start(
        coordinator_factory: Any, tree: Tree) -> None:
    c = coordinator_factory(agent_grace=30.0)
    path, fid, _data = tree.add("busy.dat", 6 * MiB)
    with c.client(timeout=10) as client, ExitStack() as stack:
        client.set_policy(POLICY)
        # slow parts (1 MiB/s each): the file is written while they run
        _agents(stack, c, tree, client, 2, bandwidth_limit=MiB)
        (res,) = client.submit([submit_item("simfs", fid, "archive", 1)])
        until(lambda: client.get_action(res.action_id).attempt >= 1 and
              client.get_action(res.action_id).state == tpb.WAITING, 20, "the anchor to let go")
        with path.open("r+b") as f:
            f.seek(100)
            f.write(b"new bytes")
        new = path.read_bytes()
        final = client.wait([res.action_id], deadline=90)[res.action_id]
        assert final.state == tpb.SUCCEEDED, final
        assert final.attempt >= 4  # anchor, a seal refused (the file changed), anchor, seal
        assert object_path(tree.archive, fid).read_bytes() == new
        (entry,) = client.copies_of(fid)
        assert entry.copy.checksum == parts_checksum(new)
        assert tree.fs.hsm_state(path).flags & HS.ARCHIVED


def test_a_part_of_a_stopped_agent_runs_on_another(coordinator_factory: Any, tree: Tree) -> None:
    c = coordinator_factory(agent_grace=2.0)
    path, fid, data = tree.add("big.dat", 4 * MiB)
    with c.client(timeout=10) as client, ExitStack() as stack:
        client.set_policy(POLICY)
        slow = AgentThread(agent_config(c, tree, agent_id="a1",
                                        mover={"chunk_size": 64 * 1024, "bandwidth_limit": 256 * 1024}))
        try:
            until(lambda: registered(client, "a1"), 10, "agent a1 to register")
            (res,) = client.submit([submit_item("simfs", fid, "archive", 1)])
            until(lambda: any(a >> 31 for _i, a in slow.agent.running_actions()), 20, "a1 to copy a part")
            stack.enter_context(running_agent(agent_config(c, tree, agent_id="a2")))
            until(lambda: registered(client, "a2"), 10, "agent a2 to register")
        finally:
            slow.stop(now=True)  # a1's part goes back to the stripe and runs on a2
        final = client.wait([res.action_id], deadline=60)[res.action_id]
        assert final.state == tpb.SUCCEEDED, final
        assert object_path(tree.archive, fid).read_bytes() == data
        assert tree.fs.hsm_state(path).flags & HS.ARCHIVED
