"""hsm.hsmflags against Lustre: lfs output byte for byte, and the in-kernel
needed/allowed rules of reference/lustre-hsm.md for every flag combination.

The expected values here are built independently of the code under test:
the printf formats and branch order are those of lustre/utils/lfs.c
(lfs_hsm_state, lfs_hsm_action) and the names those of lustre_user.h
(hsm_user_action2name, hsm_progress_state2name); the rules are transcribed
from the reference table.
"""
# The expected strings use C's printf formats on purpose (%-style).
# ruff: noqa: UP031

from __future__ import annotations

import errno
import itertools
import struct

import pytest

from hsm.hsmflags import (
    HPS,
    HS,
    HS_USER_MASK,
    HSMA,
    archive_allowed,
    archive_needed,
    check_request,
    format_hsm_action,
    format_hsm_state,
    release_allowed,
    remove_allowed,
    remove_needed,
    resolve_archive_id,
    restore_allowed,
    restore_needed,
)

# enum hsm_states, as numbers (lustre_user.h).
HS_EXISTS, HS_DIRTY, HS_RELEASED, HS_ARCHIVED = 0x1, 0x2, 0x4, 0x8
HS_NORELEASE, HS_NOARCHIVE, HS_LOST = 0x10, 0x20, 0x40
ALL_FLAGS = range(128)
U64 = (1 << 64) - 1
LUSTRE_EOF = U64


def test_flag_values_match_lustre() -> None:
    assert (HS.EXISTS, HS.DIRTY, HS.RELEASED, HS.ARCHIVED) == (1, 2, 4, 8)
    assert (HS.NORELEASE, HS.NOARCHIVE, HS.LOST) == (0x10, 0x20, 0x40)
    assert HS_USER_MASK == HS_NORELEASE | HS_NOARCHIVE | HS_DIRTY
    assert (HSMA.NONE, HSMA.ARCHIVE, HSMA.RESTORE, HSMA.REMOVE, HSMA.CANCEL) == (10, 20, 21, 22, 23)
    assert (HPS.WAITING, HPS.RUNNING, HPS.DONE) == (1, 2, 3)


# ------------------------------------------------------------ lfs hsm_state


def lfs_hsm_state(path: str, states: int, archive_id: int) -> str:
    """lfs.c lfs_hsm_state(), one printf at a time (C formats, %-style)."""
    out = "%s: (0x%08x)" % (path, states)
    if states & HS_RELEASED:
        out += " released"
    if states & HS_EXISTS:
        out += " exists"
    if states & HS_DIRTY:
        out += " dirty"
    if states & HS_ARCHIVED:
        out += " archived"
    if states & HS_NORELEASE:
        out += " never_release"
    if states & HS_NOARCHIVE:
        out += " never_archive"
    if states & HS_LOST:
        out += " lost_from_hsm"
    if archive_id != 0:
        # hus_archive_id is a __u32 printed with %d.
        out += ", archive_id:%d" % struct.unpack("<i", struct.pack("<I", archive_id))[0]
    return out


@pytest.mark.parametrize("archive_id", [0, 1, 2, 7, 255, 2**31 - 1, 2**31, 2**32 - 1])
def test_format_hsm_state_every_flag_combination(archive_id: int) -> None:
    for flags in ALL_FLAGS:
        path = "/mnt/lustre/dir/f"
        assert format_hsm_state(path, flags, archive_id) == lfs_hsm_state(path, flags, archive_id)


def test_format_hsm_state_examples() -> None:
    assert (format_hsm_state("/mnt/lustre/f", 0xD, 1)
            == "/mnt/lustre/f: (0x0000000d) released exists archived, archive_id:1")
    assert format_hsm_state("f", 0, 0) == "f: (0x00000000)"
    assert (format_hsm_state("f", 0x7F, 3) == "f: (0x0000007f) released exists dirty archived "
            "never_release never_archive lost_from_hsm, archive_id:3")
    assert format_hsm_state("f", 0x1, 2**32 - 1) == "f: (0x00000001) exists, archive_id:-1"
    # Unknown bits still show in the number, with no word.
    assert format_hsm_state("f", 0x80 | 0x1, 1) == "f: (0x00000081) exists, archive_id:1"


@pytest.mark.parametrize("flags,archive_id", [(-1, 0), (2**32, 0), (0, -1), (0, 2**32)])
def test_format_hsm_state_rejects_out_of_range(flags: int, archive_id: int) -> None:
    with pytest.raises(ValueError):
        format_hsm_state("f", flags, archive_id)


