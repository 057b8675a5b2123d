"""The wire between the stand-in liblustreapi (and tests) and the simulated
MDT: one Unix stream socket per simfs tree at ``ROOT/.simfs/mdt.sock``.

Every call is one request and one answer on a fresh connection::

    request  = u32 magic (MAGIC), u16 op, u16 reserved (0), u32 len, payload[len]
    answer   = i32 rc (0, a value >= 0, or -errno), u32 len, payload[len]

all little-endian. Payloads are the kernel's own structs where the kernel
has one (``struct hsm_user_request``, ``hsm_copy``, ``hsm_progress``,
``hsm_state_set``, ``hsm_user_state``, ``hsm_current_action``, ``lu_fid``);
paths are absolute and NUL-terminated. ``OP_REGISTER`` is the exception to
"one call per connection": after its answer the MDT writes KUC frames
(``struct kuc_hdr`` + ``struct hsm_action_list``, exactly the bytes the
kernel writes to a copytool's pipe) on that same connection until either
side closes it, so the copytool's fd is poll-able like the real pipe.

The same layout is written in C in ``liblustreapi_standin.c``; keep the two
in step.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
from pathlib import Path
from typing import Any

#: ``b"SMDT"`` read as a little-endian u32.
MAGIC = 0x54444D53
REQUEST = struct.Struct("<IHHI")
ANSWER = struct.Struct("<iI")
#: Largest payload either side accepts.
MAX_PAYLOAD = 16 << 20

#: Where a tree's MDT listens, relative to the tree's root.
SOCKET_NAME = ".simfs/mdt.sock"

# ---------------------------------------------------------------- the ops
#: ``u32 count, u32 archives[count]`` -> ``u64 ct_id``; then KUC frames.
OP_REGISTER = 1
#: ``u64 ct_id`` -> nothing (the kernel's ``LK_FLG_STOP``).
OP_UNREGISTER = 2
#: ``struct hsm_user_request`` (``hur_len`` bytes) -> nothing (``LL_IOC_HSM_REQUEST``).
OP_REQUEST = 3
#: ``struct hsm_copy`` (88 bytes, item without data) -> ``struct hsm_copy``
#: (``hc_data_version`` of an ARCHIVE, ``hai_dfid`` of a RESTORE) and, for a
#: RESTORE, the volatile file's path (``LL_IOC_HSM_COPY_START``).
OP_COPY_START = 4
#: ``struct hsm_progress`` (48 bytes) -> nothing (``LL_IOC_HSM_PROGRESS``).
OP_PROGRESS = 5
#: ``struct hsm_copy`` -> nothing (``LL_IOC_HSM_COPY_END``).
OP_COPY_END = 6
#: path -> ``struct hsm_user_state`` (``LL_IOC_HSM_STATE_GET``).
OP_STATE_GET = 7
#: ``struct hsm_state_set`` (24 bytes) + path -> nothing (``LL_IOC_HSM_STATE_SET``).
OP_STATE_SET = 8
#: path -> ``struct hsm_current_action`` (``LL_IOC_HSM_ACTION``).
OP_CURRENT_ACTION = 9
#: ``u64 flags`` + path -> ``u64`` data version (``LL_IOC_DATA_VERSION``).
OP_DATA_VERSION = 10
#: path -> ``struct lu_fid`` (``LL_IOC_PATH2FID``).
OP_PATH2FID = 11
#: ``struct lu_fid`` + ``i32 linkno`` -> the path relative to the root
#: (``OBD_IOC_FID2PATH``).
OP_FID2PATH = 12
#: path -> nothing, answered when the file is readable: what a client's
#: open/read of a released file does (a blocking RESTORE, then the wait).
OP_OPEN = 13
#: nothing -> JSON: every begin/progress/end per cookie, records, agents.
OP_STATS = 14
#: JSON ``{name: value}`` -> JSON of all settings (``lctl set_param mdt.*.hsm.*``).
OP_SET_PARAM = 15
#: nothing -> nothing: a KUC_MSG_SHUTDOWN to every copytool (the kernel
#: going away), which then makes their recv return -ESHUTDOWN.
OP_SHUTDOWN_COPYTOOLS = 16
#: nothing -> nothing: is the MDT up?
OP_PING = 17
#: name (``active_requests``) -> the text ``lctl get_param -n
#: mdt.<fsname>-MDT0000.hsm.<name>`` prints on the MDS (root only).
OP_GET_PARAM = 18
#: ``struct hsm_user_import`` (48 bytes) + path of a new empty file ->
#: ``struct lu_fid`` (``LL_IOC_HSM_IMPORT``; llapi_hsm_import created the file).
OP_IMPORT = 19

OP_NAMES = {v: k[3:] for k, v in dict(globals()).items() if k.startswith("OP_") and isinstance(v, int)}

#: ``hsm_state_set.hss_valid`` bits.
HSS_SETMASK = 0x01
HSS_CLEARMASK = 0x02
HSS_ARCHIVE_ID = 0x04
HSM_STATE_SET = struct.Struct("<IIQQ")
#: ``struct hsm_user_import``: u64 size, atime, mtime; u32 atime_ns, mtime_ns,
#: uid, gid, mode, archive_id.
HSM_USER_IMPORT = struct.Struct("<QQQIIIIII")
#: ``struct hsm_copy``: u64 hc_data_version, u16 hc_flags, u16 hc_errval,
#: u32 padding, then a 72-byte ``struct hsm_action_item``.
HSM_COPY_HEAD = struct.Struct("<QHHI")
HSM_COPY_SIZE = HSM_COPY_HEAD.size + 72


class MdtError(OSError):
    """The MDT answered ``-errno``."""


def socket_path(root: str | os.PathLike[str]) -> Path:
    return Path(root) / SOCKET_NAME


def find_socket(path: str | os.PathLike[str]) -> Path:
    """The MDT socket of the simfs tree holding *path* (the tree's root is
    found as simfs finds it). ``FileNotFoundError`` when there is none."""
    from hsm.simfs import NotASimfsTree, SimFS

    try:
        sock = socket_path(SimFS.find_root(path))
    except NotASimfsTree:
        sock = None
    if sock is None or not sock.is_socket():
        raise FileNotFoundError(errno.ENOENT, "no stand-in MDT socket above this path", str(path))
    return sock


def pack_request(op: int, payload: bytes = b"") -> bytes:
    return REQUEST.pack(MAGIC, op, 0, len(payload)) + payload


def path_arg(path: str | os.PathLike[str]) -> bytes:
    return os.fsencode(os.path.abspath(path)) + b"\0"


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise ConnectionError("the MDT closed the connection mid-answer")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def call(sock_path: str | os.PathLike[str], op: int, payload: bytes = b"",
         timeout: float | None = 30.0) -> tuple[int, bytes]:
    """One request/answer; returns ``(rc, payload)`` (rc may be ``-errno``)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(os.fspath(sock_path))
        s.sendall(pack_request(op, payload))
        rc, n = ANSWER.unpack(_recv_exact(s, ANSWER.size))
        if n > MAX_PAYLOAD:
            raise ConnectionError(f"answer of {n} bytes is too large")
        return rc, _recv_exact(s, n)


