"""The HSM catalog of one shard: every archived copy of every file whose FID
the shard owns (issue 18). Pure: the shard state machine writes it in the
same command that ends an archive (so the catalog and the action never
disagree) and drops a copy in the command that ends its remove; snapshots
carry it; queries read it.

A :class:`Copy` is one object in one archive: which archive, the object's
key there (empty: the archive's default layout names it from the FID), the
data version, size and checksum of the data it holds, when it was archived,
the extent it covers, the file's owner, mode and path as archived (for a
restore to a new place and for ``catalog ls`` filters), and for a file
packed with others, the container and the offset of its slice.

Memory per copy is bounded: every string has a cap (:data:`MAX_KEY`,
:data:`MAX_CHECKSUM`, :data:`MAX_PATH`) and a copy is one slotted object.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from hsm.fid import Fid

#: the longest object key, checksum and path a copy records (bytes, UTF-8);
#: MAX_PATH (PATH_MAX) also bounds the path a request names (coordinator.convert)
MAX_KEY = 1024
MAX_CHECKSUM = 160
MAX_PATH = 4096
#: the most files one page of a query looks at (Catalog.query)
SCAN_FILES = 20_000

FileKey = tuple[str, Fid]  # (fsname, FID)

COPY_FIELDS = ("archive_id", "key", "data_version", "size", "checksum", "archived", "offset", "length",
               "uid", "gid", "mode", "path", "container", "slot")


class CopyError(ValueError):
    """A copy record that breaks a bound: refused, the catalog unchanged."""


class Copy:
    """One archived copy of a file (see the module)."""

    __slots__ = COPY_FIELDS

    def __init__(self, archive_id: int, key: str, data_version: int, size: int, checksum: str = "",
                 archived: float = 0.0, offset: int = 0, length: int = -1, uid: int = 0, gid: int = 0,
                 mode: int = 0, path: str = "", container: str = "", slot: int = 0) -> None:
        self.archive_id = archive_id
        self.key = key
        self.data_version = data_version
        self.size = size
        self.checksum = checksum
        self.archived = archived
        self.offset = offset
        self.length = length
        self.uid = uid
        self.gid = gid
        self.mode = mode
        self.path = path
        self.container = container
        self.slot = slot

    def check(self) -> Copy:
        """Itself, or CopyError naming the bound it breaks."""
        if not 0 < self.archive_id < 1 << 32:
            raise CopyError(f"archive id {self.archive_id} out of range (1 to 2**32-1)")
        for name, text, most in (("object key", self.key, MAX_KEY), ("checksum", self.checksum, MAX_CHECKSUM),
                                 ("path", self.path, MAX_PATH), ("container", self.container, MAX_KEY)):
            if len(text.encode(errors="surrogateescape")) > most:
                raise CopyError(f"{name} longer than {most} bytes")
            if "\0" in text:
                raise CopyError(f"{name} holds a NUL byte")
        if self.size < 0 or self.data_version < 0 or self.offset < 0 or self.slot < 0:
            raise CopyError("size, data version, offset and slot are >= 0")
        return self

    def values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f) for f in COPY_FIELDS)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Copy, self.values())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Copy) and self.values() == other.values()

    def __hash__(self) -> int:
        return hash(self.values())

    def __repr__(self) -> str:
        return f"Copy(archive {self.archive_id}, dv {self.data_version}, {self.size} bytes, key {self.key!r})"


@dataclass(frozen=True, slots=True)
class Query:
    """What ``catalog ls`` asks for; every field set narrows it."""

    archive_id: int = 0
    archived_before: float = 0.0
    archived_after: float = 0.0
    min_size: int = -1
    max_size: int = -1
    uid: int = -1
    path_prefix: str = ""

    def matches(self, c: Copy) -> bool:
        return ((not self.archive_id or c.archive_id == self.archive_id)
                and (not self.archived_before or c.archived < self.archived_before)
                and (not self.archived_after or c.archived >= self.archived_after)
                and (self.min_size < 0 or c.size >= self.min_size)
                and (self.max_size < 0 or c.size <= self.max_size)
                and (self.uid < 0 or c.uid == self.uid)
                and (not self.path_prefix or _under(c.path, self.path_prefix)))


def _under(path: str, prefix: str) -> bool:
    """*path* is *prefix* or lies below it (``/a/b`` is under ``/a``, ``/ab`` is not)."""
    prefix = prefix.rstrip("/")
    return not prefix or path == prefix or path.startswith(prefix + "/")


class Catalog:
    """The copies of the files of one shard, by (fsname, FID); a file's
    copies in archive id order, one per archive id (a later archive to the
    same archive replaces it: the archive keeps the newest data)."""

    __slots__ = ("files", "copies", "fsnames", "_order")

    def __init__(self) -> None:
        self.files: dict[FileKey, tuple[Copy, ...]] = {}
        self.copies = 0
        self.fsnames: dict[str, int] = {}  # fsname -> files with a copy (derived)
        self._order: list[FileKey] | None = None  # the files sorted, for paging; None: to sort again

    def record(self, fsname: str, fid: Fid, copy: Copy) -> Copy | None:
        """Adds *copy* (checked: CopyError changes nothing); returns the copy
        of the same archive id it replaces, if any."""
        copy.check()
        key = (fsname, fid)
        have = self.files.get(key)
        if have is None:
            self.files[key] = (copy,)
            self.copies += 1
            self.fsnames[fsname] = self.fsnames.get(fsname, 0) + 1
            self._order = None
            return None
        old = next((c for c in have if c.archive_id == copy.archive_id), None)
        rest = tuple(c for c in have if c.archive_id != copy.archive_id)
        self.files[key] = tuple(sorted((*rest, copy), key=lambda c: c.archive_id))
        if old is None:
            self.copies += 1
        return old

    def drop(self, fsname: str, fid: Fid, archive_id: int = 0) -> int:
        """Forgets the file's copy in *archive_id* (0: every copy); returns
        how many went."""
        key = (fsname, fid)
        have = self.files.get(key)
        if have is None:
            return 0
        keep = tuple(c for c in have if archive_id and c.archive_id != archive_id)
        gone = len(have) - len(keep)
        if keep:
            self.files[key] = keep
        else:
            del self.files[key]
            left = self.fsnames[fsname] - 1
            if left:
                self.fsnames[fsname] = left
            else:
                del self.fsnames[fsname]
            self._order = None
        self.copies -= gone
        return gone

    def of(self, fsname: str, fid: Fid) -> tuple[Copy, ...]:
        return self.files.get((fsname, fid), ())

    def of_fid(self, fid: Fid) -> list[tuple[FileKey, Copy]]:
        """The copies of *fid* in every file system the catalog knows."""
        return [((fsname, fid), c) for fsname in sorted(self.fsnames) for c in self.files.get((fsname, fid), ())]

    def query(self, q: Query, after: FileKey | None = None, limit: int = 1000,
              scan: int = SCAN_FILES) -> tuple[list[tuple[FileKey, Copy]], FileKey | None]:
        """Up to *limit* matching copies in (fsname, FID) order after the
        file *after*, looking at *scan* files at most, and the last file
        looked at when there are more (None: the end): where the next page
        starts. A page may be short, even empty, when the filters skip many
        files: a read holds the shard for a bounded time. The sorted order
        is kept until a file is added or removed (sorting is O(files log
        files), a page O(log files + scan))."""
        if self._order is None:
            self._order = sorted(self.files, key=_order_key)
        order = self._order
        i = 0 if after is None else bisect_right(order, _order_key(after), key=_order_key)
        out: list[tuple[FileKey, Copy]] = []
        end = min(len(order), i + max(1, scan))
        while i < end:
            key = order[i]
            i += 1
            for c in self.files.get(key, ()):
                if q.matches(c):
                    out.append((key, c))
            if len(out) >= limit:
                break
        return out, (order[i - 1] if i < len(order) else None)

    def __iter__(self) -> Iterator[tuple[FileKey, Copy]]:
        for key, copies in self.files.items():
            for c in copies:
                yield key, c

    def __len__(self) -> int:
        return self.copies

    def add_files(self, items: Iterable[tuple[FileKey, tuple[Copy, ...]]]) -> None:
        """Add files with their copies as a snapshot slice holds them
        (``(fsname, fid), copies`` pairs, the copies in archive id order)."""
        for key, copies in items:
            if key not in self.files:
                self.fsnames[key[0]] = self.fsnames.get(key[0], 0) + 1
            else:
                self.copies -= len(self.files[key])
            self.files[key] = copies
            self.copies += len(copies)
        self._order = None

    def __getstate__(self) -> tuple[None, dict[str, Any]]:
        return (None, {"files": self.files, "copies": self.copies})

    def __setstate__(self, state: tuple[None, dict[str, Any]]) -> None:
        self.files, self.copies, self.fsnames = {}, 0, {}
        self.add_files(state[1]["files"].items())


def _order_key(key: FileKey) -> tuple[str, int, int, int]:
    fid = key[1]
    return (key[0], fid.seq, fid.oid, fid.ver)