# ----------------------------------------------------------- lfs hsm_action

HUA_NAMES = {HSMA.ARCHIVE: "ARCHIVE", HSMA.RESTORE: "RESTORE", HSMA.REMOVE: "REMOVE",
             HSMA.CANCEL: "CANCEL"}  # mdt_hsm_action: HSMA_x -> HUA_x, then hsm_user_action2name
HPS_NAMES = {1: "waiting", 2: "running", 3: "done"}


def lfs_hsm_action(path: str, kind: HSMA, hps: int, offset: int, length: int) -> str:
    """lfs.c lfs_hsm_action() for an action other than HUA_NONE; *length*
    is he.length as the MDT reports it (bytes moved while running)."""
    out = "%s: %s" % (path, HUA_NAMES[kind])
    out += " %s " % HPS_NAMES.get(hps, "unknown")
    off, ln = offset & U64, length & U64
    if hps == 2 and kind in (HSMA.ARCHIVE, HSMA.RESTORE):
        out += "(%d bytes moved)" % ln
    elif (off + ln) & U64 == LUSTRE_EOF:
        out += "(from %d to EOF)" % off
    else:
        out += "(from %d to %d)" % (off, (off + ln) & U64)
    return out


EXTENTS = [(0, -1), (0, U64), (0, 0), (0, 4096), (1 << 20, 1 << 20), (100, -1), (U64, 0), (5, U64 - 5)]


@pytest.mark.parametrize("kind", list(HUA_NAMES))
@pytest.mark.parametrize("state", ["waiting", "running", "done"])
def test_format_hsm_action_matches_lfs(kind: HSMA, state: str) -> None:
    hps = {"waiting": 1, "running": 2, "done": 3}[state]
    for offset, length in EXTENTS:
        moved = 123456
        # A running copy reports its bytes moved in he.length.
        he_length = moved if hps == 2 and kind in (HSMA.ARCHIVE, HSMA.RESTORE) else length
        expected = lfs_hsm_action("/mnt/lustre/f", kind, hps, offset, he_length)
        assert format_hsm_action("/mnt/lustre/f", kind, state, offset, length, moved) == expected
        assert format_hsm_action("/mnt/lustre/f", kind, hps, offset, length, moved) == expected


def test_format_hsm_action_examples() -> None:
    assert format_hsm_action("f", None) == "f: NOOP"
    assert format_hsm_action("f", HSMA.NONE, "running") == "f: NOOP"
    assert format_hsm_action("f", HSMA.RESTORE, "waiting", 0, -1) == "f: RESTORE waiting (from 0 to EOF)"
    assert (format_hsm_action("f", HSMA.ARCHIVE, "running", 0, -1, 1048576)
            == "f: ARCHIVE running (1048576 bytes moved)")
    # Only ARCHIVE and RESTORE print bytes moved; a running REMOVE prints its extent.
    assert format_hsm_action("f", HSMA.REMOVE, "running", 0, -1, 99) == "f: REMOVE running (from 0 to EOF)"
    assert format_hsm_action("f", HSMA.CANCEL, "running", 0, 10, 99) == "f: CANCEL running (from 0 to 10)"
    # u64 arithmetic as in lfs.c: offset + (2^64 - 1) wraps.
    assert format_hsm_action("f", HSMA.ARCHIVE, "waiting", 100, -1) == "f: ARCHIVE waiting (from 100 to 99)"
    assert format_hsm_action("f", HSMA.ARCHIVE, "done", 4096, 8192) == "f: ARCHIVE done (from 4096 to 12288)"


def test_format_hsm_action_unknown_state_and_bad_input() -> None:
    # hsm_progress_state2name() prints "unknown" for any other value.
    assert format_hsm_action("f", HSMA.ARCHIVE, 0, 0, -1) == "f: ARCHIVE unknown (from 0 to EOF)"
    assert format_hsm_action("f", HSMA.ARCHIVE, 9, 0, 5) == "f: ARCHIVE unknown (from 0 to 5)"
    assert format_hsm_action("f", HSMA.RESTORE, "", 0, -1) == "f: RESTORE unknown (from 0 to EOF)"
    with pytest.raises(ValueError, match="progress state"):
        format_hsm_action("f", HSMA.ARCHIVE, "Running")
    with pytest.raises(ValueError, match="copytool action"):
        format_hsm_action("f", 11, "waiting")