def check(sock_path: str | os.PathLike[str], op: int, payload: bytes = b"",
          timeout: float | None = 30.0) -> bytes:
    """Like ``call`` but raises ``MdtError`` for a negative rc."""
    rc, data = call(sock_path, op, payload, timeout)
    if rc < 0:
        raise MdtError(-rc, f"{OP_NAMES.get(op, op)}: {os.strerror(-rc)}")
    return data


class MdtClient:
    """The calls tests make to the MDT directly (the C library covers the
    rest): OPEN, STATS, SET_PARAM, SHUTDOWN_COPYTOOLS, PING."""

    def __init__(self, root_or_socket: str | os.PathLike[str]) -> None:
        p = Path(root_or_socket)
        self.socket = p if p.name == "mdt.sock" else socket_path(p)

    def ping(self, timeout: float = 5.0) -> bool:
        try:
            return call(self.socket, OP_PING, timeout=timeout)[0] == 0
        except OSError:
            return False

    def open(self, path: str | os.PathLike[str], timeout: float | None = 60.0) -> None:
        """What ``open()`` of a released file does on a client: blocks until
        the file is restored; ``MdtError`` if it cannot be."""
        check(self.socket, OP_OPEN, path_arg(path), timeout)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(check(self.socket, OP_STATS))
        return out

    def set_param(self, **params: Any) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(check(self.socket, OP_SET_PARAM, json.dumps(params).encode()))
        return out

    def params(self) -> dict[str, Any]:
        return self.set_param()

    def shutdown_copytools(self) -> None:
        check(self.socket, OP_SHUTDOWN_COPYTOOLS)

    def get_param(self, name: str) -> str:
        """``lctl get_param -n mdt.<fsname>-MDT0000.hsm.<name>``."""
        return check(self.socket, OP_GET_PARAM, name.encode()).decode()
