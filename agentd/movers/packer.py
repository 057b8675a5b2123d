"""Small files packed into containers (issue 18; docs/packing.md).

Archiving a 4 KiB file as an object of its own costs the archive an object
(an inode, a tape file mark, an object store PUT) and the mover an fsync
and a rename for 4 KiB of data. The posix mover hands the archives of files
smaller than its ``pack_below`` to a :class:`Packer` instead, which gathers
them per group (archive id and tag) for up to ``pack_idle`` seconds after
the last one came, or until ``pack_files`` files or ``pack_bytes`` bytes
are gathered, and writes them into one container object:

``<archive root>/containers/<group>/<YYYY-MM-DD>/<uuid>.pack``::

    b"HSMPACK 1\\n"                      header (10 bytes)
    slice 1, slice 2, ...                 each file's bytes, back to back
    index                                 JSON: {"version": 1, "slices": [{"fid": "[0x...]",
                                          "offset": N, "length": N, "checksum": "sha256:HEX"}, ...]}
    index offset (8 bytes, little endian), b"HSMPACK1"     trailer (16 bytes)

A container is written as ``<uuid>.pack.tmp``, fsync'd, renamed into place
and its directory fsync'd before any of its files is reported archived:
a mover killed mid-pack leaves a temporary file (removed by the next mover
that starts on the root once it is a day old) and every file in it is
still waiting (its action is run again), never half-indexed. Each file's
catalog entry names the container and its slice's offset; a restore reads
that slice only and checks its checksum.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hsm.fid import Fid

log = logging.getLogger(__name__)

HEADER = b"HSMPACK 1\n"
TRAILER_MAGIC = b"HSMPACK1"
_TRAILER = struct.Struct("<Q8s")
CONTAINERS_DIR = "containers"
_TMP_SUFFIX = ".tmp"
#: a temporary container older than this is a dead mover's: removed at start
STALE_TMP_SECONDS = 24 * 3600.0
_GROUP_OK = re.compile(r"[^A-Za-z0-9._-]")


class PackError(Exception):
    """A container could not be written (errno, message)."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err
        self.message = message


@dataclass(frozen=True, slots=True)
class Slice:
    """Where a packed file lies: the container's key (relative to the
    archive root), the slice's offset and length, its checksum."""

    container: str
    offset: int
    length: int
    checksum: str


@dataclass(slots=True)
class _Item:
    fid: Fid
    data: bytes
    done: threading.Event = field(default_factory=threading.Event)
    slice: Slice | None = None
    error: PackError | None = None


@dataclass(slots=True)
class _Batch:
    items: list[_Item] = field(default_factory=list)
    size: int = 0
    last: float = 0.0  # monotonic time the last file came
    sealed: bool = False


def group_name(archive_id: int, tag: str) -> str:
    """The directory of a group's containers: ``<archive id>-<tag>`` (``-`` for no tag)."""
    return f"{archive_id}-{_GROUP_OK.sub('_', tag) or '-'}"


