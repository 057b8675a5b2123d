"""The HSM event log of one shard, with consumer cursors (issue 15, item 3).
Pure: no I/O, time passed in; part of the shard's replicated state
(``ShardState.events``), so events and cursors survive a failover.

What it records, in Lustre changelog terms: one record per action that
ends (the MDT's ``CL_HSM`` record at the end of an HSM request): its event
(ARCHIVE, RESTORE, REMOVE; a cancelled one keeps its kind and ends with
ECANCELED, as Lustre's changelog shows it), its errno, and the record's
``flags`` packed as the MDT packs ``CLF_HSM_*`` (bits 0-6 the errno, 0x7f
beyond; bits 7-9 the event; bit 10 DIRTY), the FID and file system, the
archive id and the action id.

Consumers (Robinhood, accounting, a policy engine) register by name. A
consumer reads the records after its cursor and acknowledges the last one
it has processed; its cursor moves there. A record is released (dropped)
only when every registered consumer has acknowledged it; records are kept
only while somebody is registered (as the MDT keeps changelog records only
for its changelog users). A new consumer starts after the newest record.

Retention is bounded (``max_events`` per shard): the one explicit policy
that drops records nobody acknowledged. When a new record would exceed it,
the oldest one goes; every consumer that had not acknowledged it has its
``missed`` count raised and its cursor moved past it, so that its next read
says how many it missed instead of silently skipping them. ``missed``,
a consumer's ``lag`` (records retained after its cursor) and the log's
``dropped`` total are in ``hsmctl status`` and the metrics.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

#: Lustre's changelog record type of an HSM event
CL_HSM = 16
#: the events of CLF_HSM (bits 7-9 of the record's flags)
HE_ARCHIVE, HE_RESTORE, HE_CANCEL, HE_RELEASE, HE_REMOVE, HE_STATE = range(6)
EVENT_NAMES = {HE_ARCHIVE: "ARCHIVE", HE_RESTORE: "RESTORE", HE_CANCEL: "CANCEL", HE_RELEASE: "RELEASE",
               HE_REMOVE: "REMOVE", HE_STATE: "STATE"}
CLF_HSM_ERR_BITS = 7
CLF_HSM_ERR_MASK = (1 << CLF_HSM_ERR_BITS) - 1  # 0x7f: also "an errno too large to pack"
CLF_HSM_EVENT_SHIFT = 7
CLF_HSM_DIRTY = 1 << 10

#: default records kept per shard (each about 200 bytes in memory)
DEFAULT_MAX_EVENTS = 100_000
#: a consumer name: what a ``hsmctl events --consumer`` user types
MAX_CONSUMER_NAME = 64
MAX_CONSUMERS = 64


def clf_flags(event: int, errno: int, dirty: bool = False) -> int:
    """The ``cr_flags`` of a CL_HSM record, packed as the MDT packs them:
    archive ok 0x0, restore ok 0x80, remove ok 0x200, archive ECANCELED 0x7d."""
    err = abs(errno)
    err = err if err < CLF_HSM_ERR_MASK else CLF_HSM_ERR_MASK
    return err | (event << CLF_HSM_EVENT_SHIFT) | (CLF_HSM_DIRTY if dirty else 0)


class HsmEvent(NamedTuple):
    recno: int  # the record's number in its shard, from 1, never reused
    time: float  # when the action ended (the leader's clock)
    event: int  # HE_*
    errno: int  # the action's errno, unpacked (0: success)
    flags: int  # clf_flags(event, errno)
    fsname: str
    fid_seq: int
    fid_oid: int
    fid_ver: int
    archive_id: int
    action_id: int


@dataclass
class Cursor:
    acked: int  # the last index this consumer acknowledged (or had when it registered)
    since: float  # when it registered
    missed: int = 0  # records dropped by the retention policy before it acknowledged them


class ConsumerError(ValueError):
    """A consumer command that cannot be applied (the same on every replica)."""


@dataclass
class EventLog:
    max_events: int = DEFAULT_MAX_EVENTS
    records: deque[HsmEvent] = field(default_factory=deque)
    next_index: int = 1
    consumers: dict[str, Cursor] = field(default_factory=dict)
    dropped: int = 0  # by the retention policy, in all

    # -- what the shard records ------------------------------------------------

    def append(self, time: float, event: int, errno: int, fsname: str, fid: tuple[int, int, int],
               archive_id: int, action_id: int) -> HsmEvent | None:
        """Record an event (None: no consumer is registered, nothing is kept)."""
        if not self.consumers:
            return None
        rec = HsmEvent(self.next_index, time, event, errno, clf_flags(event, errno), fsname, fid[0], fid[1],
                       fid[2], archive_id, action_id)
        self.next_index += 1
        self.records.append(rec)
        while len(self.records) > self.max_events:
            self._drop_oldest()
        return rec

    def _drop_oldest(self) -> None:
        old = self.records.popleft()
        self.dropped += 1
        for c in self.consumers.values():
            if c.acked < old.recno:
                c.missed += old.recno - c.acked
                c.acked = old.recno

    # -- consumers ---------------------------------------------------------------

    def register(self, name: str, now: float) -> int:
        """Register *name* (again: nothing changes); its cursor: the newest index."""
        check_name(name)
        if name not in self.consumers:
            if len(self.consumers) >= MAX_CONSUMERS:
                raise ConsumerError(f"event consumer {name!r}: {MAX_CONSUMERS} consumers are registered already; "
                                    "deregister one (hsmctl events --deregister NAME)")
            self.consumers[name] = Cursor(self.next_index - 1, now)
        return self.consumers[name].acked

    def deregister(self, name: str) -> bool:
        """Forget *name*; the records only it held are released."""
        if self.consumers.pop(name, None) is None:
            return False
        self._release()
        return True

    def ack(self, name: str, index: int) -> int:
        """*name* processed everything up to *index*: its cursor moves there
        (never back, never past the newest record). Returns the cursor."""
        c = self.consumers.get(name)
        if c is None:
            raise ConsumerError(f"no event consumer {name!r} (register it first: hsmctl events --register)")
        c.acked = max(c.acked, min(index, self.next_index - 1))
        self._release()
        return c.acked

    def _release(self) -> None:
        if not self.consumers:
            self.records.clear()
            return
        low = min(c.acked for c in self.consumers.values())
        records = self.records
        while records and records[0].recno <= low:
            records.popleft()

    # -- reads ---------------------------------------------------------------------------

    def read(self, name: str, limit: int) -> tuple[list[HsmEvent], Cursor]:
        """Up to *limit* records after *name*'s cursor, oldest first, and its cursor."""
        c = self.consumers.get(name)
        if c is None:
            raise ConsumerError(f"no event consumer {name!r} (register it first: hsmctl events --register)")
        out: list[HsmEvent] = []
        records = self.records
        if not records or limit <= 0:
            return out, c
        # records are consecutive from records[0].recno: index arithmetic, no scan
        start = max(0, c.acked + 1 - records[0].recno)
        for i in range(start, min(len(records), start + limit)):
            out.append(records[i])
        return out, c

    def lag(self, name: str) -> int:
        """Records retained after *name*'s cursor."""
        c = self.consumers[name]
        return max(0, self.next_index - 1 - c.acked)

    def check_invariants(self) -> None:
        idx = [r.recno for r in self.records]
        assert idx == list(range(idx[0], idx[0] + len(idx))) if idx else True, "records not consecutive"
        assert not idx or idx[-1] == self.next_index - 1, "the newest record is not the last index"
        assert len(self.records) <= self.max_events
        if not self.consumers:
            assert not self.records, "records kept without a consumer"
        else:
            low = min(c.acked for c in self.consumers.values())
            assert not idx or idx[0] > low, "a record every consumer acknowledged is still kept"
        for name, c in self.consumers.items():
            assert 0 <= c.acked < self.next_index, f"{name}: cursor {c.acked} beyond {self.next_index - 1}"
            assert c.acked >= (idx[0] - 1 if idx else c.acked), f"{name}: cursor before a dropped record"


def check_name(name: str) -> None:
    if not name or len(name) > MAX_CONSUMER_NAME or not all(ch.isascii() and (ch.isalnum() or ch in "-_.@")
                                                           for ch in name):
        shown = repr(name[:MAX_CONSUMER_NAME]) + ("..." if len(name) > MAX_CONSUMER_NAME else "")
        raise ConsumerError(f"event consumer name {shown}: 1-{MAX_CONSUMER_NAME} of A-Z a-z 0-9 - _ . @")
