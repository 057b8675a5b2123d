"""One Raft replica of shard 0 in its own process, for the multi-process
tests in test_raft.py.

``--load PREFIX``: while this replica is the leader, propose Submit commands
with unique idempotency keys ``PREFIX-<n>`` from several concurrent tasks and
print ``ACK <key>`` (flushed) for every acknowledged one.

Without either, it serves as a replica until stdin closes.
``--preferred ADDR`` makes ADDR the preferred leader.

``--verify MARKER``: once a leader exists, the leader commits a marker
Submit; every replica waits until the marker is applied here (so everything
committed before it is applied too), then prints ``KEYS <json list>`` and
``FP <fingerprint>`` and idles until stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from coordinator.raft import NotLeader, ProposalTimeout, RaftError, RaftShard, RaftTuning
from coordinator.state import Item, Kind, Requester, ShardConfig, ShardState, Submit
from hsm.fid import Fid

FAST = RaftTuning(heartbeat=0.05, election_min=0.4, election_max=0.8, leader_fallback=1.5,
                  connection_timeout=1.0, connection_retry=0.2, tick=0.02, rebalance_interval=0.3)


def fingerprint(state: ShardState) -> str:
    """A digest of everything replicas must agree on."""
    acts = [(a.id, a.fsname, str(a.fid), int(a.kind), int(a.state), a.agent, a.attempt,
             tuple(r.key for r in a.requesters), a.created) for a in state.actions.values()]
    data = repr((state.next_seq, state.applied, acts, sorted(state.keys.items())))
    return hashlib.sha256(data.encode()).hexdigest()


def submit(key: str, oid: int) -> Submit:
    return Submit(1.0, (Item("fs", Fid(0x200000400, oid), Kind.ARCHIVE, key=key,
                             requester=Requester("raft-proc")),))


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def load(shard: RaftShard, prefix: str, oid_base: int, workers: int) -> None:
    counter = iter(range(10**9))

    async def worker() -> None:
        while True:
            if not shard.leader_ready:
                await asyncio.sleep(0.02)
                continue
            n = next(counter)
            key = f"{prefix}-{n}"
            try:
                await shard.propose(submit(key, oid_base + n), timeout=2.0)
            except (NotLeader, ProposalTimeout):
                continue
            say(f"ACK {key}")

    await asyncio.gather(*(worker() for _ in range(workers)))


async def verify(shard: RaftShard, marker: str) -> None:
    key = f"verify-{marker}"
    while True:
        with shard.reading() as state:
            if key in state.keys:
                keys = sorted(state.keys)
                fp = fingerprint(state)
                break
        if shard.leader_ready:
            try:
                await shard.propose(submit(key, 0xFFFFFFFF), timeout=2.0)
            except RaftError:
                pass
        await asyncio.sleep(0.02)
    say("KEYS " + json.dumps(keys))
    say("FP " + fp)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--self", dest="self_addr", required=True)
    ap.add_argument("--peers", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--compact", type=int, default=10_000, help="compaction_min_entries")
    ap.add_argument("--load", default="")
    ap.add_argument("--oid-base", type=int, default=1)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--verify", default="")
    ap.add_argument("--preferred", default=None)
    ap.add_argument("--default-timeouts", action="store_true", help="production timeouts, not FAST")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(threadName)s %(levelname)s %(message)s")
    loop = asyncio.get_running_loop()
    base = RaftTuning() if args.default_timeouts else FAST
    tuning = replace(base, compaction_min_entries=args.compact)
    shard = RaftShard(0, args.self_addr, args.peers.split(","), Path(args.data), args.password,
                      lambda: ShardState(ShardConfig()), lambda *_: None, loop, tuning,
                      preferred_leader=args.preferred)
    say("STARTED")
    try:
        if args.load:
            await load(shard, args.load, args.oid_base, args.workers)
        elif args.verify:
            await verify(shard, args.verify)
        else:
            await loop.run_in_executor(None, sys.stdin.read)
    finally:
        await shard.aclose()


if __name__ == "__main__":
    asyncio.run(main())
