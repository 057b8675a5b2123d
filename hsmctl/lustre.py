"""hsmctl on a Lustre mount: the file-system side of ``lfs hsm_*`` through
liblustreapi (``hsm.lustre.api.LustreApi``). No I/O to the coordinator
here: on Lustre the MDT is the HSM authority, requests go to it
(``llapi_hsm_request``) and hsm-bridge brings them to the coordinator.

Which paths are Lustre (``hsmctl --fs``, ``$HSM_FS``):

- ``auto`` (the default): a simfs tree (``.simfs/fsname`` above the path) is
  simfs, as before. Otherwise the kernel is asked first: ``statfs(2)``
  reporting ``LL_SUPER_MAGIC`` means the path is on a Lustre client mount
  (``on_lustre_mount``), and only then is liblustreapi loaded; every later
  call on the file is liblustreapi's (``ENOTTY``/``ENODEV`` from it: not a
  Lustre file, as ``lfs`` reports). Anything else is "not on a simfs or
  Lustre file system" without touching the library, installed or not.
- ``lustre``: every path is handed to liblustreapi, whatever ``statfs``
  says and even inside a simfs tree; the library decides (``ENOTTY`` /
  ``ENODEV``: not Lustre). This is how the tests drive the stand-in
  liblustreapi, which serves a simfs tree through a simulated MDT.
- ``simfs``: only simfs trees; liblustreapi is never loaded.

The library is ``$HSM_LIBLUSTREAPI``, else ``liblustreapi.so.1``.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hsm.fid import Fid
from hsm.hsmflags import HS, HSMA, HUA, check_request
from hsm.lustre import hal
from hsm.lustre.api import LustreApi

__all__ = [
    "ENV_FS",
    "FS_MODES",
    "LL_SUPER_MAGIC",
    "LustreFs",
    "LustreTarget",
    "NOT_LUSTRE_ERRNOS",
    "hua_of",
    "max_request_data",
    "max_request_items",
    "on_lustre_mount",
    "outcome",
    "refusal",
    "release_flag_refusal",
    "release_refusal",
]

#: The environment variable behind ``hsmctl --fs``.
ENV_FS = "HSM_FS"
FS_MODES = ("auto", "simfs", "lustre")

#: ``LL_SUPER_MAGIC`` (lustre_user.h): ``statfs(2).f_type`` of a Lustre client mount.
LL_SUPER_MAGIC = 0x0BD00BD0

#: What liblustreapi answers for a path that is not on Lustre: ``ENOTTY``
#: from the file's ioctl (state, action, set, path2fid), ``ENODEV`` when no
#: Lustre mount holds it (``llapi_hsm_request``'s root lookup).
NOT_LUSTRE_ERRNOS = frozenset({errno.ENOTTY, errno.ENODEV})

#: ``MDS_MAXREQSIZE / 3`` (lustre_net.h, llite/dir.c: LL_IOC_HSM_REQUEST):
#: the client refuses a ``struct hsm_user_request`` of this many bytes or
#: more with E2BIG (``lfs hsm_archive`` of ~53 files hits it).
REQUEST_LIMIT = 5 * 1024 // 3
_HUR_HEADER = 24
_HUR_ITEM = 32

_KIND_HUA = {"archive": HUA.ARCHIVE, "restore": HUA.RESTORE, "remove": HUA.REMOVE,
             "release": HUA.RELEASE, "cancel": HUA.CANCEL}
_KIND_HSMA = {"archive": HSMA.ARCHIVE, "restore": HSMA.RESTORE, "remove": HSMA.REMOVE}


def hua_of(kind: str) -> HUA:
    """The ``HUA_*`` user action of an hsmctl request command."""
    return _KIND_HUA[kind]


def max_request_items(data_len: int) -> int:
    """How many items one ``llapi_hsm_request`` may carry with *data_len*
    bytes of ``--data`` (0: not even one)."""
    room = REQUEST_LIMIT - 1 - _HUR_HEADER - data_len
    return max(0, room // _HUR_ITEM)


def max_request_data() -> int:
    """The most ``--data`` bytes a request of one file may carry."""
    return REQUEST_LIMIT - 1 - _HUR_HEADER - _HUR_ITEM


# statfs(2), for the one field we need (f_type comes first on every Linux ABI:
# a long on LP64, a word on 32-bit).
_STATFS_SIZE = 256  # struct statfs is 120 bytes on x86_64/aarch64


@functools.cache
def _statfs() -> Any:
    """libc's ``statfs``, or None (not Linux, or not found)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).statfs
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_int
    fn.argtypes = (ctypes.c_char_p, ctypes.c_void_p)
    return fn


