"""simfs: a directory tree whose regular files behave like Lustre files with
HSM state, so the whole system runs (and is tested) without Lustre.

Layout of a tree rooted at ``ROOT``::

    ROOT/.simfs/fsname        the file system name (like a Lustre fsname)
    ROOT/.simfs/last_fid      the FID allocator ("SEQ OID" of the last FID given)
    ROOT/.simfs/cluster       optional: the id of the coordinator cluster that
                              serves the tree (hsmctl talks to no other)
    ROOT/.simfs/lock          flock()ed around every state change
    ROOT/.simfs/dv/<fid>      each file's data version record (see below)
    ROOT/.simfs/volatile/     restore's volatile files (same file system)
    ROOT/.lustre/fid/<fid>    open by FID: a symlink to the file, like Lustre's
    ROOT/...                  the files: anything written by ordinary means

Per file, in user xattrs:

``user.lustre.fid``
    the 16 bytes of ``struct lu_fid`` (``Fid.pack()``), given on first use
    from sequence ``FID_SEQ_NORMAL`` with increasing object ids.
``user.hsm``
    ``struct hsm_attrs {u32 hsm_compat; u32 hsm_flags; u64 hsm_arch_id;
    u64 hsm_arch_ver}`` little-endian, exactly as Lustre stores
    ``trusted.hsm``. Lustre never sets ``hsm_compat`` itself
    (``lustre_hsm2buf`` copies ``mh_compat``, which starts zeroed), so new
    files get 0 and any value read is written back unchanged.

Both fit inside an ext4 inode (256-byte inodes hold 88 bytes of xattrs), so
a released file really has no block (``st_blocks`` 0). That is why the names
are short and why the data version lives beside the tree rather than in a
third xattr, which would spill all of them into an xattr block.

The data version record (``.simfs/dv/<fid>``) is a counter and the
signature of the data it counts (inode, size, mtime_ns). When the file's
signature no longer matches, the data was written: the counter goes up, and
DIRTY is set if EXISTS ("any write to the file sets DIRTY if EXISTS").
Release and the restore swap record the new signature without counting a
write. While a file's mtime is too recent for the clock's granularity to show
a second write in the same tick (``RACY_WINDOW_NS``), a digest of the data
is kept too and compared, as git does for its "racy" index entries. A file
whose inode is not the one recorded for its FID is a copy that carried the
xattrs along (``cp -a``: it gets a new FID and no HSM state) or a
replacement of the file (an editor saving through rename: a write).

Several processes share one tree (hsmctl, agentd's): every state change
happens under an exclusive ``flock`` on ``.simfs/lock``; reads of an
unchanged file take no lock.

simfs cannot intercept writes: changes are seen when a file's state or data
version is next read through this module. A write into a *released* file
(impossible on Lustre, where it would first restore the file) makes the file
hold new data: it loses RELEASED and gets DIRTY if EXISTS.

User xattrs need write permission on the file: agentd and hsmctl act on
files they may write (on Lustre the copytool runs as root too).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import re
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hsm.fid import FID_SEQ_NORMAL, Fid, FidError
from hsm.hsmflags import (
    HS,
    HS_ALL,
    HS_USER_MASK,
    archive_failure_dirties,
    release_allowed,
    remove_allowed,
    resolve_archive_id,
    restore_allowed,
    state_words,
)
from hsm.wire import FSNAME_RULE, valid_fsname

log = logging.getLogger(__name__)

META_DIR = ".simfs"
DOT_LUSTRE = ".lustre"
XATTR_FID = "user.lustre.fid"
XATTR_HSM = "user.hsm"
_OUR_XATTRS = frozenset({XATTR_FID, XATTR_HSM})

#: A file whose mtime is within this much of "now" may be written again in
#: the same timestamp tick without its mtime changing: keep a digest too.
RACY_WINDOW_NS = 1_000_000_000

_HSM_ATTRS = struct.Struct("<IIQQ")
_DV = struct.Struct("<QQQq")
_DIGEST_SIZE = 16
_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1
_CHUNK = 1 << 20


class NotASimfsTree(FileNotFoundError):
    """The path is not (inside) a simfs tree."""


@dataclass(frozen=True, slots=True)
class HsmAttrs:
    """A file's HSM state: ``struct hsm_attrs`` (``trusted.hsm`` on Lustre)."""

    flags: int = 0
    archive_id: int = 0
    archived_version: int = 0
    compat: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.flags <= _U32:
            raise ValueError(f"HSM flags {self.flags!r} are not a u32")
        if not 0 <= self.archive_id <= _U64:
            raise ValueError(f"HSM archive id {self.archive_id!r} is not a u64")
        if not 0 <= self.archived_version <= _U64:
            raise ValueError(f"archived data version {self.archived_version!r} is not a u64")
        if not 0 <= self.compat <= _U32:
            raise ValueError(f"hsm_compat {self.compat!r} is not a u32")

    def pack(self) -> bytes:
        """The 24 little-endian bytes of ``struct hsm_attrs``."""
        return _HSM_ATTRS.pack(self.compat, self.flags, self.archive_id, self.archived_version)

    @classmethod
    def unpack(cls, data: bytes) -> HsmAttrs:
        if len(data) != _HSM_ATTRS.size:
            raise ValueError(f"struct hsm_attrs is {_HSM_ATTRS.size} bytes, got {len(data)}")
        compat, flags, arch_id, arch_ver = _HSM_ATTRS.unpack(data)
        return cls(flags=flags, archive_id=arch_id, archived_version=arch_ver, compat=compat)

    def with_flags(self, set: int = 0, clear: int = 0) -> HsmAttrs:
        return HsmAttrs(int(self.flags | set) & ~int(clear) & _U32, self.archive_id, self.archived_version, self.compat)


