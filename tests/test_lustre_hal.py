"""The action list codec against byte vectors built from the Lustre header
layout (``include/uapi/linux/lustre/lustre_user.h``,
``lustre_kernelcomm.h``) with ``struct.pack_into`` at the documented offsets,
never with the codec's own encoder; bad lists are reported with their bytes
in hex and the good items kept; nothing raises on any input."""

from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsm.fid import Fid
from hsm.hsmflags import HSMA, HUA, LUSTRE_EOF
from hsm.lustre import hal
from hsm.lustre.hal import (
    ActionItem,
    ActionList,
    CurrentAction,
    HalErrorKind,
    KucError,
    Progress,
    UserItem,
    UserRequest,
    UserState,
)

EOF = 2**64 - 1
F1 = (0x200000400, 0x1, 0x0)
F2 = (0x200000401, 0x2A, 0x0)
F3 = (0x2000013A1, 0xFFFFFFFF, 0x7)


# ------------------------------------------------- layout-built vectors
# These helpers write each field at the offset the header gives it; they
# share nothing with hsm.lustre.hal.


def layout_fid(buf: bytearray, at: int, fid: tuple[int, int, int]) -> None:
    """struct lu_fid (lustre_user.h, packed): f_seq u64 @0, f_oid u32 @8, f_ver u32 @12."""
    struct.pack_into("<Q", buf, at + 0, fid[0])
    struct.pack_into("<I", buf, at + 8, fid[1])
    struct.pack_into("<I", buf, at + 12, fid[2])


def layout_hai(
    action: int,
    fid: tuple[int, int, int],
    dfid: tuple[int, int, int],
    offset: int,
    length: int,
    cookie: int,
    gid: int = 0,
    data: bytes = b"",
) -> bytes:
    """struct hsm_action_item (lustre_user.h, packed): hai_len u32 @0,
    hai_action u32 @4, hai_fid @8, hai_dfid @24, hai_extent @40 (offset u64
    @40, length u64 @48), hai_cookie u64 @56, hai_gid u64 @64, hai_data @72;
    hai_len = 72 + data length, and hai_next() steps __ALIGN_KERNEL(hai_len, 8)
    (zero padding)."""
    hai_len = 72 + len(data)
    buf = bytearray((hai_len + 7) & ~7)
    struct.pack_into("<I", buf, 0, hai_len)
    struct.pack_into("<I", buf, 4, action)
    layout_fid(buf, 8, fid)
    layout_fid(buf, 24, dfid)
    struct.pack_into("<Q", buf, 40, offset)
    struct.pack_into("<Q", buf, 48, length)
    struct.pack_into("<Q", buf, 56, cookie)
    struct.pack_into("<Q", buf, 64, gid)
    buf[72 : 72 + len(data)] = data
    return bytes(buf)


def layout_hal(
    fsname: bytes,
    items: list[bytes],
    *,
    version: int = 1,
    count: int | None = None,
    compound_id: int = 0,
    flags: int = 0,
    archive_id: int = 1,
) -> bytes:
    """struct hsm_action_list (lustre_user.h, packed): hal_version u32 @0,
    hal_count u32 @4, hal_compound_id u64 @8, hal_flags u64 @16,
    hal_archive_id u32 @24, padding1 u32 @28, hal_fsname @32 NUL-terminated;
    hai_first() = hal_fsname + __ALIGN_KERNEL(strlen(hal_fsname) + 1, 8)."""
    fs_span = (len(fsname) + 1 + 7) & ~7
    head = bytearray(32 + fs_span)
    struct.pack_into("<I", head, 0, version)
    struct.pack_into("<I", head, 4, len(items) if count is None else count)
    struct.pack_into("<Q", head, 8, compound_id)
    struct.pack_into("<Q", head, 16, flags)
    struct.pack_into("<I", head, 24, archive_id)
    struct.pack_into("<I", head, 28, 0)
    head[32 : 32 + len(fsname)] = fsname
    return bytes(head) + b"".join(items)


def fid(t: tuple[int, int, int]) -> Fid:
    return Fid(*t)


