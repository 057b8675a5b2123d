"""A request names the file's data version, and the mover checks it (issue
10, item 2): two simfs trees with the same fsname give files with the same
FID, and a FID alone sent a request for one tree's file to the other tree's
agent, which archived the wrong file and reported success. Real simfs trees,
a real coordinator (mutual TLS), a real agentd (posix mover) and hsmctl."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import Any

from agentd.movers.posix import object_path
from coordinator.convert import action_to_pb, assignment_to_pb, item_from_pb
from coordinator.state import Action, Item, Kind, Requester
from hsm.client import submit_item
from hsm.fid import Fid
from hsm.hsmflags import HS
from hsm.simfs import SimFS
from hsm.v1 import types_pb2 as tpb
from hsmctl.cli import main as hsmctl_main
from tests.test_agentd import Tree, agent_config, registered, running_agent, wait_for

FSNAME = "samefs"


def stale_message(here: int, named: int) -> str:
    return (f"not the file the request named: data version {here} here, {named} in the request "
            "(a file of another file system with the same fsname and FID, or the file was written "
            "since the request); nothing copied")


def two_trees(tmp_path: Path) -> tuple[Tree, Path, SimFS, Path]:
    """Tree A (served by the agent, with an archive) and tree B, both named
    FSNAME, each with one file of the same FID; B's file was written twice,
    so its data version differs from A's."""
    fs_a = SimFS.create(tmp_path / "a", FSNAME)
    fs_b = SimFS.create(tmp_path / "b", FSNAME)
    archive = tmp_path / "archive"
    archive.mkdir()
    path_a = fs_a.root / "f"
    path_a.write_bytes(b"tree A's data\n" * 100)
    path_b = fs_b.root / "f"
    path_b.write_bytes(b"tree B, first write\n")
    assert fs_a.fid_of(path_a) == fs_b.fid_of(path_b)
    path_b.write_bytes(b"tree B, second write, longer\n" * 10)
    assert fs_b.data_version(path_b) != fs_a.data_version(path_a)
    return Tree(fs_a, archive), path_a, fs_b, path_b


def archive_files(archive: Path) -> list[Path]:
    return [Path(d) / n for d, _, names in os.walk(archive) for n in names]


def hsm_of(fs: SimFS, path: Path, archive_id: int = 0) -> tuple[int, int, int]:
    """The (flags, archive id, data version) hsmctl sends with a request."""
    attrs = fs.hsm_state(path)
    return int(attrs.flags), int(attrs.archive_id), fs.data_version(path)


def test_archive_of_another_trees_file_with_the_same_fid_is_refused(
    coordinator: Any, tmp_path: Path
) -> None:
    tree_a, path_a, fs_b, path_b = two_trees(tmp_path)
    fid = fs_b.fid_of(path_b)
    dv_a, dv_b = tree_a.fs.data_version(path_a), fs_b.data_version(path_b)
    before = tree_a.fs.hsm_state(path_a)
    with coordinator.client(timeout=10) as client, \
            running_agent(agent_config(coordinator, tree_a)) as agent:
        wait_for(lambda: registered(client, "a1"), what="agent a1 to register")

        # as hsmctl archive does for tree B's file: its HSM state and data version
        (res,) = client.submit([submit_item(FSNAME, fid, "archive", hsm=hsm_of(fs_b, path_b))])
        assert res.outcome == 1, res  # CREATED
        final = client.wait([res.action_id], deadline=20)[res.action_id]
        assert (final.state, final.errno) == (tpb.FAILED, errno.ESTALE), final
        assert final.error == stale_message(dv_a, dv_b)
        assert final.attempt == 1  # not retried
        assert final.data_version == dv_b
        # tree A's file was not archived: no object, nothing left behind, state unchanged
        assert not object_path(tree_a.archive, fid).exists()
        assert archive_files(tree_a.archive) == []
        assert tree_a.fs.hsm_state(path_a) == before
        assert tree_a.fs.data_version(path_a) == dv_a
        assert agent.peak_running()["ARCHIVE"] == 1  # it was looked at, and refused

        # the same request with tree A's true data version archives A's file
        (res,) = client.submit([submit_item(FSNAME, fid, "archive", hsm=hsm_of(tree_a.fs, path_a))])
        final = client.wait([res.action_id], deadline=20)[res.action_id]
        assert (final.state, final.errno) == (tpb.SUCCEEDED, 0), final
        assert object_path(tree_a.archive, fid).read_bytes() == path_a.read_bytes()
        attrs = tree_a.fs.hsm_state(path_a)
        assert attrs.flags & HS.ARCHIVED and attrs.archived_version == dv_a


