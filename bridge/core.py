"""The MDT bridge's protocol, pure: events in (with the time passed in),
instructions out. The ``hsm-bridge`` daemon (``bridge.daemon``, its shell)
reads the MDT's action lists, carries the instructions out and feeds the
answers back.

What it decides:

* Every good item of an action list becomes a ``SubmitItem`` whose
  requester is the file system's MDT (initiator ``lustre:<fsname>``) with
  the item's ``hai_cookie``: the coordinator's idempotency key is
  ``lustre:<fsname>:<cookie>``, so a list replayed after a bridge restart,
  or by the standby bridge that took over, never makes a second action.
* An ``HSMA_CANCEL`` item becomes a cancel of the action with that cookie.
* Items are sent in batches (``batch_size``, or whatever waited
  ``batch_delay``); a batch the coordinator could not take is sent again,
  the same items with the same keys, after a growing delay.
* Backpressure: while ``max_backlog`` items wait for the coordinator's
  answer, the shell stops reading the MDT (``reading_allowed``): the lists
  wait in the kernel, never in an unbounded buffer here.
* Items the MDT holds as STARTED that no agent may end are ended at the
  MDT (``EndAtMdt``): a request the coordinator refused, every action
  that ended other than SUCCEEDED (canceled while waiting, failed after
  its agent was lost), and, with EALREADY, an item that joined an action
  which succeeded (its mover may have begun before the item joined). An
  item its agent already ended answers ENOENT there, which is fine.
* The MDT's limits, detected and reported rather than only documented:
  it sends nothing while ``mdt_max_requests`` of its items are STARTED (a
  stall: items outstanding at that count and no list for ``stall_after``),
  and it cancels silently an item STARTED for ``mdt_active_request_timeout``
  (an outstanding item older than that: its agent's end will get ENOENT).
* A list with a ``hal_version`` other than 1, a truncated list, a bad item,
  an unknown action or an fsname not served: logged with the bytes in hex,
  counted; the good items of the same list still go. A message ``recv``
  itself refuses (EPROTO) is counted and reported too, and reading goes on.
"""

from __future__ import annotations

import errno as E
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hsm.hsmflags import HSMA
from hsm.lustre.hal import ActionItem, ActionList, build_hal, parse_hal

#: seconds between two reports of the same MDT condition
REPORT_EVERY = 300.0
#: items per list the journal's compaction writes (hai_data is at most a
#: few KiB: a list stays well inside the 1 MiB receive buffer)
LIST_ITEMS = 100


def initiator_of(fsname: str) -> str:
    """The requester name of a file system's MDT (the idempotency key of an
    item is ``<initiator>:<cookie>``)."""
    return f"lustre:{fsname}"


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    fsnames: frozenset[str]
    batch_size: int = 1000
    batch_delay: float = 0.05
    max_backlog: int = 100_000
    retry_min: float = 0.2
    retry_max: float = 5.0
    mdt_max_requests: int = 3
    mdt_active_request_timeout: float = 3600.0
    stall_after: float = 30.0

    def __post_init__(self) -> None:
        if not self.fsnames:
            raise ValueError("the bridge needs at least one fsname")
        if not 1 <= self.batch_size <= 10_000:
            raise ValueError(f"batch_size must be 1..10000, not {self.batch_size}")
        if self.max_backlog < self.batch_size:
            raise ValueError("max_backlog must be at least batch_size")
        if min(self.batch_delay, self.retry_min, self.stall_after) <= 0 or self.retry_max < self.retry_min:
            raise ValueError("batch_delay, retry_min and stall_after must be > 0, retry_max >= retry_min")
        if self.mdt_max_requests < 1 or self.mdt_active_request_timeout <= 0:
            raise ValueError("mdt_max_requests must be >= 1 and mdt_active_request_timeout > 0")


@dataclass(frozen=True, slots=True)
class Received:
    """One item of the MDT, with what its list said around it."""

    fsname: str
    archive_id: int
    hal_flags: int
    item: ActionItem
    when: float

    @property
    def key(self) -> tuple[str, int]:
        return self.fsname, self.item.cookie


# -- instructions ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Submit:
    batch: int
    items: tuple[Received, ...]