def test_literal_vector_one_archive_item() -> None:
    """A list as the MDT sends it (mdt_hsm_agent_send, lustre_user.h
    hsm_action_list + hsm_action_item), written out byte by byte: fsname
    "lustre", archive 1, one ARCHIVE of [0x200000400:0x1:0x0] to EOF."""
    wire = bytes.fromhex(
        "01000000"  # hal_version 1
        "01000000"  # hal_count 1
        "0700000000000000"  # hal_compound_id 7
        "0000000000000000"  # hal_flags
        "01000000"  # hal_archive_id 1
        "00000000"  # padding1
        "6c75737472650000"  # "lustre\0" + 1 byte pad = ALIGN8(7)
        "48000000"  # hai_len 72
        "14000000"  # hai_action 20 (HSMA_ARCHIVE)
        "0004000002000000" "01000000" "00000000"  # hai_fid [0x200000400:0x1:0x0]
        "0004000002000000" "01000000" "00000000"  # hai_dfid
        "0000000000000000"  # hai_extent.offset 0
        "ffffffffffffffff"  # hai_extent.length EOF
        "efbeadde00000000"  # hai_cookie 0xdeadbeef
        "0000000000000000"  # hai_gid
    )
    assert len(wire) == 32 + 8 + 72
    item = ActionItem(HSMA.ARCHIVE, fid(F1), fid(F1), 0, EOF, 0xDEADBEEF)
    hal_ = ActionList("lustre", 1, (item,), compound_id=7)
    assert hal.build_hal(hal_) == wire
    parsed = hal.parse_hal(wire, fsnames=["lustre"])
    assert parsed.ok, parsed.errors
    assert parsed.items == [item]
    assert parsed.items[0].to_eof
    assert (parsed.version, parsed.count, parsed.compound_id, parsed.archive_id) == (1, 1, 7, 1)
    assert parsed.size == len(wire)
    assert parsed.action_list() == hal_


def test_vector_several_items_odd_data_lengths() -> None:
    """lustre_user.h hai_first()/hai_next()/hal_size(): six items with
    hai_data of 0, 1, 7, 8, 9 and 100 bytes, each padded to
    __ALIGN_KERNEL(hai_len, 8), every action kind, header fields set."""
    lens = [0, 1, 7, 8, 9, 100]
    actions = [HSMA.ARCHIVE, HSMA.RESTORE, HSMA.REMOVE, HSMA.CANCEL, HSMA.ARCHIVE, HSMA.RESTORE]
    specs = []
    for k, (n, act) in enumerate(zip(lens, actions, strict=True)):
        data = bytes((k * 31 + j) & 0xFF or 1 for j in range(n))
        length = EOF if k % 2 == 0 else 4096 * (k + 1)
        specs.append((act, F1 if k % 3 else F3, F2, 512 * k, length, 0x1000 + k, k, data))
    wire = layout_hal(
        b"lustre",
        [layout_hai(*s) for s in specs],
        compound_id=0x1122334455667788,
        flags=0x5,
        archive_id=0xFFFFFFFF,
    )
    # where the items start, from the header layout: hai_first = 32 + 8;
    # each next = previous + ALIGN8(72 + datalen)
    assert [40, 112, 192, 272, 352, 440] == [
        40 + sum((72 + m + 7) & ~7 for m in lens[:k]) for k in range(6)
    ]
    assert len(wire) == 440 + 176 == 616
    for at, n in zip([40, 112, 192, 272, 352, 440], lens, strict=True):
        assert struct.unpack_from("<I", wire, at)[0] == 72 + n
    items = tuple(
        ActionItem(a, fid(f), fid(d), o, ln, c, g, dt) for (a, f, d, o, ln, c, g, dt) in specs
    )
    hal_ = ActionList(
        "lustre", 0xFFFFFFFF, items, flags=0x5, compound_id=0x1122334455667788
    )
    assert hal.build_hal(hal_) == wire
    assert hal.hal_size(hal_) == len(wire)
    parsed = hal.parse_hal(wire)
    assert parsed.ok, parsed.errors
    assert parsed.items == list(items)
    assert [len(i.data) for i in parsed.items] == lens
    assert parsed.action_list() == hal_
    assert parsed.items[0].to_eof and not parsed.items[1].to_eof


