"""The nemesis's eyes inside the network: run in the client's namespace
(the harness's own process is outside it and cannot reach the replicas).

``watch`` runs for the whole test: every *interval* it submits, to each
shard, a request that commits and changes nothing (a REMOVE of a FID no
file has, sent with HSM flags 0: NOT_NEEDED, answered only once the Submit
entry committed in that shard's Raft group), and asks each replica for its
Status. Each try is one JSON line in the output, with when it was sent and
when it ended: the harness reads from them how long each shard refused
writes during a fault (a client's view of unavailability: a stuck leader,
an election, a client talking to a cut-off replica) and how long after the
heal every shard took a write and every replica answered. One thread per
shard and per replica, so one stuck shard does not hide the others.

``status`` and ``digests`` answer once, as JSON on stdout: each replica's
view of the shard leaders, its agents and problems; or each replica's
(applied index, state digest) per shard, asked again until the replicas
that answered agree on the applied indexes (the digests are then
comparable) or the tries run out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from hsm.client import CoordinatorClient, CoordinatorError, outcome_name
from hsm.fid import Fid
from hsm.ring import DEFAULT_VNODES, Ring
from hsm.tls import TlsFiles, channel_credentials
from hsm.v1 import coordinator_pb2 as C
from hsm.v1 import coordinator_pb2_grpc as G

#: FIDs of the probes: a sequence no simfs tree of the test allocates
PROBE_SEQ = 0x2FFFF0000
#: the idempotency key of shard k's probe (NOT_NEEDED is not remembered, so
#: every try commits an entry anyway)
PROBE_KEY = "nemesis-probe-{shard}"


def probe_fids(shards: int, vnodes: int = DEFAULT_VNODES) -> list[Fid]:
    """One FID per shard, by the cluster's ring."""
    ring = Ring(shards, vnodes)
    found: dict[int, Fid] = {}
    for oid in range(1, 100_000):
        fid = Fid(PROBE_SEQ, oid, 0)
        found.setdefault(ring.shard_of(fid), fid)
        if len(found) == shards:
            return [found[k] for k in range(shards)]
    raise RuntimeError(f"no probe FID found for every one of {shards} shards")


def _tls() -> TlsFiles:
    tls = TlsFiles.from_args(None, None, None)  # the client's, from HSM_TLS_*
    if tls is None:
        raise SystemExit("probe: HSM_TLS_CA, HSM_TLS_CERT and HSM_TLS_KEY must name the client's certificate")
    return tls


def _replicas(args: list[str]) -> dict[str, str]:
    out = {}
    for arg in args:
        rid, sep, addr = arg.partition("=")
        if not sep:
            raise SystemExit(f"probe: expected ID=HOST:PORT, not {arg!r}")
        out[rid] = addr
    return out


def _status(stub: G.CoordinatorStub, digest: bool, timeout: float) -> C.StatusResponse:
    return stub.Status(C.StatusRequest(digest=digest), timeout=timeout)


# ---------------------------------------------------------------------------
# watch


class Watch:
    """The long-running probe; see the module documentation."""

    def __init__(self, out: Path, coordinators: str, replicas: dict[str, str], shards: int, vnodes: int,
                 interval: float, pause_file: Path, stop_file: Path, duration: float) -> None:
        self.out = open(out, "a", buffering=1)  # noqa: SIM115 - closed in run()
        self.lock = threading.Lock()
        self.interval = interval
        self.pause_file, self.stop_file = pause_file, stop_file
        self.end = time.monotonic() + duration
        tls = _tls()
        self.client = CoordinatorClient(coordinators, timeout=4.0, retry_unavailable=1.0, tls=tls,
                                        initiator="nemesis-probe")
        self.creds = channel_credentials(tls)
        self.replicas = replicas
        self.fids = probe_fids(shards, vnodes)

    def write(self, rec: dict[str, Any]) -> None:
        with self.lock:
            self.out.write(json.dumps(rec) + "\n")

    def running(self) -> bool:
        return time.monotonic() < self.end and not self.stop_file.exists()

    def _loop(self, once: Callable[[], dict[str, Any]]) -> None:
        next_at = time.monotonic()
        while self.running():
            if self.pause_file.exists():
                time.sleep(0.1)
                next_at = time.monotonic()
                continue
            t0 = time.time()
            rec = once()
            rec.update(t0=round(t0, 3), t1=round(time.time(), 3))
            self.write(rec)
            next_at += self.interval
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at = max(next_at, time.monotonic() - self.interval)  # never a burst to catch up

    def shard(self, k: int) -> None:
        item = self.client.submit_item("nemesis", self.fids[k], "remove", hsm=(0, 0),
                                       idempotency_key=PROBE_KEY.format(shard=k))

        def once() -> dict[str, Any]:
            try:
                [res] = self.client.submit([item])
                return {"what": "shard", "id": k, "ok": True, "outcome": outcome_name(res.outcome)}
            except CoordinatorError as e:
                return {"what": "shard", "id": k, "ok": False, "error": f"{e.code_name}: {str(e)[:160]}"}

        self._loop(once)

    def replica(self, rid: str) -> None:
        with grpc.secure_channel(self.replicas[rid], self.creds) as ch:
            stub = G.CoordinatorStub(ch)

            def once() -> dict[str, Any]:
                try:
                    s = _status(stub, False, 1.5)
                    return {"what": "replica", "id": rid, "ok": True, "leaders": [x.leader for x in s.shards],
                            "problems": [x.problem for x in s.shards if x.problem][:1]}
                except grpc.RpcError as e:
                    return {"what": "replica", "id": rid, "ok": False, "error": str(e.code())}

            self._loop(once)

    def run(self) -> None:
        threads = [threading.Thread(target=self.shard, args=(k,), daemon=True) for k in range(len(self.fids))]
        threads += [threading.Thread(target=self.replica, args=(r,), daemon=True) for r in self.replicas]
        for t in threads:
            t.start()
        try:
            while self.running() and any(t.is_alive() for t in threads):
                time.sleep(0.2)
        finally:
            self.end = 0.0
            for t in threads:
                t.join(6)
            self.out.close()
            self.client.close()


