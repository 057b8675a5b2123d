"""The ctypes binding over liblustreapi: every Structure has the layout of
``lustre_user.h`` / ``lustre_kernelcomm.h`` (sizes and offsets of the
reference, section 2), the binding loads exactly the functions of
``hsm.lustre.prototypes`` with argument types that follow the header's
prototypes, and it drives a real shared library: a small C file compiled
here with the system ``cc`` (the header's prototypes are pasted in, so the
compiler refuses a definition that differs), whose functions record what
they were given and return fixed results or ``-errno``."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import struct
import subprocess
from ctypes import (
    POINTER,
    c_bool,
    c_char,
    c_char_p,
    c_int,
    c_longlong,
    c_uint32,
    c_uint64,
    c_ulonglong,
)
from pathlib import Path
from typing import Any

import pytest

from hsm.fid import Fid
from hsm.hsmflags import HP_FLAG_COMPLETED, HP_FLAG_RETRY, HS, HSMA, HUA, LUSTRE_EOF
from hsm.lustre import api, hal, prototypes
from hsm.lustre.hal import ActionItem, ActionList, UserItem, UserRequest

# ----------------------------------------------------------------- layouts
# The reference (liblustreapi-hsm.md, section 2): sizeof and offsetof of
# every struct that crosses the library, LP64.

LAYOUT: dict[str, tuple[int, dict[str, int]]] = {
    "lu_fid": (16, {"f_seq": 0, "f_oid": 8, "f_ver": 12}),
    "hsm_extent": (16, {"offset": 0, "length": 8}),
    "hsm_action_item": (
        72,
        {
            "hai_len": 0, "hai_action": 4, "hai_fid": 8, "hai_dfid": 24,
            "hai_extent": 40, "hai_cookie": 56, "hai_gid": 64, "hai_data": 72,
        },
    ),
    "hsm_action_list": (
        32,
        {
            "hal_version": 0, "hal_count": 4, "hal_compound_id": 8, "hal_flags": 16,
            "hal_archive_id": 24, "padding1": 28, "hal_fsname": 32,
        },
    ),
    "hsm_user_state": (
        32,
        {
            "hus_states": 0, "hus_archive_id": 4, "hus_in_progress_state": 8,
            "hus_in_progress_action": 12, "hus_in_progress_location": 16,
            "hus_extended_info": 32,
        },
    ),
    "hsm_current_action": (24, {"hca_state": 0, "hca_action": 4, "hca_location": 8}),
    "hsm_request": (
        24,
        {"hr_action": 0, "hr_archive_id": 4, "hr_flags": 8, "hr_itemcount": 16, "hr_data_len": 20},
    ),
    "hsm_user_item": (32, {"hui_fid": 0, "hui_extent": 16}),
    "hsm_user_request": (24, {"hur_request": 0, "hur_user_item": 24}),
    "hsm_progress": (
        48,
        {"hp_fid": 0, "hp_cookie": 16, "hp_extent": 24, "hp_flags": 40, "hp_errval": 42, "padding": 44},
    ),
    "hsm_copy": (
        88,
        {"hc_data_version": 0, "hc_flags": 8, "hc_errval": 10, "padding": 12, "hc_hai": 16},
    ),
    "kuc_hdr": (
        8,
        {"kuc_magic": 0, "kuc_transport": 2, "kuc_flags": 3, "kuc_msgtype": 4, "kuc_msglen": 6},
    ),
}
#: ``struct stat`` of x86_64 (<sys/stat.h>, glibc; the kernel's layout):
#: the C compiler checks these against its own header below.
STAT_X86_64 = (
    144,
    {
        "st_dev": 0, "st_ino": 8, "st_nlink": 16, "st_mode": 24, "st_uid": 28, "st_gid": 32, "__pad0": 36,
        "st_rdev": 40, "st_size": 48, "st_blksize": 56, "st_blocks": 64, "st_atim": 72, "st_mtim": 88,
        "st_ctim": 104, "__glibc_reserved": 120,
    },
)
if api.STAT_MACHINE == "x86_64":
    LAYOUT["stat"] = STAT_X86_64
#: Packed in the header: no padding anywhere, alignment 1.
PACKED = {"lu_fid", "hsm_extent", "hsm_action_item", "hsm_action_list", "hsm_user_item", "hsm_user_request"}
OPAQUE = {"hsm_copytool_private", "hsm_copyaction_private"}


@pytest.mark.parametrize("name", sorted(LAYOUT))
def test_structure_layout(name: str) -> None:
    size, offsets = LAYOUT[name]
    cls = api.STRUCTURES[name]
    assert ctypes.sizeof(cls) == size
    assert [f[0] for f in cls._fields_] == list(offsets)
    for field, off in offsets.items():
        assert getattr(cls, field).offset == off, (name, field)
    if name in PACKED:
        assert ctypes.alignment(cls) == 1


def test_every_struct_has_a_structure() -> None:
    assert set(api.STRUCTURES) == set(LAYOUT) | OPAQUE | {"stat"}  # stat: checked on x86_64 only
    for name in OPAQUE:
        assert not hasattr(api.STRUCTURES[name], "_fields_")


# ------------------------------------------------------------- prototypes

_SCALARS: dict[str, Any] = {
    "int": c_int,
    "bool": c_bool,
    "__u32": c_uint32,
    "__u64": c_uint64,
    "long long": c_longlong,
    "unsigned long long": c_ulonglong,
    "char": c_char,
}


def ctypes_of(ctype: str) -> Any:
    """The ctypes type a C type from the header maps to: ``const char *`` is
    a NUL-terminated input (``c_char_p``), ``char *`` an output buffer, a
    struct pointer a pointer to its Structure (const dropped)."""
    if ctype == "const char *":
        return c_char_p
    base = ctype.removeprefix("const ").rstrip(" *")
    stars = ctype.count("*")
    typ = api.STRUCTURES[base.removeprefix("struct ")] if base.startswith("struct ") else _SCALARS[base]
    for _ in range(stars):
        typ = POINTER(typ)
    return typ


def test_binding_loads_exactly_the_prototyped_functions() -> None:
    assert set(api.FUNCTIONS) == prototypes.names()
    assert len(prototypes.PROTOTYPES) == len(prototypes.names()) == 20


@pytest.mark.parametrize("proto", prototypes.PROTOTYPES)
def test_argtypes_follow_the_header(proto: str) -> None:
    p = prototypes.parse_prototype(proto)
    restype, argtypes = api.FUNCTIONS[p.name]
    assert restype is ctypes_of(p.restype)
    assert argtypes == tuple(ctypes_of(x.ctype) for x in p.params)


def test_parse_prototype() -> None:
    p = prototypes.parse_prototype(
        "struct hsm_user_request *llapi_hsm_user_request_alloc(int itemcount,\n\t\t\tint data_len);"
    )
    assert p.name == "llapi_hsm_user_request_alloc"
    assert p.signature == ("struct hsm_user_request *", ("int", "int"))
    assert prototypes.parse_prototype("int  f( const  struct lu_fid*fid , void *x )").signature == (
        "int", ("const struct lu_fid *", "void *"),
    )
    with pytest.raises(ValueError):
        prototypes.parse_prototype("not a prototype")


# ---------------------------------------------------------- lazy loading


def test_library_path_and_lazy_load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(api.ENV_LIBRARY, raising=False)
    assert api.library_path() == "liblustreapi.so.1"
    monkeypatch.setenv(api.ENV_LIBRARY, "/opt/lustre/lib64/liblustreapi.so.1")
    assert api.library_path() == "/opt/lustre/lib64/liblustreapi.so.1"
    assert api.library_path(tmp_path / "x.so") == str(tmp_path / "x.so")
    lapi = api.LustreApi(tmp_path / "missing.so")
    assert not lapi.loaded  # creating it loads nothing
    with pytest.raises(api.LustreApiUnavailable, match="missing.so"):
        lapi.path2fid("/mnt/lustre/f")


# ------------------------------------------------------ a compiled library

STUB_C = r"""
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;