@pytest.mark.parametrize(
    "fsname, first",
    [(b"x", 40), (b"fs12345", 40), (b"lustre01", 48), (b"", 40)],
)
def test_vector_fsname_alignment(fsname: bytes, first: int) -> None:
    """lustre_user.h hai_first(): the first item is at hal_fsname +
    __ALIGN_KERNEL(strlen + 1, 8): 1 and 7 chars -> 8 bytes, 8 chars -> 16."""
    item = (HSMA.RESTORE, F2, F2, 0, EOF, 42, 0, b"abc")
    wire = layout_hal(fsname, [layout_hai(*item)])
    assert struct.unpack_from("<I", wire, first)[0] == 75
    assert wire[32 + len(fsname)] == 0
    it = ActionItem(HSMA.RESTORE, fid(F2), fid(F2), 0, EOF, 42, 0, b"abc")
    assert hal.build_hal(ActionList(fsname.decode(), 1, (it,))) == wire
    parsed = hal.parse_hal(wire, fsnames=[fsname.decode()])
    assert parsed.ok, parsed.errors
    assert parsed.fsname == fsname.decode()
    assert parsed.items[0].data == b"abc"


@pytest.mark.parametrize("action", [HSMA.ARCHIVE, HSMA.RESTORE, HSMA.REMOVE, HSMA.CANCEL])
def test_vector_every_action_kind(action: HSMA) -> None:
    """lustre_user.h enum hsm_copytool_action: HSMA_ARCHIVE=20, RESTORE=21,
    REMOVE=22, CANCEL=23 in hai_action (u32 @4 of hsm_action_item)."""
    wire = layout_hal(b"fs1", [layout_hai(action, F3, F1, 0, EOF, 0xC00C1E, 9, b"\x00\xff")], archive_id=3)
    assert struct.unpack_from("<I", wire, 40 + 4)[0] == int(action)
    item = ActionItem(action, fid(F3), fid(F1), 0, EOF, 0xC00C1E, 9, b"\x00\xff")
    assert hal.build_hal(ActionList("fs1", 3, (item,))) == wire
    assert hal.parse_hal(wire).items == [item]


def test_vector_single_item_codec() -> None:
    """lustre_user.h struct hsm_action_item alone (llapi_hsm_action_begin's
    argument): hai_len bytes, the data after the 72-byte head, no padding."""
    spec = (HSMA.RESTORE, F1, F2, 4096, 8192, 77, 3, b"1234567")
    wire = layout_hai(*spec)[:79]
    item = ActionItem(spec[0], fid(F1), fid(F2), 4096, 8192, 77, 3, b"1234567")
    assert hal.pack_action_item(item) == wire
    assert hal.pack_action_item(item, pad=True) == wire + b"\0"
    assert hal.parse_action_item(wire) == item
    assert hal.parse_action_item(wire + b"\0") == item
    with pytest.raises(ValueError, match="runs past"):
        hal.parse_action_item(wire[:75])
    with pytest.raises(ValueError, match="72 bytes"):
        hal.parse_action_item(wire[:71])


def test_build_refuses_out_of_range_fields() -> None:
    """build_hal raises ValueError (never writes a truncated field)."""
    bad = ActionItem(HSMA.ARCHIVE, fid(F1), fid(F1), -1, EOF, 1)
    with pytest.raises(ValueError, match="out of range"):
        hal.build_hal(ActionList("lustre", 1, (bad,)))
    with pytest.raises(ValueError, match="NUL"):
        hal.build_hal(ActionList("lus\0tre", 1, ()))
    with pytest.raises(ValueError, match="out of range"):
        hal.build_hal(ActionList("lustre", 2**32, ()))


# --------------------------------------------------------------- bad input

GOOD = [
    (HSMA.ARCHIVE, F1, F1, 0, EOF, 0xA1, 0, b""),
    (HSMA.RESTORE, F2, F2, 0, EOF, 0xA2, 0, b"restore-data"),
    (HSMA.REMOVE, F3, F3, 0, EOF, 0xA3, 0, b"x"),
]


def good_items() -> list[ActionItem]:
    return [ActionItem(a, fid(f), fid(d), o, ln, c, g, dt) for (a, f, d, o, ln, c, g, dt) in GOOD]


def good_wire(**kw: int) -> tuple[bytes, list[int]]:
    """The three GOOD items in a list, and where each item starts."""
    hais = [layout_hai(*s) for s in GOOD]
    wire = layout_hal(b"lustre", hais, **kw)
    starts = [40]
    for h in hais[:-1]:
        starts.append(starts[-1] + len(h))
    return wire, starts


