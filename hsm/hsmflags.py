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

_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1
#: ``LUSTRE_EOF``: an extent length (or end) meaning "to the end of the file".
LUSTRE_EOF = _U64

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


def state_words(flags: int) -> list[str]:
    """The words ``lfs hsm_state`` prints for *flags*, in its order."""
    return [w for bit, w in _STATE_WORDS if flags & bit]


def format_hsm_state(path: str, flags: int, archive_id: int) -> str:
    """One line exactly as ``lfs hsm_state PATH`` prints it (without newline).

    ``/mnt/lustre/f: (0x0000000d) released exists archived, archive_id:1``

    lfs.c prints the u32 ``hus_states`` with ``0x%08x`` and the u32
    ``hus_archive_id`` with ``%d`` (so an id of 2^31 or more prints negative,
    as it does with lfs).
    """
    if not 0 <= flags <= _U32:
        raise ValueError(f"HSM flags {flags!r} are not a u32")
    if not 0 <= archive_id <= _U32:
        raise ValueError(f"archive id {archive_id!r} is not a u32")
    words = "".join(f" {w}" for w in state_words(flags))
    shown_id = archive_id - (1 << 32) if archive_id >= (1 << 31) else archive_id
    tail = f", archive_id:{shown_id}" if archive_id != 0 else ""
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


class HPS(IntEnum):
    """Progress states of ``lfs hsm_action`` (``enum hsm_progress_states``)."""

    WAITING = 1
    RUNNING = 2
    DONE = 3


# `lfs hsm_action` words. The MDT maps the copytool action to the user action
# (HSMA_ARCHIVE -> HUA_ARCHIVE, ...) and lfs prints hsm_user_action2name();
# the state word is hsm_progress_state2name() ("unknown" for anything else).
_ACTION_NAMES = {HSMA.NONE: "NOOP", HSMA.ARCHIVE: "ARCHIVE", HSMA.RESTORE: "RESTORE", HSMA.REMOVE: "REMOVE", HSMA.CANCEL: "CANCEL"}
_STATE_NAMES = {HPS.WAITING: "waiting", HPS.RUNNING: "running", HPS.DONE: "done"}


def _progress_word(progress_state: str | int) -> tuple[str, HPS | None]:
    if isinstance(progress_state, str):
        if progress_state == "":
            return "unknown", None  # HPS_NONE
        for hps, word in _STATE_NAMES.items():
            if progress_state == word:
                return word, hps
        raise ValueError(
            f"unknown HSM progress state {progress_state!r}: expected waiting, running or done"
        )
    try:
        hps = HPS(progress_state)
    except ValueError:
        return "unknown", None
    return _STATE_NAMES[hps], hps


def format_hsm_action(path: str, kind: int | None, progress_state: str | int = "", offset: int = 0, length: int = -1, bytes_moved: int = 0) -> str:
    """One line as ``lfs hsm_action PATH`` prints it (without newline).

    *kind* is the copytool action (``HSMA``); None or ``HSMA.NONE`` prints
    ``PATH: NOOP``. *progress_state* is ``waiting``, ``running`` or ``done``
    (or an ``HPS`` value; anything else prints ``unknown`` like lfs).
    A running ARCHIVE or RESTORE prints ``(N bytes moved)``; every other
    action/state prints its extent, ``(from OFFSET to EOF)`` when
    ``offset + length`` is ``LUSTRE_EOF`` in u64 arithmetic (*length* -1
    means 2^64-1), else ``(from OFFSET to OFFSET+LENGTH)`` (u64, as lfs.c).
    """
    if kind is None or kind == HSMA.NONE:
        return f"{path}: NOOP"
    try:
        name = _ACTION_NAMES[HSMA(kind)]
    except ValueError:
        raise ValueError(f"unknown HSM copytool action {kind!r}") from None
    word, hps = _progress_word(progress_state)
    if hps is HPS.RUNNING and kind in (HSMA.ARCHIVE, HSMA.RESTORE):
        return f"{path}: {name} {word} ({bytes_moved & _U64} bytes moved)"
    off = offset & _U64
    end = (off + (length & _U64)) & _U64
    if end == LUSTRE_EOF:
        return f"{path}: {name} {word} (from {off} to EOF)"
    return f"{path}: {name} {word} (from {off} to {end})"
