"""The one ctypes binding over liblustreapi (``liblustreapi.so.1``).

- The library path is the ``LustreApi(path)`` argument, else
  ``$HSM_LIBLUSTREAPI``, else ``liblustreapi.so.1`` (the soname, found by the
  dynamic linker). It is loaded on first use: importing this module, or
  creating a ``LustreApi``, needs no library. Each function is resolved on
  its first call, so a library that lacks one fails only where it is used
  (``LustreApiUnavailable``, not an ``OSError``).
- Every struct that crosses the library has a ``ctypes.Structure`` here with
  the layout of ``lustre_user.h``; the two private handles are opaque.
- ``FUNCTIONS`` gives the return and argument types of every function the
  binding loads; it names exactly the functions of
  ``hsm.lustre.prototypes.PROTOTYPES``.
- liblustreapi returns ``-errno``; every negative return is raised as
  ``OSError(errno, strerror(errno), path)``.

Action items and lists go through the codec (``hsm.lustre.hal``):
``Copytool.recv`` returns the list's bytes (copied out of the library's
buffer, which the next recv overwrites) for ``hal.parse_hal``, and
``LustreApi.action_begin`` passes a real ``struct hsm_action_item`` with its
``hai_data`` built by ``hal.pack_action_item``.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading
from collections.abc import Sequence
from ctypes import (
    POINTER,
    Structure,
    c_bool,
    c_char,
    c_char_p,
    c_int,
    c_int32,
    c_int64,
    c_longlong,
    c_uint8,
    c_uint16,
    c_uint32,
    c_uint64,
    c_ulonglong,
)
from typing import Any

from hsm.fid import Fid
from hsm.lustre import hal

__all__ = [
    "DEFAULT_LIBRARY",
    "ENV_LIBRARY",
    "FUNCTIONS",
    "STRUCTURES",
    "CopyAction",
    "Copytool",
    "LustreApi",
    "LustreApiUnavailable",
    "library_path",
]

#: The environment variable naming the library when no path is given.
ENV_LIBRARY = "HSM_LIBLUSTREAPI"
#: liblustreapi's soname.
DEFAULT_LIBRARY = "liblustreapi.so.1"

#: ``llapi_get_data_version`` flags.
LL_DV_RD_FLUSH = 1 << 0
LL_DV_WR_FLUSH = 1 << 1
LL_DV_SZ_UPDATE = 1 << 2

#: ``PATH_MAX``: the buffer ``fid2path`` fills.
PATH_MAX = 4096


class LustreApiUnavailable(RuntimeError):
    """The library cannot be loaded, or lacks a function the binding needs."""


# ------------------------------------------------------------- structures
# All packed structs use _pack_ = 1; the others are naturally aligned, and a
# test checks every sizeof and offset against the header layout.


class LuFid(Structure):
    """``struct lu_fid`` (packed, 16 bytes)."""

    _pack_ = 1
    _fields_ = [("f_seq", c_uint64), ("f_oid", c_uint32), ("f_ver", c_uint32)]

    @classmethod
    def of(cls, fid: Fid) -> LuFid:
        return cls(fid.seq, fid.oid, fid.ver)

    def to_fid(self) -> Fid:
        return Fid(int(self.f_seq), int(self.f_oid), int(self.f_ver))


class HsmExtent(Structure):
    """``struct hsm_extent`` (packed, 16 bytes)."""

    _pack_ = 1
    _fields_ = [("offset", c_uint64), ("length", c_uint64)]


class HsmActionItem(Structure):
    """``struct hsm_action_item`` (packed, 72 bytes, ``hai_data`` follows)."""

    _pack_ = 1
    _fields_ = [
        ("hai_len", c_uint32),
        ("hai_action", c_uint32),
        ("hai_fid", LuFid),
        ("hai_dfid", LuFid),
        ("hai_extent", HsmExtent),
        ("hai_cookie", c_uint64),
        ("hai_gid", c_uint64),
        ("hai_data", c_char * 0),
    ]


class HsmActionList(Structure):
    """``struct hsm_action_list`` (packed, 32 bytes, ``hal_fsname`` follows)."""

    _pack_ = 1
    _fields_ = [
        ("hal_version", c_uint32),
        ("hal_count", c_uint32),
        ("hal_compound_id", c_uint64),
        ("hal_flags", c_uint64),
        ("hal_archive_id", c_uint32),
        ("padding1", c_uint32),
        ("hal_fsname", c_char * 0),
    ]


class HsmUserState(Structure):
    """``struct hsm_user_state`` (32 bytes)."""

    _fields_ = [
        ("hus_states", c_uint32),
        ("hus_archive_id", c_uint32),
        ("hus_in_progress_state", c_uint32),
        ("hus_in_progress_action", c_uint32),
        ("hus_in_progress_location", HsmExtent),
        ("hus_extended_info", c_char * 0),
    ]


class HsmCurrentAction(Structure):
    """``struct hsm_current_action`` (24 bytes)."""

    _fields_ = [
        ("hca_state", c_uint32),
        ("hca_action", c_uint32),
        ("hca_location", HsmExtent),
    ]


class HsmRequest(Structure):
    """``struct hsm_request`` (24 bytes)."""

    _fields_ = [
        ("hr_action", c_uint32),
        ("hr_archive_id", c_uint32),
        ("hr_flags", c_uint64),
        ("hr_itemcount", c_uint32),
        ("hr_data_len", c_uint32),
    ]


class HsmUserItem(Structure):
    """``struct hsm_user_item`` (packed, 32 bytes)."""

    _pack_ = 1
    _fields_ = [("hui_fid", LuFid), ("hui_extent", HsmExtent)]


class HsmUserRequest(Structure):
    """``struct hsm_user_request`` (packed, 24 bytes; the items and the data
    follow)."""

    _pack_ = 1
    _fields_ = [("hur_request", HsmRequest), ("hur_user_item", HsmUserItem * 0)]


class HsmProgress(Structure):
    """``struct hsm_progress`` (48 bytes; the ``LL_IOC_HSM_PROGRESS`` argument)."""

    _fields_ = [
        ("hp_fid", LuFid),
        ("hp_cookie", c_uint64),
        ("hp_extent", HsmExtent),
        ("hp_flags", c_uint16),
        ("hp_errval", c_uint16),
        ("padding", c_uint32),
    ]


class HsmCopy(Structure):
    """``struct hsm_copy`` (88 bytes; the ``LL_IOC_HSM_COPY_START/END`` argument)."""

    _fields_ = [
        ("hc_data_version", c_uint64),
        ("hc_flags", c_uint16),
        ("hc_errval", c_uint16),
        ("padding", c_uint32),
        ("hc_hai", HsmActionItem),
    ]


class KucHdr(Structure):
    """``struct kuc_hdr`` (8 bytes)."""

    _fields_ = [
        ("kuc_magic", c_uint16),
        ("kuc_transport", c_uint8),
        ("kuc_flags", c_uint8),
        ("kuc_msgtype", c_uint16),
        ("kuc_msglen", c_uint16),
    ]


class HsmCopytoolPrivate(Structure):
    """``struct hsm_copytool_private``: opaque, only ever behind a pointer."""


class HsmCopyactionPrivate(Structure):
    """``struct hsm_copyaction_private``: opaque, only ever behind a pointer."""


class Timespec(Structure):
    """``struct timespec`` (64-bit Linux)."""

    _fields_ = [("tv_sec", c_int64), ("tv_nsec", c_int64)]


#: ``struct stat`` of the 64-bit Linux ABIs whose layout is known here (it
#: is the kernel's, as glibc exposes it); llapi_hsm_import reads the size,
#: owner, mode and times of the file it creates from one. x86_64 is checked
#: against the C compiler's <sys/stat.h> by tests/test_lustre_api.py;
#: aarch64 follows asm-generic/stat.h, and is not checked on this machine.
_STAT_FIELDS: dict[str, list[tuple[str, Any]]] = {
    "x86_64": [
        ("st_dev", c_uint64), ("st_ino", c_uint64), ("st_nlink", c_uint64), ("st_mode", c_uint32),
        ("st_uid", c_uint32), ("st_gid", c_uint32), ("__pad0", c_int), ("st_rdev", c_uint64),
        ("st_size", c_int64), ("st_blksize", c_int64), ("st_blocks", c_int64), ("st_atim", Timespec),
        ("st_mtim", Timespec), ("st_ctim", Timespec), ("__glibc_reserved", c_int64 * 3),
    ],
    "aarch64": [
        ("st_dev", c_uint64), ("st_ino", c_uint64), ("st_mode", c_uint32), ("st_nlink", c_uint32),
        ("st_uid", c_uint32), ("st_gid", c_uint32), ("st_rdev", c_uint64), ("__pad1", c_uint64),
        ("st_size", c_int64), ("st_blksize", c_int32), ("__pad2", c_int32), ("st_blocks", c_int64),
        ("st_atim", Timespec), ("st_mtim", Timespec), ("st_ctim", Timespec), ("__glibc_reserved", c_int32 * 2),
    ],
}
STAT_MACHINE = platform.machine()


class Stat(Structure):
    """``struct stat`` of this machine (:data:`_STAT_FIELDS`); empty on a
    machine whose layout is not known, where ``hsm_import`` refuses."""

    _fields_ = _STAT_FIELDS.get(STAT_MACHINE, [])


#: C struct name -> ctypes Structure, for every struct the binding knows.
STRUCTURES: dict[str, type[Structure]] = {
    "lu_fid": LuFid,
    "hsm_extent": HsmExtent,
    "hsm_action_item": HsmActionItem,
    "hsm_action_list": HsmActionList,
    "hsm_user_state": HsmUserState,
    "hsm_current_action": HsmCurrentAction,
    "hsm_request": HsmRequest,
    "hsm_user_item": HsmUserItem,
    "hsm_user_request": HsmUserRequest,
    "hsm_progress": HsmProgress,
    "hsm_copy": HsmCopy,
    "kuc_hdr": KucHdr,
    "hsm_copytool_private": HsmCopytoolPrivate,
    "hsm_copyaction_private": HsmCopyactionPrivate,
    "stat": Stat,
}

_CtPtr = POINTER(HsmCopytoolPrivate)
_HcpPtr = POINTER(HsmCopyactionPrivate)

#: name -> (restype, argtypes) of every function the binding loads (the
#: declarations of ``hsm.lustre.prototypes.PROTOTYPES``).
FUNCTIONS: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "llapi_hsm_copytool_register": (c_int, (POINTER(_CtPtr), c_char_p, c_int, POINTER(c_int), c_int)),
    "llapi_hsm_copytool_unregister": (c_int, (POINTER(_CtPtr),)),
    "llapi_hsm_copytool_get_fd": (c_int, (_CtPtr,)),
    "llapi_hsm_copytool_recv": (c_int, (_CtPtr, POINTER(POINTER(HsmActionList)), POINTER(c_int))),
    "llapi_hsm_action_begin": (
        c_int,
        (POINTER(_HcpPtr), _CtPtr, POINTER(HsmActionItem), c_int, c_int, c_bool),
    ),
    "llapi_hsm_action_end": (c_int, (POINTER(_HcpPtr), POINTER(HsmExtent), c_int, c_int)),
    "llapi_hsm_action_progress": (c_int, (_HcpPtr, POINTER(HsmExtent), c_uint64, c_int)),
    "llapi_hsm_action_get_dfid": (c_int, (_HcpPtr, POINTER(LuFid))),
    "llapi_hsm_action_get_fd": (c_int, (_HcpPtr,)),
    "llapi_hsm_state_get": (c_int, (c_char_p, POINTER(HsmUserState))),
    "llapi_hsm_state_set": (c_int, (c_char_p, c_uint64, c_uint64, c_uint32)),
    "llapi_hsm_current_action": (c_int, (c_char_p, POINTER(HsmCurrentAction))),
    "llapi_hsm_request": (c_int, (c_char_p, POINTER(HsmUserRequest))),
    "llapi_hsm_user_request_alloc": (POINTER(HsmUserRequest), (c_int, c_int)),
    "llapi_get_data_version": (c_int, (c_int, POINTER(c_uint64), c_uint64)),
    "llapi_fid2path": (
        c_int,
        (c_char_p, c_char_p, POINTER(c_char), c_int, POINTER(c_longlong), POINTER(c_int)),
    ),
    "llapi_path2fid": (c_int, (c_char_p, POINTER(LuFid))),
    "llapi_open_by_fid": (c_int, (c_char_p, POINTER(LuFid), c_int)),
    "llapi_get_mdt_index_by_fid": (c_int, (c_int, POINTER(LuFid), POINTER(c_int))),
    "llapi_hsm_import": (
        c_int,
        (c_char_p, c_int, POINTER(Stat), c_ulonglong, c_int, c_int, c_int, POINTER(c_char), POINTER(LuFid)),
    ),
}


def library_path(path: str | os.PathLike[str] | None = None) -> str:
    """The library to load: *path*, else ``$HSM_LIBLUSTREAPI``, else the soname."""
    if path is not None:
        return os.fspath(path)
    return os.environ.get(ENV_LIBRARY) or DEFAULT_LIBRARY


def _raise(rc: int, filename: str | None) -> None:
    if rc < 0:
        err = -rc
        raise OSError(err, os.strerror(err), filename)


def _path(p: str | os.PathLike[str]) -> bytes:
    return os.fsencode(p)


class LustreApi:
    """liblustreapi, loaded on first use (thread-safe)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = library_path(path)
        self._lib: ctypes.CDLL | None = None
        self._funcs: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = "loaded" if self._lib is not None else "not loaded"
        return f"<LustreApi {self.path} ({state})>"

    @property
    def loaded(self) -> bool:
        return self._lib is not None

    def load(self) -> ctypes.CDLL:
        """Load the library now (``LustreApiUnavailable`` if it cannot be)."""
        with self._lock:
            if self._lib is None:
                try:
                    self._lib = ctypes.CDLL(self.path)
                except OSError as e:
                    raise LustreApiUnavailable(
                        f"cannot load liblustreapi from {self.path!r} "
                        f"(set ${ENV_LIBRARY} or the path in the configuration): {e}"
                    ) from None
            return self._lib

    def function(self, name: str) -> Any:
        """The ctypes function *name* (one of ``FUNCTIONS``) with its
        argtypes and restype set; resolved once."""
        fn = self._funcs.get(name)
        if fn is not None:
            return fn
        restype, argtypes = FUNCTIONS[name]
        lib = self.load()
        try:
            fn = getattr(lib, name)
        except AttributeError:
            raise LustreApiUnavailable(f"{self.path} does not export {name}") from None
        fn.restype = restype
        fn.argtypes = argtypes
        with self._lock:
            self._funcs[name] = fn
        return fn

    # ------------------------------------------------------------ copytool

    def copytool_register(
        self, mnt: str | os.PathLike[str], archives: Sequence[int], rfd_flags: int = 0
    ) -> Copytool:
        """``llapi_hsm_copytool_register``: become this client's copytool for
        *archives* (empty, or one 0, means every archive). Needs
        CAP_SYS_ADMIN on a real client."""
        mnt_s = os.fspath(mnt)
        ids = [int(a) for a in archives]
        arr = (c_int * max(len(ids), 1))(*ids)
        handle = _CtPtr()
        rc = self.function("llapi_hsm_copytool_register")(
            ctypes.byref(handle), _path(mnt_s), len(ids), arr if ids else None, rfd_flags
        )
        _raise(rc, mnt_s)
        if not handle:
            raise OSError(0, "llapi_hsm_copytool_register returned no handle", mnt_s)
        return Copytool(self, handle, mnt_s, tuple(ids))

    # -------------------------------------------------------- copy actions

    def action_begin(
        self,
        ct: Copytool | None,
        item: hal.ActionItem,
        mdt_index: int = -1,
        open_flags: int = 0,
        is_error: bool = False,
    ) -> CopyAction:
        """``llapi_hsm_action_begin`` for *item* (a ``struct hsm_action_item``
        with its ``hai_data``). *ct* None passes a NULL copytool: the real
        liblustreapi dereferences it except with *is_error* (and always in
        end), so only a library that allows it may be given None."""
        if ct is not None and ct.closed:
            raise ValueError(f"copytool on {ct.mnt} is unregistered")
        raw = hal.pack_action_item(item)
        buf = ctypes.create_string_buffer(raw, len(raw))
        hai = ctypes.cast(buf, POINTER(HsmActionItem))
        hcp = _HcpPtr()
        rc = self.function("llapi_hsm_action_begin")(
            ctypes.byref(hcp),
            ct.handle if ct is not None else None,
            hai,
            mdt_index,
            open_flags,
            bool(is_error),
        )
        _raise(rc, str(item.fid))
        if not hcp:
            raise OSError(0, "llapi_hsm_action_begin returned no handle", str(item.fid))
        return CopyAction(self, hcp, item, ct)

    # ------------------------------------------------------ state, request

    def state_get(self, path: str | os.PathLike[str]) -> hal.UserState:
        """``llapi_hsm_state_get``."""
        hus = HsmUserState()
        rc = self.function("llapi_hsm_state_get")(_path(path), ctypes.byref(hus))
        _raise(rc, os.fspath(path))
        loc = hus.hus_in_progress_location
        return hal.UserState(
            int(hus.hus_states),
            int(hus.hus_archive_id),
            int(hus.hus_in_progress_state),
            int(hus.hus_in_progress_action),
            int(loc.offset),
            int(loc.length),
        )

    def state_set(
        self, path: str | os.PathLike[str], set: int, clear: int, archive_id: int = 0
    ) -> None:
        """``llapi_hsm_state_set`` (``lfs hsm_set`` / ``hsm_clear``)."""
        rc = self.function("llapi_hsm_state_set")(_path(path), set, clear, archive_id)
        _raise(rc, os.fspath(path))

    def current_action(self, path: str | os.PathLike[str]) -> hal.CurrentAction:
        """``llapi_hsm_current_action`` (``lfs hsm_action``)."""
        hca = HsmCurrentAction()
        rc = self.function("llapi_hsm_current_action")(_path(path), ctypes.byref(hca))
        _raise(rc, os.fspath(path))
        return hal.CurrentAction(
            int(hca.hca_state),
            int(hca.hca_action),
            int(hca.hca_location.offset),
            int(hca.hca_location.length),
        )

    def request(self, path: str | os.PathLike[str], req: hal.UserRequest) -> None:
        """``llapi_hsm_request`` (``lfs hsm_archive`` & co.): *path* is any
        path on the file system; the request is the codec's bytes."""
        raw = hal.build_user_request(req)
        buf = ctypes.create_string_buffer(raw, len(raw))
        rc = self.function("llapi_hsm_request")(
            _path(path), ctypes.cast(buf, POINTER(HsmUserRequest))
        )
        _raise(rc, os.fspath(path))

    # ------------------------------------------------------- files and FIDs

    def data_version(self, fd: int, flags: int = 0) -> int:
        """``llapi_get_data_version`` (flags ``LL_DV_*``)."""
        dv = c_uint64()
        rc = self.function("llapi_get_data_version")(fd, ctypes.byref(dv), flags)
        _raise(rc, None)
        return int(dv.value)

    def hsm_import(self, dst: str | os.PathLike[str], archive_id: int, size: int, uid: int, gid: int,
                   mode: int, atime_ns: int, mtime_ns: int) -> Fid:
        """``llapi_hsm_import`` (``lhsmtool_posix --import``): a new file at
        *dst*, released, with no data: *size* bytes whose data is in
        *archive_id*, owned by *uid*:*gid*, with *mode* (the permission
        bits and the file type) and the times given. The default striping
        (a restore lays the data out). Its new FID; ``OSError`` with
        liblustreapi's errno (EEXIST: *dst* exists)."""
        if not Stat._fields_:
            raise LustreApiUnavailable(f"llapi_hsm_import needs struct stat, whose layout on {STAT_MACHINE} "
                                       "this binding does not know (x86_64 and aarch64 only)")
        st = Stat()
        st.st_size = size
        st.st_uid, st.st_gid, st.st_mode = uid, gid, mode
        st.st_atim = Timespec(*divmod(atime_ns, 10**9))
        st.st_mtim = Timespec(*divmod(mtime_ns, 10**9))
        fid = LuFid()
        rc = self.function("llapi_hsm_import")(_path(dst), archive_id, ctypes.byref(st), 0, -1, 0, 0, None,
                                               ctypes.byref(fid))
        _raise(rc, os.fspath(dst))
        return fid.to_fid()

    def path2fid(self, path: str | os.PathLike[str]) -> Fid:
        """``llapi_path2fid``."""
        fid = LuFid()
        rc = self.function("llapi_path2fid")(_path(path), ctypes.byref(fid))
        _raise(rc, os.fspath(path))
        return fid.to_fid()

    def fid2path(self, device: str | os.PathLike[str], fid: Fid, linkno: int = 0) -> str:
        """``llapi_fid2path``: the path of *fid* relative to the file system
        root (*device* is the mount point or the fsname), its *linkno*-th
        name for a file with hard links."""
        buf = ctypes.create_string_buffer(PATH_MAX)
        recno = c_longlong(-1)
        link = c_int(linkno)
        rc = self.function("llapi_fid2path")(
            _path(device), str(fid).encode(), buf, PATH_MAX, ctypes.byref(recno), ctypes.byref(link)
        )
        _raise(rc, str(fid))
        return os.fsdecode(buf.value)

    def mdt_index_by_fid(self, fd: int, fid: Fid) -> int:
        """``llapi_get_mdt_index_by_fid``: the index of the MDT serving
        *fid* (DNE), asked through *fd*, an open file of the mount."""
        lf = LuFid.of(fid)
        index = c_int(-1)
        rc = self.function("llapi_get_mdt_index_by_fid")(fd, ctypes.byref(lf), ctypes.byref(index))
        _raise(rc, str(fid))
        return index.value

    def open_by_fid(self, lustre_dir: str | os.PathLike[str], fid: Fid, flags: int) -> int:
        """``llapi_open_by_fid``: a new file descriptor (the caller closes it)."""
        lf = LuFid.of(fid)
        rc: int = self.function("llapi_open_by_fid")(_path(lustre_dir), ctypes.byref(lf), flags)
        _raise(rc, str(fid))
        return rc