@dataclass(frozen=True, slots=True)
class _Dv:
    """A data version record: counter + signature (+ digest if racy)."""

    counter: int
    ino: int
    size: int
    mtime_ns: int
    digest: bytes | None = None

    def pack(self) -> bytes:
        head = _DV.pack(self.counter, self.ino, self.size, self.mtime_ns)
        return head + (self.digest or b"")

    @classmethod
    def unpack(cls, data: bytes) -> _Dv:
        if len(data) not in (_DV.size, _DV.size + _DIGEST_SIZE):
            raise ValueError(f"data version record is {_DV.size} or {_DV.size + _DIGEST_SIZE} bytes, got {len(data)}")
        counter, ino, size, mtime_ns = _DV.unpack_from(data)
        return cls(counter, ino, size, mtime_ns, data[_DV.size:] or None)

    def sig(self) -> tuple[int, int, int]:
        return (self.ino, self.size, self.mtime_ns)


def _sig(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _is_racy(st: os.stat_result) -> bool:
    return st.st_mtime_ns >= time.time_ns() - RACY_WINDOW_NS


def _digest(path: Path | str) -> bytes:
    h = hashlib.blake2b(digest_size=_DIGEST_SIZE)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.digest()


def _getxattr(path: Path | str, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name)
    except OSError as e:
        if e.errno == errno.ENODATA:
            return None
        raise


def _check_fsname(fsname: str) -> None:
    if not valid_fsname(fsname):
        raise ValueError(
            f"invalid fsname {fsname!r}: like Lustre, {FSNAME_RULE}"
        )


def walk_regular_files(start: Path, prune: Callable[[Path, str], bool]) -> Iterator[Path]:
    """Regular files under directory *start* (none if it is not one), like
    ``find -P START -type f`` sorted: a directory's files, then its subdirs
    but those where ``prune(dirpath, name)``. Links are neither followed nor
    listed; files gone before their ``lstat`` and unreadable dirs are left
    out. For ``SimFS.walk`` and ``hsmctl.lustre.LustreFs.walk``."""
    for dirpath, dirnames, filenames in os.walk(start):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not prune(here, d))
        for name in sorted(filenames):
            p = here / name
            try:
                if stat.S_ISREG(os.lstat(p).st_mode):
                    yield p
            except FileNotFoundError:
                continue


