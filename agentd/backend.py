"""The filesystem backend interface movers use, modelled on liblustreapi's
copytool calls (``llapi_hsm_action_begin/progress/end``, open by FID).

A backend is what agentd knows of the Lustre side: ``simfs`` (the simulated
tree, ``agentd.simfs_backend``) or ``lustre`` (liblustreapi through
``hsm.lustre.api``, ``agentd.lustre_backend``; its handles also offer the
optional hooks ``begin_job``, ``progress`` and ``give_back`` that
``agentd.movers.base`` calls when present). Movers never touch the filesystem's HSM state themselves:
they read the source through ``ActionHandle.open_source()``, write restored
data through ``ActionHandle.open_volatile()``, and report the end with
``ActionHandle.end()``, which applies the HSM state effects the MDT would
(archive success sets ARCHIVED and records the data version, restore
success swaps the volatile file in and clears RELEASED, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Protocol

from hsm.fid import Fid


class NotNeeded(Exception):
    """Raised by ``Backend.begin`` when the file no longer needs the action
    (a restore of a file that is not released any more: another request
    restored it first). The mover ends the action successfully without
    moving data, as the in-kernel coordinator skips unneeded requests."""


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What a mover may copy alongside the data (lhsmtool_posix copies these)."""

    size: int
    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    data_version: int


class ActionHandle(Protocol):
    """One running action on one file (``struct hsm_copyaction_private``)."""

    fid: Fid
    kind: int  # HSMA.ARCHIVE / RESTORE / REMOVE
    archive_id: int

    def info(self) -> FileInfo:
        """Size, mode, owner, times and data version of the file at begin."""

    def open_source(self) -> BinaryIO:
        """ARCHIVE: the file's data, opened for reading (by FID)."""

    def source_path(self) -> str:
        """ARCHIVE: a path that opens the file's data (for external commands)."""

    def volatile_path(self) -> str:
        """RESTORE: the path of the volatile file (for external commands);
        created empty at begin, swapped in by ``end(0)``."""

    def open_volatile(self) -> BinaryIO:
        """RESTORE: a new empty file, opened for writing, that becomes the
        file's data when ``end(0)`` is called (the volatile file of
        ``hai_dfid``). Discarded on any other end."""

    def end(self, errno: int, bytes_done: int = 0, *, refused: bool = False) -> None:
        """``llapi_hsm_action_end``: 0 for success, else a positive errno.

        Applies the HSM state change of the outcome to the file. May raise
        ``OSError`` (e.g. EBUSY when the file changed during an archive), in
        which case the action failed with that errno and nothing changed.
        *refused*: the mover did nothing because the file is not the one the
        request named (its data version differs; errno ESTALE): the file is
        left as it was before ``begin``."""


class Backend(Protocol):
    """Access to one file system, as a copytool has it."""

    fsname: str

    def path_of(self, fid: Fid) -> str:
        """A path that opens the file by FID (``<mnt>/.lustre/fid/<fid>``)."""

    def begin(self, fid: Fid, kind: int, archive_id: int) -> ActionHandle:
        """``llapi_hsm_action_begin``. Raises ``FileNotFoundError`` for an
        unknown FID. ARCHIVE begin records EXISTS and the archive id on the
        file, as the MDT does when it dispatches an archive."""