class Packer:
    """Gathers small files per group into container objects (see the module)."""

    def __init__(self, archive_root: str | os.PathLike[str], *, max_files: int = 1000, max_bytes: int = 64 << 20,
                 idle: float = 2.0, checksum: str = "sha256", clock: Callable[[], float] = time.monotonic) -> None:
        if max_files < 1 or max_bytes < 1 or idle <= 0:
            raise ValueError("packing: max_files and max_bytes must be >= 1, idle > 0 s")
        hashlib.new(checksum)
        self.root = Path(archive_root)
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.idle = idle
        self.checksum = checksum
        self.clock = clock
        self._lock = threading.Condition()
        self._open: dict[str, _Batch] = {}
        #: containers written (for the bench and the logs)
        self.containers = 0

    def remove_stale_tmps(self, older_than: float = STALE_TMP_SECONDS) -> int:
        """Remove the temporary containers a killed mover left (older than
        *older_than* seconds: another mover may be writing a fresh one)."""
        top = self.root / CONTAINERS_DIR
        if not top.is_dir():
            return 0
        now = time.time()
        gone = 0
        for tmp in top.glob(f"*/*/*.pack{_TMP_SUFFIX}*"):
            try:
                if now - tmp.stat().st_mtime > older_than:
                    tmp.unlink()
                    gone += 1
            except OSError:
                continue
        if gone:
            log.warning("removed %d temporary container(s) a killed mover left under %s", gone, top)
        return gone

    def pack(self, group: str, fid: Fid, data: bytes, cancelled: threading.Event | None = None) -> Slice:
        """Add a file to its group's open container and block until the
        container is written and in place (its :class:`Slice`), or raise
        :class:`PackError`. The first file of a batch waits for the batch
        to fill or go idle and then writes it; a file that fills it writes
        it at once."""
        item = _Item(fid, data)
        with self._lock:
            batch = self._open.get(group)
            if batch is None:
                batch = self._open[group] = _Batch()
            first = not batch.items
            batch.items.append(item)
            batch.size += len(data)
            batch.last = self.clock()
            full = len(batch.items) >= self.max_files or batch.size >= self.max_bytes
            if full:
                self._detach(group, batch)
            elif first:
                # this thread seals the batch once it is idle (or another fills it)
                while not batch.sealed:
                    left = batch.last + self.idle - self.clock()
                    if left <= 0 or (cancelled is not None and cancelled.is_set() and len(batch.items) == 1):
                        self._detach(group, batch)
                        full = True
                        break
                    self._lock.wait(min(left, 0.5))
        if full:
            self._write(group, batch)
        item.done.wait()
        if item.error is not None:
            raise item.error
        assert item.slice is not None
        return item.slice

    def _detach(self, group: str, batch: _Batch) -> None:
        """(under the lock) the batch takes no more files; the next file starts another."""
        batch.sealed = True
        if self._open.get(group) is batch:
            del self._open[group]
        self._lock.notify_all()

    def _write(self, group: str, batch: _Batch) -> None:
        items = batch.items
        try:
            slices = write_container(self.root, group, [(it.fid, it.data) for it in items], self.checksum)
        except OSError as exc:
            err = PackError(exc.errno or 5, f"cannot write a container of {group} under {self.root}: "
                                            f"{exc.strerror or exc}")
            for it in items:
                it.error = err
                it.done.set()
            return
        with self._lock:
            self.containers += 1
        log.info("container %s: %d files, %d bytes", slices[0].container, len(items), sum(s.length for s in slices))
        for it, s in zip(items, slices, strict=True):
            it.slice = s
            it.done.set()


def write_container(root: Path, group: str, files: list[tuple[Fid, bytes]], checksum: str = "sha256") -> list[Slice]:
    """Write *files* into a new container of *group* under the archive
    *root* (see the module: ``.tmp``, fsync, rename, directory fsync) and
    return their slices; OSError leaves nothing behind."""
    day = time.strftime("%Y-%m-%d", time.gmtime())
    directory = root / CONTAINERS_DIR / group / day
    name = f"{uuid.uuid4().hex}.pack"
    key = f"{CONTAINERS_DIR}/{group}/{day}/{name}"
    final = directory / name
    tmp = directory / f"{name}{_TMP_SUFFIX}"
    slices: list[Slice] = []
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            offset = len(HEADER)
            chunks = [HEADER]
            index = []
            for fid, data in files:
                digest = f"{checksum}:{hashlib.new(checksum, data).hexdigest()}"
                slices.append(Slice(key, offset, len(data), digest))
                index.append({"fid": str(fid), "offset": offset, "length": len(data), "checksum": digest})
                chunks.append(data)
                offset += len(data)
            chunks.append(json.dumps({"version": 1, "slices": index}, separators=(",", ":")).encode())
            chunks.append(_TRAILER.pack(offset, TRAILER_MAGIC))
            view = memoryview(b"".join(chunks))
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, final)
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    return slices


def read_index(path: str | os.PathLike[str]) -> list[dict[str, object]]:
    """The slices a container's index lists (ValueError: not a complete container)."""
    with open(path, "rb") as f:
        head = f.read(len(HEADER))
        if head != HEADER:
            raise ValueError(f"{path}: not a container (header {head!r})")
        size = f.seek(0, os.SEEK_END)
        if size < len(HEADER) + _TRAILER.size:
            raise ValueError(f"{path}: truncated container")
        f.seek(size - _TRAILER.size)
        at, magic = _TRAILER.unpack(f.read(_TRAILER.size))
        if magic != TRAILER_MAGIC or not len(HEADER) <= at <= size - _TRAILER.size:
            raise ValueError(f"{path}: no container index (trailer {magic!r})")
        f.seek(at)
        doc = json.loads(f.read(size - _TRAILER.size - at))
    slices: list[dict[str, object]] = doc["slices"]
    return slices