# ------------------------------------------------ needed / allowed (table)
# Transcribed from reference/lustre-hsm.md "When an action is needed / allowed".


def ref_archive(flags: int, file_aid: int, req_aid: int) -> tuple[bool, bool]:
    needed = bool(flags & HS_DIRTY) or not flags & HS_ARCHIVED
    allowed = not flags & HS_NOARCHIVE and (
        not flags & HS_EXISTS or req_aid == 0 or req_aid == file_aid)
    return needed, allowed


def ref_restore(flags: int) -> tuple[bool, bool]:
    needed = bool(flags & (HS_RELEASED | HS_DIRTY))
    allowed = (bool(flags & HS_RELEASED) and bool(flags & HS_ARCHIVED)
               and not flags & HS_DIRTY and not flags & HS_LOST)
    return needed, allowed


def ref_remove(flags: int) -> tuple[bool, bool]:
    return bool(flags & (HS_ARCHIVED | HS_EXISTS)), not flags & HS_RELEASED


def ref_outcome(needed: bool, allowed: bool) -> int | None:
    """Not needed: skipped (0, success). Not allowed: EPERM. Else queue (None)."""
    if not needed:
        return 0
    if not allowed:
        return errno.EPERM
    return None


AIDS = [0, 1, 2]


def test_archive_rules_every_combination() -> None:
    for flags, file_aid, req_aid in itertools.product(ALL_FLAGS, AIDS, AIDS):
        needed, allowed = ref_archive(flags, file_aid, req_aid)
        assert archive_needed(flags) == needed, hex(flags)
        assert archive_allowed(flags, file_aid, req_aid) == allowed, (hex(flags), file_aid, req_aid)
        assert check_request(HSMA.ARCHIVE, flags, file_aid, req_aid) == ref_outcome(needed, allowed)


def test_restore_and_remove_rules_every_combination() -> None:
    for flags, file_aid, req_aid in itertools.product(ALL_FLAGS, AIDS, AIDS):
        needed, allowed = ref_restore(flags)
        assert (restore_needed(flags), restore_allowed(flags)) == (needed, allowed), hex(flags)
        assert check_request(HSMA.RESTORE, flags, file_aid, req_aid) == ref_outcome(needed, allowed)
        needed, allowed = ref_remove(flags)
        assert (remove_needed(flags), remove_allowed(flags)) == (needed, allowed), hex(flags)
        assert check_request(HSMA.REMOVE, flags, file_aid, req_aid) == ref_outcome(needed, allowed)


def test_release_rule_every_combination() -> None:
    for flags in ALL_FLAGS:
        ok = (bool(flags & HS_ARCHIVED) and not flags & HS_DIRTY
              and not flags & HS_NORELEASE and not flags & HS_LOST)
        assert release_allowed(flags, 7, 7) == ok, hex(flags)
        assert release_allowed(flags, 8, 7) is False


def test_rule_examples() -> None:
    # A fresh file: archive queued; restore and remove not needed.
    assert check_request(HSMA.ARCHIVE, 0, 0, 0) is None
    assert check_request(HSMA.RESTORE, 0, 0, 0) == 0
    assert check_request(HSMA.REMOVE, 0, 0, 0) == 0
    # Archived in archive 1: archiving to 2 is refused, to 0 or 1 not needed.
    assert check_request(HSMA.ARCHIVE, HS_EXISTS | HS_ARCHIVED | HS_DIRTY, 1, 2) == errno.EPERM
    assert check_request(HSMA.ARCHIVE, HS_EXISTS | HS_ARCHIVED, 1, 2) == 0
    # Released and lost: restore refused.
    assert check_request(HSMA.RESTORE, HS_EXISTS | HS_ARCHIVED | HS_RELEASED | HS_LOST, 1, 0) == errno.EPERM
    # Released: remove refused.
    assert check_request(HSMA.REMOVE, HS_EXISTS | HS_ARCHIVED | HS_RELEASED, 1, 0) == errno.EPERM
    with pytest.raises(ValueError):
        check_request(HSMA.CANCEL, 0, 0, 0)


def test_resolve_archive_id() -> None:
    assert resolve_archive_id(3, 2) == 3
    assert resolve_archive_id(0, 2) == 2
    assert resolve_archive_id(0, 0) == 1
    assert resolve_archive_id(0, 0, default=5) == 5
