"""What a replica keeps on disk about its member of a shard's Raft group
(``DATA_DIR/shard-N/group``, JSON): the group's members as this replica last
applied them, whether it must start no election (``coordinator.moves.quiet``)
and whether, when it starts again, it must first ask the other members if it
is still in the group (a move involved it). Written by the node whenever the
shard's move or group changes (coordinator.node ``_after_move``) and when it
joins or leaves a group; read at start, before the Raft group is opened, so
that a replica opens exactly the groups it is a member of with their current
members, which the configured placement only seeds."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

FILE = "group"


@dataclass(frozen=True, slots=True)
class GroupRecord:
    members: tuple[str, ...]
    quiet: bool = False
    audit: bool = False


def _path(data_dir: Path, index: int) -> Path:
    return Path(data_dir) / f"shard-{index}" / FILE


def read_group(data_dir: Path, index: int) -> GroupRecord | None:
    """The record of shard *index*, or None when this replica never held it
    (or held it before records existed: the configured placement decides)."""
    try:
        raw = json.loads(_path(data_dir, index).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise OSError(f"shard {index}: {_path(data_dir, index)} cannot be read: {exc}; it records the shard's "
                      "Raft group: restore it from another replica's, or remove the whole shard-N "
                      "directory to take the configured placement") from None
    members = raw.get("members") if isinstance(raw, dict) else None
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
        raise OSError(f"shard {index}: {_path(data_dir, index)} holds no member list")
    return GroupRecord(tuple(members), bool(raw.get("quiet")), bool(raw.get("audit")))


def write_group(data_dir: Path, index: int, record: GroupRecord) -> None:
    """Replace the record durably (temporary file, fsync, rename)."""
    path = _path(data_dir, index)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"members": list(record.members), "quiet": record.quiet, "audit": record.audit}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clear_member(data_dir: Path, index: int) -> None:
    """Remove what this replica's member of shard *index* kept (journal,
    snapshot, votes), leaving the group record: the replica left the group."""
    d = Path(data_dir) / f"shard-{index}"
    for p in d.iterdir():
        if p.name in (FILE, "lock"):
            continue
        if p.is_dir():
            for q in sorted(p.rglob("*"), reverse=True):
                q.unlink() if not q.is_dir() else q.rmdir()
            p.rmdir()
        else:
            p.unlink()
