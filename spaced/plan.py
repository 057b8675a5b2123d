"""What the space manager does, decided without I/O: pure, no clock.

:class:`SpacePlan` is an index of a tree's regular files, keyed by the
file's path from the tree's root, each with what the shell last saw of it
(:class:`FileFacts`: HSM flags, blocks held, last use, being written), and
with what the plan itself asked for (an archive outstanding, a release not
yet confirmed, a retry time after a failure). Events come in with the time
they happened (:meth:`SpacePlan.apply`, or one method per event); a round
(:meth:`SpacePlan.round`), given the tree's usage, returns instructions:
files to release, files to archive.

Watermarks, with hysteresis: a round that finds the usage above *high*
starts a drain; while a drain is on, rounds release archived, clean files,
least recently used first, until the projected usage is below *low*; then
the drain ends. Between *low* and *high* nothing happens unless a drain is
on. When the release candidates run out before *low* is reached, a round
asks for archives of the least recently used files that could become
candidates (unarchived, or changed since their archive): no more than the
missing bytes need (counting the archives already outstanding), no more
than *max_archives* outstanding at once, never twice for a file while one
is outstanding, and after a failure not before *retry_after* seconds. An
archive whose end is never heard of counts as failed after
*archive_timeout*.

Safety: a release is only ever produced for a file whose last seen flags
are ARCHIVED and none of DIRTY, RELEASED, NORELEASE, LOST, that is not
being written, that holds blocks, and whose previous release is not
pending, whatever the order of events (tests/test_space_plan.py checks it
with random event sequences). The shell's release (simfs, as ``lfs
hsm_release``) checks again under the tree's lock: this is the first of two
guards, not the only one.

Candidates are kept in two heaps ordered by last use, updated as events
come (lazy deletion: an entry is valid while its token is the file's
current one and the file is a candidate); a round pops only what it uses,
never scans the index.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from hsm.hsmflags import HS

#: flags that forbid a release (besides not being ARCHIVED)
RELEASE_BLOCKERS = int(HS.DIRTY | HS.RELEASED | HS.NORELEASE | HS.LOST)
#: flags that make an archive useless to the space manager: it could not
#: archive the file (NOARCHIVE, RELEASED) or not release it after (NORELEASE)
ARCHIVE_BLOCKERS = int(HS.NOARCHIVE | HS.RELEASED | HS.NORELEASE)

DEFAULT_MAX_ARCHIVES = 16
DEFAULT_RETRY_AFTER = 300.0
DEFAULT_ARCHIVE_TIMEOUT = 6 * 3600.0


def releasable(flags: int) -> bool:
    """May a file with these HSM flags be released (as far as flags say)?"""
    return bool(flags & HS.ARCHIVED) and not flags & RELEASE_BLOCKERS


def archivable(flags: int) -> bool:
    """Would archiving a file with these flags make it releasable?
    Unarchived or dirty, and not NOARCHIVE, RELEASED or NORELEASE."""
    if flags & ARCHIVE_BLOCKERS:
        return False
    return bool(flags & HS.DIRTY) or not flags & HS.ARCHIVED


@dataclass(frozen=True, slots=True)
class FileFacts:
    """What the shell saw of one file."""

    flags: int  # HSM flags (hsm.hsmflags.HS)
    blocks_bytes: int  # st_blocks * 512: what the file holds on the file system (0 when released)
    size: int = 0  # st_size (kept by a release)
    atime: float = 0.0
    mtime: float = 0.0
    busy: bool = False  # being written: modified and not closed since

    def __post_init__(self) -> None:
        if self.blocks_bytes < 0 or self.size < 0:
            raise ValueError(f"negative size in {self!r}")

    @property
    def last_use(self) -> float:
        """When the file was last used: its atime, or its mtime if later
        (noatime mounts, atimes set back by a copy)."""
        return max(self.atime, self.mtime)


# -- events -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seen:
    """The file was seen (first time, or changed): its facts now."""

    key: str
    facts: FileFacts


@dataclass(frozen=True, slots=True)
class Gone:
    """The file is no more (deleted, renamed away, no longer regular)."""

    key: str


@dataclass(frozen=True, slots=True)
class ArchiveRequested:
    """An archive of the file is queued, asked for by someone else (or
    joined): treated as outstanding, as if the plan had asked."""

    key: str


@dataclass(frozen=True, slots=True)
class ArchiveEnded:
    """An archive of the file ended (ok: succeeded, or was not needed)."""

    key: str
    ok: bool


@dataclass(frozen=True, slots=True)
class ReleaseDone:
    """The release the plan asked for was done."""

    key: str


@dataclass(frozen=True, slots=True)
class ReleaseRefused:
    """The release the plan asked for was refused (the file changed)."""

    key: str


Event = Seen | Gone | ArchiveRequested | ArchiveEnded | ReleaseDone | ReleaseRefused


# -- instructions -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Release:
    """Release the file (``lfs hsm_release``)."""

    key: str
    bytes: int  # what it frees
    last_use: float


@dataclass(frozen=True, slots=True)
class Archive:
    """Ask the coordinator to archive the file."""

    key: str
    bytes: int  # what a release could free once it is archived
    last_use: float


@dataclass(frozen=True, slots=True)
class Round:
    """What a round decided."""

    used: int  # the usage it was given
    capacity: int
    draining: bool  # a drain is on (after this round's decision)
    started: bool  # this round started the drain (usage above high)
    releases: tuple[Release, ...] = ()
    archives: tuple[Archive, ...] = ()
    projected: int = 0  # the usage once the releases (and those still pending) are done
    short: int = 0  # bytes above low that neither a release nor an outstanding archive covers
    examined: int = 0  # heap entries popped (what the round cost)

    @property
    def released_bytes(self) -> int:
        return sum(r.bytes for r in self.releases)


# -- the plan -----------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    facts: FileFacts
    token: int = 0  # of its valid heap entry while it is a candidate
    queued: tuple[str, float] | None = None  # (heap, last use) of that entry
    release_pending: int = 0  # bytes of a release asked for and not confirmed (0: none)
    release_retry_at: float = 0.0  # after a refused release: not a candidate before
    archive_deadline: float = 0.0  # an archive is outstanding until (0: none)
    archive_bytes: int = 0  # what that archive covers
    archive_retry_at: float = 0.0  # after a failed archive: not asked for before


@dataclass(slots=True)
class Totals:
    """What the plan asked for and heard, since it was made."""

    releases: int = 0  # asked for
    releases_done: int = 0
    released_bytes: int = 0
    releases_refused: int = 0
    archives: int = 0  # asked for
    archives_done: int = 0
    archives_failed: int = 0  # failed, or timed out
    rounds: int = 0


@dataclass(slots=True)
class _Heap:
    name: str
    items: list[tuple[float, str, int]] = field(default_factory=list)  # (last use, key, token)
    members: dict[str, int] = field(default_factory=dict)  # key -> bytes
    bytes: int = 0


class SpacePlan:
    """The space manager's state (see the module). Thread-unsafe: one
    owner feeds it."""

    def __init__(self, high: float, low: float, *, max_archives: int = DEFAULT_MAX_ARCHIVES,
                 retry_after: float = DEFAULT_RETRY_AFTER,
                 archive_timeout: float = DEFAULT_ARCHIVE_TIMEOUT) -> None:
        check_watermarks(high, low)
        if isinstance(max_archives, bool) or not isinstance(max_archives, int) or max_archives < 0:
            raise ValueError(f"max archives must be an integer >= 0, not {max_archives!r}")
        if not retry_after >= 0:
            raise ValueError(f"retry_after must be >= 0 seconds, not {retry_after!r}")
        if not archive_timeout > 0:
            raise ValueError(f"archive_timeout must be > 0 seconds, not {archive_timeout!r}")
        self.high = float(high)
        self.low = float(low)
        self.max_archives = max_archives
        self.retry_after = float(retry_after)
        self.archive_timeout = float(archive_timeout)
        self.draining = False
        self.totals = Totals()
        self._files: dict[str, _Entry] = {}
        self._used = 0  # sum of blocks_bytes over the index
        self._release = _Heap("release")
        self._archive = _Heap("archive")
        self._timers: list[tuple[float, int, str]] = []  # (when, seq, key): re-examine the key then
        self._outstanding: dict[str, int] = {}  # key -> bytes the archive covers
        self._pending_bytes = 0  # releases asked for, not confirmed
        self._pending_count = 0
        self._seq = 0

    # -- what it knows --------------------------------------------------------

    @property
    def files(self) -> int:
        return len(self._files)

    @property
    def used_bytes(self) -> int:
        """The blocks the indexed files hold (bytes)."""
        return self._used

    @property
    def release_candidates(self) -> int:
        return len(self._release.members)

    @property
    def release_candidate_bytes(self) -> int:
        return self._release.bytes

    @property
    def archive_candidates(self) -> int:
        return len(self._archive.members)

    @property
    def outstanding(self) -> int:
        """Archives asked for (or joined) whose end is not known yet."""
        return len(self._outstanding)

    @property
    def outstanding_bytes(self) -> int:
        return sum(self._outstanding.values())

    @property
    def pending_releases(self) -> int:
        """Releases asked for and not confirmed (done or refused) yet."""
        return self._pending_count

    @property
    def queued_entries(self) -> int:
        """Heap and timer entries held, stale ones included (bounded by a
        small multiple of the candidates: the heaps are compacted)."""
        return len(self._release.items) + len(self._archive.items) + len(self._timers)

    def facts(self, key: str) -> FileFacts | None:
        e = self._files.get(key)
        return e.facts if e is not None else None

    def is_outstanding(self, key: str) -> bool:
        return key in self._outstanding

    def keys(self) -> list[str]:
        return list(self._files)

    # -- events ----------------------------------------------------------------

    def apply(self, event: Event, now: float) -> None:
        """Feed one event that happened at *now*."""
        if isinstance(event, Seen):
            self.seen(event.key, event.facts, now)
        elif isinstance(event, Gone):
            self.gone(event.key, now)
        elif isinstance(event, ArchiveRequested):
            self.archive_requested(event.key, now)
        elif isinstance(event, ArchiveEnded):
            self.archive_ended(event.key, event.ok, now)
        elif isinstance(event, ReleaseDone):
            self.release_done(event.key, now)
        elif isinstance(event, ReleaseRefused):
            self.release_refused(event.key, now)
        else:  # pragma: no cover - the union is closed
            raise TypeError(f"not a space plan event: {event!r}")

    def seen(self, key: str, facts: FileFacts, now: float) -> None:
        e = self._files.get(key)
        if e is None:
            e = self._files[key] = _Entry(facts)
            self._used += facts.blocks_bytes
        else:
            self._used += facts.blocks_bytes - e.facts.blocks_bytes
            e.facts = facts
        if key in self._outstanding and facts.flags & HS.ARCHIVED and not facts.flags & HS.DIRTY:
            self._end_archive(e, key)  # archived and clean: whatever was asked is done
            self.totals.archives_done += 1
        if e.release_pending and facts.flags & HS.RELEASED:
            self._end_release(e)
        self._update(key, e, now)

    def gone(self, key: str, now: float) -> None:
        e = self._files.pop(key, None)
        if e is None:
            return
        self._used -= e.facts.blocks_bytes
        self._end_release(e)
        self._end_archive(e, key)
        self._leave(self._release, key)
        self._leave(self._archive, key)

    def archive_requested(self, key: str, now: float) -> None:
        e = self._files.get(key)
        if e is None:
            return
        self._update(key, e, now)  # an outstanding archive past its deadline ends first
        if key in self._outstanding:
            return
        self._start_archive(e, key, now)
        self._update(key, e, now)

    def archive_ended(self, key: str, ok: bool, now: float) -> None:
        e = self._files.get(key)
        if e is None:
            return
        if key in self._outstanding:
            self._end_archive(e, key)
            if ok:
                self.totals.archives_done += 1
        if not ok:
            self.totals.archives_failed += 1
            self._retry_archive(e, key, now)
        self._update(key, e, now)

    def release_done(self, key: str, now: float) -> None:
        e = self._files.get(key)
        if e is None:
            return
        freed = e.facts.blocks_bytes
        if e.release_pending:
            self.totals.releases_done += 1
            self.totals.released_bytes += e.release_pending
        self._end_release(e)
        # what a release leaves: the size, no blocks (until the shell looks again)
        f = e.facts
        e.facts = FileFacts(int(f.flags | HS.RELEASED), 0, f.size, f.atime, f.mtime, f.busy)
        self._used -= freed
        self._update(key, e, now)

    def release_refused(self, key: str, now: float) -> None:
        e = self._files.get(key)
        if e is None:
            return
        if e.release_pending:
            self.totals.releases_refused += 1
        self._end_release(e)
        e.release_retry_at = now + self.retry_after
        self._timer(e.release_retry_at, key)
        self._update(key, e, now)

    # -- a round ---------------------------------------------------------------

    def resume_drain(self) -> None:
        """A drain was on when the previous run stopped (the shell keeps it
        in its status): it goes on until the usage is below low."""
        self.draining = True

    def settle(self, used: int, capacity: int) -> bool:
        """The usage measured after a round's releases were carried out:
        the drain ends now if it is below low (not at the next round).
        Returns whether a drain is still on."""
        if self.draining and capacity > 0 and used - self._pending_bytes < self.low * capacity:
            self.draining = False
        return self.draining

    def would_act(self, used: int, capacity: int) -> bool:
        """Would a round now ask for something? Cheap (nothing popped), so
        the shell may ask after every event to start a round early; files
        whose retry time has just come are not counted (the next regular
        round takes them)."""
        if capacity <= 0:
            return False
        projected = used - self._pending_bytes
        low_bytes = self.low * capacity
        if not (self.draining or used > self.high * capacity) or projected < low_bytes:
            return False
        if self._release.members:
            return True
        need = projected - low_bytes + 1
        return (bool(self._archive.members) and len(self._outstanding) < self.max_archives
                and self.outstanding_bytes < need)

    def round(self, now: float, used: int, capacity: int) -> Round:
        """Decide, at *now*, for a tree whose usage is *used* of *capacity*
        bytes; what is returned is taken as asked for (releases pending,
        archives outstanding) until events say otherwise."""
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity <= 0:
            raise ValueError(f"capacity must be a positive number of bytes, not {capacity!r}")
        if isinstance(used, bool) or not isinstance(used, int) or used < 0:
            raise ValueError(f"used must be a number of bytes >= 0, not {used!r}")
        self.totals.rounds += 1
        self._wake(now)
        high_bytes = self.high * capacity
        low_bytes = self.low * capacity
        started = False
        if used > high_bytes and not self.draining:
            self.draining = started = True
        projected = max(0, used - self._pending_bytes)
        if self.draining and projected < low_bytes:
            self.draining = False
        if not self.draining:
            return Round(used, capacity, False, False, projected=projected)
        examined = 0
        releases: list[Release] = []
        while projected >= low_bytes:
            got, n = self._pop(self._release)
            examined += n
            if got is None:
                break
            key, e = got
            nbytes = e.facts.blocks_bytes
            e.release_pending = nbytes
            self._pending_bytes += nbytes
            self._pending_count += 1
            self.totals.releases += 1
            self._update(key, e, now)
            releases.append(Release(key, nbytes, e.facts.last_use))
            projected -= nbytes
        archives: list[Archive] = []
        short = 0
        if projected >= low_bytes:
            need = int(projected - low_bytes) + 1
            covered = self.outstanding_bytes
            while covered < need and len(self._outstanding) < self.max_archives:
                got, n = self._pop(self._archive)
                examined += n
                if got is None:
                    break
                key, e = got
                self._start_archive(e, key, now)
                self.totals.archives += 1
                self._update(key, e, now)
                archives.append(Archive(key, e.archive_bytes, e.facts.last_use))
                covered += e.archive_bytes
            short = max(0, need - covered)
        self._compact()
        return Round(used, capacity, True, started, tuple(releases), tuple(archives), max(0, projected), short,
                     examined)

    # -- inside ----------------------------------------------------------------

    def _start_archive(self, e: _Entry, key: str, now: float) -> None:
        e.archive_deadline = now + self.archive_timeout
        e.archive_bytes = e.facts.blocks_bytes
        self._outstanding[key] = e.archive_bytes
        self._timer(e.archive_deadline, key)

    def _end_archive(self, e: _Entry, key: str) -> None:
        e.archive_deadline = 0.0
        self._outstanding.pop(key, None)

    def _retry_archive(self, e: _Entry, key: str, now: float) -> None:
        e.archive_retry_at = now + self.retry_after
        self._timer(e.archive_retry_at, key)

    def _end_release(self, e: _Entry) -> None:
        if e.release_pending:
            self._pending_bytes -= e.release_pending
            self._pending_count -= 1
        e.release_pending = 0

    def _timer(self, when: float, key: str) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, key))

    def _wake(self, now: float) -> None:
        """Re-examine the files whose timers are due."""
        while self._timers and self._timers[0][0] <= now:
            _when, _seq, key = heapq.heappop(self._timers)
            e = self._files.get(key)
            if e is not None:
                self._update(key, e, now)

    def _update(self, key: str, e: _Entry, now: float) -> None:
        """Expire what is due and put the file in the heap it belongs to (or none)."""
        if e.archive_deadline and now >= e.archive_deadline:
            # its end was never heard of: count it failed, ask again now
            self._end_archive(e, key)
            self.totals.archives_failed += 1
        if e.archive_retry_at and now >= e.archive_retry_at:
            e.archive_retry_at = 0.0
        if e.release_retry_at and now >= e.release_retry_at:
            e.release_retry_at = 0.0
        f = e.facts
        usable = f.blocks_bytes > 0 and not f.busy
        if usable and releasable(f.flags) and not e.release_pending and not e.release_retry_at:
            self._join(self._release, key, e)
            self._leave(self._archive, key)
        elif (usable and archivable(f.flags) and not e.archive_deadline and not e.archive_retry_at
              and not e.release_pending):
            self._join(self._archive, key, e)
            self._leave(self._release, key)
        else:
            self._leave(self._release, key)
            self._leave(self._archive, key)

    def _join(self, heap: _Heap, key: str, e: _Entry) -> None:
        nbytes = e.facts.blocks_bytes
        old = heap.members.get(key)
        heap.bytes += nbytes - (old or 0)
        heap.members[key] = nbytes
        where = (heap.name, e.facts.last_use)
        if old is not None and e.queued == where:
            return  # its entry is in the heap already, in the right place
        self._seq += 1
        e.token, e.queued = self._seq, where
        heapq.heappush(heap.items, (e.facts.last_use, key, e.token))

    def _leave(self, heap: _Heap, key: str) -> None:
        nbytes = heap.members.pop(key, None)
        if nbytes is not None:
            heap.bytes -= nbytes
            e = self._files.get(key)
            if e is not None and e.queued is not None and e.queued[0] == heap.name:
                e.queued = None  # its entry goes stale

    def _pop(self, heap: _Heap) -> tuple[tuple[str, _Entry] | None, int]:
        """The least recently used valid member of *heap* (taken out of it),
        and how many entries were popped to find it."""
        n = 0
        while heap.items:
            _last_use, key, token = heapq.heappop(heap.items)
            n += 1
            e = self._files.get(key)
            if e is None or key not in heap.members or e.token != token or e.queued is None \
                    or e.queued[0] != heap.name:
                continue  # stale
            self._leave(heap, key)
            return (key, e), n
        return None, n

    def _compact(self) -> None:
        """Drop stale entries once they outnumber the live ones."""
        for heap in (self._release, self._archive):
            if len(heap.items) > 2 * len(heap.members) + 64:
                live = []
                for _lu, key, token in heap.items:
                    e = self._files.get(key)
                    if e is not None and key in heap.members and e.token == token and e.queued is not None \
                            and e.queued[0] == heap.name:
                        live.append((e.facts.last_use, key, token))
                heapq.heapify(live)
                heap.items = live
        if len(self._timers) > 2 * len(self._files) + 64:
            keep = [t for t in self._timers if t[2] in self._files]
            heapq.heapify(keep)
            self._timers = keep


def check_watermarks(high: float, low: float) -> None:
    """ValueError unless 0 < low < high <= 1."""
    for name, value in (("high", high), ("low", low)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            raise ValueError(f"the {name} watermark must be in (0, 1] (a fraction of the capacity), not {value!r}")
    if not low < high:
        raise ValueError(f"the low watermark ({low:g}) must be below the high one ({high:g})")
