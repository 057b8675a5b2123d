"""The bridge's journal: every action list it takes from the MDT is on disk
(fsynced) before the bridge acts on it, so that a bridge killed at any
moment sends the same items again when it starts (the coordinator's
idempotency keys make that harmless). The MDT itself never sends an item
twice: without this, items a dead bridge had read would stay STARTED at the
MDT until its active_request_timeout.

File format: records of ``u32 length (little-endian) | u32 crc32 | bytes``,
each the raw bytes of one ``hsm_action_list``. A torn last record (a crash
mid-write) is dropped on replay; so is one whose checksum fails, with a
warning. ``compact`` rewrites the file atomically with only the lists
still needed.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")
#: a record larger than this is corrupt (the MDT's lists are ~5 KiB; the
#: receive buffer is 1 MiB)
MAX_RECORD = 1 << 20


class Journal:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.records = 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def append(self, raw: bytes) -> None:
        """Write one list and fsync before returning."""
        if len(raw) > MAX_RECORD:
            raise ValueError(f"an action list of {len(raw)} bytes is larger than {MAX_RECORD}")
        os.write(self._fd, _HEADER.pack(len(raw), zlib.crc32(raw)) + raw)
        os.fsync(self._fd)
        self.records += 1

    def replay(self) -> Iterator[bytes]:
        """The lists on disk, oldest first (what a restarted bridge sends again)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        pos = 0
        while pos + _HEADER.size <= len(data):
            size, crc = _HEADER.unpack_from(data, pos)
            body = data[pos + _HEADER.size:pos + _HEADER.size + size]
            if size > MAX_RECORD or len(body) < size:
                log.warning("journal %s: a torn or corrupt record at byte %d (a crash while writing it); "
                            "the rest is dropped", self.path, pos)
                return
            pos += _HEADER.size + size
            if zlib.crc32(body) != crc:
                log.warning("journal %s: record at byte %d fails its checksum; skipped", self.path,
                            pos - size - _HEADER.size)
                continue
            yield body
        if pos != len(data):
            log.warning("journal %s: %d trailing bytes of a torn record dropped", self.path, len(data) - pos)

    def compact(self, lists: Iterable[bytes]) -> None:
        """Replace the journal with *lists* (the ones still needed),
        atomically: a crash leaves either the old file or the new one."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        count = 0
        try:
            for raw in lists:
                os.write(fd, _HEADER.pack(len(raw), zlib.crc32(raw)) + raw)
                count += 1
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dirfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
        self.close()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.records = count
