"""The catalog on a real cluster (issue 18): agentd's posix mover archives
real files, the command that ends each archive writes its copy on every
replica, and ``hsmctl catalog ls|stat`` read it back, through a leader kill
and a restart of every replica."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentd.movers.posix import object_path
from hsm.fid import Fid
from hsm.hsmflags import HS
from hsm.v1 import types_pb2 as T
from tests.cluster import until
from tests.test_system_agents import Rig

pytestmark = pytest.mark.slow  # real processes, seconds per test


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.close()


def _archive(rig: Rig, names: dict[str, int]) -> dict[str, tuple[Path, Any, bytes]]:
    (rig.fs.root / "proj" / "run1").mkdir(parents=True)
    files = {name: rig.file(name, size) for name, size in names.items()}
    ids = rig.submit("archive", [fid for _p, fid, _d in files.values()])
    assert rig.client is not None
    final = rig.client.wait(ids, deadline=60)
    assert all(a.state == T.SUCCEEDED for a in final.values()), final
    return files


def _stat(rig: Rig, *operands: str) -> list[dict[str, Any]]:
    out = rig.hsmctl("catalog", "stat", "--json", *operands)
    assert out.returncode == 0, out.stderr
    blocks: list[dict[str, Any]] = json.loads(out.stdout)
    return blocks


def test_an_archive_writes_its_copy_and_hsmctl_catalog_reads_it_through_failures(rig: Rig) -> None:
    rig.start()
    rig.agent("a1", bandwidth="100M")
    files = _archive(rig, {"proj/run1/a.dat": 3000, "proj/run1/b.dat": 70_000, "proj/c.dat": 10, "other.dat": 500})

    # stat by path: every fact the catalog keeps, from the real object and file
    path, fid, data = files["proj/run1/b.dat"]
    (block,) = _stat(rig, str(path))
    (copy,) = block["copies"]
    obj = object_path(rig.archive, fid)
    assert obj.read_bytes() == data and rig.fs.hsm_state(path).flags & HS.ARCHIVED
    assert copy["key"] == str(obj.relative_to(rig.archive))
    assert copy["checksum"] == "sha256:" + hashlib.sha256(data).hexdigest()
    assert copy["size"] == len(data) and copy["data_version"] == rig.fs.data_version(path)
    assert copy["path"] == "/proj/run1/b.dat" and copy["archive_id"] == 1
    st = path.stat()
    assert (copy["uid"], copy["gid"], copy["mode"]) == (st.st_uid, st.st_gid, st.st_mode)
    text = rig.hsmctl("catalog", "stat", str(path))
    assert text.returncode == 0, text.stderr
    assert "1 copy" in text.stdout and f"sha256:{hashlib.sha256(data).hexdigest()}" in text.stdout
    assert "path /proj/run1/b.dat" in text.stdout

    # ls: filters by path prefix, size, archive id; every copy once
    def ls(*args: str) -> list[str]:
        out = rig.hsmctl("catalog", "ls", "--json", *args)
        assert out.returncode == 0, out.stderr
        return sorted(e["path"] for e in json.loads(out.stdout))

    assert ls() == ["/other.dat", "/proj/c.dat", "/proj/run1/a.dat", "/proj/run1/b.dat"]
    assert ls("--path", "/proj") == ["/proj/c.dat", "/proj/run1/a.dat", "/proj/run1/b.dat"]
    assert ls("--path", "/proj/run") == []  # a prefix of names, not of text
    assert ls("--size", "+2K") == ["/proj/run1/a.dat", "/proj/run1/b.dat"]
    assert ls("--size", "-100") == ["/proj/c.dat"]
    assert ls("--archive-id", "2") == []
    table = rig.hsmctl("catalog", "ls", "--path", "/proj")
    assert table.returncode == 0 and table.stdout.rstrip().endswith("3 copies of 3 files"), table

    # a file never archived: exit 1 and said
    fresh, _fid, _d = rig.file("fresh.dat", 5)
    none = rig.hsmctl("catalog", "stat", str(fresh))
    assert none.returncode == 1 and "0 copies" in none.stdout, none

    # a leader is killed: every copy is on the replicas left
    rid = rig.cluster.leader_of(0)
    rig.cluster.kill(rid)
    until(lambda: len(ls()) == 4, 30, "the catalog listed by the replicas left")
    assert _stat(rig, str(path))[0]["copies"] == [copy]
    rig.cluster.start(rid)

    # every replica restarted (journal and snapshot): the catalog comes back
    for spec in list(rig.cluster.live()):
        rig.cluster.kill(spec.id)
    rig.cluster.start_all()
    rig.cluster.wait_ready()
    until(lambda: len(ls()) == 4, 60, "the catalog listed after a restart of every replica")
    assert _stat(rig, str(path))[0]["copies"] == [copy]
    assert _stat(rig, str(fid))[0]["copies"] == [copy]  # by FID too


def test_catalog_bad_input_is_a_usage_error(rig: Rig) -> None:
    rig.start()
    for args, words in ((("ls", "--size", "12"), "say +12"), (("ls", "--archive-id", "0"), "out of range"),
                        (("ls", "--before", "yesterday"), "is not a time"), (("ls", "--uid", "bob"), "numeric")):
        out = rig.hsmctl("catalog", *args)
        assert out.returncode == 2 and words in out.stderr, (args, out)


def test_catalog_rm_removes_through_remove_actions_and_never_a_released_files_copy(rig: Rig) -> None:
    rig.start()
    rig.agent("a1", bandwidth="100M")
    files = _archive(rig, {"proj/run1/a.dat": 3000, "proj/run1/b.dat": 5000, "proj/c.dat": 10, "other.dat": 500})
    (a, a_fid, _), (b, b_fid, b_data), (c, c_fid, _) = (files[n] for n in ("proj/run1/a.dat", "proj/run1/b.dat",
                                                                            "proj/c.dat"))
    rig.fs.release(b)  # its copy is now its only data
    c.unlink()  # gone from the tree: its HSM state cannot be read

    def listed() -> list[str]:
        out = rig.hsmctl("catalog", "ls", "--json")
        assert out.returncode == 0, out.stderr
        return sorted(e["path"] for e in json.loads(out.stdout))

    everything = ["/other.dat", "/proj/c.dat", "/proj/run1/a.dat", "/proj/run1/b.dat"]
    for args, words in ((("--path", "/proj", "--mntpath", str(rig.fs.root)), "--dry-run --yes"),
                        (("--path", "/proj", "--yes"), "--mntpath")):
        out = rig.hsmctl("catalog", "rm", *args)
        assert out.returncode == 2 and words.split()[0] in out.stderr, out
    dry = rig.hsmctl("catalog", "rm", "--path", "/proj", "--mntpath", str(rig.fs.root), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would remove /proj/run1/a.dat" in dry.stdout and "kept /proj/run1/b.dat" in dry.stdout
    assert "skipped /proj/c.dat" in dry.stdout
    assert dry.stdout.rstrip().endswith("would remove 1 copies; kept 1 (released), skipped 1 (gone), 0 (other "
                                        "file system); nothing changed (--dry-run)")
    assert listed() == everything

    done = rig.hsmctl("catalog", "rm", "--path", "/proj", "--mntpath", str(rig.fs.root), "--yes")
    assert done.returncode == 0, done
    assert "removing 1 copies: queued 1, joined 0, not needed 0, rejected 0; kept 1 (released)" in done.stdout
    until(lambda: listed() == ["/other.dat", "/proj/c.dat", "/proj/run1/b.dat"], 30, "a's copy removed")
    assert not object_path(rig.archive, a_fid).exists()
    assert not rig.fs.hsm_state(a).flags & HS.ARCHIVED
    # the released file keeps its copy and comes back intact; the gone one's object stays
    assert object_path(rig.archive, c_fid).exists()
    (restore,) = rig.submit("restore", [b_fid])
    assert rig.client is not None and rig.client.wait([restore], deadline=30)[restore].state == T.SUCCEEDED
    assert b.read_bytes() == b_data

    # --gone: the deleted file's copy goes too, through a remove action of its own
    dry = rig.hsmctl("catalog", "rm", "--path", "/proj", "--mntpath", str(rig.fs.root), "--gone", "--dry-run")
    assert dry.returncode == 0 and "would remove /proj/c.dat" in dry.stdout and "the file is gone" in dry.stdout, dry
    assert object_path(rig.archive, c_fid).exists()
    gone = rig.hsmctl("catalog", "rm", "--path", "/proj/c.dat", "--mntpath", str(rig.fs.root), "--gone", "--yes")
    assert gone.returncode == 0 and "queued 1" in gone.stdout, gone
    until(lambda: listed() == ["/other.dat", "/proj/run1/b.dat"], 30, "the gone file's copy removed")
    assert not object_path(rig.archive, c_fid).exists()


def test_catalog_restore_recreates_a_deleted_file_from_its_copy(rig: Rig) -> None:
    rig.start()
    rig.agent("a1", bandwidth="100M")
    files = _archive(rig, {"proj/run1/a.dat": 70_000, "proj/keep.dat": 100})
    path, fid, data = files["proj/run1/a.dat"]
    mode = path.stat().st_mode
    path.unlink()  # deleted: its copy in the archive is all that is left
    dest = rig.fs.root / "proj" / "a.back"

    # refusals first: each changes nothing
    for args, words in (((str(fid), "--to", str(files["proj/keep.dat"][0])), "exists"),
                        ((str(files["proj/keep.dat"][1]), "--to", str(dest)), "keep.dat: catalog restore recreates deleted files only"),
                        (("[0x200000400:0x999:0x0]", "--to", str(dest)), "has no copy of"),
                        ((str(fid), "--to", str(dest), "--archive-id", "2"), "no copy of"),
                        (("not-a-fid", "--to", str(dest)), "invalid FID")):
        out = rig.hsmctl("catalog", "restore", *args)
        assert out.returncode in (1, 2) and words in out.stderr, (args, out)
        assert not dest.exists()
    assert _stat(rig, str(fid))[0]["copies"][0]["archive_id"] == 1

    out = rig.hsmctl("catalog", "restore", str(fid), "--to", str(dest))
    assert out.returncode == 0, out
    new = rig.fs.fid_of(dest)
    assert out.stdout.splitlines() == [
        f"recreated {dest} as {new} (released, {len(data)} bytes, {os.getuid()}:{os.getgid()}, "
        f"mode {mode & 0o7777:04o}) from the copy of {fid} in archive 1",
        next(line for line in out.stdout.splitlines() if line.startswith(f"restored {dest} (action "))]
    assert dest.read_bytes() == data and dest.stat().st_mode == mode
    flags = rig.fs.hsm_state(dest).flags
    assert flags & HS.ARCHIVED and not flags & HS.RELEASED
    # the copy is the new file's now: the old FID has none, the object stayed where it was
    (block,) = _stat(rig, str(dest))
    assert block["copies"][0]["key"] == str(object_path(rig.archive, fid).relative_to(rig.archive))
    gone = rig.hsmctl("catalog", "stat", str(fid))
    assert gone.returncode == 1 and "0 copies" in gone.stdout
    # and it can be released and restored again like any archived file
    rig.fs.release(dest)
    ids = rig.submit("restore", [new])
    assert rig.client is not None
    assert rig.client.wait(ids, deadline=60)[ids[0]].state == T.SUCCEEDED
    assert dest.read_bytes() == data


def test_catalog_orphans_finds_objects_no_copy_names_and_never_a_live_file_s(rig: Rig) -> None:
    rig.start()
    rig.agent("a1", bandwidth="100M")
    files = _archive(rig, {"proj/run1/a.dat": 3000, "proj/b.dat": 100})
    _a, a_fid, _ = files["proj/run1/a.dat"]
    # an object an agent wrote and never reported (its file deleted since), an
    # unnamed container, and an object of a live file the catalog does not know
    lost = Fid(0x200000400, 0x7777, 0)
    lost_obj = object_path(rig.archive, lost)
    lost_obj.parent.mkdir(parents=True)
    lost_obj.write_bytes(b"lost")
    (rig.archive / "containers" / "1--" / "2026-01-01").mkdir(parents=True)
    box = rig.archive / "containers" / "1--" / "2026-01-01" / "dead.pack"
    box.write_bytes(b"HSMPACK 1\n")
    live, live_fid, _d = rig.file("live.dat", 10)
    live_obj = object_path(rig.archive, live_fid)
    live_obj.parent.mkdir(parents=True, exist_ok=True)
    live_obj.write_bytes(b"old copy")
    base = ("catalog", "orphans", "--archive-root", str(rig.archive), "--archive-id", "1",
            "--mntpath", str(rig.fs.root))

    young = rig.hsmctl(*base, "--json")  # every one is younger than a day: none is an orphan yet
    assert young.returncode == 0, young
    found = json.loads(young.stdout)
    assert found["orphans"] == [] and len(found["kept_young"]) == 2
    assert found["kept_file_exists"] == [str(live_obj.relative_to(rig.archive))]

    report = rig.hsmctl(*base, "--min-age", "0")
    assert report.returncode == 0, report
    assert f"orphan {lost_obj.relative_to(rig.archive)}" in report.stdout
    assert "orphan containers/1--/2026-01-01/dead.pack" in report.stdout
    assert report.stdout.rstrip().endswith("2 orphans (0 removed), kept 1 (file exists), 0 (younger than 0 s)")
    assert lost_obj.exists() and box.exists()  # a report changes nothing
    bad = rig.hsmctl(*base, "--min-age", "0", "--remove")
    assert bad.returncode == 2 and "--remove and --yes go together" in bad.stderr

    gone = rig.hsmctl(*base, "--min-age", "0", "--remove", "--yes")
    assert gone.returncode == 0 and "2 orphans (2 removed)" in gone.stdout, gone
    assert not lost_obj.exists() and not box.exists()
    # what the catalog names, and the live file's object, are all still there
    assert object_path(rig.archive, a_fid).exists() and live_obj.exists()
