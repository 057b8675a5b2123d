"""Lustre HSM state flags, the in-kernel "needed"/"allowed" rules, the
``lfs hsm_state`` / ``lfs hsm_action`` output formats, the MDT's action
record statuses (``ARS_*``) and the changelog's HSM flags (``CLF_HSM_*``).

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
    PCCRW = 0x80  # the file is attached to a read-write persistent client cache
    PCCRO = 0x100  # the file is attached to a read-only persistent client cache


#: Flags a user may set or clear with ``lfs hsm_set``/``hsm_clear`` (``HSM_USER_MASK``).
HS_USER_MASK = HS.NORELEASE | HS.NOARCHIVE | HS.DIRTY
#: The other flags (``HSM_STATUS_MASK``), PCC ones included.
HS_STATUS_MASK = HS.EXISTS | HS.LOST | HS.RELEASED | HS.ARCHIVED | HS.PCCRW | HS.PCCRO
#: Every flag a file may carry (``HSM_FLAGS_MASK``, 0x1ff): the MDT refuses
#: others with EINVAL (mdt_hsm.c: mdt_hsm_state_set). No rule below looks at
#: the PCC bits.
HS_ALL = HS_USER_MASK | HS_STATUS_MASK


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

# Order and words of `lfs hsm_state` (lfs.c: lfs_hsm_state). It has no word
# for HS_PCCRW and HS_PCCRO: they show only in the number.
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
    """``hsm_action_is_needed`` for HSMA_ARCHIVE (without HSM_FORCE_ACTION)."""
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


def check_request(kind: int, flags: int, file_archive_id: int, request_archive_id: int,
                  request_flags: int = 0) -> int | None:
    """Apply the in-kernel rules to a request of copytool action *kind*
    (mdt_hsm_cdt_client.c: mdt_hsm_register_hal).

    Returns ``None`` when the action must be queued, ``0`` when it is not
    needed (the request succeeds without work) and ``EPERM`` when it is not
    compatible with the file's state.

    ``HSM_FORCE_ACTION`` in *request_flags* only makes the action "needed"
    (``hsm_action_is_needed`` returns true at once); the compatibility check
    that follows (``mdt_hsm_is_action_compat``) includes the "needed"
    conditions, so a forced action that would not be needed is refused with
    EPERM instead of being skipped: a forced archive of a clean archived
    file, a forced restore of a file that is not released, a forced remove
    of a file never archived.
    """
    if kind == HSMA.ARCHIVE:
        needed, allowed = archive_needed(flags), archive_allowed(flags, file_archive_id, request_archive_id)
    elif kind == HSMA.RESTORE:
        needed, allowed = restore_needed(flags), restore_allowed(flags)
    elif kind == HSMA.REMOVE:
        needed, allowed = remove_needed(flags), remove_allowed(flags)
    else:
        raise ValueError(f"unknown HSM action {kind!r}")
    if not (needed or request_flags & HSM_FORCE_ACTION):
        return 0
    # mdt_hsm_is_action_compat() is "needed and allowed" for each kind
    if not (needed and allowed):
        return _errno.EPERM
    return None


class ARS(IntEnum):
    """Status of a record of the MDT's action log (lustre_idl.h: enum
    agent_req_status); ``agent_req_status2name`` gives the names.

    A record whose cancel has been sent to its copytool is already CANCELED
    (mdt_coordinator.c: mdt_hsm_add_hsr): ``lfs hsm_action`` then no longer
    shows it (mdt_hsm_cdt_client.c: hsm_get_action_cb keeps only WAITING and
    STARTED records that are not a CANCEL)."""

    WAITING = 0
    STARTED = 1
    FAILED = 2
    CANCELED = 3
    SUCCEED = 4


def agent_req_status2name(status: int) -> str:
    """``WAITING`` ... ``SUCCEED``, ``UNKNOWN`` for anything else."""
    try:
        return ARS(status).name
    except ValueError:
        return "UNKNOWN"


# --------------------------------------------------------------------------
# Changelog: the flags of a CL_HSM record (lustre_user.h, "Flags for HSM")

#: changelog record type of HSM events (enum changelog_rec_type)
CL_HSM = 16
CLF_HSM_ERR_L, CLF_HSM_ERR_H = 0, 6  # errno, 7 bits
CLF_HSM_EVENT_L, CLF_HSM_EVENT_H = 7, 9  # enum hsm_event, 3 bits
CLF_HSM_FLAG_L, CLF_HSM_FLAG_H = 10, 11  # flags, 2 bits (1 used)
CLF_HSM_SPARE_L, CLF_HSM_SPARE_H = 12, 15
CLF_HSM_LAST = 15
CLF_HSM_SUCCESS = 0x00
CLF_HSM_MAXERROR = 0x7E
CLF_HSM_ERROVERFLOW = 0x7F
#: value of the flag field (bits 10-11): the file is dirty after the request
CLF_HSM_DIRTY = 1


class HE(IntEnum):
    """``enum hsm_event``: bits 7-9 of a CL_HSM record's flags."""

    ARCHIVE = 0
    RESTORE = 1
    CANCEL = 2
    RELEASE = 3
    REMOVE = 4
    STATE = 5
    SPARE1 = 6
    SPARE2 = 7