def test_wrong_hal_version() -> None:
    """HAL_VERSION (lustre_user.h) is 1; llapi_hsm_copytool_recv does not
    check it, the reader must: no item of an unknown layout is returned."""
    wire, _ = good_wire(version=2)
    p = hal.parse_hal(wire)
    assert p.items == []
    [e] = p.errors
    assert e.kind is HalErrorKind.BAD_VERSION
    assert "hal_version 2" in e.message
    assert e.hex == wire[:32].hex() and e.hex in str(e)


@pytest.mark.parametrize("n", [0, 1, 20, 31, 32])
def test_truncated_header(n: int) -> None:
    """struct hsm_action_list is 32 bytes, plus at least the fsname's NUL."""
    wire, _ = good_wire()
    p = hal.parse_hal(wire[:n])
    assert p.items == []
    assert p.errors[0].kind is HalErrorKind.TRUNCATED_HEADER
    assert p.errors[0].hex == wire[:n].hex()


def test_fsname_without_nul() -> None:
    """hal_fsname is NUL-terminated (lustre_user.h); without the NUL there is
    no hai_first()."""
    wire = layout_hal(b"", [], count=1)[:32] + b"lustre"
    p = hal.parse_hal(wire)
    assert p.items == []
    [e] = p.errors
    assert e.kind is HalErrorKind.FSNAME_UNTERMINATED
    assert e.hex == b"lustre".hex() and e.offset == 32


def test_count_larger_than_items() -> None:
    """hal_count (u32 @4) says 5 items, 3 are present: the 3 are returned."""
    wire, _ = good_wire(count=5)
    p = hal.parse_hal(wire)
    assert p.items == good_items()
    [e] = p.errors
    assert e.kind is HalErrorKind.COUNT_MISMATCH
    assert "hal_count 5" in e.message and "only 3" in e.message
    assert e.hex == wire[:32].hex()


def test_count_smaller_than_items_reports_trailing_bytes() -> None:
    """hal_size() walks hal_count items: bytes after them are reported."""
    wire, _ = good_wire(count=2)
    p = hal.parse_hal(wire)
    assert p.items == good_items()[:2]
    [e] = p.errors
    assert e.kind is HalErrorKind.TRAILING_BYTES
    assert e.hex == wire[p.size :].hex()


@pytest.mark.parametrize("bad_len", [0, 1, 40, 71])
def test_item_hai_len_too_small(bad_len: int) -> None:
    """hai_len (u32 @0 of hsm_action_item) below sizeof(struct
    hsm_action_item) = 72: the walk stops, the item before is kept."""
    wire, starts = good_wire()
    b = bytearray(wire)
    struct.pack_into("<I", b, starts[1], bad_len)
    p = hal.parse_hal(bytes(b))
    assert p.items == good_items()[:1]
    [e] = p.errors
    assert e.kind is HalErrorKind.ITEM_TOO_SHORT
    assert e.index == 1 and e.offset == starts[1]
    assert e.hex == bytes(b[starts[1] : starts[1] + 72]).hex()
    assert f"hai_len {bad_len}" in str(e)


def test_item_hai_len_past_end() -> None:
    """hai_next() of the last item runs past the received bytes: the items
    before it are kept."""
    wire, starts = good_wire()
    b = bytearray(wire)
    struct.pack_into("<I", b, starts[2], 4096)
    p = hal.parse_hal(bytes(b))
    assert p.items == good_items()[:2]
    [e] = p.errors
    assert e.kind is HalErrorKind.ITEM_OVERRUN
    assert e.index == 2 and e.hex == bytes(b[starts[2] :]).hex()


def test_truncated_list_keeps_whole_items() -> None:
    """A list cut in the middle of its last item (a short read)."""
    wire, starts = good_wire()
    p = hal.parse_hal(wire[: starts[2] + 50])
    assert p.items == good_items()[:2]
    assert [e.kind for e in p.errors] == [HalErrorKind.ITEM_OVERRUN]
    p = hal.parse_hal(wire[: starts[2]])
    assert p.items == good_items()[:2]
    assert [e.kind for e in p.errors] == [HalErrorKind.COUNT_MISMATCH]