class Copytool:
    """A registered copytool (``struct hsm_copytool_private *``)."""

    def __init__(self, api: LustreApi, handle: Any, mnt: str, archives: tuple[int, ...]) -> None:
        self.api = api
        self.handle = handle
        self.mnt = mnt
        self.archives = archives
        self.closed = False

    def __repr__(self) -> str:
        return f"<Copytool {self.mnt} archives={list(self.archives)}{' closed' if self.closed else ''}>"

    def _check(self) -> None:
        if self.closed:
            raise ValueError(f"copytool on {self.mnt} is unregistered")

    def fd(self) -> int:
        """``llapi_hsm_copytool_get_fd``: the pipe to poll (owned by the library)."""
        self._check()
        rc: int = self.api.function("llapi_hsm_copytool_get_fd")(self.handle)
        _raise(rc, self.mnt)
        return rc

    def recv(self) -> bytes:
        """``llapi_hsm_copytool_recv``: the next action list's bytes, copied
        out of the library's buffer (for ``hal.parse_hal``). Blocks unless
        registered with ``O_NONBLOCK`` (then ``EAGAIN``); ``ESHUTDOWN`` when
        the kernel goes away."""
        self._check()
        halp = POINTER(HsmActionList)()
        size = c_int(0)
        rc = self.api.function("llapi_hsm_copytool_recv")(
            self.handle, ctypes.byref(halp), ctypes.byref(size)
        )
        _raise(rc, self.mnt)
        if not halp or size.value < 0:
            raise OSError(0, "llapi_hsm_copytool_recv returned no list", self.mnt)
        return ctypes.string_at(halp, size.value)

    def unregister(self) -> None:
        """``llapi_hsm_copytool_unregister`` (idempotent). Copy actions begun
        with this handle cannot be used afterwards (the library would use
        freed memory); they raise ``ValueError``."""
        if self.closed:
            return
        rc = self.api.function("llapi_hsm_copytool_unregister")(ctypes.byref(self.handle))
        self.closed = True
        _raise(rc, self.mnt)

    close = unregister

    def __enter__(self) -> Copytool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unregister()