/* lustre_user.h layouts, written from the header */
struct lu_fid { __u64 f_seq; __u32 f_oid; __u32 f_ver; } __attribute__((packed));
struct hsm_extent { __u64 offset; __u64 length; } __attribute__((packed));
struct hsm_action_item {
    __u32 hai_len; __u32 hai_action; struct lu_fid hai_fid; struct lu_fid hai_dfid;
    struct hsm_extent hai_extent; __u64 hai_cookie; __u64 hai_gid; char hai_data[];
} __attribute__((packed));
struct hsm_action_list {
    __u32 hal_version; __u32 hal_count; __u64 hal_compound_id; __u64 hal_flags;
    __u32 hal_archive_id; __u32 padding1; char hal_fsname[];
} __attribute__((packed));
struct hsm_user_state {
    __u32 hus_states; __u32 hus_archive_id; __u32 hus_in_progress_state;
    __u32 hus_in_progress_action; struct hsm_extent hus_in_progress_location;
    char hus_extended_info[];
};
struct hsm_current_action { __u32 hca_state; __u32 hca_action; struct hsm_extent hca_location; };
struct hsm_request { __u32 hr_action; __u32 hr_archive_id; __u64 hr_flags; __u32 hr_itemcount; __u32 hr_data_len; };
struct hsm_user_item { struct lu_fid hui_fid; struct hsm_extent hui_extent; } __attribute__((packed));
struct hsm_user_request { struct hsm_request hur_request; struct hsm_user_item hur_user_item[]; } __attribute__((packed));
struct hsm_progress {
    struct lu_fid hp_fid; __u64 hp_cookie; struct hsm_extent hp_extent;
    __u16 hp_flags; __u16 hp_errval; __u32 padding;
};
struct hsm_copy { __u64 hc_data_version; __u16 hc_flags; __u16 hc_errval; __u32 padding; struct hsm_action_item hc_hai; };
struct kuc_hdr { __u16 kuc_magic; __u8 kuc_transport; __u8 kuc_flags; __u16 kuc_msgtype; __u16 kuc_msglen; } __attribute__((aligned(sizeof(__u64))));

