"""The MDT's ``hsm.active_requests`` file, parsed (pure, no I/O).

``lctl get_param mdt.<fsname>-MDT<index>.hsm.active_requests`` on the MDS
prints the requests the MDT has sent to a copytool and not seen end (the
STARTED ones), one line each, as ``mdt_hsm_active_requests_proc_show``
(lustre/mdt/mdt_hsm_cdt_requests.c) formats them::

    fid=[0x200000401:0x1:0x0] dfid=[0x200000401:0x1:0x0] compound/cookie=0/0x5f3c1a2b action=ARCHIVE
    archive#=1 flags=0 extent=0-0xffffffffffffffff gid=0 data=[] canceled=0 uuid=... done=0

(one line; ``%#llx`` prints 0 as ``0``). Without ``-n``, lctl puts
``mdt.<fsname>-MDT0000.hsm.active_requests=`` before each MDT's lines,
which names the file system; with ``-n`` the caller says which one it is.

The bridge reads it when it becomes active to find the items a previous
bridge never read: the MDT wrote them into that bridge's pipe, holds them
STARTED, never sends them again and cancels them after
``active_request_timeout``.

One limit comes from the kernel: ``data=[...]`` is ``hai_data`` in hex, cut
to its first 5 bytes (``hai_dump_data_field`` with a 12-byte buffer). An
item whose dump is 5 bytes long may have more: ``data_complete`` is False
and the item cannot be rebuilt exactly from this file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from hsm.fid import Fid
from hsm.hsmflags import HSMA
from hsm.lustre.hal import ActionItem

#: hex digits of the longest ``data=[...]`` the kernel prints (5 bytes)
DATA_DUMP_MAX = 10

_NUM = r"(0|0x[0-9a-f]+)"
_FID = r"\[(0|0x[0-9a-f]+):0x([0-9a-f]+):0x([0-9a-f]+)\]"  # DFID: "[%#llx:0x%x:0x%x]"
_LINE = re.compile(
    rf"fid={_FID} dfid={_FID} compound/cookie={_NUM}/{_NUM} action=([A-Z]+) archive#=(-?\d+) "
    rf"flags={_NUM} extent={_NUM}-{_NUM} gid={_NUM} data=\[([0-9A-F]*)\] canceled=(\d+) uuid=(\S*) "
    r"done=(\d+)")
_HEADER = re.compile(r"mdt\.(.+)-MDT([0-9a-fA-F]{4})\.hsm\.active_requests=(.*)")
_ACTIONS = {"NOOP": HSMA.NONE, "ARCHIVE": HSMA.ARCHIVE, "RESTORE": HSMA.RESTORE, "REMOVE": HSMA.REMOVE,
            "CANCEL": HSMA.CANCEL}


@dataclass(frozen=True, slots=True)
class ActiveRequest:
    """One line: a request the MDT holds STARTED."""

    fsname: str  # "" when neither a header nor the caller named it
    mdt_index: int  # -1 when unknown (lctl -n)
    item: ActionItem
    archive_id: int
    flags: int
    compound_id: int
    data_complete: bool  # False: hai_data may be longer than the dump
    canceled: bool
    uuid: str
    done: int  # bytes the copytool reported moved


@dataclass(frozen=True, slots=True)
class Parsed:
    requests: tuple[ActiveRequest, ...]
    errors: tuple[str, ...]  # "line N: why: text", for lines that are not requests


def _int(text: str) -> int:
    return int(text, 0)


def parse_line(line: str, fsname: str = "", mdt_index: int = -1) -> ActiveRequest:
    """One request line; ValueError says what is wrong with it."""
    m = _LINE.fullmatch(line.strip())
    if m is None:
        raise ValueError("not an active request line")
    g = m.groups()
    action = _ACTIONS.get(g[8])
    if action is None:
        raise ValueError(f"unknown action {g[8]}")
    fid = Fid(int(g[0], 0), int(g[1], 16), int(g[2], 16))
    dfid = Fid(int(g[3], 0), int(g[4], 16), int(g[5], 16))
    numbers = [_int(x) for x in (g[6], g[7], g[10], g[11], g[12], g[13])]
    compound, cookie, flags, offset, length, gid = numbers
    if max(numbers) >= 1 << 64 or fid.seq >= 1 << 64 or dfid.seq >= 1 << 64 \
            or max(fid.oid, fid.ver, dfid.oid, dfid.ver) >= 1 << 32:
        raise ValueError("a field out of range")
    hexdata = g[14]
    if len(hexdata) % 2 or len(hexdata) > DATA_DUMP_MAX:
        raise ValueError(f"data=[{hexdata}] is not a kernel dump of hai_data")
    archive_id = int(g[9])
    if not 0 <= archive_id < 1 << 32:
        raise ValueError(f"archive# {archive_id} out of range")
    item = ActionItem(int(action), fid, dfid, offset, length, cookie, gid, bytes.fromhex(hexdata))
    return ActiveRequest(fsname, mdt_index, item, archive_id, flags, compound,
                         data_complete=len(hexdata) < DATA_DUMP_MAX, canceled=g[15] != "0", uuid=g[16],
                         done=int(g[17]))


def parse(text: str | Iterable[str], fsname: str = "") -> Parsed:
    """What ``lctl get_param [-n] mdt.*.hsm.active_requests`` printed.
    Header lines (without ``-n``) name the file system and MDT of the lines
    after them; before any header, *fsname* does. Never raises: a line that
    is neither is reported in ``errors`` and the others are kept."""
    lines = text.splitlines() if isinstance(text, str) else list(text)
    out: list[ActiveRequest] = []
    errors: list[str] = []
    current, index = fsname, -1
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        header = _HEADER.fullmatch(line)
        if header is not None:
            current, index = header.group(1), int(header.group(2), 16)
            line = header.group(3).strip()
            if not line:
                continue
        try:
            out.append(parse_line(line, current, index))
        except ValueError as exc:
            errors.append(f"line {n}: {exc}: {raw[:200]!r}")
    return Parsed(tuple(out), tuple(errors))