def test_archived_file_is_not_made_dirty_by_a_refused_archive(coordinator: Any, tmp_path: Path) -> None:
    """A refused archive of an ARCHIVED file does not set DIRTY (as a failed
    archive would): it was never about this file."""
    tree_a, path_a, fs_b, path_b = two_trees(tmp_path)
    fid = fs_b.fid_of(path_b)
    with coordinator.client(timeout=10) as client, \
            running_agent(agent_config(coordinator, tree_a)):
        wait_for(lambda: registered(client, "a1"), what="agent a1 to register")
        (ok,) = client.submit([submit_item(FSNAME, fid, "archive", hsm=hsm_of(tree_a.fs, path_a))])
        assert client.wait([ok.action_id], deadline=20)[ok.action_id].state == tpb.SUCCEEDED
        archived = tree_a.fs.hsm_state(path_a)
        stored = object_path(tree_a.archive, fid).read_bytes()
        flags_b = int(HS.EXISTS | HS.ARCHIVED | HS.DIRTY)  # B's file, archived and since rewritten
        (res,) = client.submit([submit_item(FSNAME, fid, "archive",
                                            hsm=(flags_b, 1, fs_b.data_version(path_b)))])
        final = client.wait([res.action_id], deadline=20)[res.action_id]
        assert (final.state, final.errno) == (tpb.FAILED, errno.ESTALE), final
        assert tree_a.fs.hsm_state(path_a) == archived
        assert object_path(tree_a.archive, fid).read_bytes() == stored


def test_hsmctl_archive_wait_fails_for_the_other_trees_file(
    coordinator: Any, tmp_path: Path, capsys: Any
) -> None:
    """The admin's command: ``hsmctl archive --wait`` on tree B's file, with
    only tree A's agent running, no longer reports success."""
    tree_a, path_a, fs_b, path_b = two_trees(tmp_path)
    before = tree_a.fs.hsm_state(path_a)
    with coordinator.client(timeout=10) as client, \
            running_agent(agent_config(coordinator, tree_a)):
        wait_for(lambda: registered(client, "a1"), what="agent a1 to register")
        capsys.readouterr()
        rc = hsmctl_main(["--coordinators", coordinator.address, *coordinator.args(), "archive", "--wait", str(path_b)])
        out, err = capsys.readouterr()
        assert rc == 1, (out, err)
        assert re.search(r"ARCHIVE action \d+ failed: .*not the file the request named", err), err
        assert "ESTALE" in err, err
        (action,) = client.list_actions(include_terminal=True)
        assert (action.state, action.errno) == (tpb.FAILED, errno.ESTALE)
        assert action.data_version == fs_b.data_version(path_b)
    assert archive_files(tree_a.archive) == []
    assert tree_a.fs.hsm_state(path_a) == before


def test_restore_named_with_another_data_version_is_refused(coordinator: Any, tmp_path: Path) -> None:
    fs = SimFS.create(tmp_path / "fs", FSNAME)
    archive = tmp_path / "archive"
    archive.mkdir()
    tree = Tree(fs, archive)
    path, fid, data = tree.add("f", 10_000)
    with coordinator.client(timeout=10) as client, \
            running_agent(agent_config(coordinator, tree)):
        wait_for(lambda: registered(client, "a1"), what="agent a1 to register")
        (res,) = client.submit([submit_item(FSNAME, fid, "archive", hsm=hsm_of(fs, path))])
        assert client.wait([res.action_id], deadline=20)[res.action_id].state == tpb.SUCCEEDED
        fs.release(path)
        released = fs.hsm_state(path)
        assert released.flags & HS.RELEASED
        flags, archive_id, dv = hsm_of(fs, path)

        (res,) = client.submit([submit_item(FSNAME, fid, "restore", hsm=(flags, archive_id, dv + 3))])
        final = client.wait([res.action_id], deadline=20)[res.action_id]
        assert (final.state, final.errno) == (tpb.FAILED, errno.ESTALE), final
        assert final.error == stale_message(dv, dv + 3)
        assert fs.hsm_state(path) == released
        assert os.listdir(fs.volatile_dir) == []
        assert path.read_bytes() == b"\0" * len(data)

        # named with the released file's own data version, it restores
        (res,) = client.submit([submit_item(FSNAME, fid, "restore", hsm=(flags, archive_id, dv))])
        final = client.wait([res.action_id], deadline=20)[res.action_id]
        assert (final.state, final.errno) == (tpb.SUCCEEDED, 0), final
        assert path.read_bytes() == data


def test_convert_carries_the_data_version() -> None:
    fid = Fid(0x200000400, 7, 0)
    pb = submit_item(FSNAME, fid, "archive", 1, hsm=(0, 0, 42))
    item = item_from_pb(pb, 0, {1})
    assert item.data_version == 42
    assert item_from_pb(submit_item(FSNAME, fid, "archive", 1, hsm=(0, 0)), 0, {1}).data_version == 0
    assert item_from_pb(submit_item(FSNAME, fid, "archive", 1), 0, {1}).data_version == 0

    action = Action(1001, Item(FSNAME, fid, Kind.ARCHIVE, requester=Requester("t"), data_version=42), 1, 5.0)
    assert action.data_version == 42
    assert action_to_pb(action, 1).data_version == 42
    assert assignment_to_pb(action).data_version == 42
    action.data_version = 0
    assert action_to_pb(action, 1).data_version == 0
    assert assignment_to_pb(action).data_version == 0