class SimFS:
    """One simfs tree. Create it with :meth:`create`, open it with :meth:`open`."""

    def __init__(self, root: Path | str, fsname: str = "simfs") -> None:
        self.root = Path(os.path.abspath(root)).resolve()
        self.meta = self.root / META_DIR
        stored = self._read_fsname(self.root)
        if stored != fsname:
            raise ValueError(f"simfs tree {self.root} is named {stored!r}, not {fsname!r}")
        self.fsname = stored
        self.fid_dir = self.root / DOT_LUSTRE / "fid"
        self.volatile_dir = self.meta / "volatile"
        self._lock_path = self.meta / "lock"
        self._last_fid_path = self.meta / "last_fid"

    def __repr__(self) -> str:
        return f"SimFS({str(self.root)!r}, fsname={self.fsname!r})"

    # ------------------------------------------------------------------ tree

    @staticmethod
    def _read_fsname(root: Path) -> str:
        try:
            text = (root / META_DIR / "fsname").read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            raise NotASimfsTree(
                f"{root} is not a simfs tree (no {META_DIR}/fsname); make one with SimFS.create()"
            ) from None
        return text.strip()

    @classmethod
    def create(cls, root: Path | str, fsname: str = "simfs") -> SimFS:
        """Make a new tree at *root* (created if missing; may hold files already)."""
        _check_fsname(fsname)
        rootp = Path(os.path.abspath(root))
        if rootp.exists() and not rootp.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "simfs root is not a directory", str(rootp))
        meta = rootp / META_DIR
        if (meta / "fsname").exists():
            raise FileExistsError(errno.EEXIST, "already a simfs tree", str(rootp))
        (meta / "volatile").mkdir(parents=True, exist_ok=True)
        (meta / "dv").mkdir(exist_ok=True)
        (rootp / DOT_LUSTRE / "fid").mkdir(parents=True, exist_ok=True)
        (meta / "lock").touch()
        last = meta / "last_fid"
        if not last.exists():
            last.write_text(f"{FID_SEQ_NORMAL:#x} 0x0\n", encoding="ascii")
        # fsname last: its presence is what makes the directory a tree.
        tmp = meta / "fsname.tmp"
        tmp.write_text(fsname + "\n", encoding="utf-8")
        os.replace(tmp, meta / "fsname")
        log.info("created simfs tree %s (fsname %s)", rootp, fsname)
        return cls(rootp, fsname)

    @property
    def cluster_id(self) -> str:
        """The id of the coordinator cluster that serves this tree, or ""
        when none was recorded (``set_cluster_id``)."""
        try:
            return (self.meta / "cluster").read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return ""

    def set_cluster_id(self, cluster_id: str) -> None:
        """Record which coordinator cluster serves this tree ("" forgets it)."""
        path = self.meta / "cluster"
        if not cluster_id:
            path.unlink(missing_ok=True)
            return
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", cluster_id):
            raise ValueError(f"invalid cluster id {cluster_id!r}")
        tmp = self.meta / "cluster.tmp"
        tmp.write_text(cluster_id + "\n", encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def open(cls, root: Path | str) -> SimFS:
        """Open the existing tree at *root*."""
        rootp = Path(os.path.abspath(root)).resolve()
        return cls(rootp, cls._read_fsname(rootp))

    @staticmethod
    def find_root(path: Path | str) -> Path:
        """The root of the simfs tree that holds *path* (walking up)."""
        p = Path(os.path.abspath(path))
        try:
            p = p.resolve()
        except OSError:
            pass
        for d in (p, *p.parents):
            if (d / META_DIR / "fsname").is_file():
                return d
        raise NotASimfsTree(f"{path} is not inside a simfs tree (no {META_DIR}/fsname above it)")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _rel(self, path: Path) -> Path:
        try:
            return path.relative_to(self.root)
        except ValueError:
            raise ValueError(f"{path} is not inside simfs tree {self.root}") from None

    def _real(self, path: Path | str) -> Path:
        """The real path of a file of the tree (``.lustre/fid/X`` opens by FID)."""
        p = Path(os.path.abspath(path))
        if p.parent.resolve() == self.fid_dir:
            try:
                fid = Fid.parse(p.name)
            except FidError:
                raise FileNotFoundError(errno.ENOENT, "not a FID", str(p)) from None
            return self.path_of(fid)
        real = p.resolve()
        rel = self._rel(real)
        if rel.parts and rel.parts[0] in (META_DIR, DOT_LUSTRE):
            raise ValueError(f"{p} is simfs metadata ({rel.parts[0]}/), not a file of the tree")
        st = os.stat(real)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "not a regular file", str(p))
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(p))
        return real

    def walk(self, top: Path | str | None = None) -> Iterator[Path]:
        """The tree's regular files under directory *top* (default: the root),
        in sorted order, skipping the metadata dirs and symlinks."""
        start = self.root if top is None else Path(os.path.abspath(top)).resolve()
        rel = self._rel(start)
        if rel.parts and rel.parts[0] in (META_DIR, DOT_LUSTRE):
            raise ValueError(f"{top} is simfs metadata, not part of the tree")
        if not start.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(top))
        yield from walk_regular_files(
            start, lambda dirpath, name: dirpath == self.root and name in (META_DIR, DOT_LUSTRE))

    # ------------------------------------------------------------------ FIDs

    def _alloc_fid_locked(self) -> Fid:
        text = self._last_fid_path.read_text(encoding="ascii").split()
        try:
            seq, oid = int(text[0], 16), int(text[1], 16)
        except (IndexError, ValueError):
            raise OSError(errno.EIO, "corrupt FID allocator", str(self._last_fid_path)) from None
        oid += 1
        if oid > _U32:
            seq, oid = seq + 1, 1
        fd, tmp = tempfile.mkstemp(dir=self.meta, prefix=".last_fid.")
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(f"{seq:#x} {oid:#x}\n")
        os.replace(tmp, self._last_fid_path)
        return Fid(seq, oid, 0)

    def _link_path(self, fid: Fid) -> Path:
        return self.fid_dir / fid.bare

    def _ensure_link(self, fid: Fid, real: Path) -> None:
        """Point ``.lustre/fid/<fid>`` at *real* (atomic replace)."""
        link = self._link_path(fid)
        target = os.path.relpath(real, self.fid_dir)
        try:
            if os.readlink(link) == target:
                return
        except (FileNotFoundError, OSError):
            pass
        tmp = self.fid_dir / f".{fid.bare}.{os.getpid()}.{threading.get_ident()}.{time.monotonic_ns()}"
        os.symlink(target, tmp)
        os.replace(tmp, link)

    def _read_fid(self, path: Path) -> Fid | None:
        raw = _getxattr(path, XATTR_FID)
        if raw is None:
            return None
        try:
            return Fid.unpack(raw)
        except FidError:
            log.warning("%s: ignoring malformed %s xattr (%d bytes)", path, XATTR_FID, len(raw))
            return None

    def _dv_path(self, fid: Fid) -> Path:
        return self.meta / "dv" / fid.bare

    def _read_dv(self, fid: Fid) -> _Dv | None:
        try:
            raw = self._dv_path(fid).read_bytes()
        except FileNotFoundError:
            return None
        try:
            return _Dv.unpack(raw)
        except ValueError:
            log.warning("%s: ignoring malformed data version record %s", fid, self._dv_path(fid))
            return None

    def _write_dv(self, fid: Fid, rec: _Dv) -> None:
        """Replace the record atomically (call under the lock)."""
        path = self._dv_path(fid)
        tmp = path.with_name(f".{fid.bare}.{os.getpid()}")
        try:
            tmp.write_bytes(rec.pack())
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(rec.pack())
        os.replace(tmp, path)

    def _allocated_here(self, fid: Fid) -> bool:
        try:
            seq_s, oid_s = self._last_fid_path.read_text(encoding="ascii").split()[:2]
            last = (int(seq_s, 16), int(oid_s, 16))
        except (OSError, ValueError):
            return False
        return fid.ver == 0 and fid.seq >= FID_SEQ_NORMAL and (fid.seq, fid.oid) <= last

    def _new_dv(self, path: Path, counter: int) -> _Dv:
        st = os.stat(path)
        digest = _digest(path) if _is_racy(st) else None
        return _Dv(counter, st.st_ino, st.st_size, st.st_mtime_ns, digest)

    def _is_owner(self, path: Path, fid: Fid) -> bool:
        """Is *path* the file that holds *fid* (not a copy carrying its xattr)?"""
        if self._read_fid(path) != fid:
            return False
        rec = self._read_dv(fid)
        return rec is not None and rec.ino == os.stat(path).st_ino

    def _identify_locked(self, real: Path) -> Fid:
        fid = self._read_fid(real)
        st = os.stat(real)
        if fid is not None:
            rec = self._read_dv(fid)
            if rec is not None and rec.ino == st.st_ino:
                self._ensure_link(fid, real)
                return fid
            # Not the inode known for this FID: either a copy that carried
            # the xattrs along (cp -a), a file from another tree, or the file
            # was replaced (e.g. an editor saving through rename). A copy
            # while the original still holds the FID, or a FID this tree
            # never gave, gets a FID of its own and no HSM state.
            other = self._follow_link(fid)
            if other is not None and other != real and self._is_owner(other, fid):
                log.info("%s is a copy of %s (FID %s): giving it a new FID", real, other, fid)
                fid = None
            elif rec is None and not self._allocated_here(fid):
                log.info("%s carries FID %s that this tree never gave: giving it a new FID", real, fid)
                fid = None
            else:
                # Adopt: a new inode under a known FID is new data (counted,
                # and DIRTY if archived).
                if rec is None:
                    self._write_dv(fid, self._new_dv(real, 1))
                self._ensure_link(fid, real)
                self._refresh_locked(real)
                return fid
            try:
                os.removexattr(real, XATTR_HSM)
            except OSError as e:
                if e.errno != errno.ENODATA:
                    raise
        new = self._alloc_fid_locked()
        os.setxattr(real, XATTR_FID, new.pack())
        self._write_dv(new, self._new_dv(real, 1))
        self._ensure_link(new, real)
        log.debug("%s: new FID %s", real, new)
        return new

    def _follow_link(self, fid: Fid) -> Path | None:
        link = self._link_path(fid)
        try:
            target = os.readlink(link)
        except OSError:
            return None
        p = Path(os.path.normpath(os.path.join(self.fid_dir, target)))
        try:
            if stat.S_ISREG(os.lstat(p).st_mode):
                return p
        except OSError:
            pass
        return None

    def fid_of(self, path: Path | str) -> Fid:
        """The FID of a file of the tree, given on first use."""
        real = self._real(path)
        fid = self._read_fid(real)
        if fid is not None:
            rec = self._read_dv(fid)
            if rec is not None and rec.ino == os.stat(real).st_ino:
                if self._follow_link(fid) != real:
                    self._ensure_link(fid, real)
                return fid
        with self._locked():
            return self._identify_locked(real)

    def path_of(self, fid: Fid) -> Path:
        """The real path of the file with *fid* (rescanning the tree, and
        repairing ``.lustre/fid`` links, if it was renamed)."""
        if not isinstance(fid, Fid):
            raise TypeError(f"path_of() needs a Fid, not {type(fid).__name__}")
        p = self._follow_link(fid)
        if p is not None and self._is_owner(p, fid):
            return p
        if p is not None and self._read_fid(p) == fid and self._adopt(p, fid):
            return p
        log.debug("FID %s: link stale or missing, rescanning %s", fid, self.root)
        found: Path | None = None
        candidates: list[Path] = []
        for f in self.walk():
            try:
                ffid = self._read_fid(f)
                if ffid is None:
                    continue
                if not self._is_owner(f, ffid):
                    if ffid == fid:
                        candidates.append(f)
                    continue
                if self._follow_link(ffid) != f:
                    self._ensure_link(ffid, f)
            except FileNotFoundError:
                continue
            if ffid == fid:
                found = f
        if found is not None:
            return found
        for c in candidates:
            if self._adopt(c, fid):
                return c
        # Unknown (deleted): a link left behind must not open another file.
        with self._locked():
            p = self._follow_link(fid)
            if p is None or not self._is_owner(p, fid):
                try:
                    os.unlink(self._link_path(fid))
                except FileNotFoundError:
                    pass
        raise FileNotFoundError(errno.ENOENT, f"no file with FID {fid} in simfs tree {self.root}")

    def _adopt(self, path: Path, fid: Fid) -> bool:
        """Does *path*, which carries *fid* on another inode than recorded,
        now hold it (the file was replaced) rather than being a copy?"""
        try:
            with self._locked():
                return self._identify_locked(path) == fid
        except FileNotFoundError:
            return False

    def fid_path(self, fid: Fid) -> Path:
        """``<root>/.lustre/fid/<fid>``: opens the file by FID."""
        return self._link_path(fid)

    # ---------------------------------------------------------- data version

    def _refresh_locked(self, real: Path, digest: bytes | None = None,
                        digest_sig: tuple[int, int, int] | None = None) -> tuple[int, HsmAttrs]:
        """Count a write if the data changed since last seen; apply its HSM
        effect. Call under the lock, after ``_identify_locked``. *digest* is
        the data's digest when the file had signature *digest_sig* (computed
        outside the lock), reused if the signature has not moved."""
        fid = self._read_fid(real)
        if fid is None:
            raise RuntimeError(f"{real}: _refresh_locked() before _identify_locked()")
        st = os.stat(real)
        sig = _sig(st)
        rec = self._read_dv(fid)
        attrs = self._read_hsm(real)
        if rec is None:
            self._write_dv(fid, self._new_dv(real, 1))
            return 1, attrs
        if rec.sig() == sig and rec.digest is None:
            return rec.counter, attrs
        racy = _is_racy(st)
        need_digest = racy or (rec.sig() == sig and rec.digest is not None)
        if need_digest and (digest is None or digest_sig != sig):
            digest = _digest(real)
            if _sig(os.stat(real)) != sig:  # written while hashing: surely changed
                digest = None
        changed = rec.sig() != sig or (rec.digest is not None and digest != rec.digest)
        counter = rec.counter + 1 if changed else rec.counter
        new = _Dv(counter, *sig, digest if racy else None)
        if new != rec:
            self._write_dv(fid, new)
        if changed:
            attrs = self._on_write_locked(real, attrs)
        return counter, attrs

    def _on_write_locked(self, real: Path, attrs: HsmAttrs) -> HsmAttrs:
        new = attrs
        if attrs.flags & HS.EXISTS:
            new = new.with_flags(set=HS.DIRTY)
        if attrs.flags & HS.RELEASED:
            log.warning("%s was written while released (simfs cannot restore it first): "
                        "it now holds the new data and is no longer released", real)
            new = new.with_flags(clear=HS.RELEASED)
        if new != attrs:
            self._write_hsm(real, new)
        return new

    def _refresh(self, real: Path) -> tuple[int, HsmAttrs]:
        """Like ``_refresh_locked`` but takes the lock only when needed and
        hashes racy files outside it."""
        fid = self._read_fid(real)
        rec = self._read_dv(fid) if fid is not None else None
        st = os.stat(real)
        if rec is not None and rec.sig() == _sig(st) and rec.digest is None:
            return rec.counter, self._read_hsm(real)
        digest: bytes | None = None
        sig: tuple[int, int, int] | None = None
        if _is_racy(st) or (rec is not None and rec.digest is not None):
            sig = _sig(st)
            digest = _digest(real)
        with self._locked():
            self._identify_locked(real)
            return self._refresh_locked(real, digest, sig)

    def data_version(self, path: Path | str) -> int:
        """The file's data version: changes on every write of the data, not
        on HSM state changes, release or restore."""
        real = self._real(path)
        self.fid_of(real)
        return self._refresh(real)[0]

    # ------------------------------------------------------------- HSM state

    def _read_hsm(self, real: Path) -> HsmAttrs:
        raw = _getxattr(real, XATTR_HSM)
        if raw is None:
            return HsmAttrs()
        try:
            return HsmAttrs.unpack(raw)
        except ValueError as e:
            raise OSError(errno.EIO, f"corrupt {XATTR_HSM} xattr ({e})", str(real)) from None

    def _write_hsm(self, real: Path, attrs: HsmAttrs) -> None:
        os.setxattr(real, XATTR_HSM, attrs.pack())

    def hsm_state(self, path: Path | str) -> HsmAttrs:
        """The file's HSM flags, archive id and archived data version (with
        DIRTY set if it was written since it was archived)."""
        return self.state_and_version(path)[1]

    def state_and_version(self, path: Path | str) -> tuple[int, HsmAttrs]:
        """``data_version`` and ``hsm_state`` of the file, read once."""
        real = self._real(path)
        self.fid_of(real)
        return self._refresh(real)

    def request_state(self, path: Path | str, tries: int = 8) -> tuple[int, HsmAttrs, os.stat_result]:
        """``state_and_version`` and the file's stat, all of one state: what
        a request names as the state it saw. The ctime names that state (a
        restore's rename, a release, a write: each moves it), so it is read
        before and after the flags, again until both agree: a restore that
        ends between the two reads would otherwise pair a released file's
        flags with the restored file's ctime, a "newer" state no ended
        action answers, and a late duplicate would queue a second restore.
        After *tries* changes in a row (a file written all the time), the
        last reads."""
        real = self._real(path)
        before = os.stat(real)
        while True:
            version, attrs = self.state_and_version(real)
            after = os.stat(real)
            tries -= 1
            if (after.st_ctime_ns == before.st_ctime_ns and after.st_ino == before.st_ino) or tries <= 0:
                return version, attrs, after
            before = after

    def alloc_fid(self) -> Fid:
        """A new FID from the tree's allocator, for a file simfs does not
        see yet (the volatile file of a restore made by an MDT)."""
        with self._locked():
            return self._alloc_fid_locked()

    def set_state(self, path: Path | str, set: int = 0, clear: int = 0,
                  archive_id: int | None = None) -> HsmAttrs:
        """What root may do (``llapi_hsm_state_set`` as root): set then
        clear any HSM flags, and set the archive id. An archive id is kept
        only for a file that EXISTS in the archive (else nothing changes,
        as the MDT does); a flag set Lustre refuses raises ``OSError(EINVAL)``."""
        for name, mask in (("set", set), ("clear", clear)):
            if not isinstance(mask, int) or mask < 0:
                raise ValueError(f"{name} mask must be a non-negative int, not {mask!r}")
        real = self._real(path)
        with self._locked():
            self._identify_locked(real)
            _, attrs = self._refresh_locked(real)
            new = attrs.with_flags(set=set, clear=clear)
            if archive_id is not None:
                if not new.flags & HS.EXISTS:
                    return attrs
                new = HsmAttrs(new.flags, archive_id, new.archived_version, new.compat)
            _check_consistent(new.flags, str(path))
            if new != attrs:
                self._write_hsm(real, new)
            return new

    def set_flags(self, path: Path | str, set: int = 0, clear: int = 0) -> HsmAttrs:
        """``lfs hsm_set`` / ``hsm_clear``: set then clear user flags
        (``HS_USER_MASK``: NORELEASE, NOARCHIVE, DIRTY). Other bits raise
        ``PermissionError`` (EPERM, as the MDT answers a non-root user); a
        resulting flag set Lustre refuses (DIRTY without EXISTS, DIRTY with
        RELEASED) raises ``OSError(EINVAL)``. Nothing changes on error."""
        for name, mask in (("set", set), ("clear", clear)):
            if not isinstance(mask, int) or mask < 0:
                raise ValueError(f"{name} mask must be a non-negative int, not {mask!r}")
        bad = int(set | clear) & ~int(HS_USER_MASK)
        if bad:
            raise PermissionError(
                errno.EPERM,
                f"only NORELEASE, NOARCHIVE and DIRTY may be set or cleared by users "
                f"(refused: {bad:#x})",
                str(path),
            )
        return self.set_state(path, set=set, clear=clear)

    def release(self, path: Path | str) -> None:
        """``lfs hsm_release``: drop the file's data, keeping its size and
        times. Allowed iff ARCHIVED, not DIRTY, NORELEASE or LOST, and the
        data version equals the archived one; else ``OSError(EPERM)`` and
        nothing changes. Releasing a released file does nothing."""
        real = self._real(path)
        with self._locked():
            fid = self._identify_locked(real)
            dv, attrs = self._refresh_locked(real)
            if attrs.flags & HS.RELEASED:
                return
            if not release_allowed(attrs.flags, dv, attrs.archived_version):
                raise PermissionError(errno.EPERM, _release_refusal(attrs, dv), str(path))
            st = os.stat(real)
            with open(real, "r+b") as f:
                os.ftruncate(f.fileno(), 0)
                os.ftruncate(f.fileno(), st.st_size)
                os.fsync(f.fileno())
            os.utime(real, ns=(st.st_atime_ns, st.st_mtime_ns))
            self._write_dv(fid, self._new_dv(real, dv))
            self._write_hsm(real, attrs.with_flags(set=HS.RELEASED))
        log.info("%s released (%d bytes)", real, st.st_size)


    def import_released(self, path: Path | str, size: int, archive_id: int, uid: int = -1, gid: int = -1,
                        mode: int = 0o644, mtime_ns: int | None = None) -> Fid:
        """``llapi_hsm_import``: a new file at *path*, released: *size*
        bytes with no data, owned by *uid*/*gid* (-1: the caller's), with
        the permission bits of *mode* and the mtime given, HSM state
        exists, archived and released in *archive_id*. Its data comes back
        with a restore. ``FileExistsError`` when *path* exists; its new FID."""
        p = self._import_path(path, size, archive_id)  # checked before anything is created
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        os.close(fd)
        return self.import_existing(p, size, archive_id, uid, gid, mode, mtime_ns, mtime_ns)

    def _import_path(self, path: Path | str, size: int, archive_id: int) -> Path:
        """*path* made absolute, or ValueError: an import's size and archive
        id out of range, or a path inside simfs's own metadata."""
        if size < 0 or not 0 < archive_id <= _U64:
            raise ValueError(f"import: size {size} and archive id {archive_id} must be >= 0 and > 0")
        p = Path(os.path.abspath(path))
        if self._rel(p.parent.resolve() / p.name).parts[:1] in ((META_DIR,), (DOT_LUSTRE,)):
            raise ValueError(f"{p} is simfs metadata, not a file of the tree")
        return p

    def import_existing(self, path: Path | str, size: int, archive_id: int, uid: int = -1, gid: int = -1,
                        mode: int = 0o644, atime_ns: int | None = None, mtime_ns: int | None = None) -> Fid:
        """``LL_IOC_HSM_IMPORT`` on the empty file *path* (created by the
        caller, as llapi_hsm_import does): ``import_released`` without the
        create. ``OSError(EINVAL)`` unless *path* is an empty regular file
        that simfs has never given an HSM state."""
        p = self._import_path(path, size, archive_id)
        fd = os.open(p, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size != 0 or _getxattr(p, XATTR_HSM) is not None:
                raise OSError(errno.EINVAL, "import needs a new empty file", str(p))
            os.ftruncate(fd, size)
            if uid >= 0 or gid >= 0:
                os.fchown(fd, uid, gid)
            os.fchmod(fd, stat.S_IMODE(mode) or 0o644)
            os.fsync(fd)
        finally:
            os.close(fd)
        if mtime_ns is not None:
            os.utime(p, ns=(mtime_ns if atime_ns is None else atime_ns, mtime_ns))
        real = p.resolve()
        with self._locked():
            fid = self._identify_locked(real)
            dv, attrs = self._refresh_locked(real)
            self._write_hsm(real, HsmAttrs(HS.EXISTS | HS.ARCHIVED | HS.RELEASED, archive_id, dv, attrs.compat))
        log.info("%s imported as %s, released (%d bytes in archive %d)", real, fid, size, archive_id)
        return fid

    # ------------------------------------------ actions: what the MDT does

    def _owned_locked(self, fid: Fid, real: Path) -> tuple[int, HsmAttrs]:
        if self._identify_locked(real) != fid:
            raise FileNotFoundError(errno.ENOENT, f"no file with FID {fid} in simfs tree {self.root}")
        return self._refresh_locked(real)

    def archive_begin(self, fid: Fid, archive_id: int) -> ActionStart:
        """Dispatch of an ARCHIVE: set EXISTS and the archive id (the
        request's, else the file's, else the default) and note the data
        version the copy starts from. ``PermissionError`` (EPERM) if the
        file is never_archive or already archived in another archive;
        ``OSError(ENODATA)`` if it is released (its data is only in the
        archive)."""
        if not 0 <= archive_id <= _U32:
            raise ValueError(f"archive id {archive_id!r} is not a u32")
        real = self.path_of(fid)
        with self._locked():
            dv, attrs = self._owned_locked(fid, real)
            f = attrs.flags
            if f & HS.RELEASED:
                raise OSError(errno.ENODATA, "cannot archive a released file: its data is only in the archive", str(real))
            if f & HS.NOARCHIVE:
                raise PermissionError(errno.EPERM, "cannot archive: the file is marked never_archive", str(real))
            file_aid = attrs.archive_id if f & HS.EXISTS else 0
            if f & HS.EXISTS and archive_id not in (0, file_aid):
                raise PermissionError(
                    errno.EPERM,
                    f"cannot archive to archive {archive_id}: the file is archived in archive {file_aid}",
                    str(real),
                )
            aid = resolve_archive_id(archive_id, file_aid)
            new = HsmAttrs(f | HS.EXISTS, aid, attrs.archived_version, attrs.compat)
            if new != attrs:
                self._write_hsm(real, new)
            st = os.stat(real)
        log.debug("%s %s: archive begins at data version %d (archive %d)", fid, real, dv, aid)
        return ActionStart(real, dv, new, st, attrs)

    def archive_abort(self, fid: Fid, start: ActionStart) -> HsmAttrs:
        """End of an ARCHIVE begun (*start*) on a file that is not the one
        the request named (the copytool refuses it, ESTALE): nothing was copied,
        so the file is left as it was before ``archive_begin`` (EXISTS and
        the archive id it set are undone, no DIRTY as after a failed
        archive), unless its HSM state changed since the begin."""
        real = self.path_of(fid)
        with self._locked():
            _, attrs = self._owned_locked(fid, real)
            if start.before is not None and attrs == start.attrs and attrs != start.before:
                self._write_hsm(real, start.before)
                attrs = start.before
        log.info("%s %s: archive refused, HSM state left as before", fid, real)
        return attrs

    def archive_end(self, fid: Fid, begin_version: int, error: int) -> HsmAttrs:
        """End of an ARCHIVE. Success (*error* 0) sets ARCHIVED (and EXISTS),
        clears DIRTY and LOST and records *begin_version* as the archived data
        version. If the data changed since the archive began (or the file was
        released meanwhile), the copy is not a copy of the file: raises
        ``OSError(EBUSY)`` and does not set ARCHIVED. A failed archive
        (non-zero *error*, or that EBUSY) of an ARCHIVED file sets DIRTY so
        that it is archived again, except with EALREADY, as the MDT does
        (mdt_coordinator.c: hsm_cdt_request_completed). The sign of *error*
        is ignored (llapi_hsm_action_end)."""
        error = abs(error)
        real = self.path_of(fid)
        with self._locked():
            dv, attrs = self._owned_locked(fid, real)
            busy = ""
            if error == 0 and attrs.flags & HS.RELEASED:
                busy = "the file was released during the archive"
            elif error == 0 and dv != begin_version:
                busy = f"the file changed during the archive (data version {begin_version} -> {dv})"
            if error != 0 or busy:
                new = attrs
                if archive_failure_dirties(attrs.flags, error or errno.EBUSY) and not attrs.flags & HS.RELEASED:
                    new = attrs.with_flags(set=HS.DIRTY)
                if new != attrs:
                    self._write_hsm(real, new)
                if busy:
                    raise OSError(errno.EBUSY, busy, str(real))
                return new
            new = HsmAttrs(
                int(attrs.flags | HS.ARCHIVED | HS.EXISTS) & ~int(HS.DIRTY | HS.LOST),
                attrs.archive_id, begin_version, attrs.compat,
            )
            self._write_hsm(real, new)
        log.info("%s %s archived (data version %d, archive %d)", fid, real, begin_version, new.archive_id)
        return new

    def restore_begin(self, fid: Fid) -> tuple[ActionStart, Path]:
        """Dispatch of a RESTORE: creates the empty volatile file the data is
        written into. ``PermissionError`` (EPERM) unless the file is
        released, archived, not dirty and not lost."""
        real = self.path_of(fid)
        with self._locked():
            dv, attrs = self._owned_locked(fid, real)
            if not restore_allowed(attrs.flags):
                raise PermissionError(
                    errno.EPERM,
                    f"cannot restore: the file is {_words(attrs.flags)} (restore needs released, "
                    "archived, not dirty, not lost)",
                    str(real),
                )
            st = os.stat(real)
        fd, vol = tempfile.mkstemp(prefix=f"{fid.bare}.", dir=self.volatile_dir)
        os.close(fd)
        log.debug("%s %s: restore begins into %s", fid, real, vol)
        return ActionStart(real, dv, attrs, st), Path(vol)

    def restore_end(self, fid: Fid, volatile: Path | str, error: int) -> HsmAttrs | None:
        """End of a RESTORE. Success: the volatile file gets the original's
        mode, owner, times, user xattrs, FID and HSM state (RELEASED and DIRTY
        cleared, same data version) and is renamed over the file's current
        path, so the FID and ``.lustre/fid`` keep working. Anything else
        deletes the volatile file and leaves the released file untouched.
        Raises ``OSError(EBUSY)`` (data discarded) if the file is no longer
        released (written, or restored by someone else)."""
        vol = Path(volatile)
        try:
            if error != 0:
                return None
            real = self.path_of(fid)
            with self._locked():
                dv, attrs = self._owned_locked(fid, real)
                if not attrs.flags & HS.RELEASED:
                    raise OSError(
                        errno.EBUSY,
                        f"the file is no longer released ({_words(attrs.flags)}): restored data discarded",
                        str(real),
                    )
                st = os.stat(real)
                fd = os.open(vol, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                vst = os.stat(vol)
                if (vst.st_uid, vst.st_gid) != (st.st_uid, st.st_gid):
                    os.chown(vol, st.st_uid, st.st_gid)
                os.chmod(vol, stat.S_IMODE(st.st_mode))
                for name in os.listxattr(real):
                    if name.startswith("user.") and name not in _OUR_XATTRS:
                        os.setxattr(vol, name, os.getxattr(real, name))
                new = attrs.with_flags(clear=HS.RELEASED | HS.DIRTY)
                os.setxattr(vol, XATTR_FID, fid.pack())
                os.setxattr(vol, XATTR_HSM, new.pack())
                os.utime(vol, ns=(st.st_atime_ns, st.st_mtime_ns))
                rec = self._new_dv(vol, dv)
                if vst.st_size != st.st_size:
                    log.warning("%s %s: restored %d bytes, the released file had %d",
                                fid, real, vst.st_size, st.st_size)
                os.rename(vol, real)
                self._write_dv(fid, rec)
                self._ensure_link(fid, real)
            log.info("%s %s restored (%d bytes)", fid, real, vst.st_size)
            return new
        finally:
            try:
                os.unlink(vol)
            except FileNotFoundError:
                pass

    def purge_volatile(self, older_than_s: float = 24 * 3600) -> int:
        """Delete volatile files left by restores that never ended (an agent
        killed mid-copy), if untouched for *older_than_s*. Returns how many."""
        if older_than_s < 0:
            raise ValueError(f"older_than_s must be >= 0, not {older_than_s!r}")
        limit = time.time_ns() - int(older_than_s * 1e9)
        n = 0
        for p in self.volatile_dir.iterdir():
            try:
                if p.stat().st_mtime_ns < limit:
                    p.unlink()
                    n += 1
            except FileNotFoundError:
                continue
        if n:
            log.info("%s: removed %d stale volatile file(s)", self.root, n)
        return n

    def remove_begin(self, fid: Fid) -> ActionStart:
        """Dispatch of a REMOVE (of the archive copy). ``PermissionError``
        (EPERM) if the file is released: the copy holds its only data."""
        real = self.path_of(fid)
        with self._locked():
            dv, attrs = self._owned_locked(fid, real)
            if not remove_allowed(attrs.flags):
                raise PermissionError(
                    errno.EPERM, "cannot remove the archive copy of a released file: it holds its only data",
                    str(real),
                )
            st = os.stat(real)
        return ActionStart(real, dv, attrs, st)

    def remove_end(self, fid: Fid, error: int) -> HsmAttrs | None:
        """End of a REMOVE: success clears ARCHIVED, EXISTS and LOST (DIRTY is
        left as it is, as the MDT does). A file deleted meanwhile is fine."""
        if error != 0:
            return None
        try:
            real = self.path_of(fid)
            with self._locked():
                _, attrs = self._owned_locked(fid, real)
                new = attrs.with_flags(clear=HS.ARCHIVED | HS.EXISTS | HS.LOST)
                if new != attrs:
                    self._write_hsm(real, new)
        except FileNotFoundError:
            log.info("%s: archive copy removed; the file itself is gone", fid)
            return None
        log.info("%s %s: archive copy removed", fid, real)
        return new


@dataclass(frozen=True, slots=True)
class ActionStart:
    """What an action's begin saw: the file's path, data version, HSM state
    (after the begin's own change) and stat."""

    path: Path
    data_version: int
    attrs: HsmAttrs
    stat: os.stat_result
    before: HsmAttrs | None = None  # ARCHIVE: the HSM state before the begin changed it


def _words(flags: int) -> str:
    names = state_words(flags)
    return " ".join(names) if names else "not archived"


def _check_consistent(flags: int, where: str) -> None:
    """Flag sets mdt_hsm_state_set() refuses with EINVAL."""
    problems = []
    if flags & HS.DIRTY and not flags & HS.EXISTS:
        problems.append("DIRTY without EXISTS (nothing archived yet)")
    if flags & HS.RELEASED and flags & HS.DIRTY:
        problems.append("DIRTY and RELEASED")
    if flags & HS.RELEASED and not flags & HS.ARCHIVED:
        problems.append("RELEASED without ARCHIVED")
    if flags & HS.LOST and not flags & HS.ARCHIVED:
        problems.append("LOST without ARCHIVED")
    if flags & ~int(HS_ALL):
        problems.append(f"unknown flags {flags & ~int(HS_ALL):#x}")
    if problems:
        raise OSError(errno.EINVAL, "inconsistent HSM flags: " + "; ".join(problems), where)


def _release_refusal(attrs: HsmAttrs, dv: int) -> str:
    f = attrs.flags
    if not f & HS.ARCHIVED:
        why = "it is not archived"
    elif f & HS.DIRTY:
        why = "it changed since it was archived (dirty)"
    elif f & HS.NORELEASE:
        why = "it is marked never_release"
    elif f & HS.LOST:
        why = "its archive copy is lost"
    else:
        why = f"its data version {dv} is not the archived one {attrs.archived_version}"
    return f"cannot release: {why}"
