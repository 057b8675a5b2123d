"""Lustre FIDs: parsing and printing exactly as Lustre does.

A FID is ``struct lu_fid { u64 f_seq; u32 f_oid; u32 f_ver; }``, printed
``[%#llx:0x%x:0x%x]`` (``[0x200000400:0x1:0x0]``, and ``[0:0x0:0x0]`` for
zero) and parsed as liblustreapi_fid.c: llapi_fid_parse() does: leading
white space and any ``[`` skipped, three fields separated by ``:``, each
read by C's ``strtoull(s, &end, 0)`` (so ``0x1f`` hex, ``017`` octal, ``15``
decimal, an optional sign, white space before each field), then one ``]``
if a ``[`` was seen. A malformed FID is EINVAL; a field too large is ERANGE
(a sequence of 2^64-1 or more, an object id or version above 2^32-1).
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass

_U64 = (1 << 64) - 1
_U32 = (1 << 32) - 1
_PACK = struct.Struct("<QII")
_C_SPACE = " \t\n\v\f\r"  # isspace() in the C locale
_DIGITS = {8: "01234567", 10: "0123456789", 16: "0123456789abcdefABCDEF"}

#: First sequence of normal (non-special) files in Lustre (FID_SEQ_NORMAL).
FID_SEQ_NORMAL = 0x200000400


class FidError(ValueError):
    """A string or number that is not a valid FID. ``errno`` is EINVAL
    (malformed) or ERANGE (a field out of range), as llapi_fid_parse returns."""

    def __init__(self, message: str, err: int = errno.EINVAL) -> None:
        super().__init__(message)
        self.errno = err


def _strtoull(text: str, pos: int) -> tuple[int, int, bool]:
    """C's ``strtoull(text + pos, &end, 0)`` as glibc does it: (value, end,
    overflowed). No digits: value 0 and *end* = *pos* (no conversion; glibc
    sets no errno then). ``0x`` not followed by a hex digit converts the
    ``0`` and ends at the ``x``. A ``-`` negates modulo 2^64."""
    i, n = pos, len(text)
    while i < n and text[i] in _C_SPACE:
        i += 1
    negative = False
    if i < n and text[i] in "+-":
        negative = text[i] == "-"
        i += 1
    base = 10
    if text.startswith(("0x", "0X"), i) and i + 2 < n and text[i + 2] in _DIGITS[16]:
        base, i = 16, i + 2
    elif i < n and text[i] == "0":
        base = 8
    start = i
    while i < n and text[i] in _DIGITS[base]:
        i += 1
    if i == start:
        return 0, pos, False
    value = int(text[start:i], base)
    if value > _U64:
        return _U64, i, True  # ULLONG_MAX, errno ERANGE (the sign is not applied)
    return (-value) & _U64 if negative else value, i, False


@dataclass(frozen=True, slots=True, order=True)
class Fid:
    seq: int
    oid: int
    ver: int = 0

    def __reduce__(self) -> tuple[type[Fid], tuple[int, int, int]]:
        # 5x faster than the dataclass __getstate__/__setstate__ pair; FIDs
        # are in every replicated command and snapshot
        return (Fid, (self.seq, self.oid, self.ver))

    def __post_init__(self) -> None:
        if not (0 <= self.seq <= _U64):
            raise FidError(f"FID sequence {self.seq!r} is not a u64")
        if not (0 <= self.oid <= _U32):
            raise FidError(f"FID object id {self.oid!r} is not a u32")
        if not (0 <= self.ver <= _U32):
            raise FidError(f"FID version {self.ver!r} is not a u32")

    @classmethod
    def parse_prefix(cls, text: str, pos: int = 0) -> tuple[Fid, int]:
        """llapi_fid_parse(text + pos, &fid, &end): the FID at the start of
        *text* and the index just after it (after its ``]`` if it began
        with ``[``); what follows is not looked at. ``FidError`` with errno
        EINVAL or ERANGE as llapi_fid_parse returns them: a malformed FID is
        EINVAL even when a field before it is out of range."""
        if not isinstance(text, str):
            raise FidError(f"FID must be a string, not {type(text).__name__}")
        i, n = pos, len(text)
        while i < n and text[i] in _C_SPACE:
            i += 1
        bracket = False
        while i < n and text[i] == "[":
            bracket, i = True, i + 1
        values: list[int] = []
        too_big: list[str] = []
        for name, limit, sep in (("sequence", _U64 - 1, ":"), ("object id", _U32, ":"), ("version", _U32, "")):
            value, end, overflow = _strtoull(text, i)
            if sep and (end >= n or text[end] != sep):
                got = repr(text[end]) if end < n else "the end"
                raise FidError(
                    f"malformed FID {text[pos:]!r}: expected ':' after the {name}, found {got} "
                    "(a FID is [SEQ:OID:VER], e.g. [0x200000400:0x1:0x0])"
                )
            if overflow or value > limit:
                too_big.append(f"{name} {text[i:end].strip()} is out of range (0 to {limit:#x})")
            values.append(value)
            i = end + 1 if sep else end
        if bracket and i < n and text[i] == "]":
            i += 1
        if too_big:
            raise FidError(f"FID {text[pos:i]!r} out of range: " + "; ".join(too_big), errno.ERANGE)
        return cls(values[0], values[1], values[2]), i

    @classmethod
    def parse(cls, text: str) -> Fid:
        """Parse ``[0x200000400:0x1:0x0]`` or ``0x200000400:0x1:0x0`` (fields
        in hex, octal or decimal, see the module docstring). Unlike the
        callers of llapi_fid_parse, which ignore what follows the FID,
        anything after it but white space is refused (EINVAL)."""
        fid, end = cls.parse_prefix(text)
        rest = text[end:]
        if rest.strip(_C_SPACE):
            raise FidError(
                f"malformed FID {text!r}: {rest.strip(_C_SPACE)!r} after the FID "
                "(a FID is [SEQ:OID:VER], e.g. [0x200000400:0x1:0x0])"
            )
        return fid

    def __str__(self) -> str:
        # Lustre's DFID is "[%#llx:0x%x:0x%x]"; C's %#llx prints 0 as "0".
        seq = f"{self.seq:#x}" if self.seq else "0"
        return f"[{seq}:0x{self.oid:x}:0x{self.ver:x}]"

    @property
    def bare(self) -> str:
        """The FID without brackets, as used in paths (``.lustre/fid/<bare>``)."""
        return str(self)[1:-1]

    def pack(self) -> bytes:
        """The 16 little-endian bytes of ``struct lu_fid``."""
        return _PACK.pack(self.seq, self.oid, self.ver)

    @classmethod
    def unpack(cls, data: bytes) -> Fid:
        if len(data) != 16:
            raise FidError(f"struct lu_fid is 16 bytes, got {len(data)}")
        seq, oid, ver = _PACK.unpack(data)
        return cls(seq, oid, ver)
