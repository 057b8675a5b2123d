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
    _write_durably(_path(data_dir, index),
                   json.dumps({"members": list(record.members), "quiet": record.quiet, "audit": record.audit}))


def _write_durably(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
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


# ---------------------------------------------------------------------------
# The ring as this replica last knew it (``DATA_DIR/ring``, JSON): written
# when a split opens its new shards here, and when a split ends (done: the
# new ring; aborted: without the new shards); read at start, before any
# group is opened. The cluster's configuration only seeds it (its shard
# count is the ring of version 1).

RING_FILE = "ring"


@dataclass(frozen=True, slots=True)
class RingRecord:
    """The ring this replica routes by (*shards*, *version*), a split that
    runs (*pending*: the shards of the ring it makes, 0: none, and its
    version), and the groups of the shards splits added (index -> members,
    the preferred leader first; the configured placement has the others)."""

    shards: int
    version: int
    groups: dict[int, tuple[str, ...]]
    pending: int = 0
    pending_version: int = 0

    def to_json(self) -> str:
        return json.dumps({"shards": self.shards, "version": self.version, "pending": self.pending,
                           "pending_version": self.pending_version,
                           "groups": {str(k): list(v) for k, v in sorted(self.groups.items())}})

    @classmethod
    def from_json(cls, text: str) -> RingRecord:
        """Raises ValueError on anything but a record :meth:`to_json` wrote."""
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("not an object")
        ints = [raw.get(k) for k in ("shards", "version", "pending", "pending_version")]
        groups = raw.get("groups")
        if (not all(type(i) is int and i >= 0 for i in ints)
                or not isinstance(groups, dict)
                or not all(isinstance(k, str) and k.isdigit() and isinstance(v, list) and v
                           and all(isinstance(m, str) for m in v) for k, v in groups.items())):
            raise ValueError("malformed ring record")
        shards, version, pending, pending_version = (int(i or 0) for i in ints)
        return cls(shards, version, {int(k): tuple(v) for k, v in groups.items()}, pending, pending_version)


def read_ring(data_dir: Path) -> RingRecord | None:
    """This replica's ring record, or None when it never took part in a split."""
    path = Path(data_dir) / RING_FILE
    try:
        return RingRecord.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise OSError(f"{path} cannot be read: {exc}; it records the shards splits added: copy it from "
                      "another replica's data directory") from None


def write_ring(data_dir: Path, record: RingRecord) -> None:
    """Replace the ring record durably (temporary file, fsync, rename)."""
    _write_durably(Path(data_dir) / RING_FILE, record.to_json())
