"""The ``simfs`` filesystem backend of agentd: the copytool calls
(``llapi_hsm_action_begin/end``, open by FID) on a simulated tree.

The HSM state changes themselves (what the MDT does at dispatch and on
completion) live in :mod:`hsm.simfs`; this module only holds the per-action
handle a mover works with.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import BinaryIO

from agentd.backend import FileInfo, NotNeeded
from hsm.fid import Fid
from hsm.hsmflags import HSMA, restore_needed
from hsm.simfs import ActionStart, SimFS

log = logging.getLogger(__name__)


class SimfsAction:
    """One running action on one simfs file (an ``ActionHandle``)."""

    def __init__(self, fs: SimFS, fid: Fid, kind: HSMA, archive_id: int,
                 start: ActionStart | None, volatile: Path | None = None) -> None:
        self.fid = fid
        self.kind: int = kind
        self.archive_id = archive_id
        self._fs = fs
        self._start = start
        self._volatile = volatile
        self._ended = False
        self._lock = threading.Lock()
        if start is None:  # the REMOVE of a deleted file's copy: there is no file
            self._info = FileInfo(size=0, mode=0, uid=0, gid=0, atime_ns=0, mtime_ns=0, data_version=0)
            return
        st = start.stat
        self._info = FileInfo(
            size=st.st_size, mode=st.st_mode, uid=st.st_uid, gid=st.st_gid,
            atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns, data_version=start.data_version,
        )

    def __repr__(self) -> str:
        return f"SimfsAction({HSMA(self.kind).name} {self.fid} on {self._fs.fsname})"

    def _need(self, kind: HSMA, what: str) -> None:
        if self.kind != kind:
            raise ValueError(f"{what}() is for {kind.name} actions, not {HSMA(self.kind).name} ({self.fid})")

    def info(self) -> FileInfo:
        """Size, mode, owner, times and data version of the file at begin."""
        return self._info

    def source_path(self) -> str:
        """ARCHIVE: ``<root>/.lustre/fid/<fid>``, which opens the file's data."""
        self._need(HSMA.ARCHIVE, "source_path")
        self._fs.path_of(self.fid)  # repairs the link if the file was renamed
        return str(self._fs.fid_path(self.fid))

    def open_source(self) -> BinaryIO:
        """ARCHIVE: the file's data, opened for reading by FID."""
        self._need(HSMA.ARCHIVE, "open_source")
        return open(self.source_path(), "rb")

    def volatile_path(self) -> str:
        """RESTORE: the volatile file (under ``.simfs/volatile/``)."""
        self._need(HSMA.RESTORE, "volatile_path")
        assert self._volatile is not None
        return str(self._volatile)

    def open_volatile(self) -> BinaryIO:
        """RESTORE: the volatile file, empty, opened for writing."""
        self._need(HSMA.RESTORE, "open_volatile")
        assert self._volatile is not None
        if self._ended:
            raise ValueError(f"restore of {self.fid} has already ended")
        return open(self._volatile, "wb")

    def end(self, errno: int, bytes_done: int = 0, *, refused: bool = False) -> None:
        """``llapi_hsm_action_end``: 0 for success, else an errno (its sign
        is ignored: llapi_hsm_action_end sends ``abs(errval)``).

        ARCHIVE success raises ``OSError(EBUSY)`` (and does not set ARCHIVED)
        when the file's data changed while it was being copied; *refused*
        (not the file the request named, nothing done) leaves the file as it
        was before begin. RESTORE success swaps the volatile file in; any
        other end discards it. Ending twice raises ``ValueError``."""
        if isinstance(errno, bool) or not isinstance(errno, int):
            raise ValueError(f"end() takes 0 or an errno, not {errno!r}")
        errno = abs(errno)
        if refused and not errno:
            raise ValueError("a refused action ends with an errno, not 0")
        with self._lock:
            if self._ended:
                raise ValueError(f"{HSMA(self.kind).name} of {self.fid} has already ended")
            self._ended = True
        log.debug("%s %s ends: errno %d, %d bytes", HSMA(self.kind).name, self.fid, errno, bytes_done)
        if self.kind == HSMA.ARCHIVE and refused:
            assert self._start is not None
            self._fs.archive_abort(self.fid, self._start)
        elif self.kind == HSMA.ARCHIVE:
            assert self._start is not None
            self._fs.archive_end(self.fid, self._start.data_version, errno)
        elif self.kind == HSMA.RESTORE:
            assert self._volatile is not None
            self._fs.restore_end(self.fid, self._volatile, errno)
        else:
            self._fs.remove_end(self.fid, errno)


class SimfsBackend:
    """A simfs tree, seen as a copytool sees a Lustre mount (a ``Backend``)."""

    def __init__(self, root: Path | str) -> None:
        self.fs = SimFS.open(root)
        self.fsname = self.fs.fsname

    def __repr__(self) -> str:
        return f"SimfsBackend({str(self.fs.root)!r}, fsname={self.fsname!r})"

    def path_of(self, fid: Fid) -> str:
        """``<root>/.lustre/fid/<fid>`` (checked, and repaired if the file was
        renamed). ``FileNotFoundError`` for an unknown FID."""
        self.fs.path_of(fid)
        return str(self.fs.fid_path(fid))

    def name_of(self, fid: Fid) -> str:
        """The file's path from the tree's root (``/dir/file``), as
        ``llapi_fid2path`` gives it (without the leading ``/``) on Lustre."""
        return "/" + str(self.fs.path_of(fid).relative_to(self.fs.root))

    def begin(self, fid: Fid, kind: int, archive_id: int) -> SimfsAction:
        """``llapi_hsm_action_begin``. ``FileNotFoundError`` for an unknown
        FID (but a REMOVE: the copy of a deleted file is removed, with no
        file to change); ``PermissionError`` (EPERM) when the file's HSM state no longer
        allows the action (the MDT re-checks at dispatch too); ARCHIVE begin
        sets EXISTS and the archive id on the file; RESTORE begin creates the
        volatile file."""
        try:
            action = HSMA(kind)
        except ValueError:
            raise ValueError(f"unknown HSM copytool action {kind!r}") from None
        if not isinstance(fid, Fid):
            raise TypeError(f"begin() needs a Fid, not {type(fid).__name__}")
        if action == HSMA.ARCHIVE:
            start = self.fs.archive_begin(fid, archive_id)
            return SimfsAction(self.fs, fid, action, start.attrs.archive_id, start)
        if action == HSMA.RESTORE:
            try:
                start, volatile = self.fs.restore_begin(fid)
            except PermissionError:
                attrs = self.fs.hsm_state(self.fs.path_of(fid))
                if not restore_needed(attrs.flags):
                    raise NotNeeded(f"{fid} is not released any more") from None
                raise
            return SimfsAction(self.fs, fid, action, archive_id or start.attrs.archive_id, start, volatile)
        if action == HSMA.REMOVE:
            try:
                start = self.fs.remove_begin(fid)
            except FileNotFoundError:
                # the file was deleted: its copy goes all the same (the MDT
                # sends such removes too, remove_archive_on_last_unlink);
                # there is no HSM state to change
                return SimfsAction(self.fs, fid, action, archive_id, None)
            return SimfsAction(self.fs, fid, action, archive_id or start.attrs.archive_id, start)
        raise ValueError(f"{action.name} is not an action a copytool begins (ARCHIVE, RESTORE, REMOVE)")