/* this stub's own private handles */
struct hsm_copytool_private { unsigned magic; int archive_count; int archives[8]; };
struct hsm_copyaction_private { int magic; struct hsm_action_item hai; };

@@ASSERTS@@

/* the prototypes of lustreapi.h: a definition below that differs fails to compile */
@@PROTOTYPES@@

/* what the calls were given, read by the test */
char stub_last_path[4096];
__u64 stub_u64[4];
int stub_int[8];
char stub_hai[4096];
int stub_hai_len;
char stub_hur[4096];
int stub_hur_len;
char stub_hal_buf[1 << 16];
int stub_hal_len = -1;
int stub_live_actions;

static void keep_path(const char *path) {
    strncpy(stub_last_path, path, sizeof(stub_last_path) - 1);
}

int llapi_path2fid(const char *path, struct lu_fid *fid) {
    keep_path(path);
    if (strcmp(path, "/mnt/lustre/f") != 0)
        return -ENOENT;
    fid->f_seq = 0x200000400ULL; fid->f_oid = 0x1; fid->f_ver = 0x0;
    return 0;
}

/* like LL_IOC_FID2MDTIDX: the index is also the return value */
int llapi_get_mdt_index_by_fid(int fd, const struct lu_fid *fid, int *mdt_index) {
    stub_int[0] = fd;
    if (fid->f_seq != 0x200000400ULL)
        return -ENOENT;
    *mdt_index = (int)fid->f_oid;
    return (int)fid->f_oid;
}

int llapi_hsm_state_get(const char *path, struct hsm_user_state *hus) {
    keep_path(path);
    if (strcmp(path, "/mnt/lustre/f") != 0)
        return -ENOENT;
    hus->hus_states = 0xd; hus->hus_archive_id = 3;
    hus->hus_in_progress_state = 2; hus->hus_in_progress_action = 11;
    hus->hus_in_progress_location.offset = 4096;
    hus->hus_in_progress_location.length = ~0ULL;
    return 0;
}

int llapi_hsm_state_set(const char *path, __u64 setmask, __u64 clearmask, __u32 archive_id) {
    keep_path(path);
    if (strcmp(path, "/mnt/lustre/ro") == 0)
        return -EPERM;
    stub_u64[0] = setmask; stub_u64[1] = clearmask; stub_u64[2] = archive_id;
    return 0;
}

