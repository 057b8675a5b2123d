"""The ``posix`` mover: an archive tree on a POSIX filesystem, in the
lhsmtool_posix v1 object layout, so a site can switch between
lhsmtool_posix and agentd without re-archiving.

Layout
    The object of FID ``[seq:oid:ver]`` is
    ``<root>/%04x/%04x/%04x/%04x/%04x/%04x/<seq:oid:ver>`` (``oid`` low and
    high 16 bits, then ``seq`` in four 16-bit groups, low first), see
    :func:`object_path`. Hash directories are created ``0700`` and the
    object is created ``0600``, as lhsmtool_posix does; the object then gets
    the file's mode, owner (best effort: only root may chown) and
    atime/mtime.

Archive
    The data is written to ``<obj>_tmp.<attempt>`` (lhsmtool_posix writes
    ``<obj>_tmp``; a temporary object per attempt means two attempts never
    write one file) (also for an extent archive: the
    range goes to the same offsets of the object, on top of a copy of the
    previous object if there is one, as lhsmtool_posix does in place), then
    fsynced, given its checksum and attributes, renamed onto ``<obj>`` and
    the directory is fsynced. A reader never sees a partial object under the
    object name; a failed or cancelled archive deletes its temporary
    object, a successful one those of earlier attempts (and ``<obj>_tmp``).
    The rename happens only while the agent's lease on the action holds
    (``Job.may_publish``): an attempt cut off from the coordinators never
    overwrites the object of the attempt that replaced it.
    ``handle.end(0)`` is called only once the object is durable. If ``end``
    then refuses the copy (EBUSY: the file changed meanwhile), the object
    stays: a complete, checksummed copy of the data as read, which the file
    is not marked archived against (lhsmtool_posix behaves the same).

Checksum
    Stored on the object itself, in the user xattr ``user.hsm.checksum``
    with the value ``<algorithm>:<hex digest>`` of the object's whole data
    (e.g. ``sha256:9f86...``). An xattr travels with the object through the
    rename, so object and checksum are replaced atomically together. The
    archive filesystem must support user xattrs (ext4, XFS, Lustre, GPFS,
    NFSv4.2 do); if it does not, archives fail with ENOTSUP and a message
    saying so (construct the mover with ``checksum=None`` to archive without
    checksums). Restore verifies the checksum while it streams the data into
    the volatile file and ends the action with EIO on a mismatch, so the
    file stays released. An object without the xattr (written by
    lhsmtool_posix, or with ``checksum=None``) is restored unverified, with a
    warning. ``checksum`` takes a :mod:`hashlib` name, ``True`` (sha256) or
    ``None``/``False`` (none). Restore also refuses an object whose size is
    not the released file's size (EIO).

Striped archives (docs/striping.md)
    A file of at least the policy's ``striping.above`` bytes is archived by
    several agents at once. The *anchor* (the action's first dispatch)
    begins it, lets go of it without copying and reports the data version
    and size it saw. Each *part* reads its extent of the file by FID
    (without beginning an action) and writes it at the same offset into
    ``<obj>_tmp.stripe-<data version>``, shared by the parts, which it
    fsyncs; its Done carries the extent's checksum. The *seal* (the action
    dispatched again once every part is done) begins the action, refuses
    (EBUSY, the archive starts over) a file whose data version or size is
    no longer the anchor's, checksums the whole object, gives it the file's
    attributes, renames it onto ``<obj>`` and ends the action. A stripe's
    temporary object left by a stripe that started over is removed by the
    next seal of the file.

Not done
    No shadow tree (``<root>/shadow/<path>`` symlinks): the backend has no
    fid2path. No striping sidecar is written; REMOVE still deletes an
    ``<obj>.lov`` left by lhsmtool_posix. Extended attributes of the file are
    not copied (the backend does not expose them).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

from agentd.backend import ActionHandle, FileInfo
from agentd.movers.base import (
    Cancelled,
    CopyMade,
    Job,
    MoverError,
    Result,
    is_transient,
    kind_name,
    run_action,
)
from agentd.movers.packer import Packer, PackError, group_name
from hsm.fid import Fid
from hsm.hsmflags import HSMA
from hsm.wire import hints

log = logging.getLogger(__name__)

MiB = 1 << 20

#: The xattr holding ``<algorithm>:<hex digest>`` of an archive object.
CHECKSUM_XATTR = "user.hsm.checksum"

#: Errnos worth retrying whatever side they come from.
_DIR_PERM = 0o700  # lhsmtool_posix DIR_PERM (S_IRWXU)
_FILE_PERM = 0o600  # lhsmtool_posix FILE_PERM (S_IRUSR | S_IWUSR)
_TMP_SUFFIX = "_tmp"
_SIDECAR_SUFFIXES = (".lov",)  # lhsmtool_posix's striping file


def object_path(archive_root: str | os.PathLike[str], fid: Fid) -> Path:
    """The lhsmtool_posix v1 path of ``fid``'s object under ``archive_root``."""
    seq, oid = fid.seq, fid.oid
    parts = (
        oid & 0xFFFF,
        (oid >> 16) & 0xFFFF,
        seq & 0xFFFF,
        (seq >> 16) & 0xFFFF,
        (seq >> 32) & 0xFFFF,
        (seq >> 48) & 0xFFFF,
    )
    return Path(archive_root).joinpath(*(f"{p:04x}" for p in parts), fid.bare)