@pytest.mark.parametrize("action", [0, int(HSMA.NONE), 24, 99, 2**32 - 1])
def test_unknown_action_skips_only_that_item(action: int) -> None:
    """enum hsm_copytool_action has ARCHIVE, RESTORE, REMOVE, CANCEL for
    lists (HSMA_NONE is never sent): another hai_action skips that item, its
    hai_len still leads to the next."""
    wire, starts = good_wire()
    b = bytearray(wire)
    struct.pack_into("<I", b, starts[1] + 4, action)
    p = hal.parse_hal(bytes(b))
    assert p.items == [good_items()[0], good_items()[2]]
    [e] = p.errors
    assert e.kind is HalErrorKind.UNKNOWN_ACTION
    assert e.index == 1
    assert e.hex == bytes(b[starts[1] : starts[1] + 72 + 12]).hex()
    assert f"hai_action {action}" in e.message and "cookie 0xa2" in e.message


def test_unconfigured_fsname_is_reported_items_kept() -> None:
    """hal_fsname not one of the configured file systems: reported with its
    bytes, the items are still read (the caller decides)."""
    wire, _ = good_wire()
    p = hal.parse_hal(wire, fsnames={"scratch", "home"})
    assert p.items == good_items()
    [e] = p.errors
    assert e.kind is HalErrorKind.FSNAME_UNKNOWN
    assert e.hex == (b"lustre\0\0").hex()
    assert "home, scratch" in e.message
    assert not p.fsname_known and not p.ok


def test_several_errors_in_one_list() -> None:
    """An unknown fsname, an unknown action and a hai_len past the end in
    one list: three errors, the one good item kept."""
    wire, starts = good_wire()
    b = bytearray(wire)
    struct.pack_into("<I", b, starts[0] + 4, 7)
    struct.pack_into("<I", b, starts[2], 10_000)
    p = hal.parse_hal(bytes(b), fsnames=[])
    assert [e.kind for e in p.errors] == [
        HalErrorKind.FSNAME_UNKNOWN,
        HalErrorKind.UNKNOWN_ACTION,
        HalErrorKind.ITEM_OVERRUN,
    ]
    assert p.items == [good_items()[1]]


def test_hex_is_bounded() -> None:
    """An item of 1072 bytes shows its first HEX_LIMIT bytes in hex."""
    hai = layout_hai(99, F1, F1, 0, EOF, 1, 0, bytes(range(256)) * 4)
    wire = layout_hal(b"lustre", [hai])
    [e] = hal.parse_hal(wire).errors
    assert e.size == 72 + 1024
    assert e.hex == hai[: hal.HEX_LIMIT].hex()
    assert str(e).endswith(f"... ({e.size} bytes))")


# ------------------------------------------------------- never raises

fids = st.builds(
    Fid,
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
)
items_st = st.builds(
    ActionItem,
    st.sampled_from([HSMA.ARCHIVE, HSMA.RESTORE, HSMA.REMOVE, HSMA.CANCEL]),
    fids,
    fids,
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.binary(max_size=40),
)
lists_st = st.builds(
    ActionList,
    st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=10),
    st.integers(0, 2**32 - 1),
    st.lists(items_st, max_size=5).map(tuple),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
)


@settings(deadline=None)
@given(lists_st)
def test_roundtrip(hal_: ActionList) -> None:
    wire = hal.build_hal(hal_)
    assert len(wire) == hal.hal_size(hal_) and len(wire) % 8 == 0
    p = hal.parse_hal(wire, fsnames=[hal_.fsname])
    assert p.ok, p.errors
    assert p.action_list() == hal_
    assert p.size == len(wire)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=1500), st.none() | st.lists(st.text(max_size=8), max_size=3))
def test_arbitrary_bytes_never_raise(buf: bytes, fsnames: list[str] | None) -> None:
    p = hal.parse_hal(buf, fsnames=fsnames)
    assert len(p.items) <= p.count
    assert all(i.action in hal.LIST_ACTIONS for i in p.items)
    for e in p.errors:
        assert len(e.hex) <= 2 * hal.HEX_LIMIT
        str(e)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    wire = bytearray(hal.build_hal(draw(lists_st)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "u32", "cut", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(wire) - 1, 0)))
        if op == "flip" and wire:
            wire[pos] ^= draw(st.integers(1, 255))
        elif op == "u32":
            # a header or hai_len/hai_action-sized field overwritten
            v = draw(st.sampled_from([0, 1, 71, 72, 73, 2**31, 2**32 - 1]) | st.integers(0, 2**32 - 1))
            wire[pos : pos + 4] = struct.pack("<I", v)
        elif op == "cut":
            del wire[pos:]
        elif op == "insert":
            wire[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:
            del wire[pos : pos + draw(st.integers(1, 16))]
    return bytes(wire)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(), st.none() | st.just(["lustre"]))
