"""The mounted simfs tree: a FUSE file system over a simfs directory that
behaves, for released files, the way a Lustre client does.

- ``stat``, ``ls``, ``chmod``, ``rename``, ``unlink`` and the rest pass
  through to the tree. A released file keeps its size and times and has no
  blocks. ``unlink`` of a released file removes it. Its archive copy stays,
  as on Lustre (removing the copy is ``hsmctl remove``'s business, before).
- The first read, write or truncate of a released file through a handle
  asks the coordinator for a restore, flagged blocking, and waits
  (:mod:`hsmfs.restorer`). When the restore ends, the I/O goes on, on the
  restored file. When it fails, or makes no progress for the stall
  timeout, or the mount goes away, the reader gets EIO.
- No-block mode (``--no-block``, like the MDT's ``policy=NBR``): the
  restore is still asked for, and the I/O fails at once with ENODATA.
- ``.simfs`` (the tree's own records) is hidden and refused. ``.lustre``
  is left out of directory listings but can be opened, as on Lustre.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mfusepy

from hsm.hsmflags import HS
from hsm.simfs import XATTR_HSM, HsmAttrs, SimFS
from hsmfs.restorer import Restorer, file_of

log = logging.getLogger("hsmfs")

_HIDDEN = frozenset({".simfs"})
_UNLISTED = frozenset({".simfs", ".lustre"})
_STAT_FIELDS = ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks")
_NOT_REOPENED = os.O_CREAT | os.O_EXCL | os.O_TRUNC


@dataclass(slots=True)
class _Handle:
    real: Path
    flags: int
    fd: int
    online: bool  # checked: not released (I/O goes to fd)
    lock: threading.Lock


def _released(fd: int) -> bool:
    try:
        raw = os.getxattr(fd, XATTR_HSM)
    except OSError:
        return False
    return bool(HsmAttrs.unpack(raw).flags & HS.RELEASED)


class HsmOps(mfusepy.Operations):
    """The operations libfuse calls (paths relative to the mount point)."""

    use_ns = True

    def __init__(self, fs: SimFS, restorer: Restorer, *, block: bool = True) -> None:
        self.fs = fs
        self.root = Path(fs.root)
        self.restorer = restorer
        self.block = block
        self._handles: dict[int, _Handle] = {}
        self._next = 1
        self._lock = threading.Lock()

    # -- paths -----------------------------------------------------------

    def _real(self, path: str) -> Path:
        parts = Path(path).parts[1:] if path.startswith("/") else Path(path).parts
        if parts and parts[0] in _HIDDEN:
            raise mfusepy.FuseOSError(errno.ENOENT)
        return self.root.joinpath(*parts)

    # -- restores --------------------------------------------------------

    def _bring_back(self, real: Path) -> None:
        """The file at *real* is released: restore it (or, in no-block
        mode, ask and fail with ENODATA)."""
        try:
            file = file_of(self.fs, real)
        except OSError as exc:
            raise mfusepy.FuseOSError(exc.errno or errno.EIO) from None
        if not file.flags & HS.RELEASED:
            return  # restored meanwhile
        uid, gid, _pid = mfusepy.fuse_get_context()
        if not self.block:
            self.restorer.ask(file, uid, gid)
            raise mfusepy.FuseOSError(errno.ENODATA)
        code, why = self.restorer.restore(file, uid, gid)
        if code:
            log.warning("%s: I/O error for the reader: %s", file.path, why)
            raise mfusepy.FuseOSError(code)

    def _online(self, fh: int) -> _Handle:
        """The handle, its file brought back first if it is released."""
        h = self._handles.get(fh)
        if h is None:
            raise mfusepy.FuseOSError(errno.EBADF)
        if h.online:
            return h
        with h.lock:
            if not h.online:
                if _released(h.fd):
                    self._bring_back(h.real)
                    # the restore put a new file (a new inode) at the path
                    fd = os.open(h.real, (h.flags & ~_NOT_REOPENED) | os.O_CLOEXEC)
                    if _released(fd):  # never hand out a released file's holes as its data
                        os.close(fd)
                        log.warning("%s: still released after its restore ended", h.real)
                        raise mfusepy.FuseOSError(errno.EIO)
                    old, h.fd = h.fd, fd
                    os.close(old)
                h.online = True
        return h

    # -- files -----------------------------------------------------------

    def _add(self, real: Path, flags: int, fd: int) -> int:
        with self._lock:
            fh = self._next
            self._next += 1
            self._handles[fh] = _Handle(real, flags, fd, False, threading.Lock())
        return fh

    def open(self, path: str, flags: int) -> int:
        real = self._real(path)
        if flags & os.O_TRUNC:
            fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _released(fd):
                    self._bring_back(real)  # as on Lustre: a truncate restores first
            finally:
                os.close(fd)
        return self._add(real, flags, os.open(real, flags | os.O_CLOEXEC))

    def uncached(self, fh: int) -> bool:
        """Whether the kernel must send every read of this open file here
        (FUSE ``direct_io``): a released file's. Through the page cache, a
        read the kernel makes ahead of the reader (readahead) can fail with
        ENODATA or EIO and the reader, whose pages then never fill, sees a
        short read rather than the error (seen under load: a no-block read
        answered ENODATA here and the reader got no error). Online files
        keep the cache."""
        h = self._handles.get(fh)
        return h is not None and _released(h.fd)

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        real = self._real(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        return self._add(real, flags, os.open(real, flags | os.O_CLOEXEC, mode))

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(self._online(fh).fd, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return os.pwrite(self._online(fh).fd, data, offset)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        if fh is not None and fh in self._handles:
            os.ftruncate(self._online(fh).fd, length)
            return 0
        real = self._real(path)
        fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _released(fd):
                self._bring_back(real)
        finally:
            os.close(fd)
        os.truncate(real, length)
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        h = self._handles.get(fh)
        if h is not None:
            (os.fdatasync if datasync else os.fsync)(h.fd)
        return 0

    def release(self, path: str, fh: int) -> int:
        with self._lock:
            h = self._handles.pop(fh, None)
        if h is not None:
            os.close(h.fd)
        return 0

    # -- metadata --------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        st = os.lstat(self._real(path))
        attrs: dict[str, Any] = {k: getattr(st, k) for k in _STAT_FIELDS}
        attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        return attrs

    def access(self, path: str, amode: int) -> int:
        if not os.access(self._real(path), amode, follow_symlinks=False):
            raise mfusepy.FuseOSError(errno.EACCES)
        return 0

    def readdir(self, path: str, fh: int) -> list[str]:
        real = self._real(path)
        names = os.listdir(real)
        if real == self.root:
            names = [n for n in names if n not in _UNLISTED]
        return [".", "..", *names]

    def readlink(self, path: str) -> str:
        return os.readlink(self._real(path))

    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self._real(path), mode)
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._real(path))
        return 0

    def unlink(self, path: str) -> int:
        os.unlink(self._real(path))
        return 0

    def symlink(self, target: str, source: str) -> int:
        os.symlink(source, self._real(target))
        return 0

    def link(self, target: str, source: str) -> int:
        os.link(self._real(source), self._real(target))
        return 0

    def rename(self, old: str, new: str) -> int:
        os.rename(self._real(old), self._real(new))
        return 0

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._real(path), stat.S_IMODE(mode))
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.lchown(self._real(path), uid, gid)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        if times is None:
            os.utime(self._real(path), follow_symlinks=False)
        else:
            os.utime(self._real(path), ns=times, follow_symlinks=False)
        return 0

    def statfs(self, path: str) -> dict[str, Any]:
        sv = os.statvfs(self._real(path))
        return {k: getattr(sv, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                                            "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")}