def on_lustre_mount(path: str | os.PathLike[str]) -> bool:
    """Does the kernel say *path* (followed if a link) is on a Lustre client
    mount? ``statfs(2)`` and ``LL_SUPER_MAGIC``: no liblustreapi needed."""
    statfs = _statfs()
    if statfs is None:
        return False
    buf = ctypes.create_string_buffer(_STATFS_SIZE)
    if statfs(os.fsencode(path), buf) != 0:
        return False
    f_type = ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF
    return f_type == LL_SUPER_MAGIC


@dataclass(frozen=True, slots=True)
class LustreTarget:
    """A file of a request to the MDT: what the user named it (*label*), a
    path on the mount that names it for liblustreapi (*path*: the file, or
    ``MNT/.lustre/fid/FID`` for a FID operand), the mount it is on (*dev*:
    a request is sent per mount, as lfs does), its FID and, when it could be
    read, its (HSM flags, archive id)."""

    label: str
    path: str
    dev: int
    fid: Fid
    hsm: tuple[int, int] | None


def refusal(kind: str, flags: int, file_archive_id: int, request_archive_id: int) -> str | None:
    """Why the MDT would refuse (EPERM) a request of *kind* on a file in
    this HSM state, in words; ``""`` when it is not needed (the MDT skips
    it, the request succeeds); None when it would be queued. The rules are
    the kernel's (``hsmflags.check_request``)."""
    verdict = check_request(_KIND_HSMA[kind], flags, file_archive_id, request_archive_id)
    if verdict is None:
        return None
    if verdict == 0:
        return ""
    if kind == "archive":
        if flags & HS.NOARCHIVE:
            return "the file is marked never_archive"
        if flags & HS.EXISTS:
            return (f"the file's copy is in archive {file_archive_id}, not {request_archive_id} "
                    "(remove it first)")
    elif kind == "restore":
        if flags & HS.LOST:
            return "the archived copy is lost"
        if not flags & HS.ARCHIVED:
            return "the file is not archived"
        if flags & HS.DIRTY:
            return "the file is dirty (changed since it was archived)"
        if not flags & HS.RELEASED:
            return "the file is not released"
    elif kind == "remove" and flags & HS.RELEASED:
        return "the file is released (restore it first)"
    return "not allowed in the file's HSM state"


def release_flag_refusal(flags: int) -> str | None:
    """Why the HSM flags forbid releasing a file, or None: the reasons
    Lustre and simfs share, first one first (``release_refusal`` here and
    hsmctl's simfs release add their own around them)."""
    if not flags & HS.ARCHIVED:
        return "the file is not archived"
    if flags & HS.DIRTY:
        return "the file is dirty (changed since it was archived)"
    if flags & HS.NORELEASE:
        return "the file is marked never_release"
    if flags & HS.LOST:
        return "the archived copy is lost"
    return None


def release_refusal(flags: int) -> str:
    """Why a release was refused (EPERM), as far as the HSM flags tell."""
    if flags & HS.RELEASED:
        return "the file is released already"
    return release_flag_refusal(flags) or (
        "not allowed now (the data changed since it was archived, or the file is in use)")


