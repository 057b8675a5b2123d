"""``hsmctl events``: read the HSM event log as a named consumer (issue 15).

A record per action that ended, in Lustre changelog terms; a line of text
is shaped like ``lfs changelog``'s::

    0:17 16HSM 13:54:11.123456 2026.12.06 0x80 t=[0x200000400:0x1:0x0] RESTORE errno=0 archive_id=1 action=17000 fs=lustre1

(shard:record number, type 16 HSM, the time the action ended, the CLF_HSM
flags, the FID, then the event, errno, archive id, action id and file
system). ``--json``: one object per line. What is printed is acknowledged
(unless ``--no-ack``): the next read starts after it.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import IO, Any

from hsm.v1 import coordinator_pb2 as cpb
from hsmctl.output import fid_text

EVENTS_HELP = """\
Read the HSM event log as the consumer NAME: one record per action that ended (archive,
restore, remove; a cancel keeps its kind with errno ECANCELED), as Lustre's changelog records
it (CL_HSM, CLF_HSM flags). A consumer reads what happened after it registered; what it
acknowledges is never delivered to it again, and a record is released once every consumer
acknowledged it. Cursors are replicated: they survive a failover.

  hsmctl events --consumer robinhood --register      register (it starts with the next record)
  hsmctl events --consumer robinhood                 print what is there, acknowledge it, exit
  hsmctl events --consumer robinhood --follow        print records as they come, until Ctrl-C
  hsmctl events --consumer robinhood --deregister    forget it (its records are released)

A consumer that lags past the retention (100,000 records per shard) loses the oldest; the
next read says how many ("missed"), and hsmctl status shows every consumer's lag.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--consumer", required=True, metavar="NAME", help="the consumer's name (1-64 of A-Z a-z 0-9 - _ . @)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--register", action="store_true", help="register NAME and exit")
    what.add_argument("--deregister", action="store_true", help="deregister NAME and exit")
    what.add_argument("--follow", "-f", action="store_true", help="keep printing records as they come (Ctrl-C stops)")
    p.add_argument("--max", type=int, default=1000, metavar="N", help="records per shard per read (1-10000)")
    p.add_argument("--no-ack", action="store_true", help="print without acknowledging (the next read gets them again)")
    p.add_argument("--json", action="store_true", help="one JSON object per record, one per line")


def event_line(e: cpb.HsmEvent) -> str:
    t = time.localtime(e.time)
    frac = f"{e.time % 1:.6f}"[1:]
    fid = fid_text(e.fid)
    return (f"{e.shard}:{e.recno} {e.type}HSM {time.strftime('%H:%M:%S', t)}{frac} {time.strftime('%Y.%m.%d', t)} "
            f"0x{e.flags:x} t={fid} {e.event} errno={e.errno} archive_id={e.archive_id} action={e.action_id} "
            f"fs={e.fsname}")


def event_dict(e: cpb.HsmEvent) -> dict[str, Any]:
    return {"shard": e.shard, "recno": e.recno, "time": e.time, "type": e.type, "flags": e.flags,
            "event": e.event, "errno": e.errno, "fsname": e.fsname,
            "fid": fid_text(e.fid), "archive_id": e.archive_id,
            "action_id": e.action_id}


def _print(out: IO[str], events: list[cpb.HsmEvent], as_json: bool) -> None:
    for e in events:
        print(json.dumps(event_dict(e)) if as_json else event_line(e), file=out)
    out.flush()


def _missed(err: IO[str], cursors: list[cpb.EventCursor], name: str, said: dict[int, int]) -> None:
    for c in cursors:
        if c.missed > said.get(c.shard, 0):
            print(f"hsmctl: events: consumer {name} missed {c.missed - said.get(c.shard, 0)} record(s) of shard "
                  f"{c.shard}: the retention dropped them before it acknowledged them", file=err)
            said[c.shard] = c.missed


def run(client: Any, args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    name = args.consumer
    if not 1 <= args.max <= 10_000:
        print(f"hsmctl: events: --max must be 1-10000, not {args.max}", file=err)
        return 2
    if args.register:
        cursors = client.register_event_consumer(name)
        print(f"event consumer {name} registered on {len(cursors)} shard(s); it reads the records made from now on",
              file=out)
        return 0
    if args.deregister:
        client.deregister_event_consumer(name)
        print(f"event consumer {name} deregistered; the records only it held are released", file=out)
        return 0
    said: dict[int, int] = {}
    try:
        while True:
            resp = client.read_events(name, args.max, 30.0 if args.follow else 0.0)
            _missed(err, list(resp.cursors), name, said)
            events = list(resp.events)
            _print(out, events, args.json)
            if events and not args.no_ack:
                client.ack_events(name, events)
            if not args.follow:
                return 0
    except KeyboardInterrupt:
        return 0
