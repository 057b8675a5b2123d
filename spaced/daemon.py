"""hsm-spaced's shell: it feeds :class:`spaced.plan.SpacePlan` with what
happens in a simfs tree and carries out what the plan decides.

- One scan of the tree at start (``.simfs`` and ``.lustre`` left out): each
  regular file's stat and HSM flags (``SimFS.hsm_state``, which also notices
  a file written since it was archived and marks it DIRTY).
- Then inotify, one watch per directory (new directories get theirs and are
  scanned): a file created, written (``IN_MODIFY`` marks it busy until
  ``IN_CLOSE_WRITE``), its attributes or xattrs changed (``user.hsm``:
  ``IN_ATTRIB``), deleted or renamed is read again; nothing else is. A queue
  overflow is the only case of a rescan.
- And the coordinator's HSM event log, read as a named consumer (default
  ``hsm-spaced``) in a thread: an archive that ended tells the plan whether
  it succeeded (inotify cannot see a failure), and the file is read again.
- A round (every ``interval`` seconds, and at once when events show that
  a round would do something: the usage grew above high, archives it waits
  for ended) measures the usage, asks the plan, releases through
  ``SimFS.release`` (as ``hsmctl release``; a refusal goes back to the plan)
  and submits archives like ``hsmctl archive`` (a batch, each item with the
  file's flags, data version and ctime). Then it writes its status
  (``ROOT/.simfs/space/status.json``, atomically) for ``hsmctl space``.
"""

from __future__ import annotations

import collections
import errno
import json
import logging
import os
import queue
import select
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hsm.fid import Fid
from hsm.hsmflags import HS
from hsm.simfs import DOT_LUSTRE, META_DIR, SimFS
from spaced import STATUS_VERSION, status_path
from spaced.plan import (
    DEFAULT_ARCHIVE_TIMEOUT,
    DEFAULT_MAX_ARCHIVES,
    DEFAULT_RETRY_AFTER,
    Archive,
    FileFacts,
    Release,
    SpacePlan,
    archivable,
)

if TYPE_CHECKING:
    from hsm.client import CoordinatorClient
    from hsm.v1 import coordinator_pb2 as cpb

log = logging.getLogger(__name__)

#: early rounds (usage grew above high, archives ended) come no closer than this (s)
MIN_GAP = 0.5
#: between rounds, the status is written again at most this often when the index changed (s)
STATUS_EVERY = 1.0
#: how long one read of the event log waits for a record (s)
EVENT_WAIT = 5.0
#: actions kept in the status's "recent" list
RECENT = 20
#: the default event log consumer name
DEFAULT_CONSUMER = "hsm-spaced"


@dataclass(frozen=True, slots=True)
class Settings:
    high: float = 0.9
    low: float = 0.7
    capacity: int | None = None  # None: the file system's (statvfs)
    interval: float = 10.0
    archive_id: int = 1
    max_archives: int = DEFAULT_MAX_ARCHIVES
    retry_after: float = DEFAULT_RETRY_AFTER
    archive_timeout: float = DEFAULT_ARCHIVE_TIMEOUT
    consumer: str = DEFAULT_CONSUMER


@dataclass(slots=True)
class Outcome:
    """What one round did (the shell's view: what really happened)."""

    time: float
    used_before: int
    used_after: int
    capacity: int
    draining: bool
    released: int = 0
    released_bytes: int = 0
    refused: int = 0
    archives: int = 0  # asked for and queued (or joined)
    archive_bytes: int = 0
    archive_ids: tuple[int, ...] = ()
    not_queued: int = 0  # asked for but rejected, unsubmittable or not needed
    short: int = 0


@dataclass(slots=True)
class Waited:
    """``--once --wait``: how the archives it asked for ended."""

    succeeded: int = 0
    failed: int = 0
    unfinished: int = 0
    seconds: float = 0.0


def _inotify() -> Any:
    """The inotify_simple module (imported when a daemon starts watching)."""
    import inotify_simple  # type: ignore[import-untyped]

    return inotify_simple


def watch_mask() -> int:
    f = _inotify().flags
    return int(f.CREATE | f.CLOSE_WRITE | f.MODIFY | f.ATTRIB | f.DELETE | f.MOVED_FROM | f.MOVED_TO
               | f.ONLYDIR | f.DONT_FOLLOW | f.EXCL_UNLINK)