@dataclass(frozen=True, slots=True)
class Cancel:
    batch: int
    items: tuple[Received, ...]  # HSMA_CANCEL items: cancel the action of each one's cookie


@dataclass(frozen=True, slots=True)
class EndAtMdt:
    """End an item at the MDT (``begin(is_error)`` + ``end``) with *errval*."""

    item: Received
    errval: int
    why: str


@dataclass(frozen=True, slots=True)
class Watch:
    """Follow these actions until they end (``on_action_ended``)."""

    action_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Report:
    """Something an admin must see: *level* is a logging level name."""

    level: str
    code: str
    message: str


Instruction = Submit | Cancel | EndAtMdt | Watch | Report


@dataclass(slots=True)
class _Outstanding:
    received: Received
    action_id: int
    joined: bool = False  # answered JOINED: another request's item created the action


@dataclass(slots=True)
class BridgeCore:
    config: BridgeConfig
    counters: Counter[str] = field(default_factory=Counter)
    _pending: list[Received] = field(default_factory=list)
    _cancels: list[Received] = field(default_factory=list)
    _oldest_pending: float | None = None
    _batches: dict[int, tuple[str, tuple[Received, ...]]] = field(default_factory=dict)
    _retry: list[tuple[float, str, tuple[Received, ...]]] = field(default_factory=list)
    _next_batch: int = 1
    _delay: float = 0.0
    _known: set[tuple[str, int]] = field(default_factory=set)  # cookies received and not finished
    _outstanding: dict[tuple[str, int], _Outstanding] = field(default_factory=dict)
    _by_action: dict[int, list[tuple[str, int]]] = field(default_factory=dict)
    _last_list: float = 0.0
    _reported: dict[str, float] = field(default_factory=dict)

    # -- what the shell asks ------------------------------------------------

    @property
    def backlog(self) -> int:
        """Items received and not yet answered by the coordinator."""
        waiting = sum(len(items) for _kind, items in self._batches.values())
        waiting += sum(len(items) for _at, _kind, items in self._retry)
        return len(self._pending) + len(self._cancels) + waiting

    def reading_allowed(self) -> bool:
        return self.backlog < self.config.max_backlog

    def live(self) -> list[Received]:
        """Every item not finished yet (waiting to be sent, sent and not
        answered, or forwarded and its action not ended): what the shell's
        journal must keep so that a restarted bridge sends them again."""
        out = list(self._pending) + list(self._cancels)
        for _kind, items in self._batches.values():
            out += items
        for _at, _kind, items in self._retry:
            out += items
        out += [e.received for e in self._outstanding.values()]
        return out

    def live_lists(self) -> list[bytes]:
        """``live()`` as action lists (one per file system, archive id and
        list flags, in the order received), for the journal's compaction."""
        groups: dict[tuple[str, int, int], list[ActionItem]] = {}
        for rec in self.live():
            groups.setdefault((rec.fsname, rec.archive_id, rec.hal_flags), []).append(rec.item)
        out = []
        for (fsname, archive_id, flags), items in groups.items():
            for start in range(0, len(items), LIST_ITEMS):
                out.append(build_hal(ActionList(fsname, archive_id, tuple(items[start:start + LIST_ITEMS]),
                                                flags=flags)))
        return out

    def summary(self) -> str:
        """The counters in one line, for the periodic log."""
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.counters.items())) or "nothing yet"
        return (f"counters: {counts}; backlog {self.backlog}, forwarded and not ended "
                f"{len(self._outstanding)}")

    def next_timer(self, now: float) -> float | None:
        """When ``on_tick`` has something to do next (None: nothing)."""
        times = [at for at, _k, _i in self._retry]
        if self._oldest_pending is not None:
            times.append(self._oldest_pending + self.config.batch_delay)
        if self._outstanding:
            times.append(now + 1.0)
        return min(times) if times else None

    # -- events -------------------------------------------------------------

    def on_list(self, now: float, raw: bytes) -> list[Instruction]:
        """An action list as ``llapi_hsm_copytool_recv`` gave it."""
        self._last_list = now
        out: list[Instruction] = []
        parsed = parse_hal(raw, fsnames=self.config.fsnames)
        self.counters["lists"] += 1
        for error in parsed.errors:
            self.counters["bad_input"] += 1
            out.append(Report("error", "bad_input", f"action list from the MDT: {error}"))
        if not parsed.fsname_known:
            # reported above; none of its items is ours to forward
            self.counters["foreign_items"] += len(parsed.items)
            return out + self._flush(now, force=False)
        for item in parsed.items:
            rec = Received(parsed.fsname, parsed.archive_id, parsed.flags, item, now)
            self.counters["items"] += 1
            if item.action == HSMA.CANCEL:
                self._cancels.append(rec)
                continue
            if rec.key in self._known:
                self.counters["duplicates"] += 1  # sent again by the MDT: the key makes it harmless
            self._known.add(rec.key)
            self._pending.append(rec)
        if self._oldest_pending is None and (self._pending or self._cancels):
            self._oldest_pending = now
        out += self._flush(now, force=False)
        return out

    def on_unreadable(self, now: float, error: str) -> list[Instruction]:
        """A message from the MDT that ``llapi_hsm_copytool_recv`` refused
        (EPROTO: not an action list, or shorter than a list header). The
        library read it whole and dropped it (its bytes are not handed out):
        counted, reported, and the next message is read."""
        self.counters["bad_input"] += 1
        self.counters["unreadable"] += 1
        return [Report("error", "bad_input",
                       f"a message from the MDT that recv refused ({error}): dropped, reading on")]

    def on_tick(self, now: float) -> list[Instruction]:
        out: list[Instruction] = []
        due = [r for r in self._retry if r[0] <= now]
        self._retry = [r for r in self._retry if r[0] > now]
        for _at, kind, items in due:
            out.append(self._send(kind, items))
        if self._oldest_pending is not None and now - self._oldest_pending >= self.config.batch_delay:
            out += self._flush(now, force=True)
        out += self._check_mdt(now)
        return out

    def on_submitted(self, now: float, batch: int, results: list[Any]) -> list[Instruction]:
        """The coordinator's answer to ``Submit`` *batch*: one
        ``SubmitResult``-like (``outcome`` name, ``action_id``, ``errno``,
        ``reason``) per item, in order."""
        kind, items = self._batches.pop(batch)
        assert kind == "submit" and len(results) == len(items), "one result per item"
        self._delay = 0.0
        out: list[Instruction] = []
        watch: list[int] = []
        for rec, res in zip(items, results, strict=True):
            outcome = res.outcome
            if outcome in ("CREATED", "JOINED"):
                self._outstanding[rec.key] = _Outstanding(rec, res.action_id, outcome == "JOINED")
                self._by_action.setdefault(res.action_id, []).append(rec.key)
                watch.append(res.action_id)
                self.counters[outcome.lower()] += 1
            elif outcome == "NOT_NEEDED":
                self.counters["not_needed"] += 1
                self._known.discard(rec.key)
                out.append(EndAtMdt(rec, 0, "the coordinator found nothing to do"))
            else:
                self.counters["rejected"] += 1
                self._known.discard(rec.key)
                errval = res.errno or E.EINVAL
                out.append(EndAtMdt(rec, errval, f"the coordinator refused it: {res.reason}"))
                out.append(Report("warning", "rejected",
                                  f"{_name(rec)}: the coordinator refused it ({res.reason}); ended at the MDT"))
        if watch:
            out.append(Watch(tuple(dict.fromkeys(watch))))
        if self._cancels:
            out += self._flush(now, force=True)  # cancels that waited for this answer
        return out

    def on_cancelled(self, now: float, batch: int) -> list[Instruction]:
        """The coordinator took the cancels of *batch* (unknown cookies included)."""
        _kind, items = self._batches.pop(batch)
        self._delay = 0.0
        self.counters["cancels"] += len(items)
        return []

    def on_failed(self, now: float, batch: int, error: str) -> list[Instruction]:
        """The coordinator could not be reached for *batch*: send it again
        later, the same items with the same keys."""
        kind, items = self._batches.pop(batch)
        self._delay = min(self.config.retry_max, max(self.config.retry_min, self._delay * 2))
        self._retry.append((now + self._delay, kind, items))
        self.counters["retries"] += 1
        return [Report("warning", "unavailable",
                       f"{kind} of {len(items)} item(s) failed ({error}); again in {self._delay:.1f} s")]

    def on_action_ended(self, now: float, action_id: int, state: str, errno: int) -> list[Instruction]:
        """An action this bridge forwarded ended. A success was ended at the
        MDT by its agent. Any other end is ended at the MDT here too: the
        action may have ended with no agent ever beginning it (canceled
        while waiting) or after its agent was lost; where its agent did end
        the item, the MDT answers this second end with ENOENT, harmlessly."""
        out: list[Instruction] = []
        for key in self._by_action.pop(action_id, []):
            entry = self._outstanding.pop(key, None)
            self._known.discard(key)
            if entry is None:
                continue
            if state == "SUCCEEDED":
                if entry.joined:
                    # its mover may have known only the items there were when
                    # it began: done by another request's copy, ended EALREADY
                    # (the MDT does not mark a file DIRTY for it)
                    out.append(EndAtMdt(entry.received, E.EALREADY, f"action {action_id} did it"))
                continue
            errval = errno or (E.ECANCELED if state == "CANCELED" else E.EIO)
            out.append(EndAtMdt(entry.received, errval, f"action {action_id} ended {state}"))
        return out

    # -- internals ----------------------------------------------------------

    def _flush(self, now: float, force: bool) -> list[Instruction]:
        out: list[Instruction] = []
        size = self.config.batch_size
        while len(self._pending) >= size or (force and self._pending):
            items, self._pending = tuple(self._pending[:size]), self._pending[size:]
            out.append(self._send("submit", items))
        # a cancel waits until the coordinator answered the submit of its
        # cookie's item (else it would find nothing to cancel, and the item
        # would run)
        unsent = {r.key for r in self._pending}
        unsent.update(r.key for kind, items in self._batches.values() if kind == "submit" for r in items)
        unsent.update(r.key for _at, kind, items in self._retry if kind == "submit" for r in items)
        ready = [r for r in self._cancels if r.key not in unsent]
        held = [r for r in self._cancels if r.key in unsent]
        while len(ready) >= size or (force and ready):
            items, ready = tuple(ready[:size]), ready[size:]
            out.append(self._send("cancel", items))
        self._cancels = ready + held
        self._oldest_pending = now if (self._pending or self._cancels) else None
        return out

    def _send(self, kind: str, items: tuple[Received, ...]) -> Instruction:
        batch = self._next_batch
        self._next_batch += 1
        self._batches[batch] = (kind, items)
        return Submit(batch, items) if kind == "submit" else Cancel(batch, items)

    def _check_mdt(self, now: float) -> list[Instruction]:
        out: list[Instruction] = []
        cfg = self.config
        if (len(self._outstanding) >= cfg.mdt_max_requests and now - self._last_list >= cfg.stall_after
                and self._report_due("max_requests", now)):
            self.counters["mdt_stalls"] += 1
            out.append(Report(
                "warning", "max_requests",
                f"{len(self._outstanding)} items are STARTED at the MDT and it sent nothing for "
                f"{now - self._last_list:.0f} s: it stops at max_requests ({cfg.mdt_max_requests}); raise "
                "mdt.*.hsm.max_requests (lctl set_param) so that the coordinator sees the whole queue"))
        late = [e for e in self._outstanding.values() if now - e.received.when >= cfg.mdt_active_request_timeout]
        if late and self._report_due("active_request_timeout", now):
            self.counters["mdt_timeouts"] += len(late)
            oldest = min(late, key=lambda e: e.received.when)
            out.append(Report(
                "error", "active_request_timeout",
                f"{len(late)} item(s) outstanding for more than active_request_timeout "
                f"({cfg.mdt_active_request_timeout:.0f} s), e.g. {_name(oldest.received)} (action "
                f"{oldest.action_id}): the MDT has canceled them silently and their end will get ENOENT; "
                "raise mdt.*.hsm.active_request_timeout above the longest transfer"))
        return out

    def _report_due(self, code: str, now: float) -> bool:
        last = self._reported.get(code)
        if last is not None and now - last < REPORT_EVERY:
            return False
        self._reported[code] = now
        return True


def _name(rec: Received) -> str:
    return f"{HSMA(rec.item.action).name} {rec.item.fid} (cookie {rec.item.cookie:#x} on {rec.fsname})"