def outcome(kind: str, flags: int) -> str | None:
    """--wait on Lustre: once the MDT has no action for the file, did the
    request of *kind* do its work? None if so, else why not, from the HSM
    flags alone: archive = ARCHIVED and not DIRTY; restore = not RELEASED;
    remove = neither ARCHIVED nor EXISTS."""
    if kind == "archive":
        if not flags & HS.ARCHIVED:
            return "the file is not archived"
        if flags & HS.DIRTY:
            return "the file is dirty (changed during or after the copy)"
    elif kind == "restore":
        if flags & HS.RELEASED:
            return "the file is still released"
    elif kind == "remove":
        if flags & (HS.ARCHIVED | HS.EXISTS):
            return "the file still has an archived copy"
    return None


class LustreFs:
    """The Lustre side of hsmctl: one liblustreapi for every mount a command
    touches (all calls are by path, as in lfs). Methods raise ``OSError``
    with liblustreapi's errno."""

    def __init__(self, api: LustreApi | None = None) -> None:
        self.api = api if api is not None else LustreApi()

    def __repr__(self) -> str:
        return f"<LustreFs {self.api!r}>"

    @property
    def library(self) -> str:
        return self.api.path

    def load(self) -> None:
        """Load liblustreapi now (``LustreApiUnavailable`` with the reason)."""
        self.api.load()

    # -- queries (follow links, as lfs's open() does) -----------------------

    def fid_of(self, path: str) -> Fid:
        """The FID of the file *path* names (a link is followed:
        ``llapi_path2fid`` itself does not)."""
        return self.api.path2fid(os.path.realpath(path))

    def state(self, path: str) -> tuple[int, int]:
        """``llapi_hsm_state_get``: (HSM flags, archive id)."""
        hus = self.api.state_get(path)
        return hus.states, hus.archive_id

    def current_action(self, path: str) -> hal.CurrentAction:
        """``llapi_hsm_current_action`` (state ``HPS_*``, action ``HUA_*``)."""
        return self.api.current_action(path)

    def set_flags(self, path: str, set: int, clear: int) -> None:
        """``llapi_hsm_state_set`` (``lfs hsm_set`` / ``hsm_clear``)."""
        self.api.state_set(path, set, clear, 0)

    # -- requests -----------------------------------------------------------

    def request_fid(self, path: str) -> Fid:
        """The FID lfs puts in a request for *path* (``llapi_path2fid``;
        the caller has refused symbolic links already)."""
        return self.api.path2fid(path)

    def request(self, path: str, action: int, archive_id: int, fids: Sequence[Fid],
                data: bytes = b"") -> None:
        """``llapi_hsm_request`` on the mount holding *path*."""
        items = tuple(hal.UserItem(f) for f in fids)
        self.api.request(os.path.realpath(path), hal.UserRequest(int(action), archive_id, 0, items, data))

    def import_released(self, path: str, archive_id: int, size: int, uid: int, gid: int, mode: int,
                        mtime_ns: int) -> Fid:
        """``llapi_hsm_import`` (``lhsmtool_posix --import``): a new released
        file at *path* whose data is in *archive_id*; its FID."""
        return self.api.hsm_import(path, archive_id, size, uid, gid, mode, mtime_ns, mtime_ns)

    def release(self, path: str, fid: Fid) -> None:
        """``lfs hsm_release``: a HUA_RELEASE request of one file."""
        self.request(path, HUA.RELEASE, 0, [fid])

    # -- trees ----------------------------------------------------------------

    @staticmethod
    def walk(top: str) -> Iterator[Path]:
        """Regular files under directory *top* in sorted order, like
        ``find -P TOP -type f``. ``.lustre`` is skipped (a Lustre mount
        never lists it), and so is a ``.simfs`` directory: the metadata of
        the simfs tree the test stand-in serves as a Lustre mount."""
        from hsm.simfs import DOT_LUSTRE, META_DIR, walk_regular_files  # here: slow to import

        start = Path(os.path.abspath(top)).resolve()
        yield from walk_regular_files(start, lambda _dirpath, name: name in (DOT_LUSTRE, META_DIR))