class EventFeed:
    """Reads the coordinator's HSM event log as consumer *name* in a thread
    of its own and hands each batch to the daemon's loop (``batches``); a
    batch is acknowledged once the loop has taken it in (``done``)."""

    def __init__(self, client: CoordinatorClient, name: str, wake: Callable[[], None],
                 wait: float = EVENT_WAIT) -> None:
        self.client = client
        self.name = name
        self.wake = wake
        self.wait = wait
        self.batches: queue.Queue[tuple[list[cpb.HsmEvent], threading.Event]] = queue.Queue()
        self.error = ""  # the last problem with the coordinator, "" once it answers again
        self.registered = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hsm-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, deregister: bool = True) -> None:
        self._stop.set()
        self._thread.join(1.0)
        if deregister and self.registered:
            try:
                self.client.deregister_event_consumer(self.name)
                log.info("event consumer %s deregistered", self.name)
            except Exception as exc:  # the coordinator may be gone: nothing to keep
                log.info("event consumer %s: could not deregister: %s", self.name, exc)

    def _run(self) -> None:
        from hsm.client import CoordinatorError, NotFound

        delay = 1.0
        while not self._stop.is_set():
            try:
                if not self.registered:
                    self.client.register_event_consumer(self.name)
                    self.registered = True
                    log.info("reading the HSM event log as consumer %s", self.name)
                events = list(self.client.read_events(self.name, 1000, self.wait).events)
                if self.error:
                    log.info("the coordinator answers again")
                self.error = ""
                delay = 1.0
                if not events:
                    continue
                done = threading.Event()
                self.batches.put((events, done))
                self.wake()
                while not done.wait(0.5):
                    if self._stop.is_set():
                        return
                self.client.ack_events(self.name, events)
            except CoordinatorError as exc:
                if isinstance(exc, NotFound):
                    self.registered = False  # forgotten (deregistered by someone): register again
                if str(exc) != self.error:
                    log.warning("HSM event log: %s (trying again; releases go on)", exc)
                self.error = str(exc)
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)
            except Exception as exc:  # a bug: say it, keep the feed alive (inotify goes on meanwhile)
                log.exception("HSM event log: unexpected error (trying again in %g s)", delay)
                self.error = f"unexpected error: {exc}"
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)