class CopyAction:
    """One begun action (``struct hsm_copyaction_private *``); ``end`` frees it."""

    def __init__(self, api: LustreApi, handle: Any, item: hal.ActionItem, ct: Copytool | None) -> None:
        self.api = api
        self.handle = handle
        self.item = item
        self.copytool = ct
        self.ended = False

    def __repr__(self) -> str:
        return f"<CopyAction {self.item.fid} cookie={self.item.cookie:#x}{' ended' if self.ended else ''}>"

    def _check(self) -> None:
        if self.ended:
            raise ValueError(f"copy action for {self.item.fid} already ended")
        if self.copytool is not None and self.copytool.closed:
            raise ValueError(f"copytool on {self.copytool.mnt} is unregistered")

    def progress(self, offset: int, length: int, total: int, flags: int = 0) -> None:
        """``llapi_hsm_action_progress`` (``ECANCELED`` once cancelled)."""
        self._check()
        he = HsmExtent(offset, length)
        rc = self.api.function("llapi_hsm_action_progress")(self.handle, ctypes.byref(he), total, flags)
        _raise(rc, str(self.item.fid))

    def end(self, offset: int, length: int, flags: int, errval: int) -> None:
        """``llapi_hsm_action_end``: the library frees the handle even when
        the MDT refuses the end (then the ``OSError`` is raised after)."""
        self._check()
        he = HsmExtent(offset, length)
        rc = self.api.function("llapi_hsm_action_end")(
            ctypes.byref(self.handle), ctypes.byref(he), flags, errval
        )
        if not self.handle:
            self.ended = True
        _raise(rc, str(self.item.fid))
        self.ended = True

    def fd(self) -> int:
        """``llapi_hsm_action_get_fd``: a dup of the source (archive) or the
        volatile file (restore); the caller closes it."""
        self._check()
        rc: int = self.api.function("llapi_hsm_action_get_fd")(self.handle)
        _raise(rc, str(self.item.fid))
        return rc

    def dfid(self) -> Fid:
        """``llapi_hsm_action_get_dfid``: the data FID (a restore's volatile file)."""
        self._check()
        fid = LuFid()
        rc = self.api.function("llapi_hsm_action_get_dfid")(self.handle, ctypes.byref(fid))
        _raise(rc, str(self.item.fid))
        return fid.to_fid()
