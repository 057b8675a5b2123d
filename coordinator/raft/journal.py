"""The durable Raft journal (pysyncobj's ``journal``): ``_SegmentJournal``,
hooked into pysyncobj in place of its mmap journal, which is never fsynced.

Durability
==========

* The journal appends records with a CRC to segment files under
  ``data_dir/shard-<n>/``. It is fdatasync'ed before the leader counts
  itself towards a commit (at the end of every tick and before the next one
  starts: ``coordinator.raft.shard``) and before a follower answers a
  successful AppendEntries (the transport syncs before it sends the ack:
  ``coordinator.raft.transport``). One fsync covers every entry written
  since the last one (group commit), so the cost is per batch of entries,
  not per entry. Term and vote are written in place to one of two
  preallocated slots of ``raft-vote.slots`` and fdatasync'ed before any
  vote or request is sent (``_VoteStore``: possible on a full disk).
* A full disk: a write that fails leaves nothing half written and is
  refused (said once, counted); the shard hands its leadership over and
  leads nothing until a write succeeds again (``RaftShard``).
* pysyncobj truncates a follower's log whenever a re-sent AppendEntries
  overlaps it, even with identical entries (a leader re-sends after a late
  acknowledgement). Our journal keeps such entries on disk until a
  *different* entry replaces them, so an acknowledged entry is never even
  briefly missing from the disk. pysyncobj then logs CRITICAL "state
  machine may have diverged" for every such re-send that reaches applied
  entries; that alarm is filtered out (``_ResendAlarmFilter``) because
  the journal checks what it only guesses: each re-sent entry is compared
  with the one held at its place, and a committed entry replaced by a
  different one is counted and logged CRITICAL with its index.
* After an OS crash or power loss, a torn tail record (an entry received
  but not acknowledged yet) is detected by its CRC and truncated at
  restart. The commit index (``raft-commit``) is saved lazily: it is
  volatile Raft state and is relearned from the leader.

How it hooks into pysyncobj 0.3.17 (re-check on any upgrade)
============================================================

``pysyncobj.syncobj.createJournal`` is replaced (once, at import) by a
function that returns the journal we registered for a ``journalFile`` key
(``RaftShard`` registers its journal in ``_JOURNALS`` just before it builds
its ``SyncObj``).

The durable-file helpers live here too (``_fsync_dir`` also serves the
snapshot files in ``coordinator.raft.shard``)."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import struct
import threading
import time
import zlib
from collections import deque
from pathlib import Path
from typing import Any

import pysyncobj.syncobj as _ps_syncobj
from pysyncobj.journal import Journal

from coordinator.raft.errors import _REPLACE, RaftStorageError
from coordinator.raft.status import RaftStats

#: the package's logger name, as before it was split into modules (log lines
#: and log settings name "coordinator.raft")
log = logging.getLogger("coordinator.raft")


# --------------------------------------------------------------------------
# pysyncobj's createJournal hook (installed once, at import)
# --------------------------------------------------------------------------

#: journals we built, keyed by the ``journalFile`` string given to SyncObj
_JOURNALS: dict[str, Journal] = {}
_JOURNALS_LOCK = threading.Lock()
_ORIG_CREATE_JOURNAL = _ps_syncobj.createJournal


def _create_journal(journal_file: str | None = None) -> Journal:
    """SyncObj builds its journal through this module-level function; ours
    hands it the durable journal registered for that key."""
    if journal_file is not None:
        with _JOURNALS_LOCK:
            journal = _JOURNALS.pop(journal_file, None)
        if journal is not None:
            return journal
    return _ORIG_CREATE_JOURNAL(journal_file)


_ps_syncobj.createJournal = _create_journal


class _ResendAlarmFilter(logging.Filter):
    """Drops pysyncobj's CRITICAL "truncating already-applied log entries
    ... state machine may have diverged": pysyncobj logs it on every
    AppendEntries that overlaps entries a follower applied, which a leader
    sends whenever an acknowledgement comes late (127 times in one flood),
    although the entries it then re-adds are the same ones. Whether they
    are is what ``_SegmentJournal`` checks, entry by entry, at the only
    place they can differ: it counts the identical ones
    (``RaftStats.entries_resent``) and logs CRITICAL itself, naming the
    index, if a committed entry is ever replaced by another
    (``RaftStats.committed_replaced``)."""

    dropped = 0  # how many (all shards): pysyncobj took that path this often

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("truncating already-applied log entries"):
            self.dropped += 1
            return False
        return True


_RESEND_FILTER = _ResendAlarmFilter()
logging.getLogger(_ps_syncobj.__name__).addFilter(_RESEND_FILTER)  # once: the module is imported once


# --------------------------------------------------------------------------
# Durable journal
# --------------------------------------------------------------------------

_SEG_MAGIC = b"HSMRJRN1"
_SEG_RE = re.compile(r"journal-(\d{10})\.log")
_REC = struct.Struct("<IIQQ")  # payload length, crc32(idx, term, payload), idx, term
_IDX_TERM = struct.Struct("<QQ")

Entry = tuple[bytes, int, int]  # (command, raft index, term), pysyncobj's layout


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _atomic_write(path: Path, data: bytes, sync: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        if sync:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if sync:
        _fsync_dir(path.parent)


#: free space a journal that could not write needs before it counts as
#: writable again
_PROBE_FREE = 1 << 20

_VOTE_MAGIC = b"HSMV"
_VOTE_SLOT = 512
_VOTE_HEAD = struct.Struct("<4sQH")  # magic, sequence number, payload length; then payload, crc32


class _VoteStore:
    """The Raft term and vote, durable before any message reflecting them
    is sent, and writable on a full disk: two fixed slots of one file,
    allocated when it is made, written in turn in place (``pwrite`` +
    ``fdatasync``: no block to allocate, so no ENOSPC on a full file
    system that does not copy on write), each with a sequence number and a
    CRC; the valid slot with the higher number wins, so a write torn by a
    crash leaves the previous vote. (It replaced ``raft-vote``, a JSON file
    rewritten through a temporary file: on a full disk that write failed
    after pysyncobj had taken the new term in memory, and a leader went on
    as leader of a term it never won.)"""

    def __init__(self, directory: Path, shard: int, fsync: bool) -> None:
        self._path = directory / "raft-vote.slots"
        self._shard = shard
        self._fsync = fsync
        self._seq = 0
        if not self._path.exists():  # both slots allocated now, once
            _atomic_write(self._path, b"\0" * (2 * _VOTE_SLOT), fsync)
        self._fd = os.open(self._path, os.O_RDWR)
        self.term, self.voted_for = self._load()
        old = directory / "raft-vote"
        if old.exists():  # written by an earlier version, before the slots
            try:
                self.term, self.voted_for = self._parse_old(old)
            except RaftStorageError:
                self.close()
                raise
            self.write(self.term, self.voted_for)
            old.unlink()
            if fsync:
                _fsync_dir(directory)

    def _parse_old(self, path: Path) -> tuple[int, str | None]:
        try:
            data = json.loads(path.read_text())
            return int(data["term"]), data["voted_for"]
        except (ValueError, KeyError, TypeError) as e:
            raise RaftStorageError(
                f"shard {self._shard}: {path} is damaged ({e}); this replica's Raft vote is unknown. "
                f"{_REPLACE}") from e

    def _load(self) -> tuple[int, str | None]:
        raw = os.pread(self._fd, 2 * _VOTE_SLOT, 0)
        best: tuple[int, int, str | None] | None = None
        for slot in range(2):
            rec = raw[slot * _VOTE_SLOT:(slot + 1) * _VOTE_SLOT]
            if len(rec) < _VOTE_SLOT or rec[:4] != _VOTE_MAGIC:
                continue
            _magic, seq, n = _VOTE_HEAD.unpack_from(rec)
            end = _VOTE_HEAD.size + n
            if end + 4 > _VOTE_SLOT or zlib.crc32(rec[:end]) != struct.unpack_from("<I", rec, end)[0]:
                continue  # torn by a crash: the other slot holds the previous vote
            data = json.loads(rec[_VOTE_HEAD.size:end])
            if best is None or seq > best[0]:
                best = (seq, int(data["term"]), data["voted_for"])
        if best is None:
            return 0, None
        self._seq = best[0]
        return best[1], best[2]

    def write(self, term: int, voted_for: str | None) -> None:
        payload = json.dumps({"term": term, "voted_for": voted_for}).encode()
        seq = self._seq + 1
        rec = _VOTE_HEAD.pack(_VOTE_MAGIC, seq, len(payload)) + payload
        rec += struct.pack("<I", zlib.crc32(rec))
        if len(rec) > _VOTE_SLOT:
            raise ValueError(f"shard {self._shard}: Raft vote record too long ({len(rec)} bytes)")
        os.pwrite(self._fd, rec.ljust(_VOTE_SLOT, b"\0"), (seq % 2) * _VOTE_SLOT)
        if self._fsync:
            os.fdatasync(self._fd)
        self._seq = seq
        self.term, self.voted_for = term, voted_for

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _SegmentJournal(Journal):  # type: ignore[misc]
    """pysyncobj's journal interface over append-only segment files with
    CRC'd records, fdatasync'ed on demand (``sync``).

    Entries are also kept in memory (pysyncobj reads them by position).
    Crash safety: truncating the tail unlinks later segments from the last
    one backwards and dropping the head unlinks from the first one forwards,
    so every crash leaves a contiguous run of entries; a torn last record is
    detected by its CRC and cut at load time."""

    def __init__(self, directory: Path, shard: int, fsync: bool, segment_bytes: int,
                 stats: RaftStats) -> None:
        self._dir = directory
        self._shard = shard
        self._fsync = fsync
        self._segment_bytes = segment_bytes
        self._stats = stats
        self._entries: list[Entry] = []
        self._locs: list[tuple[int, int]] = []  # (segment number, offset) of each entry
        self._shadow: deque[Entry] = deque()  # see deleteEntriesFrom
        self._shadow_locs: deque[tuple[int, int]] = deque()
        self._segments: list[int] = []
        self._fd = -1
        self._offset = 0
        self._dirty = False
        self._broken = ""
        #: why the last write failed (disk full, ...), "" once one succeeds:
        #: the shard gives up leading meanwhile (``RaftShard``)
        self._unwritable = ""
        self._unwritable_since = 0.0
        self._refused = 0  # writes refused since
        self._rotate_retry = 0.0  # monotonic time before which a failed rotation is not retried
        self._bytes = 0
        self._lock = threading.Lock()  # sync() may be called from another thread
        self._votes = _VoteStore(directory, shard, fsync)
        self._commit_path = directory / "raft-commit"
        self._commit = self._load_commit()
        self._saved_commit = self._commit
        self._high_commit = self._commit  # the highest commit index known: committed entries never change
        self._load()

    # ------------------------------------------------------------ loading

    def _load_commit(self) -> int:
        try:
            return max(1, int(json.loads(self._commit_path.read_text())["commit"]))
        except (OSError, ValueError, KeyError, TypeError):
            return 1  # volatile Raft state; relearned from the leader

    def _seg_path(self, seq: int) -> Path:
        return self._dir / f"journal-{seq:010d}.log"

    def _load(self) -> None:
        for leftover in self._dir.glob("journal-*.log.tmp"):
            leftover.unlink()  # a rewrite cut short by a crash; the original is intact
        seqs = sorted(int(m.group(1)) for name in os.listdir(self._dir)
                      if (m := _SEG_RE.fullmatch(name)))
        for pos, seq in enumerate(seqs):
            last = pos == len(seqs) - 1
            path = self._seg_path(seq)
            data = path.read_bytes()
            if data[: len(_SEG_MAGIC)] != _SEG_MAGIC:
                if last and len(data) < len(_SEG_MAGIC):
                    path.unlink()  # created but never written: a crash during rotation
                    continue
                raise RaftStorageError(f"shard {self._shard}: {path} is not a journal segment")
            off = len(_SEG_MAGIC)
            while off + _REC.size <= len(data):
                size, crc, idx, term = _REC.unpack_from(data, off)
                end = off + _REC.size + size
                if end > len(data):
                    break
                payload = data[off + _REC.size: end]
                if zlib.crc32(payload, zlib.crc32(data[off + 8: off + _REC.size])) != crc:
                    break
                if self._entries and idx != self._entries[-1][1] + 1:
                    raise RaftStorageError(
                        f"shard {self._shard}: journal {path} jumps from Raft index "
                        f"{self._entries[-1][1]} to {idx}. {_REPLACE}")
                self._entries.append((payload, idx, term))
                self._locs.append((seq, off))
                self._bytes += size
                off = end
            if off < len(data):
                if not last:
                    raise RaftStorageError(
                        f"shard {self._shard}: journal segment {path} is damaged at offset {off} "
                        f"(not the last segment, so this is not a torn write). {_REPLACE}")
                log.warning("shard %d: journal %s ends with %d bytes of an incomplete record "
                            "(a crash before it was acknowledged); dropping them",
                            self._shard, path, len(data) - off)
                os.truncate(path, off)
            self._segments.append(seq)
        if self._segments:
            seq = self._segments[-1]
            self._fd = os.open(self._seg_path(seq), os.O_WRONLY)
            self._offset = os.lseek(self._fd, 0, os.SEEK_END)
        else:
            self._new_segment(1)

    def _new_segment(self, seq: int) -> None:
        """Create segment *seq* and write to it from now on; on an error
        (a full disk) the new file is removed and the current segment stays
        the one written."""
        path = self._seg_path(seq)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, _SEG_MAGIC)
            if self._fsync:
                os.fdatasync(fd)
                _fsync_dir(self._dir)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self._close_fd()
        self._segments.append(seq)
        self._fd = fd
        self._offset = len(_SEG_MAGIC)

    # --------------------------------------------------- pysyncobj interface

    def add(self, command: bytes | str, idx: int, term: int) -> None:
        if not isinstance(command, bytes):
            command = bytes(command, "utf-8") if isinstance(command, str) else bytes(command)
        with self._lock:
            if self._shadow:
                if self._shadow[0] == (command, idx, term):
                    # re-sent entry we still hold on disk, at this very place: keep it
                    self._entries.append(self._shadow.popleft())
                    self._locs.append(self._shadow_locs.popleft())
                    self._bytes += len(command)
                    self._stats.entries_resent += 1
                    return
                self._conflict_locked(idx, term)
                self._truncate_shadow_locked()
            self._check_usable()
            if self._unwritable:
                # until the probe finds room again (RaftShard asks it every
                # second): a record that just fits in the page a refused one
                # freed would only make the journal flap
                self._refused += 1
                raise OSError(errno.ENOSPC, f"shard {self._shard}: {self._unwritable}")
            head = _IDX_TERM.pack(idx, term)
            rec = _REC.pack(len(command), zlib.crc32(command, zlib.crc32(head)), idx, term) + command
            try:
                _write_all(self._fd, rec)
            except OSError as e:
                self._write_failed(e)
                raise
            self._entries.append((command, idx, term))
            self._locs.append((self._segments[-1], self._offset))
            self._offset += len(rec)
            self._bytes += len(command)
            self._dirty = True
            if self._offset >= self._segment_bytes and time.monotonic() >= self._rotate_retry:
                try:
                    self._rotate_locked()
                except OSError as e:
                    # the entry is written; the segment just grows until a
                    # new one can be made
                    self._rotate_retry = time.monotonic() + 5.0
                    log.warning("shard %d: cannot start a new journal segment in %s (%s); the current one "
                                "grows meanwhile", self._shard, self._dir, e.strerror or e)

    def clear(self) -> None:
        with self._lock:
            self._close_fd()
            for seq in self._segments:
                self._seg_path(seq).unlink(missing_ok=True)
            nxt = (self._segments[-1] + 1) if self._segments else 1
            self._segments = []
            self._entries = []
            self._locs = []
            self._shadow.clear()
            self._shadow_locs.clear()
            self._bytes = 0
            if self._fsync:
                _fsync_dir(self._dir)
            self._new_segment(nxt)
            self._dirty = True

    def deleteEntriesFrom(self, entryFrom: int) -> None:  # noqa: N802 (pysyncobj's name)
        """Drop entries from position ``entryFrom`` on.

        pysyncobj truncates a follower's log whenever an AppendEntries
        overlaps it, even when the overlapping entries are identical (a
        leader re-sending after a late acknowledgement). Standard Raft only
        deletes on a conflict. So the dropped entries stay on disk (the
        "shadow", right after the log) until a *different* entry is added
        at their place: identical re-sends then cost nothing and an entry
        this replica acknowledged is never even briefly missing from disk.
        On restart the shadow is part of the log again: entries this
        replica once held in that order, which is a state it really had."""
        with self._lock:
            if entryFrom >= len(self._entries):
                return
            dropped = self._entries[entryFrom:]
            self._shadow.extendleft(reversed(dropped))
            self._shadow_locs.extendleft(reversed(self._locs[entryFrom:]))
            self._bytes -= sum(len(e[0]) for e in dropped)
            del self._entries[entryFrom:]
            del self._locs[entryFrom:]

    def _conflict_locked(self, idx: int, term: int) -> None:
        """A leader's entry differs from the one this replica held at *idx*
        (the head of the shadow): the held entries from there on go. Normal
        for entries that were never committed (a new leader's log wins); for
        a committed one it would mean the replicas' states differ, which
        Raft rules out: said loudly, counted, never silent. pysyncobj's own
        "truncating already-applied log entries" warning fires on every
        overlapping re-send, identical or not; this is the check that tells
        the two apart (``_ResendAlarmFilter``)."""
        old_idx, old_term = self._shadow[0][1], self._shadow[0][2]
        if old_idx <= self._high_commit:
            self._stats.committed_replaced += 1
            log.critical("shard %d: the leader replaced committed entry %d (term %d) with a different one "
                         "(term %d): this replica's state may differ from the others'; compare the digests "
                         "(hsm-coordinator status --digest) and rebuild this replica's data if they differ",
                         self._shard, old_idx, old_term, term)
        else:
            log.info("shard %d: %d uncommitted entr%s from index %d (term %d) replaced by the leader's (term %d)",
                     self._shard, len(self._shadow), "y" if len(self._shadow) == 1 else "ies", old_idx, old_term,
                     term)

    def _truncate_shadow_locked(self) -> None:
        if not self._shadow:
            return
        seq, off = self._shadow_locs[0]
        self._shadow.clear()
        self._shadow_locs.clear()
        self._close_fd()
        while self._segments[-1] != seq:  # newest first: a crash leaves a prefix
            self._seg_path(self._segments.pop()).unlink(missing_ok=True)
        os.truncate(self._seg_path(seq), off)
        self._fd = os.open(self._seg_path(seq), os.O_WRONLY)
        self._offset = os.lseek(self._fd, 0, os.SEEK_END)
        if self._fsync:
            # gone for good (file size and unlinks) before anything written
            # after this point can be acknowledged
            os.fdatasync(self._fd)
            _fsync_dir(self._dir)

    def deleteEntriesTo(self, entryTo: int) -> None:  # noqa: N802 (pysyncobj's name)
        """Drop the first ``entryTo`` entries (covered by a durable snapshot)."""
        with self._lock:
            self._drop_head_locked(entryTo)

    def __getitem__(self, item: Any) -> Any:
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def disk_bytes(self) -> int:
        """What the journal's segment files hold on disk now (any thread)."""
        total = 0
        for path in [self._seg_path(seq) for seq in list(self._segments)]:  # a copy: no lock, no wait
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                pass  # dropped since
        return total

    def _destroy(self) -> None:
        self.sync()
        self._save_commit()
        with self._lock:
            self._close_fd()
            self._votes.close()

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:  # noqa: N802,N803
        self._commit = raftCommitIndex
        # pysyncobj lowers its commit index to the log's end after dropping
        # entries for a re-send; what was committed stays committed
        if raftCommitIndex > self._high_commit:
            self._high_commit = raftCommitIndex

    def getRaftCommitIndex(self) -> int:  # noqa: N802
        return self._commit

    def setCurrentTerm(self, term: int, votedForNodeId: str | None) -> None:  # noqa: N802,N803
        # Raft: term and vote must be durable before any message reflecting
        # them is sent. pysyncobj has taken them in memory already: if they
        # cannot be written (in place, so not for a full disk), this replica
        # must stop taking part at once (the tick stops on a broken journal)
        try:
            self._votes.write(term, votedForNodeId)
        except OSError as e:
            self._broken = (f"cannot record the Raft term and vote in {self._dir} ({e}); the replica stopped "
                            "taking part in this shard. Fix the disk and restart it")
            log.critical("shard %d: %s", self._shard, self._broken)
            raise

    def getCurrentTerm(self) -> int:  # noqa: N802
        return self._votes.term

    def getVotedForNodeId(self) -> str | None:  # noqa: N802
        return self._votes.voted_for

    def onOneSecondTimer(self) -> None:  # noqa: N802
        self._save_commit()

    # ---------------------------------------------------------------- ours

    @property
    def last_index(self) -> int:
        return self._entries[-1][1] if self._entries else 0

    @property
    def memory_bytes(self) -> int:
        return self._bytes

    def sync(self) -> None:
        """Make every entry written so far durable (one fdatasync)."""
        if not self._dirty:
            return
        with self._lock:
            self._sync_locked()

    def _sync_locked(self) -> None:
        self._check_usable()
        if not self._dirty:
            return
        if self._fsync:
            t0 = time.perf_counter()
            try:
                os.fdatasync(self._fd)
            except OSError as e:
                # After a failed fsync the kernel may have dropped the dirty
                # pages: a retry could "succeed" without the data. Never
                # acknowledge anything again from this journal.
                self._broken = (f"fdatasync of the journal failed ({e}); the replica stopped "
                                "acknowledging Raft entries. Fix the disk and restart it")
                log.critical("shard %d: %s", self._shard, self._broken)
                raise
            self._stats.fsyncs += 1
            self._stats.fsync_seconds += time.perf_counter() - t0
        self._dirty = False

    @property
    def broken(self) -> str:
        return self._broken

    def _check_usable(self) -> None:
        if self._broken:
            raise RaftStorageError(f"shard {self._shard}: {self._broken}")

    def _write_failed(self, e: OSError) -> None:
        # undo a partial record so that the next one is not written after garbage
        try:
            os.ftruncate(self._fd, self._offset)
            os.lseek(self._fd, self._offset, os.SEEK_SET)
        except OSError:
            self._broken = f"cannot write or repair the journal in {self._dir} ({e}); restart the replica"
            log.critical("shard %d: %s", self._shard, self._broken)
            return
        self._cannot_write(e)

    def _cannot_write(self, e: OSError) -> None:
        """A write failed and nothing was left half written: said once, when
        it starts (a full disk refuses every entry, many per second), then
        counted until a write succeeds."""
        self._refused += 1
        if self._unwritable:
            return
        self._unwritable = f"cannot write the Raft journal in {self._dir}: {e.strerror or e}"
        self._unwritable_since = time.time()
        log.error("shard %d: %s; this replica gives up leading the shard until it can write again",
                  self._shard, self._unwritable)

    def _writable_again(self) -> None:
        log.warning("shard %d: the Raft journal in %s is writable again after %.0f s (%d write(s) refused)",
                    self._shard, self._dir, time.time() - self._unwritable_since, self._refused)
        self._unwritable = ""
        self._refused = 0

    def probe(self) -> bool:
        """While writes fail: whether a small file can be written (and
        synced) in the journal's directory now; if so the journal counts as
        writable again. (A follower given no new entries would otherwise
        never find out.)"""
        if not self._unwritable:
            return True
        try:
            # a write that just fits (the page a refused record freed) is not
            # room to lead with: the next entries would be refused again
            st = os.statvfs(self._dir)
            if st.f_bavail * st.f_frsize < _PROBE_FREE:
                return False
            _atomic_write(self._dir / "write-probe", b"x" * 4096, self._fsync)
            (self._dir / "write-probe").unlink()
        except OSError:
            with contextlib.suppress(OSError):
                (self._dir / "write-probe.tmp").unlink()
            return False
        with self._lock:
            if self._unwritable:
                self._writable_again()
        return True

    @property
    def unwritable(self) -> str:
        """Why the journal cannot be written now ("" when it can)."""
        return self._unwritable

    @property
    def unwritable_since(self) -> float:
        """Wall time the current write failures started (0 when none)."""
        return self._unwritable_since if self._unwritable else 0.0

    def rotate(self) -> None:
        """Start a new segment (at each snapshot, so that compaction can drop
        whole files)."""
        with self._lock:
            self._rotate_locked()

    def trim_to(self, entry: Entry) -> bool:
        """Drop the entries before ``entry`` if the journal holds it (restart
        after a crash between a snapshot and the compaction of the journal)."""
        with self._lock:
            if not self._entries:
                return False
            pos = entry[1] - self._entries[0][1]
            if 0 <= pos < len(self._entries) and self._entries[pos] == entry:
                if pos:
                    self._drop_head_locked(pos)
                return True
            return False

    def _save_commit(self) -> None:
        if self._commit != self._saved_commit:
            self._saved_commit = self._commit
            with contextlib.suppress(OSError):
                _atomic_write(self._commit_path, json.dumps({"commit": self._commit}).encode(), False)

    def _rotate_locked(self) -> None:
        # (a shadow stays where it is: any later add either takes it back or
        # truncates it, and that drops the newer segments)
        if self._offset <= len(_SEG_MAGIC):
            return  # current segment is empty
        self._sync_locked()
        self._new_segment(self._segments[-1] + 1)

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _drop_head_locked(self, count: int) -> None:
        if count <= 0:
            return
        count = min(count, len(self._entries))
        self._bytes -= sum(len(e[0]) for e in self._entries[:count])
        del self._entries[:count]
        del self._locs[:count]
        first_seq = (self._locs[0][0] if self._locs
                     else self._shadow_locs[0][0] if self._shadow_locs else self._segments[-1])
        removed = False
        while self._segments[0] < first_seq:  # oldest first: a crash leaves a suffix
            self._seg_path(self._segments.pop(0)).unlink(missing_ok=True)
            removed = True
        # The first kept segment may start with dead entries: rewrite it with
        # only the live ones when it is not the one being appended to.
        if (self._locs and not self._shadow and first_seq != self._segments[-1]
                and self._locs[0][1] > len(_SEG_MAGIC)):
            self._rewrite_segment(first_seq)
            removed = True
        if removed and self._fsync:
            _fsync_dir(self._dir)

    def _rewrite_segment(self, seq: int) -> None:
        path = self._seg_path(seq)
        out = bytearray(_SEG_MAGIC)
        new_locs: list[tuple[int, int]] = []
        n = 0
        for (cmd, idx, term), (s, _) in zip(self._entries, self._locs, strict=True):
            if s != seq:
                break
            head = _IDX_TERM.pack(idx, term)
            new_locs.append((seq, len(out)))
            out += _REC.pack(len(cmd), zlib.crc32(cmd, zlib.crc32(head)), idx, term) + cmd
            n += 1
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(out)
            f.flush()
            if self._fsync:
                os.fdatasync(f.fileno())
        os.replace(tmp, path)
        self._locs[:n] = new_locs