# ---------------------------------------------------------------------------
# one-shot questions


def status(replicas: dict[str, str]) -> dict[str, Any]:
    creds = channel_credentials(_tls())

    def ask(rid: str) -> dict[str, Any]:
        try:
            with grpc.secure_channel(replicas[rid], creds) as ch:
                s = _status(G.CoordinatorStub(ch), False, 2.0)
            return {"leaders": [x.leader for x in s.shards],
                    "agents": sorted(a.agent_id for a in s.agents if a.replica),
                    "problems": [x.problem for x in s.shards]}
        except grpc.RpcError as exc:
            return {"error": str(exc.code())}

    with ThreadPoolExecutor(len(replicas)) as pool:
        return dict(zip(replicas, pool.map(ask, replicas), strict=True))


def digests(replicas: dict[str, str], tries: int) -> dict[str, Any]:
    """{replica: [[applied_index, digest] per shard] or None, "tries": n, "agreed": bool}"""
    creds = channel_credentials(_tls())

    def ask(rid: str) -> list[list[Any]] | None:
        try:
            with grpc.secure_channel(replicas[rid], creds) as ch:
                s = _status(G.CoordinatorStub(ch), True, 5.0)
            return [[x.applied_index, x.digest] for x in s.shards]
        except grpc.RpcError:
            return None

    views: dict[str, list[list[Any]] | None] = {}
    agreed = False
    n = 0
    with ThreadPoolExecutor(len(replicas)) as pool:
        while n < tries:
            n += 1
            views = dict(zip(replicas, pool.map(ask, replicas), strict=True))
            answered = [v for v in views.values() if v is not None]
            shards = {len(v) for v in answered}
            if answered and len(shards) == 1 and all(
                    len({v[k][0] for v in answered}) == 1 for k in range(shards.pop())):
                agreed = True
                break
            time.sleep(0.3)
    return {"replicas": views, "tries": n, "agreed": agreed}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.nemesis.probe")
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("watch")
    w.add_argument("--out", type=Path, required=True)
    w.add_argument("--coordinators", required=True)
    w.add_argument("--shards", type=int, required=True)
    w.add_argument("--vnodes", type=int, default=DEFAULT_VNODES)
    w.add_argument("--interval", type=float, default=0.5)
    w.add_argument("--pause-file", type=Path, required=True)
    w.add_argument("--stop-file", type=Path, required=True)
    w.add_argument("--duration", type=float, default=6 * 3600, help="exit after this long at most (s)")
    w.add_argument("replicas", nargs="+", metavar="ID=HOST:PORT")
    s = sub.add_parser("status")
    s.add_argument("replicas", nargs="+", metavar="ID=HOST:PORT")
    d = sub.add_parser("digests")
    d.add_argument("--tries", type=int, default=20)
    d.add_argument("replicas", nargs="+", metavar="ID=HOST:PORT")
    args = p.parse_args(argv)
    replicas = _replicas(args.replicas)
    if args.cmd == "watch":
        Watch(args.out, args.coordinators, replicas, args.shards, args.vnodes, args.interval, args.pause_file,
              args.stop_file, args.duration).run()
        return 0
    out = status(replicas) if args.cmd == "status" else digests(replicas, args.tries)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    sys.exit(main())