def test_mutated_lists_never_raise(buf: bytes, fsnames: list[str] | None) -> None:
    p = hal.parse_hal(buf, fsnames=fsnames)
    assert len(p.items) <= p.count
    assert all(i.action in hal.LIST_ACTIONS for i in p.items)
    assert all(len(i.data) == i.hai_len - 72 for i in p.items)
    for e in p.errors:
        str(e)


def test_non_bytes_input_does_not_raise() -> None:
    p = hal.parse_hal("not bytes")  # type: ignore[arg-type]
    assert p.items == [] and p.errors


# ------------------------------------------------------------------- KUC


def layout_kuc(magic: int, transport: int, flags: int, msgtype: int, msglen: int) -> bytes:
    """struct kuc_hdr (lustre_kernelcomm.h): kuc_magic u16 @0, kuc_transport
    u8 @2, kuc_flags u8 @3, kuc_msgtype u16 @4, kuc_msglen u16 @6 (including
    the header)."""
    b = bytearray(8)
    struct.pack_into("<H", b, 0, magic)
    struct.pack_into("<B", b, 2, transport)
    struct.pack_into("<B", b, 3, flags)
    struct.pack_into("<H", b, 4, msgtype)
    struct.pack_into("<H", b, 6, msglen)
    return bytes(b)


def test_kuc_frame_vector() -> None:
    """lustre_kernelcomm.h: KUC_MAGIC 0x191C, KUC_TRANSPORT_HSM 2,
    HMT_ACTION_LIST 100 (lustre_user.h); msglen counts the 8-byte header."""
    wire, _ = good_wire()
    framed = hal.kuc_frame(wire)
    assert framed == layout_kuc(0x191C, 2, 0, 100, 8 + len(wire)) + wire
    hdr = hal.parse_kuc_header(framed)
    assert (hdr.magic, hdr.transport, hdr.flags, hdr.msgtype, hdr.msglen) == (0x191C, 2, 0, 100, 8 + len(wire))
    assert hdr.payload_len == len(wire)
    hal.check_hsm_message(hdr)
    shutdown = hal.kuc_frame(b"", transport=1, msgtype=1)
    assert shutdown == layout_kuc(0x191C, 1, 0, 1, 8)


def test_kuc_errors() -> None:
    """libcfs_ukuc_msg_get (liblustreapi_kernelconn.c): bad magic or msglen
    < 8 -> -EPROTO, msglen > buffer -> -EMSGSIZE; llapi_hsm_copytool_recv:
    generic SHUTDOWN -> -ESHUTDOWN, other type or msglen < 40 -> -EPROTO."""
    cases = [
        (layout_kuc(0x1C19, 2, 0, 100, 200), errno.EPROTO, "magic"),
        (layout_kuc(0x191C, 2, 0, 100, 7), errno.EPROTO, "msglen 7"),
        (b"\x1c\x19\x02", errno.EPROTO, "truncated"),
    ]
    for raw, code, msg in cases:
        with pytest.raises(KucError, match=msg) as ei:
            hal.parse_kuc_header(raw)
        assert ei.value.errno == code
    with pytest.raises(KucError) as ei:
        hal.parse_kuc_header(layout_kuc(0x191C, 2, 0, 100, 4000), max_size=4096 - 100)
    assert ei.value.errno == errno.EMSGSIZE
    hal.parse_kuc_header(layout_kuc(0x191C, 2, 0, 100, 0xFFFF))  # fits the 1 MiB buffer
    for raw, code in [
        (layout_kuc(0x191C, 1, 0, 1, 8), errno.ESHUTDOWN),
        (layout_kuc(0x191C, 2, 0, 101, 48), errno.EPROTO),
        (layout_kuc(0x191C, 3, 0, 100, 48), errno.EPROTO),
        (layout_kuc(0x191C, 2, 0, 100, 39), errno.EPROTO),
    ]:
        with pytest.raises(KucError) as ei:
            hal.check_hsm_message(hal.parse_kuc_header(raw))
        assert ei.value.errno == code
    with pytest.raises(ValueError, match="u16"):
        hal.kuc_frame(bytes(0xFFFF - 7))
    assert len(hal.kuc_frame(bytes(0xFFFF - 8))) == 0xFFFF