int llapi_hsm_current_action(const char *path, struct hsm_current_action *hca) {
    keep_path(path);
    hca->hca_state = 1; hca->hca_action = 10;
    hca->hca_location.offset = 0; hca->hca_location.length = 1 << 20;
    return 0;
}

int llapi_hsm_request(const char *path, const struct hsm_user_request *request) {
    int len = (int)(sizeof(*request) + request->hur_request.hr_itemcount * sizeof(struct hsm_user_item)
                    + request->hur_request.hr_data_len);
    keep_path(path);
    if (len > (int)sizeof(stub_hur))
        return -E2BIG;
    memcpy(stub_hur, request, len);
    stub_hur_len = len;
    return 0;
}

int llapi_get_data_version(int fd, __u64 *data_version, __u64 flags) {
    if (fd < 0)
        return -EBADF;
    *data_version = 0x1000 + flags;
    return 0;
}

int llapi_fid2path(const char *device, const char *fidstr, char *path, int pathlen,
                   long long *recno, int *linkno) {
    keep_path(device);
    stub_int[6] = (int)*recno; stub_int[7] = *linkno;
    if (strcmp(fidstr, "[0x200000400:0x1:0x0]") != 0)
        return -ENOENT;
    strncpy(path, "dir/f", pathlen);
    return 0;
}

int llapi_hsm_copytool_register(struct hsm_copytool_private **priv, const char *mnt,
                                int archive_count, int *archives, int rfd_flags) {
    struct hsm_copytool_private *ct;
    int i;
    keep_path(mnt);
    if (strcmp(mnt, "/mnt/denied") == 0)
        return -EPERM;
    if (archive_count > 8 || (archive_count > 0 && archives == NULL))
        return -EINVAL;
    ct = calloc(1, sizeof(*ct));
    if (ct == NULL)
        return -ENOMEM;
    ct->magic = 0xC0BE2001;
    ct->archive_count = archive_count;
    for (i = 0; i < archive_count; i++)
        ct->archives[i] = archives[i];
    stub_int[0] = archive_count; stub_int[1] = rfd_flags;
    *priv = ct;
    return 0;
}

int llapi_hsm_copytool_unregister(struct hsm_copytool_private **priv) {
    if (priv == NULL || *priv == NULL)
        return -EINVAL;
    free(*priv);
    *priv = NULL;
    return 0;
}

int llapi_hsm_copytool_get_fd(struct hsm_copytool_private *ct) {
    return ct->magic == 0xC0BE2001 ? 7 : -EINVAL;
}

int llapi_hsm_copytool_recv(struct hsm_copytool_private *priv, struct hsm_action_list **hal,
                            int *msgsize) {
    if (priv == NULL || hal == NULL || msgsize == NULL)
        return -EINVAL;
    if (stub_hal_len < 0) {
        *hal = NULL; *msgsize = 0;
        return -EAGAIN;
    }
    *hal = (struct hsm_action_list *)stub_hal_buf;
    *msgsize = stub_hal_len;
    stub_hal_len = -1;
    return 0;
}

int llapi_hsm_action_begin(struct hsm_copyaction_private **phcp,
                           const struct hsm_copytool_private *ct,
                           const struct hsm_action_item *hai, int restore_mdt_index,
                           int restore_open_flags, bool is_error) {
    struct hsm_copyaction_private *hcp;
    if (hai->hai_len > sizeof(stub_hai))
        return -E2BIG;
    memcpy(stub_hai, hai, hai->hai_len);
    stub_hai_len = hai->hai_len;
    stub_int[2] = restore_mdt_index; stub_int[3] = restore_open_flags;
    stub_int[4] = is_error; stub_int[5] = ct != NULL;
    if (hai->hai_cookie == 0xbad)
        return -ESTALE;
    hcp = calloc(1, sizeof(*hcp));
    if (hcp == NULL)
        return -ENOMEM;
    hcp->magic = 0x19880429;
    hcp->hai = *hai;
    hcp->hai.hai_len = sizeof(*hai);
    if (hai->hai_action == 21) { /* HSMA_RESTORE: the volatile file's FID */
        hcp->hai.hai_dfid.f_seq = 0x200000401ULL; hcp->hai.hai_dfid.f_oid = 0x99;
    }
    stub_live_actions++;
    *phcp = hcp;
    return 0;
}