def keyed_path(archive_root: str | os.PathLike[str], key: str) -> Path:
    """The object a catalog key names under ``archive_root`` (a key this
    mover wrote: the object's path relative to the root). MoverError
    (EINVAL) for a key that could name anything outside the root: absolute,
    with ``..``, ``.`` or empty components, or a NUL."""
    parts = key.split("/")
    if not key or "\0" in key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise MoverError(errno.EINVAL, f"object key {key!r} is not a path below the archive root")
    return Path(archive_root).joinpath(*parts)


def _catalog_path(job: Job) -> str:
    """The file's path for the catalog ("" when unknown: gone or renamed
    meanwhile, or not UTF-8, which protobuf strings cannot carry)."""
    name_of = getattr(job.backend, "name_of", None)
    try:
        path = str(name_of(job.fid)) if name_of is not None else ""
        path.encode()
    except Exception as exc:  # noqa: BLE001 - the name is for the catalog only: never fail the archive
        log.debug("%s: no path for the catalog: %s", job.log_prefix(), exc)
        return ""
    return path


def _tmps(obj: Path, below: int | None = None) -> list[Path]:
    """The temporary objects beside *obj*: lhsmtool_posix's ``<obj>_tmp``
    and ``<obj>_tmp.<attempt>`` (only attempts below *below* when given)."""
    base = obj.name + _TMP_SUFFIX
    try:
        names = [e.name for e in os.scandir(obj.parent) if e.name.startswith(base)]
    except OSError:
        return []
    out = []
    for name in names:
        rest = name[len(base):]
        if rest == "" or (rest[:1] == "." and rest[1:].isdigit() and (below is None or int(rest[1:]) < below)):
            out.append(obj.parent / name)
    return sorted(out)


def _remove_older_tmps(obj: Path, attempt: int, prefix: str) -> None:
    """After a publish: remove temporary objects that earlier attempts of
    the action left behind (an agent killed mid-copy), and lhsmtool_posix's
    ``<obj>_tmp``. An earlier attempt no longer runs: its lease ended before
    this attempt could be given out."""
    for path in _tmps(obj, attempt):
        _unlink_quiet(path, prefix)


def _oserror(exc: OSError, what: str, *, archive_side: bool) -> MoverError:
    err = exc.errno or errno.EIO
    reason = exc.strerror or str(exc)
    return MoverError(err, f"{what}: {reason}", retry=is_transient(err, archive_side=archive_side))


