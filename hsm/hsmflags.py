"""Lustre HSM state flags, the in-kernel "needed"/"allowed" rules, and the
``lfs hsm_state`` / ``lfs hsm_action`` output formats.

Pure functions only: used by simfs, by hsmctl and by the coordinator's
state machine alike.
"""

from __future__ import annotations

import errno as _errno
from enum import IntEnum, IntFlag


class HS(IntFlag):
    """``enum hsm_states`` (the flags of ``trusted.hsm``)."""

    NONE = 0x0
    EXISTS = 0x1
    DIRTY = 0x2
    RELEASED = 0x4
    ARCHIVED = 0x8
    NORELEASE = 0x10
    NOARCHIVE = 0x20
    LOST = 0x40


HS_ALL = HS.EXISTS | HS.DIRTY | HS.RELEASED | HS.ARCHIVED | HS.NORELEASE | HS.NOARCHIVE | HS.LOST
#: Flags a user may set or clear with ``lfs hsm_set``/``hsm_clear``.
HS_USER_MASK = HS.NORELEASE | HS.NOARCHIVE | HS.DIRTY


class HSMA(IntEnum):
    """Copytool action codes (``enum hsm_copytool_action``)."""

    NONE = 10
    ARCHIVE = 20
    RESTORE = 21
    REMOVE = 22
    CANCEL = 23


class HUA(IntEnum):
    """User action codes (``enum hsm_user_action``)."""

    NONE = 1
    ARCHIVE = 10
    RESTORE = 11
    RELEASE = 12
    REMOVE = 13
    CANCEL = 14


#: Request flags.
HSM_FORCE_ACTION = 0x1
HSM_REQ_BLOCKING = 0x4
HSM_REQUEST_FLAGS = HSM_FORCE_ACTION | HSM_REQ_BLOCKING

#: Progress flags.
HP_FLAG_COMPLETED = 0x1
HP_FLAG_RETRY = 0x2

DEFAULT_ARCHIVE_ID = 1

# Order and words of `lfs hsm_state` (lfs.c: lfs_hsm_state).
_STATE_WORDS: tuple[tuple[HS, str], ...] = (
    (HS.RELEASED, "released"),
    (HS.EXISTS, "exists"),
    (HS.DIRTY, "dirty"),
    (HS.ARCHIVED, "archived"),
    (HS.NORELEASE, "never_release"),
    (HS.NOARCHIVE, "never_archive"),
    (HS.LOST, "lost_from_hsm"),
)


def format_hsm_state(path: str, flags: int, archive_id: int) -> str:
    """One line exactly as ``lfs hsm_state PATH`` prints it (without newline).

    ``/mnt/lustre/f: (0x0000000d) released exists archived, archive_id:1``
    """
    words = "".join(f" {w}" for bit, w in _STATE_WORDS if flags & bit)
    tail = f", archive_id:{archive_id}" if archive_id != 0 else ""
    return f"{path}: (0x{flags:08x}){words}{tail}"


def archive_needed(flags: int) -> bool:
    return bool(flags & HS.DIRTY) or not (flags & HS.ARCHIVED)


def archive_allowed(flags: int, file_archive_id: int, request_archive_id: int) -> bool:
    if flags & HS.NOARCHIVE:
        return False
    if flags & HS.EXISTS:
        return request_archive_id in (0, file_archive_id)
    return True


def restore_needed(flags: int) -> bool:
    return bool(flags & (HS.RELEASED | HS.DIRTY))


def restore_allowed(flags: int) -> bool:
    return (
        bool(flags & HS.RELEASED)
        and bool(flags & HS.ARCHIVED)
        and not (flags & HS.DIRTY)
        and not (flags & HS.LOST)
    )


def remove_needed(flags: int) -> bool:
    return bool(flags & (HS.ARCHIVED | HS.EXISTS))


def remove_allowed(flags: int) -> bool:
    return not (flags & HS.RELEASED)


def release_allowed(flags: int, data_version: int, archived_version: int) -> bool:
    return (
        bool(flags & HS.ARCHIVED)
        and not (flags & HS.DIRTY)
        and not (flags & HS.NORELEASE)
        and not (flags & HS.LOST)
        and data_version == archived_version
    )


def resolve_archive_id(request_archive_id: int, file_archive_id: int, default: int = DEFAULT_ARCHIVE_ID) -> int:
    """The request's archive id, else the file's, else the default."""
    if request_archive_id:
        return request_archive_id
    if file_archive_id:
        return file_archive_id
    return default


def check_request(kind: int, flags: int, file_archive_id: int, request_archive_id: int) -> int | None:
    """Apply the in-kernel rules to a request of copytool action *kind*.

    Returns ``None`` when the action must be queued, ``0`` when it is not
    needed (the request succeeds without work) and ``EPERM`` when it is not
    allowed.
    """
    if kind == HSMA.ARCHIVE:
        needed, allowed = archive_needed(flags), archive_allowed(flags, file_archive_id, request_archive_id)
    elif kind == HSMA.RESTORE:
        needed, allowed = restore_needed(flags), restore_allowed(flags)
    elif kind == HSMA.REMOVE:
        needed, allowed = remove_needed(flags), remove_allowed(flags)
    else:
        raise ValueError(f"unknown HSM action {kind!r}")
    if not needed:
        return 0
    if not allowed:
        return _errno.EPERM
    return None


# `lfs hsm_action` words (lfs.c: hsm_user_action2name / hsm_progress_state2name).
_ACTION_NAMES = {HSMA.NONE: "NOOP", HSMA.ARCHIVE: "ARCHIVE", HSMA.RESTORE: "RESTORE", HSMA.REMOVE: "REMOVE", HSMA.CANCEL: "CANCEL"}


def format_hsm_action(path: str, kind: int | None, progress_state: str = "", offset: int = 0, length: int = -1, bytes_moved: int = 0) -> str:
    """One line as ``lfs hsm_action PATH`` prints it.

    *kind* None (or HSMA.NONE) prints ``PATH: NOOP``. *progress_state* is
    ``waiting``, ``running`` or ``done``; a waiting action prints its extent
    (``from 0 to EOF``), a running one the bytes moved.
    """
    if kind is None or kind == HSMA.NONE:
        return f"{path}: NOOP"
    name = _ACTION_NAMES[HSMA(kind)]
    if progress_state == "running":
        return f"{path}: {name} {progress_state} ({bytes_moved} bytes moved)"
    end = "EOF" if length < 0 else str(offset + length)
    return f"{path}: {name} {progress_state} (from {offset} to {end})"