int llapi_hsm_action_progress(struct hsm_copyaction_private *hcp, const struct hsm_extent *he,
                              __u64 total, int hp_flags) {
    if (hcp == NULL || he == NULL || hcp->magic != 0x19880429)
        return -EINVAL;
    stub_u64[0] = he->offset; stub_u64[1] = he->length; stub_u64[2] = total;
    stub_int[0] = hp_flags;
    return hcp->hai.hai_cookie == 0xcafe ? -ECANCELED : 0;
}

int llapi_hsm_action_end(struct hsm_copyaction_private **phcp, const struct hsm_extent *he,
                         int hp_flags, int errval) {
    struct hsm_copyaction_private *hcp;
    int rc;
    if (phcp == NULL || *phcp == NULL || he == NULL)
        return -EINVAL;
    hcp = *phcp;
    stub_u64[0] = he->offset; stub_u64[1] = he->length; stub_u64[3] = hcp->hai.hai_cookie;
    stub_int[0] = hp_flags; stub_int[1] = errval;
    /* an item the MDT timed out: it frees the handle and returns -ENOENT */
    rc = hcp->hai.hai_cookie == 0xdead ? -ENOENT : 0;
    free(hcp);
    *phcp = NULL;
    stub_live_actions--;
    return rc;
}

int llapi_hsm_action_get_dfid(const struct hsm_copyaction_private *hcp, struct lu_fid *fid) {
    if (hcp->magic != 0x19880429)
        return -EINVAL;
    *fid = hcp->hai.hai_dfid;
    return 0;
}

