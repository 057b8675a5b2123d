"""What a bridge forwards when it becomes active, pure.

Two sources: its journal (lists it read and had not seen end), and, when
the site gives it one, the MDT's ``hsm.active_requests`` (the items the
MDT holds STARTED). The second finds the items a previous bridge never
read: the MDT wrote them into that bridge's pipe and will not send them
again. It also tells which journaled items are over: an item the MDT no
longer holds has ended there (by its mover, or timed out), and is not sent
again.

From the active requests, an item is recovered when it is of a file system
and archive id this bridge serves and neither the journal nor the bridge
has it. Two kinds are ended at the MDT instead (ECANCELED), since they
cannot be forwarded as the MDT asked:

* an item with ``canceled=1``: a cancel of it is pending at the MDT;
* an item whose ``hai_data`` the file shows cut (``data_complete`` False:
  the kernel prints 5 bytes of it at most): forwarding it with part of its
  data would run something else than what was asked.
"""

from __future__ import annotations

import errno as E
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from hsm.hsmflags import HSMA
from hsm.lustre.active_requests import ActiveRequest, Parsed
from hsm.lustre.hal import ActionList, build_hal, parse_hal

#: items per rebuilt action list
LIST_ITEMS = 100


@dataclass(frozen=True, slots=True)
class EndItem:
    request: ActiveRequest
    errval: int
    why: str


@dataclass(slots=True)
class Plan:
    lists: list[bytes] = field(default_factory=list)  # to feed as if the MDT sent them, in order
    ends: list[EndItem] = field(default_factory=list)
    recovered: int = 0  # items from the active requests
    journal_checked: bool = False  # the journal was checked against the active requests
    journal_kept: int = 0
    journal_dropped: int = 0  # journaled items the MDT no longer holds
    skipped: int = 0  # active items of another file system or archive id (another copytool's)
    reports: list[str] = field(default_factory=list)


def plan(journal: Sequence[bytes], active: Parsed | None, fsnames: Collection[str],
         archive_ids: Collection[int]) -> Plan:
    """*journal*: the journal's lists, oldest first. *active*: the parsed
    active requests, or None when there is no source (the journal is then
    sent again whole, as the MDT's state is unknown). *archive_ids*: those
    registered (0 among them: every one)."""
    out = Plan()
    if active is None:
        out.lists = list(journal)
        return out
    every_archive = 0 in archive_ids
    for err in active.errors:
        out.reports.append(f"active requests: {err}")
    held: dict[tuple[str, int], ActiveRequest] = {}
    for req in active.requests:
        if not req.fsname:
            out.reports.append("active requests without the file system's name (lctl -n with several "
                               "file systems served): give the lines of one file system or lctl without -n")
            out.lists = list(journal)
            return out
        if req.fsname not in fsnames or not (every_archive or req.archive_id in archive_ids):
            out.skipped += 1
            continue
        held[(req.fsname, req.item.cookie)] = req
    out.journal_checked = True
    seen: set[tuple[str, int]] = set()
    for raw in journal:
        parsed = parse_hal(raw)
        keep = [it for it in parsed.items if (parsed.fsname, it.cookie) in held]
        out.journal_dropped += len(parsed.items) - len(keep)
        out.journal_kept += len(keep)
        seen.update((parsed.fsname, it.cookie) for it in keep)
        if keep:
            out.lists.append(build_hal(ActionList(parsed.fsname, parsed.archive_id, tuple(keep),
                                                  flags=parsed.flags)))
    groups: dict[tuple[str, int, int], list[ActiveRequest]] = {}
    for key, req in held.items():
        if key in seen:
            continue
        if req.canceled:
            out.ends.append(EndItem(req, E.ECANCELED, "a cancel of it is pending at the MDT"))
        elif not req.data_complete:
            out.ends.append(EndItem(req, E.ECANCELED, "its hai_data is longer than active_requests shows "
                                                      "(5 bytes): it cannot be forwarded as asked"))
        elif req.item.action not in (HSMA.ARCHIVE, HSMA.RESTORE, HSMA.REMOVE):
            out.skipped += 1
        else:
            groups.setdefault((req.fsname, req.archive_id, req.flags), []).append(req)
    for (fsname, archive_id, flags), reqs in groups.items():
        reqs.sort(key=lambda r: r.item.cookie)  # the MDT's order: cookies grow
        out.recovered += len(reqs)
        for start in range(0, len(reqs), LIST_ITEMS):
            items = tuple(r.item for r in reqs[start:start + LIST_ITEMS])
            out.lists.append(build_hal(ActionList(fsname, archive_id, items, flags=flags)))
    return out

