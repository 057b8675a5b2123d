"""``hsmctl catalog ls|stat``: the archived copies the coordinator's catalog
keeps (issue 18): for each file, a copy per archive id with its object key,
data version, size, checksum, when it was archived and the file's owner,
mode and path as archived. Written by the same replicated command that ends
the archive, so the catalog and the actions never disagree."""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from agentd.movers.packer import CONTAINERS_DIR
from hsm.fid import Fid
from hsm.v1 import coordinator_pb2 as cpb

HELP = ("list the archived copies the catalog keeps (ls), a file's copies (stat); remove copies (rm); "
        "recreate a deleted file from its copy (restore)")

EPILOG = """\
  ls [filters]           every copy the filters keep, shard by shard, in FID order
      --archive-id N     of this archive id
      --before WHEN      archived before WHEN; --after WHEN: at or after it (an age: 90s 30m 12h
                         7d 2w ago, or an ISO date or date and time: 2024-05-01, 2024-05-01T12:00Z)
      --size +N|-N       larger / smaller than N bytes (units K M G T, binary)
      --uid UID          owned by UID when archived
      --path PREFIX      archived at PREFIX or below it (the path from the file system's root)
  rm --mntpath DIR [filters] --dry-run|--yes
                         remove the copies the filters keep through normal remove actions (an
                         agent deletes each object; the catalog drops the copy when it is done).
                         Each file's HSM state is read under DIR first: the copy of a released
                         file is its only data and is kept (the coordinator and the agent refuse
                         it too); a file that no longer exists is skipped (its object stays;
                         --gone removes its copies too: it can no longer be recreated)
  stat PATH|FID...       the copies of these files, one block per file
  restore --to PATH FID  recreate the deleted file FID at PATH (a simfs tree; PATH must not exist)
                         from its copy: a released file with the size, owner and mode the copy
                         records, given the file's copies in the catalog, then restored
      --archive-id N     from the copy in this archive id (default: the first)
      --fsname NAME      the file system FID was in (default: PATH's)
      --no-wait          queue the restore and return
  compact --archive-root DIR --archive-id N [--dead 0.5] [--min-age AGE] --dry-run|--yes
                         rewrite the packed containers whose dead share of bytes (removed files'
                         slices) reached --dead: live slices into a new container, their copies moved
  orphans --archive-root DIR --archive-id N --mntpath DIR [--min-age AGE] [--remove --yes]
                         the objects and containers of a posix archive that no catalog copy names
                         and whose file is gone (older than --min-age, default 1d); --remove --yes
                         deletes them. An object whose FID still names a file is never one
prints (ls):   FID  ARCHIVE  SIZE  DV  ARCHIVED (UTC)  UID  PATH, then "N copies of M files"
prints (stat): FID (fsname): N copies, then per copy: archive id, object key, data version,
               size, checksum, when archived, extent, owner, mode and path
--json: ls: an array of {"fsname", "fid", "archive_id", "key", "data_version", "size", "checksum",
        "archived", "offset", "length", "uid", "gid", "mode", "path", "container", "slot"} (container:
        a packed file's container, "" for an object of its own); stat: the same per file
prints (rm):   a line per copy kept or (--dry-run) to remove, then "removing N copies: queued N,
               joined N, not needed N, rejected N; kept N (released), skipped N (gone), N (other
               file system)"
prints (restore): "recreated PATH as FID (released, N bytes, uid:gid, mode) from the copy of FID in
               archive N", then "restored PATH (action ID)" (or "restoring PATH (action ID)" with --no-wait)
exit status: 0 done, 1 a file has no copy (stat, restore), a remove was refused, PATH exists or
             the restore failed, 2 usage, 3 unreachable"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="op", metavar="ls|stat|rm|restore", required=True)
    ls = sub.add_parser("ls", help="every copy the filters keep")
    _filters(ls)
    rm = sub.add_parser("rm", help="remove the copies the filters keep, through remove actions")
    _filters(rm)
    rm.add_argument("--mntpath", required=True, metavar="DIR",
                    help="the simfs tree or Lustre mount of the files: each file's HSM state is read there "
                         "(a released file's copy is its only data: kept)")
    rm.add_argument("--gone", action="store_true",
                    help="also remove the copies of files that no longer exist (deleted: skipped without it); "
                         "catalog restore --to cannot bring those files back afterwards")
    what = rm.add_mutually_exclusive_group(required=True)
    what.add_argument("--dry-run", action="store_true", help="say what would be removed; change nothing")
    what.add_argument("--yes", action="store_true", help="remove them")
    st = sub.add_parser("stat", help="the copies of files")
    st.add_argument("files", nargs="+", metavar="PATH|FID", help="a file of a simfs tree or Lustre, or a FID")
    st.add_argument("--fsname", default="", help="the file system of the FIDs given (default: any)")
    st.add_argument("--json", action="store_true", help="JSON output")
    re_ = sub.add_parser("restore", help="recreate a deleted file from its copy (on Lustre: llapi_hsm_import, "
                                         "as root, then a restore through the MDT)")
    re_.add_argument("fid", metavar="FID", help="the deleted file's FID (hsmctl catalog ls shows it)")
    re_.add_argument("--to", required=True, metavar="PATH", help="the file to create (it must not exist)")
    re_.add_argument("--archive-id", type=_archive_id, default=0, metavar="N",
                     help="from the copy in this archive id (default: the first)")
    re_.add_argument("--fsname", default="", help="the file system FID was in (default: the one of PATH; on "
                                                 "Lustre the one the catalog has it in)")
    re_.add_argument("--no-wait", action="store_true", help="queue the restore and return")
    re_.add_argument("--timeout", type=float, default=3600.0, metavar="SECONDS",
                     help="how long to wait for the restore (default 3600)")
    orph = sub.add_parser("orphans", help="objects of a posix archive that no catalog copy names")
    _archive_side(orph, "only objects older than this (default 1d: a fresh object may be one whose archive has "
                        "not ended yet)")
    orph.add_argument("--mntpath", required=True, metavar="DIR",
                      help="the simfs tree or Lustre mount: an object whose file still exists is never an orphan")
    orph.add_argument("--remove", action="store_true", help="delete the orphans (with --yes)")
    orph.add_argument("--yes", action="store_true", help="with --remove: really delete them")
    comp = sub.add_parser("compact", help="rewrite packed containers whose dead fraction passed --dead")
    _archive_side(comp, "only containers older than this (default 1d: a fresh one's files may not be in the "
                        "catalog yet)")
    comp.add_argument("--dead", type=_fraction, default=0.5, metavar="FRACTION",
                      help="compact a container once this share of its bytes is dead (default 0.5)")
    what_c = comp.add_mutually_exclusive_group(required=True)
    what_c.add_argument("--dry-run", action="store_true", help="say what would be compacted; change nothing")
    what_c.add_argument("--yes", action="store_true", help="compact them")


def _archive_side(p: argparse.ArgumentParser, min_age_help: str) -> None:
    """The arguments of the operations run on a host that mounts a posix archive."""
    p.add_argument("--archive-root", required=True, metavar="DIR", help="the posix mover's archive root")
    p.add_argument("--archive-id", type=_archive_id, required=True, metavar="N", help="the archive id that root holds")
    p.add_argument("--min-age", type=_age, default=86400.0, metavar="AGE", help=min_age_help)
    p.add_argument("--json", action="store_true", help="JSON output")


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--archive-id", type=_archive_id, default=0, metavar="N", help="of this archive id")
    p.add_argument("--before", type=_when, metavar="WHEN", help="archived before WHEN")
    p.add_argument("--after", type=_when, metavar="WHEN", help="archived at or after WHEN")
    p.add_argument("--size", type=_size, metavar="+N|-N", help="larger (+N) or smaller (-N) than N bytes")
    p.add_argument("--uid", type=_uid, metavar="UID", help="owned by UID when archived")
    p.add_argument("--path", default="", metavar="PREFIX", help="archived at PREFIX or below it")
    p.add_argument("--json", action="store_true", help="JSON output")


def _archive_id(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an archive id") from None
    if not 1 <= value < 1 << 32:
        raise argparse.ArgumentTypeError(f"archive id {value} out of range (1 to 4294967295)")
    return value


def _age(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    t = text.strip()
    try:
        return float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an age (90s, 30m, 12h, 7d, 2w)") from None


def find_orphans(root: Path, named: set[str], exists: Callable[[Fid], bool], now: float,
                 min_age: float) -> dict[str, list[str]]:
    """The objects under a posix archive *root* (the v1 layout's objects
    and the packer's containers) that no catalog copy names (*named*: the
    catalog's object keys and containers, relative to the root), by what
    is to be done: ``orphans`` (no copy names it, its file is gone, older
    than *min_age*), ``kept_file_exists`` (no copy names it but its FID
    still names a file: archived before the catalog, or by a mover that
    did not report the key: never deleted), ``kept_young`` (too recent:
    its archive may not have ended yet). Temporary objects are left to the
    movers (they remove their own)."""
    out: dict[str, list[str]] = {"orphans": [], "kept_file_exists": [], "kept_young": []}
    for directory, dirs, files in os.walk(root):
        d = Path(directory)
        rel_dir = d.relative_to(root)
        if rel_dir == Path("."):
            dirs[:] = sorted(dirs)
        for name in sorted(files):
            key = str(rel_dir / name) if rel_dir != Path(".") else name
            container = key.startswith(CONTAINERS_DIR + "/")
            if container and not name.endswith(".pack"):
                continue  # a container being written (.tmp)
            if not container and ("_tmp" in name or name.endswith(".lov")):
                continue  # a temporary object, or lhsmtool_posix's striping file
            if key in named:
                continue
            try:
                age = now - (d / name).stat().st_mtime
            except FileNotFoundError:
                continue
            if not container:
                try:
                    fid = Fid.parse(name)
                except ValueError:
                    continue  # not an object of the layout
                if exists(fid):
                    out["kept_file_exists"].append(key)
                    continue
            (out["orphans"] if age >= min_age else out["kept_young"]).append(key)
    return out


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a fraction above 0 and at most 1")
    return value


def compact(root: Path, entries: Iterable[cpb.CatalogEntry], archive_id: int,
            relocate: Callable[[list[tuple[str, Fid, int, str, str, int]]], int], now: float, min_age: float,
            dead: float, dry_run: bool) -> list[dict[str, Any]]:
    """Rewrite the packed containers of a posix archive whose dead share of
    bytes (slices no catalog copy names any more) is at least *dead*: the
    live slices (checked against the catalog's checksums) go into a new
    container, their copies are moved there (*relocate*, which moves a copy
    only if it still lies in the old container), and the old container is
    deleted once every live copy moved. A container with no live slice is
    deleted. One record per container looked at."""
    from agentd.movers.packer import read_index, write_container

    live: dict[str, list[cpb.CatalogEntry]] = {}
    for e in entries:
        if e.copy.container:
            live.setdefault(e.copy.container, []).append(e)
    out: list[dict[str, Any]] = []
    for path in sorted((root / CONTAINERS_DIR).glob("*/*/*.pack")):
        key = str(path.relative_to(root))
        rec: dict[str, Any] = {"container": key}
        out.append(rec)
        try:
            age = now - path.stat().st_mtime
            total = sum(int(s["length"]) for s in read_index(path))  # type: ignore[call-overload]
        except (OSError, ValueError, KeyError) as exc:
            rec.update(outcome="unreadable", reason=str(exc))
            continue
        mine = live.get(key, [])
        live_bytes = sum(e.copy.size for e in mine)
        share = 1.0 - live_bytes / total if total else 1.0
        rec.update(files=len(mine), bytes=total, live_bytes=live_bytes, dead=round(share, 4))
        if age < min_age:
            rec["outcome"] = "young"
            continue
        if share < dead:
            rec["outcome"] = "kept"
            continue
        if dry_run:
            rec["outcome"] = "would compact" if mine else "would remove"
            continue
        if not mine:
            path.unlink()
            rec["outcome"] = "removed"
            continue
        files: list[tuple[Fid, bytes]] = []
        bad = ""
        with open(path, "rb") as f:
            for e in mine:
                data = os.pread(f.fileno(), e.copy.size, e.copy.slot)
                algo, _sep, digest = e.copy.checksum.partition(":")
                if len(data) != e.copy.size or (algo and hashlib.new(algo, data).hexdigest() != digest):
                    bad = f"the slice of {Fid(e.fid.seq, e.fid.oid, e.fid.ver)} does not match its checksum"
                    break
                files.append((Fid(e.fid.seq, e.fid.oid, e.fid.ver), data))
        if bad:
            rec.update(outcome="skipped", reason=bad + ": the container is left as it is")
            continue
        algo = mine[0].copy.checksum.partition(":")[0] or "sha256"
        slices = write_container(root, path.parent.parent.name, files, algo)
        moved = relocate([(e.fsname, fid, archive_id, key, s.container, s.offset)
                          for e, (fid, _d), s in zip(mine, files, slices, strict=True)])
        rec.update(to=slices[0].container, moved=moved)
        if moved == len(mine):
            path.unlink()
            rec["outcome"] = "compacted"
        else:
            rec.update(outcome="partly moved", reason=f"{len(mine) - moved} copies changed meanwhile: the old "
                                                      "container stays (catalog orphans finds it once unused)")
    return out


def _uid(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a numeric uid") from None
    if not 0 <= value < 1 << 32:
        raise argparse.ArgumentTypeError(f"uid {value} out of range")
    return value


def _when(text: str) -> float:
    from hsmctl.prestage import parse_when

    try:
        return parse_when(text).at(time.time())
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _size(text: str) -> tuple[bool, int]:
    from hsmctl.prestage import parse_size

    try:
        f = parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).replace("--size ", "")) from None
    return f.larger, f.limit


def entry_to_dict(e: cpb.CatalogEntry) -> dict[str, Any]:
    from hsmctl.output import fid_text

    c = e.copy
    return {"fsname": e.fsname, "fid": fid_text(e.fid), "archive_id": c.archive_id, "key": c.key,
            "data_version": c.data_version, "size": c.size, "checksum": c.checksum, "archived": c.archived,
            "offset": c.offset, "length": c.length, "uid": c.uid, "gid": c.gid, "mode": c.mode, "path": c.path,
            "container": c.container, "slot": c.slot}


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def matching(client: Any, args: argparse.Namespace) -> Iterable[cpb.CatalogEntry]:
    """The copies the filters of *args* keep, shard by shard."""
    min_size = max_size = None
    if args.size is not None:
        larger, limit = args.size
        if larger:
            min_size = limit + 1
        elif limit == 0:
            min_size = 1 << 63  # smaller than 0 bytes: nothing; said by an empty listing
        else:
            max_size = limit - 1
    entries: Iterable[cpb.CatalogEntry] = client.list_copies(
        archive_id=args.archive_id, archived_before=args.before or 0.0, archived_after=args.after or 0.0,
        min_size=min_size, max_size=max_size, uid=args.uid, path_prefix=args.path)
    return entries


def ls(client: Any, args: argparse.Namespace, out: IO[str]) -> int:
    from hsmctl.output import fid_text, format_bytes, path_text, write_json_array

    entries = matching(client, args)
    if args.json:
        write_json_array(out, (entry_to_dict(e) for e in entries))
        return 0
    copies = 0
    files: set[tuple[str, int, int, int]] = set()
    header = f"{'FID':<28} {'ARCHIVE':>7} {'SIZE':>9} {'DV':>6}  {'ARCHIVED (UTC)':<19} {'UID':>6}  PATH"
    print(header, file=out)
    for e in entries:
        c = e.copy
        copies += 1
        files.add((e.fsname, e.fid.seq, e.fid.oid, e.fid.ver))
        print(f"{fid_text(e.fid):<28} {c.archive_id:>7} {format_bytes(c.size):>9} {c.data_version:>6}  "
              f"{_utc(c.archived):<19} {c.uid:>6}  {path_text(c.path) if c.path else '-'}", file=out)
    print(f"{copies} cop{'y' if copies == 1 else 'ies'} of {len(files)} file{'' if len(files) == 1 else 's'}",
          file=out)
    return 0


def stat_lines(fsname: str, fid: str, entries: list[cpb.CatalogEntry]) -> list[str]:
    """The block ``catalog stat`` prints for one file."""
    from hsmctl.output import format_bytes, path_text

    n = len(entries)
    lines = [f"{fid} ({fsname or 'any file system'}): {n} cop{'y' if n == 1 else 'ies'}"
             + ("" if n else " (never archived, or its copies were removed)")]
    for e in entries:
        c = e.copy
        extent = "whole file" if c.offset == 0 and c.length < 0 else f"{c.offset}+{c.length}"
        if c.container:
            lines.append(f"  archive {c.archive_id}: packed in container {c.container} at offset {c.slot}")
        else:
            lines.append(f"  archive {c.archive_id}: object {c.key or '(the archive default for the FID)'}")
        lines.append(f"    data version {c.data_version}, {c.size} bytes ({format_bytes(c.size)}), "
                     f"{c.checksum or 'no checksum'}")
        lines.append(f"    archived {_utc(c.archived)} UTC, {extent}, uid {c.uid} gid {c.gid} mode "
                     f"{c.mode & 0o7777:04o}, path {path_text(c.path) if c.path else 'unknown'}")
    return lines