/* what hsm_import's struct stat holds, read through the system's header */
int llapi_hsm_import(const char *dst, int archive, const struct stat *st, unsigned long long stripe_size,
                     int stripe_offset, int stripe_count, int stripe_pattern, char *pool_name,
                     struct lu_fid *newfid) {
    keep_path(dst);
    if (strcmp(dst, "/mnt/lustre/exists") == 0)
        return -EEXIST;
    stub_u64[0] = (__u64)st->st_size; stub_u64[1] = (__u64)st->st_mtim.tv_sec;
    stub_u64[2] = (__u64)st->st_mtim.tv_nsec; stub_u64[3] = (__u64)st->st_atim.tv_sec;
    stub_int[0] = archive; stub_int[1] = (int)st->st_uid; stub_int[2] = (int)st->st_gid;
    stub_int[3] = (int)st->st_mode; stub_int[4] = (int)stripe_size; stub_int[5] = stripe_offset;
    stub_int[6] = stripe_count + stripe_pattern; stub_int[7] = pool_name == NULL;
    newfid->f_seq = 0x200000401ULL; newfid->f_oid = 0x7; newfid->f_ver = 0;
    return 0;
}
"""

# functions the stub leaves out: the binding must fail only when they are called
STUB_MISSING = {"llapi_open_by_fid", "llapi_hsm_action_get_fd", "llapi_hsm_user_request_alloc"}


def _asserts() -> str:
    lines = []
    for name, (size, offsets) in LAYOUT.items():
        lines.append(f'_Static_assert(sizeof(struct {name}) == {size}, "sizeof {name}");')
        for field, off in offsets.items():
            lines.append(
                f'_Static_assert(offsetof(struct {name}, {field}) == {off}, "{name}.{field}");'
            )
    return "\n".join(lines)


@pytest.fixture(scope="module")
def stub_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no system C compiler (cc) to build the test library")
    d = tmp_path_factory.mktemp("lustreapi")
    src = d / "stub_lustreapi.c"
    src.write_text(
        STUB_C.replace("@@ASSERTS@@", _asserts()).replace(
            "@@PROTOTYPES@@", "\n".join(prototypes.PROTOTYPES)
        )
    )
    out = d / "liblustreapi.so.1"
    res = subprocess.run(
        [cc, "-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture
def lib(stub_lib: Path) -> ctypes.CDLL:
    """The compiled library itself, to read what the calls recorded."""
    return ctypes.CDLL(str(stub_lib))


@pytest.fixture
def lapi(stub_lib: Path, monkeypatch: pytest.MonkeyPatch) -> api.LustreApi:
    monkeypatch.setenv(api.ENV_LIBRARY, str(stub_lib))
    return api.LustreApi()


def ints(lib: ctypes.CDLL) -> Any:
    return (c_int * 8).in_dll(lib, "stub_int")


def u64s(lib: ctypes.CDLL) -> Any:
    return (c_uint64 * 4).in_dll(lib, "stub_u64")


def last_path(lib: ctypes.CDLL) -> str:
    return (c_char * 4096).in_dll(lib, "stub_last_path").value.decode()


def test_exports_and_missing_symbols(lapi: api.LustreApi, stub_lib: Path) -> None:
    res = subprocess.run(["nm", "-D", "--defined-only", str(stub_lib)], capture_output=True, text=True)
    if res.returncode == 0:
        exported = {line.split()[-1] for line in res.stdout.splitlines() if " T " in line}
        assert exported >= prototypes.names() - STUB_MISSING
        assert not exported & STUB_MISSING
    assert lapi.path == str(stub_lib)
    assert not lapi.loaded
    with pytest.raises(api.LustreApiUnavailable, match="does not export llapi_open_by_fid"):
        lapi.open_by_fid("/mnt/lustre", Fid(0x200000400, 1), os.O_RDONLY)
    assert lapi.loaded


def test_hsm_import_passes_the_stat_the_system_header_reads(lapi: api.LustreApi, lib: ctypes.CDLL) -> None:
    """``llapi_hsm_import(dst, archive, const struct stat *, stripe..., pool, newfid)``:
    the library reads size, owner, mode and times through its own <sys/stat.h>."""
    if api.STAT_MACHINE != "x86_64":
        pytest.skip(f"struct stat is checked on x86_64 only (this is {api.STAT_MACHINE})")
    fid = lapi.hsm_import("/mnt/lustre/new", 3, 123_456_789_012, 1001, 100, 0o100640,
                          1_700_000_000_250_000_000, 1_600_000_000_123_456_789)
    assert fid == Fid(0x200000401, 7, 0) and last_path(lib) == "/mnt/lustre/new"
    assert list(u64s(lib)) == [123_456_789_012, 1_600_000_000, 123_456_789, 1_700_000_000]
    # archive, uid, gid, mode; the default striping (size 0, offset -1, count + pattern 0), no pool
    assert list(ints(lib))[:8] == [3, 1001, 100, 0o100640, 0, -1, 0, 1]
    with pytest.raises(FileExistsError):
        lapi.hsm_import("/mnt/lustre/exists", 3, 1, 0, 0, 0o100644, 0, 0)


def test_path2fid_and_enoent(lapi: api.LustreApi, lib: ctypes.CDLL) -> None:
    assert lapi.path2fid("/mnt/lustre/f") == Fid(0x200000400, 0x1, 0x0)
    assert last_path(lib) == "/mnt/lustre/f"
    with pytest.raises(OSError) as ei:
        lapi.path2fid(Path("/mnt/lustre/nope"))
    e = ei.value
    assert type(e) is FileNotFoundError
    assert (e.errno, e.strerror, e.filename) == (errno.ENOENT, os.strerror(errno.ENOENT), "/mnt/lustre/nope")


def test_mdt_index_by_fid(lapi: api.LustreApi, lib: ctypes.CDLL) -> None:
    """``llapi_get_mdt_index_by_fid(int fd, const struct lu_fid *, int *)``
    (lustreapi.h): the index through the pointer, errors negative."""
    assert lapi.mdt_index_by_fid(7, Fid(0x200000400, 3)) == 3
    assert list(ints(lib))[0] == 7
    with pytest.raises(FileNotFoundError):
        lapi.mdt_index_by_fid(7, Fid(0x200000401, 3))


def test_state_get_set_and_errors(lapi: api.LustreApi, lib: ctypes.CDLL) -> None:
    st = lapi.state_get("/mnt/lustre/f")
    assert st == hal.UserState(0xD, 3, 2, HUA.RESTORE, 4096, LUSTRE_EOF)
    with pytest.raises(FileNotFoundError) as ei:
        lapi.state_get("/mnt/lustre/gone")
    assert ei.value.errno == errno.ENOENT and ei.value.filename == "/mnt/lustre/gone"
    lapi.state_set("/mnt/lustre/f", HS.NORELEASE | HS.DIRTY, HS.NOARCHIVE, 7)
    assert list(u64s(lib))[:3] == [HS.NORELEASE | HS.DIRTY, HS.NOARCHIVE, 7]
    with pytest.raises(PermissionError) as ei2:
        lapi.state_set("/mnt/lustre/ro", HS.DIRTY, 0)
    assert (ei2.value.errno, ei2.value.strerror) == (errno.EPERM, os.strerror(errno.EPERM))
    assert lapi.current_action("/mnt/lustre/f") == hal.CurrentAction(1, HUA.ARCHIVE, 0, 1 << 20)


def test_request_passes_the_user_request_bytes(lapi: api.LustreApi, lib: ctypes.CDLL) -> None:
    req = UserRequest(
        HUA.ARCHIVE, 2, 0x1,
        (UserItem(Fid(0x200000400, 1)), UserItem(Fid(0x200000400, 2), 0, 4096)),
        b"opaque",
    )
    lapi.request("/mnt/lustre", req)
    n = c_int.in_dll(lib, "stub_hur_len").value
    got = bytes((c_char * 4096).in_dll(lib, "stub_hur"))[:n]
    assert n == 24 + 2 * 32 + 6
    assert got == hal.build_user_request(req)
    assert hal.parse_user_request(got) == req


def test_data_version_and_fid2path(lapi: api.LustreApi, lib: ctypes.CDLL) -> None:
    assert lapi.data_version(3, api.LL_DV_RD_FLUSH) == 0x1001
    with pytest.raises(OSError) as ei:
        lapi.data_version(-1)
    assert ei.value.errno == errno.EBADF and ei.value.filename is None
    assert lapi.fid2path("/mnt/lustre", Fid(0x200000400, 1)) == "dir/f"
    assert last_path(lib) == "/mnt/lustre"
    assert (ints(lib)[6], ints(lib)[7]) == (-1, 0)
    with pytest.raises(FileNotFoundError) as ei2:
        lapi.fid2path("/mnt/lustre", Fid(0x200000400, 2), linkno=1)
    assert ei2.value.filename == "[0x200000400:0x2:0x0]"
    assert ints(lib)[7] == 1


def test_copytool_register_recv_unregister(lapi: api.LustreApi, lib: ctypes.CDLL) -> None:
    with pytest.raises(PermissionError) as ei:
        lapi.copytool_register("/mnt/denied", [1])
    assert ei.value.filename == "/mnt/denied"
    ct = lapi.copytool_register("/mnt/lustre", [1, 3], os.O_NONBLOCK)
    assert (ints(lib)[0], ints(lib)[1]) == (2, os.O_NONBLOCK)
    assert ct.fd() == 7
    with pytest.raises(BlockingIOError) as ei2:
        ct.recv()
    assert ei2.value.errno == errno.EAGAIN
    # a list in the library's buffer: recv copies it out
    item = ActionItem(HSMA.ARCHIVE, Fid(0x200000400, 5), Fid(0x200000400, 5), 0, LUSTRE_EOF, 0x77, 0, b"d")
    wire = hal.build_hal(ActionList("lustre", 3, (item,)))
    buf = (c_char * (1 << 16)).in_dll(lib, "stub_hal_buf")
    ctypes.memmove(buf, wire, len(wire))
    c_int.in_dll(lib, "stub_hal_len").value = len(wire)
    got = ct.recv()
    assert got == wire
    ctypes.memset(buf, 0xAA, len(wire))  # the next message overwrites the library's buffer
    assert got == wire
    assert hal.parse_hal(got, fsnames=["lustre"]).items == [item]
    ct.unregister()
    ct.unregister()  # idempotent
    with pytest.raises(ValueError, match="unregistered"):
        ct.recv()
    with lapi.copytool_register("/mnt/lustre", []) as ct2:
        assert ints(lib)[0] == 0
    assert ct2.closed


def test_action_begin_progress_end(lapi: api.LustreApi, lib: ctypes.CDLL) -> None:
    live = c_int.in_dll(lib, "stub_live_actions")
    before = live.value
    ct = lapi.copytool_register("/mnt/lustre", [0])
    data = b"\x01hsm-data\xff"
    item = ActionItem(
        HSMA.RESTORE, Fid(0x200000400, 9), Fid(0x200000400, 9), 0, LUSTRE_EOF, 0x1234, 5, data
    )
    ca = lapi.action_begin(ct, item, mdt_index=2, open_flags=os.O_WRONLY)
    # the library got a real struct hsm_action_item with its hai_data
    n = c_int.in_dll(lib, "stub_hai_len").value
    raw = bytes((c_char * 4096).in_dll(lib, "stub_hai"))[:n]
    assert n == 72 + len(data) and struct.unpack_from("<I", raw, 0)[0] == n
    assert raw == hal.pack_action_item(item) and raw[72:] == data
    assert list(ints(lib))[2:6] == [2, os.O_WRONLY, 0, 1]
    assert live.value == before + 1
    assert ca.dfid() == Fid(0x200000401, 0x99)

    ca.progress(0, 65536, 1 << 20)
    assert list(u64s(lib))[:3] == [0, 65536, 1 << 20]
    ca.end(0, 1 << 20, 0, 0)
    assert ca.ended and live.value == before
    assert (list(u64s(lib))[:2], u64s(lib)[3]) == ([0, 1 << 20], 0x1234)
    with pytest.raises(ValueError, match="already ended"):
        ca.end(0, 0, 0, 0)

    # reporting an error without a copytool handle: begin(is_error) + end
    bad = lapi.action_begin(None, item, is_error=True)
    assert list(ints(lib))[4:6] == [1, 0]
    bad.end(0, LUSTRE_EOF, HP_FLAG_COMPLETED | HP_FLAG_RETRY, errno.EIO)
    assert (ints(lib)[0], ints(lib)[1]) == (HP_FLAG_COMPLETED | HP_FLAG_RETRY, errno.EIO)
    ct.unregister()


def test_action_errors_are_oserrors(lapi: api.LustreApi, lib: ctypes.CDLL) -> None:
    live = c_int.in_dll(lib, "stub_live_actions")
    before = live.value
    ct = lapi.copytool_register("/mnt/lustre", [1])

    def item(cookie: int) -> ActionItem:
        return ActionItem(HSMA.ARCHIVE, Fid(0x200000400, 4), Fid(0x200000400, 4), 0, LUSTRE_EOF, cookie)

    with pytest.raises(OSError) as ei:
        lapi.action_begin(ct, item(0xBAD))
    assert (ei.value.errno, ei.value.filename) == (errno.ESTALE, "[0x200000400:0x4:0x0]")
    cancelled = lapi.action_begin(ct, item(0xCAFE))
    with pytest.raises(OSError) as ei:
        cancelled.progress(0, 10, 10)
    assert ei.value.errno == errno.ECANCELED
    cancelled.end(0, 10, HP_FLAG_COMPLETED, errno.ECANCELED)
    # an end the MDT refuses (timed out): the handle is freed all the same
    timed_out = lapi.action_begin(ct, item(0xDEAD))
    with pytest.raises(FileNotFoundError):
        timed_out.end(0, 10, 0, 0)
    assert timed_out.ended and live.value == before
    # a copy action outlives no unregister (the library would use freed memory)
    orphan = lapi.action_begin(ct, item(0x5))
    ct.unregister()
    with pytest.raises(ValueError, match="unregistered"):
        orphan.progress(0, 1, 1)
    with pytest.raises(ValueError, match="unregistered"):
        lapi.action_begin(ct, item(0x6))
    with pytest.raises(api.LustreApiUnavailable, match="llapi_hsm_action_get_fd"):
        lapi.action_begin(None, item(0x7), is_error=True).fd()