# ------------------------------------------------------------ user request


def test_user_request_vector() -> None:
    """lustre_user.h struct hsm_user_request (llapi_hsm_request): struct
    hsm_request @0 (hr_action u32 @0, hr_archive_id u32 @4, hr_flags u64 @8,
    hr_itemcount u32 @16, hr_data_len u32 @20), hsm_user_item[k] @24 + 32k
    (hui_fid @0, hui_extent @16), then hur_data(); hur_len() bytes."""
    data = b"tag=1"
    wire = bytearray(24 + 2 * 32 + len(data))
    struct.pack_into("<I", wire, 0, HUA.ARCHIVE)
    struct.pack_into("<I", wire, 4, 2)
    struct.pack_into("<Q", wire, 8, 0x1)
    struct.pack_into("<I", wire, 16, 2)
    struct.pack_into("<I", wire, 20, len(data))
    for k, (f, off, ln) in enumerate([(F1, 0, EOF), (F3, 4096, 8192)]):
        layout_fid(wire, 24 + 32 * k, f)
        struct.pack_into("<Q", wire, 24 + 32 * k + 16, off)
        struct.pack_into("<Q", wire, 24 + 32 * k + 24, ln)
    wire[88:] = data
    req = UserRequest(
        HUA.ARCHIVE, 2, 0x1, (UserItem(fid(F1)), UserItem(fid(F3), 4096, 8192)), data
    )
    assert hal.build_user_request(req) == bytes(wire)
    assert hal.parse_user_request(bytes(wire)) == req
    assert req.items[0].length == LUSTRE_EOF
    with pytest.raises(ValueError, match="needs 93 bytes"):
        hal.parse_user_request(bytes(wire[:-1]))
    with pytest.raises(ValueError, match="24 bytes"):
        hal.parse_user_request(bytes(wire[:10]))
    empty = UserRequest(HUA.CANCEL, 0, 0, ())
    assert hal.build_user_request(empty) == struct.pack("<IIQII", 14, 0, 0, 0, 0)


def test_small_structs_vectors() -> None:
    """lustre_user.h: hsm_extent {u64 offset @0; u64 length @8};
    hsm_user_state {u32 hus_states @0, hus_archive_id @4,
    hus_in_progress_state @8, hus_in_progress_action @12; hsm_extent @16};
    hsm_current_action {u32 hca_state @0, hca_action @4; hsm_extent @8};
    hsm_progress {lu_fid hp_fid @0; u64 hp_cookie @16; hsm_extent @24;
    u16 hp_flags @40; u16 hp_errval @42; u32 padding @44}."""
    assert hal.pack_extent(5, EOF) == struct.pack("<Q", 5) + b"\xff" * 8
    assert hal.unpack_extent(hal.pack_extent(5, EOF)) == (5, EOF)

    hus = bytearray(32)
    struct.pack_into("<IIII", hus, 0, 0xD, 1, 2, HUA.RESTORE)
    struct.pack_into("<QQ", hus, 16, 1 << 20, 4096)
    st_ = UserState(0xD, 1, 2, HUA.RESTORE, 1 << 20, 4096)
    assert hal.pack_user_state(st_) == bytes(hus)
    assert hal.unpack_user_state(bytes(hus)) == st_

    hca = bytearray(24)
    struct.pack_into("<II", hca, 0, 1, HUA.ARCHIVE)
    struct.pack_into("<QQ", hca, 8, 0, EOF)
    ca = CurrentAction(1, HUA.ARCHIVE, 0, EOF)
    assert hal.pack_current_action(ca) == bytes(hca)
    assert hal.unpack_current_action(bytes(hca)) == ca

    hp = bytearray(48)
    layout_fid(hp, 0, F2)
    struct.pack_into("<Q", hp, 16, 0xC0FFEE)
    struct.pack_into("<QQ", hp, 24, 0, 65536)
    struct.pack_into("<H", hp, 40, 0x3)
    struct.pack_into("<H", hp, 42, errno.ECANCELED)
    pr = Progress(fid(F2), 0xC0FFEE, 0, 65536, 0x3, errno.ECANCELED)
    assert hal.pack_progress(pr) == bytes(hp)
    assert hal.unpack_progress(bytes(hp)) == pr
