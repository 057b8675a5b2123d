"""A pure codec (no I/O) for the HSM structures the MDT, liblustreapi and
lfs exchange, byte for byte as ``include/uapi/linux/lustre/lustre_user.h``
and ``lustre_kernelcomm.h`` lay them out (little-endian, as on x86_64 and
aarch64; every struct here is either packed or naturally aligned, so the
offsets do not depend on the compiler):

- ``struct hsm_action_list`` (32-byte header, ``hal_fsname`` NUL-terminated
  and padded to ``ALIGN8(strlen + 1)``) followed by ``hal_count``
  ``struct hsm_action_item`` (72 bytes + ``hai_data``), each padded to
  ``ALIGN8(hai_len)``: ``build_hal`` / ``parse_hal``. ``parse_hal`` never
  raises: what is wrong is reported as ``HalError``s (with the offending
  bytes in hex) and the good items of the list are still returned wherever
  the walk can go on.
- the KUC header that frames a list on the copytool pipe
  (``kuc_frame`` / ``parse_kuc_header``, the checks of
  ``libcfs_ukuc_msg_get`` and ``llapi_hsm_copytool_recv``);
- ``struct hsm_user_request`` as ``llapi_hsm_request`` takes it;
- ``hsm_extent``, ``hsm_user_state``, ``hsm_current_action`` and
  ``hsm_progress``.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Collection
from dataclasses import dataclass, field
from enum import StrEnum

from hsm.fid import Fid
from hsm.hsmflags import HSMA, LUSTRE_EOF

__all__ = [
    "ActionItem",
    "ActionList",
    "CurrentAction",
    "HalError",
    "HalErrorKind",
    "KucError",
    "KucHeader",
    "ParsedList",
    "Progress",
    "UserItem",
    "UserRequest",
    "UserState",
    "align8",
    "build_hal",
    "build_user_request",
    "check_hsm_message",
    "hal_size",
    "kuc_frame",
    "pack_action_item",
    "pack_current_action",
    "pack_extent",
    "pack_progress",
    "pack_user_state",
    "parse_action_item",
    "parse_hal",
    "parse_kuc_header",
    "parse_user_request",
    "unpack_current_action",
    "unpack_extent",
    "unpack_progress",
    "unpack_user_state",
]

# ---------------------------------------------------------------- constants
# (lustre_user.h / lustre_kernelcomm.h; not in hsm.hsmflags)

#: ``HAL_VERSION``: the only ``hal_version`` there is. ``llapi_hsm_copytool_recv``
#: does not check it; the reader of the list must.
HAL_VERSION = 1
#: ``HAL_MAXSIZE`` (``LNET_MTU``): the user-space receive buffer for one list.
HAL_MAXSIZE = 1 << 20
#: ``sizeof(struct hsm_action_list)``: the header before ``hal_fsname``.
HAL_HEADER_SIZE = 32
#: ``sizeof(struct hsm_action_item)``: the fixed part before ``hai_data``.
HAI_SIZE = 72
#: ``LUSTRE_MAXFSNAME``: the longest file system name Lustre allows.
LUSTRE_MAXFSNAME = 8

#: ``KUC_MAGIC``, the first u16 of every kernel-to-user message.
KUC_MAGIC = 0x191C
#: ``sizeof(struct kuc_hdr)``; ``kuc_msglen`` counts it.
KUC_HEADER_SIZE = 8
KUC_TRANSPORT_GENERIC = 1
KUC_TRANSPORT_HSM = 2
#: Generic message type: the kernel is going away (recv returns ``-ESHUTDOWN``).
KUC_MSG_SHUTDOWN = 1
#: HSM message type: the payload is a ``struct hsm_action_list``.
HMT_ACTION_LIST = 100
#: The buffer ``llapi_hsm_copytool_recv`` reads into (``HAL_MAXSIZE + sizeof(kuc_hdr)``).
KUC_MAX_MSG = HAL_MAXSIZE + KUC_HEADER_SIZE
#: ``kuc_msglen`` is a u16.
KUC_MSGLEN_MAX = 0xFFFF

#: ``hr_flags``: ``HSM_GHOST_COPY`` (set by copytools, never by users).
HSM_GHOST_COPY = 0x2
#: ``HPS_NONE`` (``enum hsm_progress_states``; hsmflags.HPS starts at WAITING).
HPS_NONE = 0

#: The copytool actions the MDT sends in a list (``HSMA_NONE`` is never sent).
LIST_ACTIONS = frozenset({HSMA.ARCHIVE, HSMA.RESTORE, HSMA.REMOVE, HSMA.CANCEL})

#: At most this many offending bytes are shown (in hex) in a ``HalError``.
HEX_LIMIT = 256

_U16 = 0xFFFF
_U32 = 0xFFFFFFFF
_U64 = LUSTRE_EOF

# struct hsm_action_list: u32 hal_version, u32 hal_count, u64 hal_compound_id,
# u64 hal_flags, u32 hal_archive_id, u32 padding1 (then char hal_fsname[])
_HAL = struct.Struct("<IIQQII")
# struct hsm_action_item: u32 hai_len, u32 hai_action, lu_fid hai_fid,
# lu_fid hai_dfid, hsm_extent hai_extent, u64 hai_cookie, u64 hai_gid
_HAI = struct.Struct("<IIQIIQIIQQQQ")
# struct kuc_hdr: u16 kuc_magic, u8 kuc_transport, u8 kuc_flags,
# u16 kuc_msgtype, u16 kuc_msglen
_KUC = struct.Struct("<HBBHH")
# struct hsm_request: u32 hr_action, u32 hr_archive_id, u64 hr_flags,
# u32 hr_itemcount, u32 hr_data_len
_HR = struct.Struct("<IIQII")
# struct hsm_user_item: lu_fid hui_fid, hsm_extent hui_extent
_HUI = struct.Struct("<QIIQQ")
# struct hsm_extent: u64 offset, u64 length
_HE = struct.Struct("<QQ")
# struct hsm_user_state: u32 hus_states, u32 hus_archive_id,
# u32 hus_in_progress_state, u32 hus_in_progress_action,
# hsm_extent hus_in_progress_location
_HUS = struct.Struct("<IIIIQQ")
# struct hsm_current_action: u32 hca_state, u32 hca_action, hsm_extent hca_location
_HCA = struct.Struct("<IIQQ")
# struct hsm_progress: lu_fid hp_fid, u64 hp_cookie, hsm_extent hp_extent,
# u16 hp_flags, u16 hp_errval, u32 padding
_HP = struct.Struct("<QIIQQQHHI")

assert _HAL.size == HAL_HEADER_SIZE and _HAI.size == HAI_SIZE and _KUC.size == KUC_HEADER_SIZE
assert (_HR.size, _HUI.size, _HE.size, _HUS.size, _HCA.size, _HP.size) == (24, 32, 16, 32, 24, 48)


def align8(n: int) -> int:
    """``__ALIGN_KERNEL(n, 8)``."""
    return (n + 7) & ~7


def _hex(data: bytes) -> str:
    return data[:HEX_LIMIT].hex()


# ------------------------------------------------------------ action lists


@dataclass(frozen=True, slots=True)
class ActionItem:
    """One ``struct hsm_action_item``. *action* is an ``HSMA`` value;
    *length* ``2**64 - 1`` (``LUSTRE_EOF``) means to the end of the file;
    *data* is ``hai_data`` (``hai_len = 72 + len(data)``)."""

    action: int
    fid: Fid
    dfid: Fid
    offset: int
    length: int
    cookie: int
    gid: int = 0
    data: bytes = b""

    @property
    def hai_len(self) -> int:
        return HAI_SIZE + len(self.data)

    @property
    def to_eof(self) -> bool:
        return self.length == LUSTRE_EOF


@dataclass(frozen=True, slots=True)
class ActionList:
    """One ``struct hsm_action_list`` (``hal_count`` is ``len(items)``)."""

    fsname: str
    archive_id: int
    items: tuple[ActionItem, ...]
    flags: int = 0
    compound_id: int = 0
    version: int = HAL_VERSION


def pack_action_item(item: ActionItem, *, pad: bool = False) -> bytes:
    """The ``hai_len`` bytes of *item* as a ``struct hsm_action_item`` with its
    ``hai_data`` (what ``llapi_hsm_action_begin`` takes); with *pad*, zero
    padded to ``ALIGN8(hai_len)`` as in a list. Raises ``ValueError`` for a
    field out of range."""
    hai_len = item.hai_len
    if hai_len > _U32:
        raise ValueError(f"hai_data of {len(item.data)} bytes does not fit hai_len (u32)")
    try:
        head = _HAI.pack(
            hai_len,
            item.action,
            item.fid.seq, item.fid.oid, item.fid.ver,
            item.dfid.seq, item.dfid.oid, item.dfid.ver,
            item.offset,
            item.length,
            item.cookie,
            item.gid,
        )
    except struct.error as e:
        raise ValueError(f"action item field out of range ({e}): {item!r}") from None
    out = head + bytes(item.data)
    if pad:
        out += bytes(align8(hai_len) - hai_len)
    return out


def parse_action_item(buf: bytes) -> ActionItem:
    """One ``struct hsm_action_item`` alone (``hai_len`` bytes, padding
    allowed after). Strict: raises ``ValueError`` when *buf* is shorter than
    72 bytes or than ``hai_len``, or ``hai_len < 72``. The action is not
    checked (use ``parse_hal`` for the MDT's lists)."""
    buf = bytes(buf)
    if len(buf) < HAI_SIZE:
        raise ValueError(f"struct hsm_action_item is {HAI_SIZE} bytes, got {len(buf)}: {_hex(buf)}")
    item, hai_len = _unpack_item(buf, 0)
    if hai_len < HAI_SIZE:
        raise ValueError(f"hai_len {hai_len} < {HAI_SIZE}: {_hex(buf)}")
    if hai_len > len(buf):
        raise ValueError(f"hai_len {hai_len} runs past the {len(buf)} bytes given: {_hex(buf)}")
    return item


def _unpack_item(buf: bytes, pos: int) -> tuple[ActionItem, int]:
    """The item at *pos* (72 bytes must be there) and its ``hai_len``; the
    data is what of ``hai_len - 72`` bytes the buffer holds."""
    (hai_len, action, fseq, foid, fver, dseq, doid, dver,
     offset, length, cookie, gid) = _HAI.unpack_from(buf, pos)
    data = buf[pos + HAI_SIZE : pos + max(hai_len, HAI_SIZE)]
    item = ActionItem(
        action=action,
        fid=Fid(fseq, foid, fver),
        dfid=Fid(dseq, doid, dver),
        offset=offset,
        length=length,
        cookie=cookie,
        gid=gid,
        data=data,
    )
    return item, hai_len


def _fsname_bytes(fsname: str) -> bytes:
    try:
        raw = fsname.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ValueError(f"fsname {fsname!r} cannot be encoded") from None
    if b"\0" in raw:
        raise ValueError(f"fsname {fsname!r} contains a NUL byte")
    return raw


def hal_size(hal: ActionList) -> int:
    """``hal_size()``: ``32 + ALIGN8(strlen(fsname) + 1) + sum(ALIGN8(hai_len))``."""
    fs = _fsname_bytes(hal.fsname)
    return HAL_HEADER_SIZE + align8(len(fs) + 1) + sum(align8(i.hai_len) for i in hal.items)


def build_hal(hal: ActionList) -> bytes:
    """The bytes of *hal* exactly as the kernel lays a list out: the 32-byte
    header (``hal_count = len(items)``, ``padding1 = 0``), the fsname with its
    NUL padded with zeros to ``ALIGN8(strlen + 1)``, then each item padded
    with zeros to ``ALIGN8(hai_len)``. Raises ``ValueError`` for a field out
    of range or an fsname with a NUL."""
    fs = _fsname_bytes(hal.fsname)
    try:
        head = _HAL.pack(
            hal.version, len(hal.items), hal.compound_id, hal.flags, hal.archive_id, 0
        )
    except struct.error as e:
        raise ValueError(f"action list header field out of range ({e}): {hal!r}") from None
    parts = [head, fs, bytes(align8(len(fs) + 1) - len(fs))]
    parts.extend(pack_action_item(item, pad=True) for item in hal.items)
    return b"".join(parts)


class HalErrorKind(StrEnum):
    """What is wrong with a list (a stable name, for counters and logs)."""

    #: ``hal_version`` is not ``HAL_VERSION``: the items are not read.
    BAD_VERSION = "bad_version"
    #: fewer than the 32 header bytes (or 33 with the fsname's NUL).
    TRUNCATED_HEADER = "truncated_header"
    #: no NUL ends ``hal_fsname``: the items are not read.
    FSNAME_UNTERMINATED = "fsname_unterminated"
    #: the fsname is not one of the configured ones (the items are still read).
    FSNAME_UNKNOWN = "fsname_unknown"
    #: ``hal_count`` is larger than the items present.
    COUNT_MISMATCH = "count_mismatch"
    #: an item's ``hai_len`` is below 72: the walk stops there.
    ITEM_TOO_SHORT = "item_too_short"
    #: an item's ``hai_len`` runs past the end of the buffer: the walk stops there.
    ITEM_OVERRUN = "item_overrun"
    #: an item's ``hai_action`` is not ARCHIVE, RESTORE, REMOVE or CANCEL:
    #: that item is skipped, the walk goes on.
    UNKNOWN_ACTION = "unknown_action"
    #: an item the project cannot represent (e.g. a FID ``hsm.fid`` refuses):
    #: that item is skipped, the walk goes on.
    BAD_ITEM = "bad_item"
    #: non-zero bytes after the ``hal_count`` items (nothing is lost).
    TRAILING_BYTES = "trailing_bytes"


@dataclass(frozen=True, slots=True)
class HalError:
    """One thing wrong with a list: *offset* and *size* locate the offending
    bytes in the buffer, *hex* holds the first ``HEX_LIMIT`` of them; *index*
    is the item's position in the list for an item error."""

    kind: HalErrorKind
    message: str
    offset: int
    size: int
    hex: str
    index: int | None = None

    def __str__(self) -> str:
        where = f"item {self.index} at byte {self.offset}" if self.index is not None else f"byte {self.offset}"
        more = f"... ({self.size} bytes)" if self.size > HEX_LIMIT else ""
        return f"{self.kind}: {self.message} ({where}; bytes: {self.hex}{more})"


@dataclass(slots=True)
class ParsedList:
    """What ``parse_hal`` read: the header fields (zero when not readable),
    the good items and the errors. ``size`` is how many bytes the list spans
    as read (``hal_size`` for a whole list)."""

    version: int = 0
    count: int = 0
    compound_id: int = 0
    flags: int = 0
    archive_id: int = 0
    fsname: str = ""
    items: list[ActionItem] = field(default_factory=list)
    errors: list[HalError] = field(default_factory=list)
    size: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def fsname_known(self) -> bool:
        """False when the fsname was checked against the configured names and
        is not one of them."""
        return not any(e.kind is HalErrorKind.FSNAME_UNKNOWN for e in self.errors)

    def action_list(self) -> ActionList:
        """The good items as an ``ActionList`` (with the header's fields)."""
        return ActionList(
            fsname=self.fsname,
            archive_id=self.archive_id,
            items=tuple(self.items),
            flags=self.flags,
            compound_id=self.compound_id,
            version=self.version,
        )


def parse_hal(buf: bytes, *, fsnames: Collection[str] | None = None) -> ParsedList:
    """Read a ``struct hsm_action_list`` (the bytes ``llapi_hsm_copytool_recv``
    returns). Never raises: every problem is a ``HalError`` in ``.errors`` and
    the items that could be read whole are in ``.items``.

    - a truncated header, a wrong ``hal_version`` or an fsname without NUL
      stop the parse (no items: the layout cannot be trusted);
    - an fsname not in *fsnames* (when given) is reported, the items are
      still read (the caller decides what to do with them);
    - an unknown ``hai_action`` (or an item ``Fid`` refuses) skips that item
      only: its ``hai_len`` still leads to the next one;
    - a ``hai_len`` below 72 or running past the end stops the walk, the
      items before it are kept;
    - ``hal_count`` larger than the items present is reported, the items
      present are kept; non-zero bytes after the last item are reported.
    """
    out = ParsedList()
    try:
        data = bytes(buf)
    except Exception as e:  # a non-buffer argument
        out.errors.append(HalError(HalErrorKind.TRUNCATED_HEADER, f"not a byte buffer: {e}", 0, 0, ""))
        return out
    try:
        _parse_into(data, out, fsnames)
    except Exception as e:  # last resort: parse_hal never raises
        out.errors.append(
            HalError(HalErrorKind.BAD_ITEM, f"internal error reading the list: {e!r}", 0, len(data), _hex(data))
        )
    return out


def _parse_into(buf: bytes, out: ParsedList, fsnames: Collection[str] | None) -> None:
    n = len(buf)

    def err(kind: HalErrorKind, message: str, start: int, end: int, index: int | None = None) -> None:
        start = max(0, min(start, n))
        end = max(start, min(end, n))
        out.errors.append(HalError(kind, message, start, end - start, _hex(buf[start:end]), index))

    if n < HAL_HEADER_SIZE + 1:
        err(
            HalErrorKind.TRUNCATED_HEADER,
            f"{n} bytes, a list needs at least {HAL_HEADER_SIZE + 1} "
            f"(the {HAL_HEADER_SIZE}-byte header and the fsname's NUL)",
            0,
            n,
        )
        if n < HAL_HEADER_SIZE:
            out.size = n
            return
    version, count, compound_id, flags, archive_id, _pad = _HAL.unpack_from(buf, 0)
    out.version, out.count, out.compound_id, out.flags, out.archive_id = (
        version, count, compound_id, flags, archive_id
    )
    if version != HAL_VERSION:
        err(HalErrorKind.BAD_VERSION, f"hal_version {version}, expected {HAL_VERSION}", 0, HAL_HEADER_SIZE)
        out.size = n
        return
    nul = buf.find(b"\0", HAL_HEADER_SIZE)
    if nul < 0:
        if n > HAL_HEADER_SIZE:
            err(HalErrorKind.FSNAME_UNTERMINATED, "hal_fsname has no terminating NUL", HAL_HEADER_SIZE, n)
        out.size = n
        return
    raw_fsname = buf[HAL_HEADER_SIZE:nul]
    out.fsname = raw_fsname.decode("utf-8", "surrogateescape")
    pos = HAL_HEADER_SIZE + align8(len(raw_fsname) + 1)
    if fsnames is not None and out.fsname not in fsnames:
        err(
            HalErrorKind.FSNAME_UNKNOWN,
            f"fsname {raw_fsname!r} is not configured ({', '.join(sorted(fsnames)) or 'none'})",
            HAL_HEADER_SIZE,
            pos,
        )

    found = 0
    while found < count:
        if pos + 4 > n:
            break  # no item here at all: reported as a count mismatch below
        (hai_len,) = struct.unpack_from("<I", buf, pos)
        if hai_len < HAI_SIZE:
            err(HalErrorKind.ITEM_TOO_SHORT, f"hai_len {hai_len} < {HAI_SIZE}", pos, pos + HAI_SIZE, found)
            found += 1
            break
        if pos + hai_len > n:
            err(
                HalErrorKind.ITEM_OVERRUN,
                f"hai_len {hai_len} runs {pos + hai_len - n} bytes past the end of the {n}-byte list",
                pos,
                n,
                found,
            )
            found += 1
            break
        try:
            item, _ = _unpack_item(buf, pos)
        except Exception as e:  # e.g. a FID hsm.fid refuses
            err(HalErrorKind.BAD_ITEM, f"cannot read the item: {e}", pos, pos + hai_len, found)
        else:
            if item.action in LIST_ACTIONS:
                out.items.append(item)
            else:
                err(
                    HalErrorKind.UNKNOWN_ACTION,
                    f"hai_action {item.action} is not ARCHIVE, RESTORE, REMOVE or CANCEL "
                    f"(cookie {item.cookie:#x})",
                    pos,
                    pos + hai_len,
                    found,
                )
        found += 1
        pos += align8(hai_len)
    else:
        # every item was walked: anything non-zero after them is reported
        if pos < n and buf[pos:].strip(b"\0"):
            err(HalErrorKind.TRAILING_BYTES, f"{n - pos} bytes after the {count} items", pos, n)
        out.size = min(pos, n)
        return
    if found < count and not any(
        e.kind in (HalErrorKind.ITEM_TOO_SHORT, HalErrorKind.ITEM_OVERRUN) for e in out.errors
    ):
        err(
            HalErrorKind.COUNT_MISMATCH,
            f"hal_count {count} but only {found} items in the {n}-byte list",
            0,
            HAL_HEADER_SIZE,
        )
    out.size = n


# -------------------------------------------------------------- KUC framing


class KucError(OSError):
    """A KUC message ``libcfs_ukuc_msg_get`` / ``llapi_hsm_copytool_recv``
    would refuse; ``.errno`` is the errno recv returns (``EPROTO``,
    ``EMSGSIZE``, ``ESHUTDOWN``)."""


@dataclass(frozen=True, slots=True)
class KucHeader:
    """``struct kuc_hdr``; *msglen* includes the 8-byte header."""

    magic: int
    transport: int
    flags: int
    msgtype: int
    msglen: int

    @property
    def payload_len(self) -> int:
        return self.msglen - KUC_HEADER_SIZE


def kuc_frame(
    payload: bytes,
    transport: int = KUC_TRANSPORT_HSM,
    msgtype: int = HMT_ACTION_LIST,
    flags: int = 0,
) -> bytes:
    """*payload* behind a ``struct kuc_hdr`` as the kernel writes it to the
    copytool pipe. Raises ``ValueError`` when the message does not fit the
    u16 ``kuc_msglen``."""
    msglen = KUC_HEADER_SIZE + len(payload)
    if msglen > KUC_MSGLEN_MAX:
        raise ValueError(f"KUC message of {msglen} bytes does not fit kuc_msglen (u16)")
    try:
        head = _KUC.pack(KUC_MAGIC, transport, flags, msgtype, msglen)
    except struct.error as e:
        raise ValueError(f"KUC header field out of range: {e}") from None
    return head + bytes(payload)


def parse_kuc_header(buf: bytes, *, max_size: int = KUC_MAX_MSG) -> KucHeader:
    """The ``struct kuc_hdr`` at the start of *buf*, checked as
    ``libcfs_ukuc_msg_get`` does: fewer than 8 bytes, a bad magic or
    ``msglen < 8`` raise ``KucError(EPROTO)``; ``msglen > max_size`` (the
    reader's buffer, ``HAL_MAXSIZE + 8`` in recv) raises
    ``KucError(EMSGSIZE)``."""
    if len(buf) < KUC_HEADER_SIZE:
        raise KucError(errno.EPROTO, f"KUC header truncated: {len(buf)} bytes ({bytes(buf).hex()})")
    hdr = KucHeader(*_KUC.unpack_from(buf, 0))
    if hdr.magic != KUC_MAGIC:
        raise KucError(
            errno.EPROTO,
            f"bad KUC magic {hdr.magic:#x} != {KUC_MAGIC:#x} ({bytes(buf[:KUC_HEADER_SIZE]).hex()})",
        )
    if hdr.msglen < KUC_HEADER_SIZE:
        raise KucError(errno.EPROTO, f"KUC msglen {hdr.msglen} < {KUC_HEADER_SIZE}")
    if hdr.msglen > max_size:
        raise KucError(errno.EMSGSIZE, f"KUC msglen {hdr.msglen} > buffer of {max_size} bytes")
    return hdr


def check_hsm_message(hdr: KucHeader) -> None:
    """The checks ``llapi_hsm_copytool_recv`` makes after reading a message:
    a generic SHUTDOWN raises ``KucError(ESHUTDOWN)``; anything but
    HSM/``HMT_ACTION_LIST``, or shorter than the header and a
    ``hsm_action_list`` (40 bytes), raises ``KucError(EPROTO)``."""
    if hdr.transport == KUC_TRANSPORT_GENERIC and hdr.msgtype == KUC_MSG_SHUTDOWN:
        raise KucError(errno.ESHUTDOWN, "KUC shutdown message")
    if hdr.transport != KUC_TRANSPORT_HSM or hdr.msgtype != HMT_ACTION_LIST:
        raise KucError(errno.EPROTO, f"unknown HSM message type {hdr.transport}:{hdr.msgtype}")
    if hdr.msglen < KUC_HEADER_SIZE + HAL_HEADER_SIZE:
        raise KucError(errno.EPROTO, f"short HSM message {hdr.msglen}")


# ------------------------------------------------------------ user requests


@dataclass(frozen=True, slots=True)
class UserItem:
    """``struct hsm_user_item``: a FID and an extent (length
    ``LUSTRE_EOF`` = to the end of the file)."""

    fid: Fid
    offset: int = 0
    length: int = LUSTRE_EOF


@dataclass(frozen=True, slots=True)
class UserRequest:
    """``struct hsm_user_request`` as ``llapi_hsm_request`` takes it: *action*
    is an ``HUA`` value, *flags* ``hr_flags`` (``HSM_FORCE_ACTION``, ...),
    *data* the blob after the items (``hr_data_len`` bytes)."""

    action: int
    archive_id: int
    flags: int
    items: tuple[UserItem, ...]
    data: bytes = b""


def build_user_request(req: UserRequest) -> bytes:
    """``hur_len(hur)`` bytes: the 24-byte ``hsm_request``, the 32-byte items,
    then the data (no padding). Raises ``ValueError`` for a field out of range."""
    try:
        parts = [_HR.pack(req.action, req.archive_id, req.flags, len(req.items), len(req.data))]
        parts.extend(
            _HUI.pack(i.fid.seq, i.fid.oid, i.fid.ver, i.offset, i.length) for i in req.items
        )
    except struct.error as e:
        raise ValueError(f"user request field out of range ({e}): {req!r}") from None
    parts.append(bytes(req.data))
    return b"".join(parts)


def parse_user_request(buf: bytes) -> UserRequest:
    """Read a ``struct hsm_user_request``; raises ``ValueError`` when *buf* is
    shorter than ``hur_len``. Bytes after ``hur_len`` are ignored."""
    buf = bytes(buf)
    if len(buf) < _HR.size:
        raise ValueError(f"struct hsm_request is {_HR.size} bytes, got {len(buf)}: {_hex(buf)}")
    action, archive_id, flags, itemcount, data_len = _HR.unpack_from(buf, 0)
    need = _HR.size + itemcount * _HUI.size + data_len
    if len(buf) < need:
        raise ValueError(
            f"hsm_user_request with {itemcount} items and {data_len} data bytes needs "
            f"{need} bytes, got {len(buf)}: {_hex(buf)}"
        )
    items = []
    for k in range(itemcount):
        seq, oid, ver, offset, length = _HUI.unpack_from(buf, _HR.size + k * _HUI.size)
        items.append(UserItem(Fid(seq, oid, ver), offset, length))
    start = _HR.size + itemcount * _HUI.size
    return UserRequest(action, archive_id, flags, tuple(items), buf[start : start + data_len])


# ------------------------------------------------------- small fixed structs


def pack_extent(offset: int, length: int) -> bytes:
    """``struct hsm_extent``."""
    return _HE.pack(offset, length)


def unpack_extent(buf: bytes) -> tuple[int, int]:
    """``(offset, length)`` of a 16-byte ``struct hsm_extent``."""
    offset, length = _HE.unpack(bytes(buf))
    return offset, length


@dataclass(frozen=True, slots=True)
class UserState:
    """``struct hsm_user_state`` (``llapi_hsm_state_get``): *states* the
    ``HS`` flags, the in-progress state (``HPS``), action (``HUA``) and
    extent."""

    states: int
    archive_id: int
    in_progress_state: int = HPS_NONE
    in_progress_action: int = 0
    in_progress_offset: int = 0
    in_progress_length: int = 0


def pack_user_state(s: UserState) -> bytes:
    return _HUS.pack(
        s.states, s.archive_id, s.in_progress_state, s.in_progress_action,
        s.in_progress_offset, s.in_progress_length,
    )


def unpack_user_state(buf: bytes) -> UserState:
    return UserState(*_HUS.unpack(bytes(buf)))


@dataclass(frozen=True, slots=True)
class CurrentAction:
    """``struct hsm_current_action`` (``llapi_hsm_current_action``): *state*
    an ``HPS`` value, *action* an ``HUA`` value."""

    state: int
    action: int
    offset: int = 0
    length: int = 0


def pack_current_action(a: CurrentAction) -> bytes:
    return _HCA.pack(a.state, a.action, a.offset, a.length)


def unpack_current_action(buf: bytes) -> CurrentAction:
    return CurrentAction(*_HCA.unpack(bytes(buf)))


@dataclass(frozen=True, slots=True)
class Progress:
    """``struct hsm_progress`` (``LL_IOC_HSM_PROGRESS``): *errval* a positive
    errno, *flags* ``HP_FLAG_*``."""

    fid: Fid
    cookie: int
    offset: int
    length: int
    flags: int = 0
    errval: int = 0


def pack_progress(p: Progress) -> bytes:
    return _HP.pack(
        p.fid.seq, p.fid.oid, p.fid.ver, p.cookie, p.offset, p.length,
        p.flags, p.errval, 0,
    )


def unpack_progress(buf: bytes) -> Progress:
    seq, oid, ver, cookie, offset, length, flags, errval, _pad = _HP.unpack(bytes(buf))
    return Progress(Fid(seq, oid, ver), cookie, offset, length, flags, errval)