def _clf_get_bits(flags: int, high: int, low: int) -> int:
    # CLF_GET_BITS: drop the bits above `high` (in 16 bits), shift `low` to bit 0
    return ((flags << (CLF_HSM_LAST - high)) & 0xFFFF) >> (CLF_HSM_LAST - high + low)


def clf_hsm_pack(event: int, error: int = 0, flags: int = 0) -> int:
    """The changelog flags of an HSM event (hsm_set_cl_event,
    hsm_set_cl_error, hsm_set_cl_flags): *event* an ``HE``, *error* an
    errno (its sign ignored; above ``CLF_HSM_MAXERROR`` it is stored as
    ``CLF_HSM_ERROVERFLOW``), *flags* ``CLF_HSM_DIRTY`` or 0."""
    event = HE(event)
    if not 0 <= flags <= 3:
        raise ValueError(f"CL_HSM flags {flags!r} do not fit in 2 bits")
    err = abs(error)
    if err > CLF_HSM_MAXERROR:
        err = CLF_HSM_ERROVERFLOW
    return (err << CLF_HSM_ERR_L) | (int(event) << CLF_HSM_EVENT_L) | (flags << CLF_HSM_FLAG_L)


def clf_hsm_unpack(clf_flags: int) -> tuple[HE, int, int]:
    """(event, error, flags) of a CL_HSM record's flags (hsm_get_cl_event,
    hsm_get_cl_error, hsm_get_cl_flags); an error of
    ``CLF_HSM_ERROVERFLOW`` means "larger than 126"."""
    return (
        HE(_clf_get_bits(clf_flags, CLF_HSM_EVENT_H, CLF_HSM_EVENT_L)),
        _clf_get_bits(clf_flags, CLF_HSM_ERR_H, CLF_HSM_ERR_L),
        _clf_get_bits(clf_flags, CLF_HSM_FLAG_H, CLF_HSM_FLAG_L),
    )


_COMPLETION_EVENTS = {HSMA.ARCHIVE: HE.ARCHIVE, HSMA.RESTORE: HE.RESTORE, HSMA.REMOVE: HE.REMOVE,
                      HSMA.CANCEL: HE.CANCEL}


def completion_errno(errval: int) -> int:
    """The errno the MDT records for a copytool's end: ``abs(errval)``
    (llapi_hsm_action_end), and ENOSYS ("this copytool cannot do it") is
    turned into ECANCELED (mdt_coordinator.c: hsm_cdt_request_completed)."""
    err = abs(errval)
    return _errno.ECANCELED if err == _errno.ENOSYS else err


def archive_failure_dirties(flags: int, errval: int) -> bool:
    """Does a failed archive (non-zero *errval*) mark the file DIRTY "for
    safety"? Only an ARCHIVED, not yet DIRTY file, and not when the copytool
    answered EALREADY (hsm_cdt_request_completed)."""
    return (errval != 0 and completion_errno(errval) != _errno.EALREADY
            and flags & (HS.ARCHIVED | HS.DIRTY) == HS.ARCHIVED)


def completion_changelog_flags(kind: int, errval: int, dirty_after: bool) -> int:
    """The flags of the CL_HSM record the MDT writes when a copytool ends an
    action of *kind* (``HSMA``) with *errval* (hsm_cdt_request_completed):
    the event, the errno (``completion_errno``) and CLF_HSM_DIRTY when the
    file is DIRTY afterwards."""
    return clf_hsm_pack(_COMPLETION_EVENTS[HSMA(kind)], completion_errno(errval),
                        CLF_HSM_DIRTY if dirty_after else 0)


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