class SpaceDaemon:
    """The shell around one :class:`SpacePlan` for the tree *fs*.

    *client*: the coordinator (archives, the event log); None: archives are
    never submitted (each counts as not queued). *once*: a one-shot run (no
    inotify, no event log)."""

    def __init__(self, fs: SimFS, settings: Settings, client: CoordinatorClient | None = None, *,
                 once: bool = False, clock: Callable[[], float] = time.time) -> None:
        self.fs = fs
        self.root = Path(fs.root)
        self.settings = settings
        self.client = client
        self.once = once
        self.clock = clock
        self.plan = SpacePlan(settings.high, settings.low, max_archives=settings.max_archives,
                              retry_after=settings.retry_after, archive_timeout=settings.archive_timeout)
        self.writing: set[str] = set()  # IN_MODIFY seen, no IN_CLOSE_WRITE yet
        self.unreadable: set[str] = set()  # its HSM state cannot be read
        self.actions: dict[int, str] = {}  # archive action id -> key, while it runs
        self.fids: dict[str, str] = {}  # FID text -> key, of the files it asked archives of
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT)
        self.journal: list[dict[str, Any]] | None = [] if once else None  # --once: every action
        self.started = clock()
        self.scans = 0
        self.inotify_events = 0
        self.hsm_events = 0
        self.last: Outcome | None = None
        self.totals = {"rounds": 0, "released": 0, "released_bytes": 0, "refused": 0,
                       "archives_requested": 0, "archives_succeeded": 0, "archives_failed": 0,
                       "archives_not_queued": 0}
        self.submit_error = ""
        self.feed: EventFeed | None = None
        self._inotify: Any = None
        self._mask = 0
        self._wd_dirs: dict[int, str] = {}
        self._dir_wds: dict[str, int] = {}
        self._watch_limit_said = False
        self._stop = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # -- keys and facts -----------------------------------------------------

    def key_of(self, path: Path | str) -> str:
        return os.path.relpath(path, self.root)

    def path_of(self, key: str) -> Path:
        return self.root / key

    @property
    def busy(self) -> set[str]:
        """Files left alone: being written, or whose HSM state cannot be read."""
        return self.writing | self.unreadable

    def refresh(self, key: str, full: bool = True) -> None:
        """Read the file again and tell the plan (gone, if it is). *full*:
        its HSM flags too (not for a file being written: stat only)."""
        now = self.clock()
        path = self.path_of(key)
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            self._forget(key, now)
            return
        if not stat.S_ISREG(st.st_mode):
            self._forget(key, now)
            return
        old = self.plan.facts(key)
        flags = old.flags if old is not None else 0
        if full and key not in self.writing:
            try:
                flags = int(self.fs.hsm_state(path).flags)
                st = os.lstat(path)
                self.unreadable.discard(key)
            except (FileNotFoundError, NotADirectoryError):
                self._forget(key, now)
                return
            except (OSError, ValueError) as exc:
                # no FID or HSM state can be read (or given): leave it alone
                if key not in self.unreadable:
                    log.warning("%s: cannot read its HSM state (%s): it is left alone", path, exc)
                self.unreadable.add(key)
        busy = key in self.writing or key in self.unreadable
        self.plan.seen(key, FileFacts(flags, st.st_blocks * 512, st.st_size, st.st_atime, st.st_mtime, busy), now)

    def _forget(self, key: str, now: float) -> None:
        self.writing.discard(key)
        self.unreadable.discard(key)
        self.plan.gone(key, now)

    # -- the scan and inotify ------------------------------------------------

    def scan(self, watch: bool = True) -> None:
        """The whole tree: every regular file read, every directory watched
        (with *watch*); files the index has and the tree no longer: gone."""
        self.scans += 1
        found: set[str] = set()
        t0 = time.monotonic()
        self._add_tree("", watch, found)
        for key in set(self.plan.keys()) - found:
            self.plan.gone(key, self.clock())
        log.info("%s: scanned %d files in %.2f s (%d directories watched)", self.root, len(found),
                 time.monotonic() - t0, len(self._dir_wds))

    def start_watching(self) -> None:
        """Open inotify (before the scan: nothing written during it is missed)."""
        if self._inotify is None:
            self._inotify = _inotify().INotify()
            self._mask = watch_mask()

    def _add_tree(self, top: str, watch: bool, found: set[str] | None = None) -> None:
        """Watch and read the directory *top* (a key, "" for the root) and
        everything under it: each directory is watched before it is listed."""
        stack = [top]
        while stack:
            d = stack.pop()
            path = self.path_of(d) if d else self.root
            if watch and self._inotify is not None:
                self._watch(d, path)
            try:
                entries = sorted(os.scandir(path), key=lambda e: e.name)
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                    log.warning("%s: cannot list it: %s", path, exc.strerror)
                continue
            for ent in entries:
                if not d and ent.name in (META_DIR, DOT_LUSTRE):
                    continue
                key = os.path.join(d, ent.name) if d else ent.name
                try:
                    if ent.is_dir(follow_symlinks=False):
                        stack.append(key)
                        continue
                    regular = ent.is_file(follow_symlinks=False)
                except OSError:
                    continue
                if regular:
                    self.refresh(key)
                    if found is not None and self.plan.facts(key) is not None:
                        found.add(key)

    def _watch(self, d: str, path: Path) -> None:
        try:
            wd = self._inotify.add_watch(path, self._mask)
        except OSError as exc:
            if exc.errno == errno.ENOSPC and not self._watch_limit_said:
                self._watch_limit_said = True
                log.error("inotify watch limit reached (sysctl fs.inotify.max_user_watches): changes under %s "
                          "and other new directories are not seen until a rescan", path)
            elif exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ENOSPC):
                log.warning("%s: cannot watch it: %s", path, exc.strerror)
            return
        old = self._wd_dirs.get(wd)
        if old is not None and old != d:
            self._dir_wds.pop(old, None)  # the same directory under a new name
        self._wd_dirs[wd] = d
        self._dir_wds[d] = wd

    def _drop_tree(self, top: str) -> None:
        """A directory moved away or deleted: forget it and what is under it."""
        prefix = top + "/"
        for d in [d for d in self._dir_wds if d == top or d.startswith(prefix)]:
            wd = self._dir_wds.pop(d)
            self._wd_dirs.pop(wd, None)
            try:
                self._inotify.rm_watch(wd)
            except OSError:
                pass  # gone with its directory
        now = self.clock()
        for key in [k for k in self.plan.keys() if k.startswith(prefix)]:
            self._forget(key, now)

    def pump_inotify(self) -> int:
        """Take in the inotify events queued now; how many there were."""
        if self._inotify is None:
            return 0
        events = list(self._inotify.read(timeout=0))
        if events:
            self.on_inotify(events)
        return len(events)

    def on_inotify(self, events: Iterable[Any]) -> None:
        f = _inotify().flags
        touched: dict[str, bool] = {}  # key -> read its HSM flags too
        rescan = False
        for ev in events:
            self.inotify_events += 1
            if ev.mask & f.Q_OVERFLOW:
                rescan = True
                continue
            d = self._wd_dirs.get(ev.wd)
            if d is None:
                continue
            if ev.mask & f.IGNORED:
                self._wd_dirs.pop(ev.wd, None)
                if self._dir_wds.get(d) == ev.wd:
                    self._dir_wds.pop(d, None)
                continue
            if not ev.name:
                continue  # about the directory itself (DELETE_SELF, ...): its parent says it too
            if not d and ev.name in (META_DIR, DOT_LUSTRE):
                continue
            key = os.path.join(d, ev.name) if d else ev.name
            if ev.mask & f.ISDIR:
                if ev.mask & (f.MOVED_FROM | f.DELETE):
                    self._drop_tree(key)
                elif ev.mask & (f.CREATE | f.MOVED_TO):
                    self._add_tree(key, True)
                continue
            if ev.mask & (f.DELETE | f.MOVED_FROM):
                self.writing.discard(key)
            if ev.mask & f.MODIFY:
                self.writing.add(key)
            if ev.mask & f.CLOSE_WRITE:
                self.writing.discard(key)
            full = bool(ev.mask & (f.CREATE | f.MOVED_TO | f.ATTRIB | f.CLOSE_WRITE | f.DELETE | f.MOVED_FROM))
            touched[key] = touched.get(key, False) or full
        if rescan:
            log.warning("%s: the inotify queue overflowed: rescanning the tree", self.root)
            self.scan()
            return
        for key, full in touched.items():
            self.refresh(key, full)

    # -- the event log -------------------------------------------------------

    def start_feed(self) -> None:
        if self.client is not None and self.feed is None:
            self.feed = EventFeed(self.client, self.settings.consumer, self.wake)
            self.feed.start()

    def drain_feed(self) -> int:
        """Take in the batches the event log thread read; how many records."""
        n = 0
        while self.feed is not None:
            try:
                events, done = self.feed.batches.get_nowait()
            except queue.Empty:
                break
            try:
                self.on_hsm_events(events)
            finally:
                done.set()
            n += len(events)
        return n

    def on_hsm_events(self, events: Iterable[cpb.HsmEvent]) -> None:
        for e in events:
            self.hsm_events += 1
            if e.fsname != self.fs.fsname:
                continue
            fid = Fid(e.fid.seq, e.fid.oid, e.fid.ver)
            ours = self.actions.pop(e.action_id, None) if e.event == "ARCHIVE" else None
            key = ours or self.fids.get(str(fid)) or self._key_of_fid(fid)
            if key is None:
                continue
            if e.event == "ARCHIVE":
                if ours is not None:
                    self.fids.pop(str(fid), None)
                self._archive_ended(key, e.errno == 0, e.action_id, fid, e.errno, ours is not None)
            self.refresh(key)

    def _key_of_fid(self, fid: Fid) -> str | None:
        """The file of *fid*, if the tree still has it (no tree walk for a
        file whose ``.lustre/fid`` link is gone: it was deleted)."""
        if not os.path.lexists(self.fs.fid_path(fid)):
            return None
        try:
            return self.key_of(self.fs.path_of(fid))
        except (OSError, ValueError):
            return None

    def _archive_ended(self, key: str, ok: bool, action_id: int, fid: Fid | str, err: int = 0,
                       ours: bool = True) -> None:
        """An archive of *key* ended: the plan learns it (a success it may
        have seen already through inotify); *ours*: one this daemon asked for."""
        if self.plan.is_outstanding(key) or not ok:
            self.plan.archive_ended(key, ok, self.clock())
        if not ours:
            return
        facts = self.plan.facts(key)
        nbytes = facts.blocks_bytes if facts is not None else 0
        if ok:
            self.totals["archives_succeeded"] += 1
            self._note(key, "archived", nbytes, f"action {action_id}")
            log.info("action %d ARCHIVE %s succeeded: %s archived", action_id, fid, key)
        else:
            self.totals["archives_failed"] += 1
            why = errno.errorcode.get(err, str(err)) if err else "failed"
            self._note(key, "archive failed", nbytes, f"action {action_id}: {why}")
            log.warning("action %d ARCHIVE %s failed (%s): %s asked for again in %g s", action_id, fid, why, key,
                        self.settings.retry_after)

    # -- a round ---------------------------------------------------------------

    def usage(self) -> tuple[int, int]:
        """(used, capacity) in bytes: with a capacity given, what the
        indexed files hold; else the file system's, as df counts it."""
        if self.settings.capacity:
            return self.plan.used_bytes, self.settings.capacity
        st = os.statvfs(self.root)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        return used, max(1, used + st.f_bavail * st.f_frsize)

    def would_act(self) -> bool:
        used, capacity = self.usage()
        return self.plan.would_act(used, capacity)

    def run_round(self) -> Outcome:
        self.pump_inotify()
        self.drain_feed()
        now = self.clock()
        used, capacity = self.usage()
        r = self.plan.round(now, used, capacity)
        out = Outcome(now, used, used, capacity, r.draining, short=r.short)
        if r.started:
            log.info("used %d of %d bytes (%.0f%%), above the high watermark (%.0f%%): releasing down to %.0f%%",
                     used, capacity, 100 * used / capacity, 100 * self.settings.high, 100 * self.settings.low)
        for rel in r.releases:
            self._release(rel, out)
        if r.archives:
            self._submit(r.archives, out)
        out.used_after, capacity = self.usage()
        out.draining = self.plan.settle(out.used_after, capacity)
        if r.draining and r.short and not r.releases and not r.archives:
            log.debug("%d bytes above the low watermark and nothing more to release or archive now", r.short)
        self.totals["rounds"] += 1
        self.last = out
        self.write_status()
        return out

    def _release(self, rel: Release, out: Outcome) -> None:
        path = self.path_of(rel.key)
        now = self.clock()
        try:
            self.fs.release(path)
        except FileNotFoundError:
            self.plan.gone(rel.key, now)
            return
        except (OSError, ValueError) as exc:
            self.plan.release_refused(rel.key, now)
            out.refused += 1
            self.totals["refused"] += 1
            why = getattr(exc, "strerror", None) or str(exc)
            self._note(rel.key, "release refused", rel.bytes, why)
            log.info("%s: release refused: %s", path, why)
            self.refresh(rel.key)
            return
        self.plan.release_done(rel.key, now)
        out.released += 1
        out.released_bytes += rel.bytes
        self.totals["released"] += 1
        self.totals["released_bytes"] += rel.bytes
        self._note(rel.key, "released", rel.bytes)
        log.info("%s released (%d bytes, last used %s)", path, rel.bytes,
                 time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rel.last_use)))
        self.refresh(rel.key)

    def _submit(self, archives: Iterable[Archive], out: Outcome) -> None:
        from hsm.client import CoordinatorError, outcome_name

        now = self.clock()
        batch: list[tuple[Archive, Fid, cpb.SubmitItem]] = []
        for a in archives:
            path = self.path_of(a.key)
            if self.client is None:
                self._not_queued(a, out, "no coordinator to ask")
                continue
            try:
                fid = self.fs.fid_of(path)
                version, attrs, st = self.fs.request_state(path)
            except FileNotFoundError:
                self.plan.gone(a.key, now)
                continue
            except (OSError, ValueError) as exc:
                self._not_queued(a, out, f"cannot read it: {getattr(exc, 'strerror', None) or exc}")
                continue
            if not archivable(int(attrs.flags)):
                self.plan.archive_ended(a.key, True, now)  # it changed: nothing to ask
                self.refresh(a.key)
                continue
            exists = attrs.flags & HS.EXISTS and attrs.archive_id
            archive_id = int(attrs.archive_id) if exists else self.settings.archive_id
            try:
                item = self.client.submit_item(
                    self.fs.fsname, fid, "archive", archive_id,
                    hsm=(int(attrs.flags), int(attrs.archive_id), version, st.st_ctime_ns),
                    path="/" + a.key, size=st.st_size)
            except CoordinatorError as exc:
                self._not_queued(a, out, str(exc))
                continue
            batch.append((a, fid, item))
        if not batch or self.client is None:
            return
        try:
            results = self.client.submit([item for _a, _f, item in batch])
        except CoordinatorError as exc:
            if str(exc) != self.submit_error:
                log.warning("cannot submit %d archive(s): %s (asked for again in %g s)", len(batch), exc,
                            self.settings.retry_after)
            self.submit_error = str(exc)
            for a, _fid, _item in batch:
                self._not_queued(a, out, str(exc), quiet=True)
            return
        self.submit_error = ""
        for (a, fid, _item), res in zip(batch, results, strict=True):
            outcome = outcome_name(res.outcome)
            if outcome in ("CREATED", "JOINED"):
                self.actions[res.action_id] = a.key
                self.fids[str(fid)] = a.key
                out.archives += 1
                out.archive_bytes += a.bytes
                out.archive_ids += (res.action_id,)
                self.totals["archives_requested"] += 1
                verb = "queued" if outcome == "CREATED" else "joined"
                self._note(a.key, "archive requested", a.bytes, f"action {res.action_id} {verb}")
                log.info("action %d ARCHIVE %s %s for %s (%d bytes, last used %s)", res.action_id, fid, verb,
                         a.key, a.bytes, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(a.last_use)))
            elif outcome == "NOT_NEEDED":
                self.plan.archive_ended(a.key, True, now)
                self.refresh(a.key)
            else:
                from hsmctl.output import error_text

                self._not_queued(a, out, error_text(res.reason, res.errno) or "rejected")

    def _not_queued(self, a: Archive, out: Outcome, why: str, quiet: bool = False) -> None:
        self.plan.archive_ended(a.key, False, self.clock())
        out.not_queued += 1
        self.totals["archives_not_queued"] += 1
        self._note(a.key, "archive not queued", a.bytes, why)
        if not quiet:
            log.warning("%s: archive not queued: %s (asked for again in %g s)", self.path_of(a.key), why,
                        self.settings.retry_after)

    def wait_archives(self, deadline: float | None) -> Waited:
        """Wait for the archives asked for to end (``--once --wait``)."""
        from hsm.client import CoordinatorError, DeadlineExceeded
        from hsm.v1 import types_pb2 as tpb

        w = Waited()
        if not self.actions or self.client is None:
            return w
        t0 = time.monotonic()
        try:
            for action in self.client.watch(list(self.actions), deadline):
                if action.state not in (tpb.SUCCEEDED, tpb.FAILED, tpb.CANCELED):
                    continue
                key = self.actions.pop(action.action_id, None)
                if key is None:
                    continue
                ok = action.state == tpb.SUCCEEDED
                w.succeeded += ok
                w.failed += not ok
                fid = Fid(action.fid.seq, action.fid.oid, action.fid.ver)
                self.fids.pop(str(fid), None)
                self._archive_ended(key, ok, action.action_id, fid, action.errno, True)
                self.refresh(key)
        except DeadlineExceeded:
            pass
        except CoordinatorError as exc:
            log.warning("cannot wait for the archives: %s", exc)
        w.unfinished = len(self.actions)
        w.seconds = time.monotonic() - t0
        return w

    def _note(self, key: str, what: str, nbytes: int, detail: str = "") -> None:
        note = {"time": self.clock(), "path": key, "action": what, "bytes": nbytes, "detail": detail}
        self.recent.append(note)
        if self.journal is not None:
            self.journal.append(note)

    # -- the status ------------------------------------------------------------

    def status(self, stopped: bool = False) -> dict[str, Any]:
        used, capacity = self.usage()
        last = self.last
        plan = self.plan
        error = self.submit_error or (self.feed.error if self.feed is not None else "")
        return {
            "version": STATUS_VERSION,
            "root": str(self.root),
            "fsname": self.fs.fsname,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "mode": "once" if self.once else "daemon",
            "started": self.started,
            "updated": self.clock(),
            "stopped": self.clock() if stopped else None,
            "capacity": capacity,
            "capacity_source": "option" if self.settings.capacity else "statvfs",
            "used": used,
            "high": self.settings.high,
            "low": self.settings.low,
            "draining": plan.draining,
            "interval": None if self.once else self.settings.interval,
            "files": plan.files,
            "busy": len(self.busy),
            "candidates": {"release": plan.release_candidates, "release_bytes": plan.release_candidate_bytes,
                           "archive": plan.archive_candidates},
            "last_round": None if last is None else {
                "time": last.time, "used_before": last.used_before, "used_after": last.used_after,
                "released": last.released, "released_bytes": last.released_bytes, "refused": last.refused,
                "archives_requested": last.archives, "archive_bytes": last.archive_bytes,
                "not_queued": last.not_queued, "short": last.short},
            "total": dict(self.totals),
            "archives": {"outstanding": plan.outstanding, "requested": self.totals["archives_requested"],
                         "succeeded": self.totals["archives_succeeded"], "failed": self.totals["archives_failed"],
                         "not_queued": self.totals["archives_not_queued"]},
            "scans": self.scans,
            "inotify_events": self.inotify_events,
            "hsm_events": self.hsm_events,
            "coordinator_error": error,
            "recent": list(self.recent),
        }

    def write_status(self, stopped: bool = False) -> Path:
        """Write the status document atomically (temporary file + rename)."""
        path = status_path(self.root)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        data = json.dumps(self.status(stopped), indent=1, sort_keys=True) + "\n"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    # -- running ---------------------------------------------------------------

    def wake(self) -> None:
        """Wake the loop (from a signal handler or another thread)."""
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # full: it wakes anyway

    def request_stop(self) -> None:
        self._stop = True
        self.wake()

    def resume(self) -> bool:
        """A drain the previous run left on (its status says so, with the
        same watermarks) goes on: a --once run from cron, or a restarted
        daemon, keeps the hysteresis. Returns whether one was resumed."""
        try:
            doc = json.loads(status_path(self.root).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        if not isinstance(doc, dict) or doc.get("draining") is not True:
            return False
        if (doc.get("high"), doc.get("low")) != (self.settings.high, self.settings.low):
            return False
        self.plan.resume_drain()
        log.info("the previous run left a drain on (usage above the low watermark): it goes on")
        return True

    def run_once(self) -> Outcome:
        """One scan, one round (``--once``)."""
        self.resume()
        self.scan(watch=False)
        return self.run_round()

    def run(self) -> int:
        """Scan, then rounds until :meth:`request_stop`. Returns 0. The
        status is written after each round, and at most every
        ``STATUS_EVERY`` seconds in between when events changed the index."""
        self.resume()
        self.start_watching()
        self.scan()
        self.start_feed()
        next_round = time.monotonic()
        last_round = -MIN_GAP
        last_status = time.monotonic()
        early = stale = False
        try:
            while not self._stop:
                now = time.monotonic()
                due = min(next_round, last_round + MIN_GAP) if early else next_round
                if stale:
                    due = min(due, last_status + STATUS_EVERY)
                fds = [self._wake_r] + ([self._inotify.fileno()] if self._inotify is not None else [])
                ready, _, _ = select.select(fds, [], [], max(0.0, due - now))
                if self._wake_r in ready:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                changed = self.pump_inotify() + self.drain_feed()
                if self._stop:
                    break
                if changed:
                    stale = True
                    early = early or self.would_act()
                now = time.monotonic()
                if now >= next_round or (early and now >= last_round + MIN_GAP):
                    self.run_round()
                    last_round = last_status = now
                    next_round = now + self.settings.interval
                    early = self.would_act()
                    stale = False
                elif stale and now >= last_status + STATUS_EVERY:
                    self.write_status()
                    last_status = now
                    stale = False
        finally:
            if self.feed is not None:
                self.feed.stop()
            self.write_status(stopped=True)
            self.close()
        return 0

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1