def _open_noatime(path: str) -> int:
    """Open a file to read without touching its atime (O_NOATIME needs the
    file's owner or CAP_FOWNER: without, a plain open)."""
    flags = os.O_RDONLY | os.O_CLOEXEC
    try:
        return os.open(path, flags | os.O_NOATIME)
    except PermissionError:
        return os.open(path, flags)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _write_stream(f: BinaryIO, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = f.write(view)
        if n is None:  # a non-blocking raw stream that could not write
            raise OSError(errno.EAGAIN, "write would block")
        view = view[n:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quiet(path: Path, prefix: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("%s: cannot delete %s: %s", prefix, path, exc.strerror)


class _Throttle:
    """Bandwidth cap: after ``done`` bytes, wait until ``done / rate``
    seconds have passed since the start. Waits on the cancel event, so a
    cancel interrupts the wait at once."""

    __slots__ = ("_rate", "_cancelled", "_start")

    def __init__(self, rate: int, cancelled: threading.Event) -> None:
        self._rate = rate
        self._cancelled = cancelled
        self._start = time.monotonic()

    def wait(self, done: int) -> None:
        if self._cancelled.is_set():
            raise Cancelled
        if self._rate <= 0:
            return
        delay = self._start + done / self._rate - time.monotonic()
        if delay > 0 and self._cancelled.wait(delay):
            raise Cancelled


class _Progress:
    __slots__ = ("_job", "_total", "_interval", "_step", "_last_t", "_last_b")

    def __init__(self, job: Job, total: int, interval: float, step: int) -> None:
        self._job = job
        self._total = total
        self._interval = interval
        self._step = step
        self._last_t = time.monotonic()
        self._last_b = 0
        job.report(0, total)

    def update(self, done: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if (
            final
            or (self._step and done - self._last_b >= self._step)
            or now - self._last_t >= self._interval
        ):
            self._last_t, self._last_b = now, done
            self._job.report(done, self._total)


class PartsHasher:
    """The checksum of a striped archive's object (``ALGO/PARTLEN``, e.g.
    ``sha256/1073741824``): *algo* of the concatenated *algo* digests of its
    consecutive parts of *part_length* bytes (the last one shorter), so the
    seal combines the digests its parts computed, without reading the
    object again, and a restore checks it while it streams the data."""

    def __init__(self, algo: str, part_length: int) -> None:
        if part_length < 1:
            raise ValueError(f"part length {part_length} must be at least 1")
        self.algo = algo
        self.part_length = part_length
        self.name = f"{algo}/{part_length}"
        self._part = hashlib.new(algo)
        self.digest_size = self._part.digest_size
        self._in_part = 0
        self._digests: list[bytes] = []

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = min(len(view), self.part_length - self._in_part)
            self._part.update(view[:n])
            self._in_part += n
            view = view[n:]
            if self._in_part == self.part_length:
                self._digests.append(self._part.digest())
                self._part, self._in_part = hashlib.new(self.algo), 0

    def hexdigest(self) -> str:
        digests = list(self._digests)
        if self._in_part or not digests:
            digests.append(self._part.digest())
        return combine_parts(self.algo, digests)


def combine_parts(algo: str, digests: list[bytes]) -> str:
    """A striped object's checksum (hex) from its parts' digests, in order."""
    return hashlib.new(algo, b"".join(digests)).hexdigest()


def new_hasher(algo: str) -> hashlib._Hash | PartsHasher:
    """The hasher of a stored checksum's algorithm: a :mod:`hashlib` name,
    or ``NAME/PARTLEN`` for a striped object (:class:`PartsHasher`).
    ValueError for an unknown one."""
    name, sep, length = algo.partition("/")
    if not sep:
        return hashlib.new(algo)
    if not length.isdigit() or not 0 < int(length) < 1 << 63:
        raise ValueError(f"unknown checksum algorithm {algo!r}")
    return PartsHasher(name, int(length))


def _stripe_tmp(obj: Path, data_version: int) -> Path:
    """The temporary object the parts of a stripe of *obj* write into."""
    return obj.with_name(f"{obj.name}{_TMP_SUFFIX}.stripe-{data_version}")


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


class PosixMover:
    """Archive to / restore from a directory tree (see the module doc)."""

    name = "posix"
    #: copies parts of striped archives and seals them (agent.proto Hello.stripes)
    stripes = True

    def __init__(
        self,
        archive_root: str | os.PathLike[str],
        *,
        chunk_size: int = MiB,
        progress_interval: float = 2.0,
        progress_bytes: int = 64 * MiB,  # 0: by time only
        bandwidth_limit: int = 0,
        checksum: str | bool | None = "sha256",
        pack_below: int = 0,
        pack_files: int = 1000,
        pack_bytes: int = 64 << 20,
        pack_idle: float = 2.0,
    ) -> None:
        if checksum is True:
            checksum = "sha256"
        if chunk_size <= 0:
            raise ValueError(f"posix mover: chunk_size must be > 0 bytes, got {chunk_size}")
        if progress_interval <= 0:
            raise ValueError(
                f"posix mover: progress_interval must be > 0 s, got {progress_interval}"
            )
        if progress_bytes < 0:
            raise ValueError(
                f"posix mover: progress_bytes must be >= 0 (0 = by time only), got {progress_bytes}"
            )
        if bandwidth_limit < 0:
            raise ValueError(
                f"posix mover: bandwidth_limit must be >= 0 bytes/s (0 = none), "
                f"got {bandwidth_limit}"
            )
        if checksum:
            try:
                hashlib.new(checksum)
            except (ValueError, TypeError):
                raise ValueError(
                    f"posix mover: unknown checksum algorithm {checksum!r}; use one of "
                    f"{', '.join(sorted(hashlib.algorithms_guaranteed))} or none"
                ) from None
        self.archive_root = Path(archive_root)
        self.chunk_size = chunk_size
        self.progress_interval = progress_interval
        self.progress_bytes = progress_bytes
        self.bandwidth_limit = bandwidth_limit
        self.checksum = checksum or None
        #: (action id, attempt) -> the copy an archive wrote, until run() returns it
        self._made: dict[tuple[int, int], CopyMade] = {}
        #: (action id, attempt) -> (data version, size) of a striped archive's anchor
        self._anchored: dict[tuple[int, int], tuple[int, int]] = {}
        self._made_lock = threading.Lock()
        #: small-file packing (agentd.movers.packer): files under pack_below bytes
        self.pack_below = pack_below
        self.packer: Packer | None = None
        if pack_below > 0:
            self.packer = Packer(self.archive_root, max_files=pack_files, max_bytes=pack_bytes, idle=pack_idle,
                                 checksum=self.checksum or "sha256")
            try:
                self.packer.remove_stale_tmps()
            except OSError as exc:
                log.warning("cannot look for a killed mover's temporary containers: %s", exc)

    # -- entry point -------------------------------------------------------

    def run(self, job: Job) -> Result:
        prefix = job.log_prefix()
        ops: dict[int, Callable[[Job, ActionHandle], int]] = {
            HSMA.ARCHIVE: self._archive,
            HSMA.RESTORE: self._restore,
            HSMA.REMOVE: self._remove,
        }
        op = ops.get(job.kind)
        if op is None:
            msg = f"posix mover cannot run {kind_name(job.kind)} on {job.fid}"
            log.error("%s: %s", prefix, msg)
            return Result(errno=errno.ENOTSUP, message=msg)
        if job.offset < 0:
            msg = f"invalid extent offset {job.offset} for {kind_name(job.kind)} of {job.fid}"
            log.error("%s: %s", prefix, msg)
            return Result(errno=errno.EINVAL, message=msg)

        if job.kind == HSMA.ARCHIVE and job.stripe_part:
            return self._part(job)
        result = run_action(job, "posix", op)
        with self._made_lock:
            made = self._made.pop((job.action_id, job.attempt), None)
            anchored = self._anchored.pop((job.action_id, job.attempt), None)
        if anchored is not None and result.errno == 0:
            return replace(result, anchored=True, copy=CopyMade(data_version=anchored[0], size=anchored[1]))
        if made is not None and result.errno == 0 and job.kind == HSMA.ARCHIVE:
            result = replace(result, copy=made)
        return result

    # -- data pump ---------------------------------------------------------

    def _pump(
        self,
        job: Job,
        read: Callable[[int], bytes],
        write: Callable[[bytes], None],
        total: int,
        *,
        src_name: str,
        dst_name: str,
        src_archive: bool,
        hasher: hashlib._Hash | None,
        progress: _Progress | None,
    ) -> int:
        """Copy up to ``total`` bytes (-1: to EOF) in chunks; returns the
        count. Honours the bandwidth limit, reports progress, and raises
        :class:`Cancelled` between chunks once the job is cancelled."""
        chunk = self.chunk_size
        if self.bandwidth_limit:
            # Small enough chunks that the cap is smooth (~20 steps a second).
            chunk = max(4096, min(chunk, self.bandwidth_limit // 20))
        throttle = _Throttle(self.bandwidth_limit, job.cancelled)
        done = 0
        while total < 0 or done < total:
            throttle.wait(done)
            want = chunk if total < 0 else min(chunk, total - done)
            try:
                data = read(want)
            except OSError as exc:
                raise _oserror(exc, f"cannot read {src_name}", archive_side=src_archive) from exc
            if not data:
                break
            try:
                write(data)
            except OSError as exc:
                raise _oserror(
                    exc, f"cannot write {dst_name}", archive_side=not src_archive
                ) from exc
            if hasher is not None:
                hasher.update(data)
            done += len(data)
            if progress is not None:
                progress.update(done)
        if job.cancelled.is_set():
            raise Cancelled
        if progress is not None:
            progress.update(done, final=True)
        return done

    # -- archive -----------------------------------------------------------

    def _check_root(self) -> None:
        if not self.archive_root.is_dir():
            raise MoverError(
                errno.ENOENT,
                f"archive root {self.archive_root} is not a directory (is the archive mounted?)",
            )

    def _mkdir_p(self, directory: Path) -> None:
        """Create the hash directories (0700) below the archive root."""
        rel = directory.relative_to(self.archive_root)
        current = self.archive_root
        for part in rel.parts:
            current = current / part
            try:
                os.mkdir(current, _DIR_PERM)
            except FileExistsError:
                continue
            _fsync_dir(current.parent)

    def _archive(self, job: Job, handle: ActionHandle) -> int:
        prefix = job.log_prefix()
        info = handle.info()
        if job.stripe_seal:
            return self._seal(job, handle, info)
        if job.stripe_above and job.final and info.size >= job.stripe_above and job.offset == 0 and job.length < 0:
            # the anchor of a striped archive: let go of the action (run_action
            # does, for an archive that is not final) and report what it saw
            job.final = False
            with self._made_lock:
                self._anchored[(job.action_id, job.attempt)] = (info.data_version, info.size)
            log.info("%s: %d bytes, at least %d: striped over several agents (data version %d)", prefix,
                     info.size, job.stripe_above, info.data_version)
            return 0
        if self.packer is not None and info.size < self.pack_below and job.offset == 0 and (
                job.length < 0 or job.length >= info.size):
            return self._pack(job, handle, info)
        obj = object_path(self.archive_root, job.fid)
        # each attempt its own temporary object: two attempts (which the
        # agents' leases keep apart in time) never write the same file
        tmp = obj.with_name(f"{obj.name}{_TMP_SUFFIX}.{job.attempt}")
        offset = job.offset
        length = job.length
        if length < 0 or offset + length > info.size:
            length = max(0, info.size - offset)
        whole = offset == 0 and length == info.size
        log.info("%s: archiving %d bytes at offset %d to %s", prefix, length, offset, obj)
        self._check_root()
        try:
            self._mkdir_p(obj.parent)
        except OSError as exc:
            raise _oserror(
                exc, f"cannot create directory {exc.filename}", archive_side=True
            ) from exc

        try:
            fd = os.open(
                tmp,
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                _FILE_PERM,
            )
        except OSError as exc:
            raise _oserror(exc, f"cannot create {tmp}", archive_side=True) from exc
        renamed = False
        try:
            try:
                checksum = self._fill_tmp(job, handle, fd, tmp, obj, offset, length, whole, info.size)
                self._copy_attrs(job, info, fd)
                os.fsync(fd)
            except OSError as exc:
                raise _oserror(exc, f"cannot write {tmp}", archive_side=True) from exc
            finally:
                os.close(fd)
            self._publish(job, tmp, obj)
            renamed = True
        finally:
            if not renamed:
                _unlink_quiet(tmp, prefix)
        _remove_older_tmps(obj, job.attempt, prefix)
        with self._made_lock:
            self._made[(job.action_id, job.attempt)] = CopyMade(
                key=str(obj.relative_to(self.archive_root)), data_version=info.data_version, size=info.size,
                checksum=checksum, uid=info.uid, gid=info.gid, mode=info.mode, path=_catalog_path(job))
        return length

    def _part(self, job: Job) -> Result:
        """A part of a striped archive: its extent of the file, read by FID
        without beginning an action, written at the same offset into the
        stripe's temporary object (see the module doc)."""
        prefix = job.log_prefix()
        obj = object_path(self.archive_root, job.fid)
        tmp = _stripe_tmp(obj, job.stripe_version)
        part = f"part {job.stripe_part} of {job.stripe_parts} (bytes {job.offset} to {job.offset + job.length})"
        try:
            if job.length <= 0 or job.offset + job.length > job.stripe_size:
                raise MoverError(errno.EINVAL, f"{part} of {job.fid} is outside its {job.stripe_size} bytes")
            self._check_root()
            try:
                self._mkdir_p(obj.parent)
            except OSError as exc:
                raise _oserror(exc, f"cannot create directory {exc.filename}", archive_side=True) from exc
            try:
                src = _open_noatime(job.backend.path_of(job.fid))
            except OSError as exc:
                raise _oserror(exc, f"cannot open {job.fid} for reading", archive_side=False) from exc
            try:
                try:
                    dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, _FILE_PERM)
                except OSError as exc:
                    raise _oserror(exc, f"cannot open {tmp}", archive_side=True) from exc
                try:
                    at = [job.offset, job.offset]  # where the next read, the next write go

                    def read(n: int) -> bytes:
                        data = os.pread(src, n, at[0])
                        at[0] += len(data)
                        return data

                    def write(data: bytes) -> None:
                        _pwrite_all(dst, data, at[1])
                        at[1] += len(data)

                    hasher = hashlib.new(self.checksum or "sha256")
                    progress = _Progress(job, job.length, self.progress_interval, self.progress_bytes)
                    copied = self._pump(job, read, write, job.length, src_name=str(job.fid), dst_name=str(tmp),
                                        src_archive=False, hasher=hasher, progress=progress)
                    if copied < job.length:
                        raise MoverError(errno.EBUSY, f"{job.fid} shrank during {part}: read {copied} of "
                                                      f"{job.length} bytes", retry=True)
                    try:
                        os.fsync(dst)
                    except OSError as exc:
                        raise _oserror(exc, f"cannot write {tmp}", archive_side=True) from exc
                finally:
                    os.close(dst)
            finally:
                os.close(src)
        except Cancelled:
            log.info("%s: %s cancelled", prefix, part)
            return Result(errno=errno.ECANCELED, message=f"{part} of {job.fid} cancelled")
        except MoverError as exc:
            log.error("%s: %s: %s", prefix, part, exc.message)
            return Result(errno=exc.errno, message=exc.message, retry=exc.retry)
        log.info("%s: %s copied to %s", prefix, part, tmp)
        return Result(bytes_done=copied, copy=CopyMade(
            key=str(tmp.relative_to(self.archive_root)), data_version=job.stripe_version, size=copied,
            checksum=f"{hasher.name}:{hasher.hexdigest()}"))

    @staticmethod
    def _publish(job: Job, tmp: Path, obj: Path) -> None:
        """Rename a complete temporary object onto *obj* (durably), unless
        the job was cancelled or its lease lapsed: another attempt may own
        the object by now."""
        if job.cancelled.is_set() or not job.may_publish():
            raise Cancelled
        try:
            os.rename(tmp, obj)
            _fsync_dir(obj.parent)
        except OSError as exc:
            raise _oserror(exc, f"cannot rename {tmp} onto {obj}", archive_side=True) from exc

    def _parts_checksum(self, job: Job, tmp: Path) -> str:
        """The object's checksum from the digests its parts reported
        (``ALGO/PARTLEN:HEX``, :class:`PartsHasher`); MoverError when they
        are missing or not all of one algorithm (the archive starts over)."""
        sums = job.stripe_checksums
        algos = {c.partition(":")[0] for c in sums}
        if len(sums) != job.stripe_parts or len(algos) != 1 or not job.stripe_part_length:
            raise MoverError(errno.EIO, f"the parts of {tmp} reported {len(sums)} checksum(s) of "
                                        f"{job.stripe_parts} part(s): archived again from the start", retry=True)
        algo = algos.pop()
        try:
            digests = [bytes.fromhex(c.partition(":")[2]) for c in sums]
            hashlib.new(algo)
        except ValueError:
            raise MoverError(errno.EIO, f"the parts of {tmp} reported an unreadable checksum: archived again "
                                        "from the start", retry=True) from None
        return f"{algo}/{job.stripe_part_length}:{combine_parts(algo, digests)}"

    def _seal(self, job: Job, handle: ActionHandle, info: FileInfo) -> int:
        """The seal of a striped archive: every part is in the stripe's
        temporary object; check it against the file as begun now, checksum
        it, and put it in place (see the module doc)."""
        prefix = job.log_prefix()
        if info.data_version != job.stripe_version or info.size != job.stripe_size:
            raise MoverError(errno.EBUSY, f"{job.fid} changed while its parts were copied (data version "
                                          f"{job.stripe_version} -> {info.data_version}, size {job.stripe_size} -> "
                                          f"{info.size}): archived again from the start", retry=True)
        obj = object_path(self.archive_root, job.fid)
        tmp = _stripe_tmp(obj, job.stripe_version)
        self._check_root()
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise MoverError(exc.errno or errno.EIO, f"the parts' object {tmp} cannot be opened "
                             f"({exc.strerror or exc}): archived again from the start", retry=True) from exc
        # a seal that stops before the rename leaves the parts' object for the next seal of this stripe
        try:
            size = os.fstat(fd).st_size
            if size != info.size:
                raise MoverError(errno.EIO, f"the parts' object {tmp} holds {size} bytes, the file "
                                            f"{info.size}: archived again from the start", retry=True)
            checksum = ""
            if self.checksum:
                checksum = self._parts_checksum(job, tmp)
                self._set_checksum(fd, obj, checksum)
            self._copy_attrs(job, info, fd)
            os.fsync(fd)
        except OSError as exc:
            raise _oserror(exc, f"cannot seal {tmp}", archive_side=True) from exc
        finally:
            os.close(fd)
        self._publish(job, tmp, obj)
        for old in obj.parent.glob(f"{obj.name}{_TMP_SUFFIX}.stripe-*"):
            _unlink_quiet(old, prefix)  # stripes that started over
        _remove_older_tmps(obj, job.attempt, prefix)
        log.info("%s: sealed %d parts, %d bytes, into %s", prefix, job.stripe_parts, info.size, obj)
        with self._made_lock:
            self._made[(job.action_id, job.attempt)] = CopyMade(
                key=str(obj.relative_to(self.archive_root)), data_version=info.data_version, size=info.size,
                checksum=checksum, uid=info.uid, gid=info.gid, mode=info.mode, path=_catalog_path(job))
        return info.size

    def _pack(self, job: Job, handle: ActionHandle, info: FileInfo) -> int:
        """A small file's archive: its bytes go into its group's container
        (archive id and tag), written by the Packer once the container is
        full or idle; the file is archived once the container is in place."""
        assert self.packer is not None
        self._check_root()
        if job.cancelled.is_set():
            raise Cancelled
        try:
            with handle.open_source() as src:
                data = src.read(info.size + 1)
        except OSError as exc:
            raise _oserror(exc, f"cannot read {job.fid}", archive_side=False) from exc
        if len(data) != info.size:
            raise MoverError(errno.EBUSY, f"{job.fid} changed size while it was read ({len(data)} bytes, "
                             f"{info.size} at begin): archive it again", retry=True)
        try:
            tag = hints(job.data)[0]  # the tag the coordinator routed it by
            sl = self.packer.pack(group_name(job.archive_id, tag), job.fid, data, job.cancelled)
        except PackError as exc:
            raise MoverError(exc.errno, exc.message, retry=True) from None
        if not job.may_publish():
            raise Cancelled  # a lapsed lease: another attempt archives it (this slice stays unused)
        job.report(len(data), len(data))
        with self._made_lock:
            self._made[(job.action_id, job.attempt)] = CopyMade(
                key=sl.container, data_version=info.data_version, size=info.size, checksum=sl.checksum,
                uid=info.uid, gid=info.gid, mode=info.mode, path=_catalog_path(job), container=sl.container,
                slot=sl.offset)
        log.info("%s: packed %d bytes into %s at %d", job.log_prefix(), len(data), sl.container, sl.offset)
        return len(data)

    def _fill_tmp(
        self,
        job: Job,
        handle: ActionHandle,
        fd: int,
        tmp: Path,
        obj: Path,
        offset: int,
        length: int,
        whole: bool,
        size: int,
    ) -> str:
        """Write the object's data into ``fd`` and set its checksum xattr;
        returns the checksum (``ALGO:HEX``, "" without)."""
        prefix = job.log_prefix()
        merged = False
        if not whole:
            # Extent archive: keep what the previous object holds outside the
            # range, as lhsmtool_posix does by writing into it in place.
            try:
                old = os.open(obj, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise _oserror(
                    exc, f"cannot read previous object {obj}", archive_side=True
                ) from exc
            else:
                merged = True
                try:
                    self._pump(
                        job,
                        lambda n: os.read(old, n),
                        lambda b: _write_all(fd, b),
                        -1,
                        src_name=str(obj),
                        dst_name=str(tmp),
                        src_archive=True,
                        hasher=None,
                        progress=None,
                    )
                finally:
                    os.close(old)
        hasher = None
        if self.checksum and offset == 0 and not merged:
            hasher = hashlib.new(self.checksum)
        os.lseek(fd, offset, os.SEEK_SET)
        progress = _Progress(job, length, self.progress_interval, self.progress_bytes)
        try:
            src = handle.open_source()
        except OSError as exc:
            raise _oserror(exc, f"cannot open {job.fid} for reading", archive_side=False) from exc
        with src:
            try:
                src.seek(offset)
            except OSError as exc:
                raise _oserror(
                    exc, f"cannot seek {job.fid} to {offset}", archive_side=False
                ) from exc
            copied = self._pump(
                job,
                src.read,
                lambda b: _write_all(fd, b),
                length,
                src_name=str(job.fid),
                dst_name=str(tmp),
                src_archive=False,
                hasher=hasher,
                progress=progress,
            )
        if copied < length:
            raise MoverError(
                errno.EBUSY,
                f"{job.fid} shrank during archive: read {copied} of {length} bytes "
                f"(file size was {size})",
            )
        if not self.checksum:
            return ""
        if hasher is None:
            hasher = hashlib.new(self.checksum)
            rfd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                self._pump(
                    job,
                    lambda n: os.read(rfd, n),
                    lambda b: None,
                    -1,
                    src_name=str(tmp),
                    dst_name=str(tmp),
                    src_archive=True,
                    hasher=hasher,
                    progress=None,
                )
            finally:
                os.close(rfd)
        value = f"{self.checksum}:{hasher.hexdigest()}"
        self._set_checksum(fd, obj, value)
        log.debug("%s: %s of %s is %s", prefix, self.checksum, obj, value)
        return value

    def _set_checksum(self, fd: int, obj: Path, value: str) -> None:
        """Store an object's checksum in its xattr (see the module doc)."""
        try:
            os.setxattr(fd, CHECKSUM_XATTR, value.encode())
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                raise MoverError(
                    errno.ENOTSUP,
                    f"archive filesystem of {self.archive_root} does not support user xattrs, "
                    f"needed to store the {self.checksum} checksum of {obj} "
                    "(configure the posix mover with checksum none to archive without)",
                ) from exc
            raise

    def _copy_attrs(self, job: Job, info: FileInfo, fd: int) -> None:
        """Mode, owner (best effort) and times of the file onto the object."""
        mode = stat.S_IMODE(info.mode)
        try:
            os.fchown(fd, info.uid, info.gid)
        except PermissionError:
            # Only root may give files away. The object stays ours: keep it
            # readable and writable by us, and never keep set-id bits.
            mode = (mode & ~(stat.S_ISUID | stat.S_ISGID)) | stat.S_IRUSR | stat.S_IWUSR
            log.debug(
                "%s: cannot chown the object to %d:%d, keeping our owner",
                job.log_prefix(),
                info.uid,
                info.gid,
            )
        os.fchmod(fd, mode)
        os.utime(fd, ns=(info.atime_ns, info.mtime_ns))

    # -- restore -----------------------------------------------------------

    def _restore(self, job: Job, handle: ActionHandle) -> int:
        if job.packed:
            return self._restore_slice(job, handle)
        prefix = job.log_prefix()
        # the copy the catalog names (a file imported under a new FID, or one
        # whose object was written under another), else the FID's own
        obj = keyed_path(self.archive_root, job.object_key) if job.object_key else \
            object_path(self.archive_root, job.fid)
        self._check_root()
        try:
            fd = os.open(obj, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise MoverError(
                errno.ENOENT, f"archive object {obj} of {job.fid} does not exist"
            ) from None
        except OSError as exc:
            raise _oserror(exc, f"cannot open archive object {obj}", archive_side=True) from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise MoverError(errno.EIO, f"archive object {obj} is not a regular file")
            stored = self._stored_checksum(fd, obj)
            info = handle.info()
            if st.st_size != info.size:
                raise MoverError(
                    errno.EIO,
                    f"archive object {obj} holds {st.st_size} bytes but {job.fid} "
                    f"has {info.size}: refusing to restore it",
                )
            hasher = None if stored is None else new_hasher(stored[0])
            if stored is None:
                log.warning("%s: %s has no checksum, restoring it unverified", prefix, obj)
            log.info("%s: restoring %d bytes from %s", prefix, st.st_size, obj)
            progress = _Progress(job, st.st_size, self.progress_interval, self.progress_bytes)
            try:
                vol = handle.open_volatile()
            except OSError as exc:
                raise _oserror(
                    exc, f"cannot open the volatile file of {job.fid}", archive_side=False
                ) from exc
            with vol:
                done = self._pump(
                    job,
                    lambda n: os.read(fd, n),
                    lambda b: _write_stream(vol, b),
                    -1,
                    src_name=f"archive object {obj}",
                    dst_name=f"volatile file of {job.fid}",
                    src_archive=True,
                    hasher=hasher,
                    progress=progress,
                )
                try:
                    vol.flush()
                    os.fsync(vol.fileno())
                except OSError as exc:
                    raise _oserror(
                        exc, f"cannot flush the volatile file of {job.fid}", archive_side=False
                    ) from exc
        finally:
            os.close(fd)
        if done != st.st_size:
            raise MoverError(
                errno.EIO,
                f"archive object {obj} changed during restore: read {done} of {st.st_size} bytes",
                retry=True,
            )
        if stored is not None:
            assert hasher is not None
            actual = hasher.hexdigest()
            if actual != stored[1]:
                raise MoverError(
                    errno.EIO,
                    f"checksum mismatch on archive object {obj}: stored {stored[0]} "
                    f"{stored[1]}, data has {actual}; the object is corrupt, {job.fid} "
                    "stays released",
                )
        return done

    def _restore_slice(self, job: Job, handle: ActionHandle) -> int:
        """A packed file's restore: its slice of the container only, checked
        against the checksum the catalog keeps."""
        obj = keyed_path(self.archive_root, job.object_key)
        self._check_root()
        info = handle.info()
        if job.object_length != info.size:
            raise MoverError(errno.EIO, f"the slice of {obj} holds {job.object_length} bytes but {job.fid} has "
                             f"{info.size}: refusing to restore it")
        algo, _sep, digest = job.object_checksum.partition(":")
        try:
            hasher = hashlib.new(algo) if algo else None
        except ValueError:
            raise MoverError(errno.EIO, f"unknown checksum {job.object_checksum!r} for the slice of {obj}") from None
        try:
            fd = os.open(obj, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise MoverError(errno.ENOENT, f"container {obj} of {job.fid} does not exist") from None
        except OSError as exc:
            raise _oserror(exc, f"cannot open container {obj}", archive_side=True) from exc
        try:
            data = os.pread(fd, job.object_length, job.object_offset)
        except OSError as exc:
            raise _oserror(exc, f"cannot read container {obj}", archive_side=True) from exc
        finally:
            os.close(fd)
        if len(data) != job.object_length:
            raise MoverError(errno.EIO, f"container {obj} ends before the slice of {job.fid} "
                             f"({len(data)} of {job.object_length} bytes at {job.object_offset})")
        if hasher is not None:
            hasher.update(data)
            if hasher.hexdigest() != digest:
                raise MoverError(errno.EIO, f"checksum mismatch on the slice of {job.fid} in container {obj}: "
                                 f"the catalog has {job.object_checksum}, the data {algo}:{hasher.hexdigest()}; "
                                 f"{job.fid} stays released")
        try:
            with handle.open_volatile() as vol:
                _write_stream(vol, data)
                vol.flush()
                os.fsync(vol.fileno())
        except OSError as exc:
            raise _oserror(exc, f"cannot write the volatile file of {job.fid}", archive_side=False) from exc
        job.report(len(data), len(data))
        return len(data)

    def _stored_checksum(self, fd: int, obj: Path) -> tuple[str, str] | None:
        try:
            raw = os.getxattr(fd, CHECKSUM_XATTR)
        except OSError as exc:
            if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
                return None
            raise _oserror(exc, f"cannot read the checksum of {obj}", archive_side=True) from exc
        text = raw.decode("ascii", errors="replace")
        algo, sep, digest = text.partition(":")
        try:
            if not sep:
                raise ValueError
            expected_len = new_hasher(algo).digest_size * 2
            if len(digest) != expected_len or digest.strip("0123456789abcdef"):
                raise ValueError
        except (ValueError, TypeError):
            raise MoverError(
                errno.EIO,
                f"archive object {obj} has an unreadable checksum {CHECKSUM_XATTR}={text!r} "
                "(expected <algorithm>:<hex digest>)",
            ) from None
        return algo, digest

    # -- remove ------------------------------------------------------------

    def _remove(self, job: Job, handle: ActionHandle) -> int:
        prefix = job.log_prefix()
        self._check_root()
        if job.cancelled.is_set():
            raise Cancelled
        if job.packed:
            # other files live in the container: their slices stay; this one
            # is dead (the catalog forgets it; compaction is not built yet)
            log.info("%s: the slice of %s at %d in container %s is dead; the container stays", prefix,
                     job.fid, job.object_offset, job.object_key)
            return 0
        obj = keyed_path(self.archive_root, job.object_key) if job.object_key else \
            object_path(self.archive_root, job.fid)
        log.info("%s: removing %s", prefix, obj)
        for path in (
            obj,
            *(obj.with_name(obj.name + s) for s in _SIDECAR_SUFFIXES),
            *_tmps(obj),
        ):
            try:
                os.unlink(path)
            except FileNotFoundError:
                if path == obj:
                    log.info("%s: %s was already gone", prefix, obj)
            except OSError as exc:
                raise _oserror(exc, f"cannot delete {path}", archive_side=True) from exc
        try:
            _fsync_dir(obj.parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _oserror(exc, f"cannot flush directory {obj.parent}", archive_side=True) from exc
        return 0
