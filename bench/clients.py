"""Client processes of the benchmarks.

Each client is a separate process (multiprocessing, ``spawn``: the parent
holds gRPC channels, which must not be forked), so that client CPU is not
spent in the measuring process. A client builds its requests first, reports
ready, waits for the common start signal, then drives the public client
library (``hsm.client.CoordinatorClient``) and puts one result dict on the
result queue.

FIDs: ``[seq:oid:0]`` with a sequence per workload (``SEQ_*``) and per
client, so FIDs never collide between workloads or clients.

With ``code_root`` in its parameters (``BenchCluster.client_code``: a
cluster running another version's code, ``python -m bench compare``) a
client puts that tree first on ``sys.path`` before it imports the client
library, and records the product modules it imported in ``code_dir``.
With ``tls`` ([ca, cert, key]: a cluster with TLS) it speaks mutual TLS.
With ``facts`` (``Settings.item_facts``: python -m bench policy) every item
carries a path, a size and a requester uid/gid (:func:`item_facts`).
With ``data`` (a list of strings, one per item: python -m bench policy's
tape part) item n carries ``data[n]`` as its request data.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import resource
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

SEQ_BASE = 0x200000400
SEQ_FLOOD = SEQ_BASE + 0x1000
SEQ_RESTORE = SEQ_BASE + 0x2000
SEQ_QUEUE = SEQ_BASE + 0x3000
SEQ_MIXED_ARCHIVE = SEQ_BASE + 0x4000
SEQ_MIXED_RESTORE = SEQ_BASE + 0x5000
SEQ_MIXED_REMOVE = SEQ_BASE + 0x6000

CTX = mp.get_context("spawn")

# HSM flags a client reads from the file (hsm.hsmflags.HS): what a bridge passes along
HS_EXISTS, HS_RELEASED, HS_ARCHIVED = 0x1, 0x4, 0x8


def use_code(p: dict[str, Any]) -> None:
    """Run the client library of the tree ``p["code_root"]`` (if given): put
    it first on sys.path, which spawn copied from the harness, before
    anything imports ``hsm``; after the imports, write what was loaded to
    ``p["code_dir"]/client-<pid>.json`` (checked by the harness)."""
    root = p.get("code_root")
    if not root:
        return
    early = sorted(m for m in sys.modules if m.split(".", 1)[0] in ("hsm", "coordinator", "agentd"))
    if early:
        raise RuntimeError(f"product modules imported before the code tree was chosen: {early[:5]}")
    sys.path.insert(0, root)
    import hsm.client  # noqa: F401 - what the worker uses
    from hsm.v1 import coordinator_pb2, types_pb2  # noqa: F401

    mods = {n: getattr(m, "__file__", None) for n, m in list(sys.modules.items())
            if n.split(".", 1)[0] in ("hsm", "coordinator", "agentd") and getattr(m, "__file__", None)}
    if p.get("code_dir"):
        try:
            with open(os.path.join(root, ".bench-code.json")) as f:
                commit = json.load(f).get("commit", "")
        except (OSError, ValueError):
            commit = "?"
        path = os.path.join(p["code_dir"], f"client-{os.getpid()}.json")
        with open(path, "w") as f:
            json.dump({"pid": os.getpid(), "root": root, "commit": commit, "sys_path_head": sys.path[:3],
                       "modules": mods}, f)


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _client(addresses: str, initiator: str, timeout: float = 60.0, tls: Any = None) -> Any:
    """The client library's client; *tls*: [ca, cert, key] paths for mutual
    TLS (``BenchCluster.client_params``), None for plain text (the only
    thing a baseline tree's client knows: hsm.tls is imported only here)."""
    from hsm.client import CoordinatorClient

    if not tls:
        return CoordinatorClient(addresses, timeout=timeout, initiator=initiator, retry_unavailable=60.0)
    from hsm.tls import TlsFiles

    return CoordinatorClient(addresses, timeout=timeout, initiator=initiator, retry_unavailable=60.0,
                             tls=TlsFiles(*(Path(x) for x in tls)))


#: item_facts: the users (uids) and file name extensions of the flood's items
FACT_UIDS = tuple(range(1000, 1020))
FACT_EXTS = ("dat", "h5", "nc", "tar", "log")
#: item_facts: sizes spread log-uniformly over [FACT_SIZE_MIN, FACT_SIZE_MAX) bytes (1 KiB .. 10 GiB)
FACT_SIZE_MIN, FACT_SIZE_MAX = 1024, 10 * 1024**3
FACT_PROJECTS = 50
_M64 = 2**64 - 1


def _mix64(x: int) -> int:
    """splitmix64's finalizer: a fixed, well-spread 64-bit hash of *x*."""
    z = (x + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def item_facts(oid: int) -> tuple[str, int, int, int]:
    """``(path, size, uid, gid)`` of the flood's item *oid* with
    ``Settings.item_facts`` (python -m bench policy): a pure function of the
    oid, the same in every process and every run. The path is
    ``/project/pNN/uUID/runR/file<oid>.<ext>`` (50 projects, 8 runs, the
    extensions :data:`FACT_EXTS`), the size log-uniform over 1 KiB .. 10 GiB,
    the uid one of :data:`FACT_UIDS`, the gid 100 + uid % 5."""
    h = _mix64(oid)
    uid = FACT_UIDS[h % len(FACT_UIDS)]
    project = (h >> 8) % FACT_PROJECTS
    run = (h >> 16) % 8
    ext = FACT_EXTS[(h >> 24) % len(FACT_EXTS)]
    frac = (h >> 32) / 2**32
    size = min(FACT_SIZE_MAX - 1, int(FACT_SIZE_MIN * (FACT_SIZE_MAX / FACT_SIZE_MIN) ** frac))
    return f"/project/p{project:02d}/u{uid}/run{run}/file{oid}.{ext}", size, uid, 100 + uid % 5


def _items(p: dict[str, Any]) -> list[Any]:
    """SubmitItems for oids [oid0, oid0+count) of sequence seq (with
    p["facts"]: each with its :func:`item_facts`; with p["data"]: item n
    with the request data ``p["data"][n]``)."""
    from hsm.client import submit_item
    from hsm.v1 import types_pb2 as T

    hsm = tuple(p["hsm"]) if p.get("hsm") else None
    facts = bool(p.get("facts"))
    data = p.get("data")
    if data is not None and len(data) != p["count"]:
        raise ValueError(f"{len(data)} data strings for {p['count']} items")
    out = []
    for n in range(p["count"]):
        oid = p["oid0"] + n
        extra = {"data": data[n]} if data is not None else {}
        if facts:
            path, size, uid, gid = item_facts(oid)
            requester = T.Requester(initiator=p["initiator"], cookie=p["cookie0"] + n, uid=uid, gid=gid)
            out.append(submit_item("simfs", T.Fid(seq=p["seq"], oid=oid, ver=0), p["kind"], p.get("archive_id", 0),
                                   requester=requester, hsm=hsm, path=path, size=size, **extra))
            continue
        requester = T.Requester(initiator=p["initiator"], cookie=p["cookie0"] + n, uid=0, gid=0)
        out.append(submit_item("simfs", T.Fid(seq=p["seq"], oid=oid, ver=0), p["kind"], p.get("archive_id", 0),
                               requester=requester, hsm=hsm, **extra))
    return out


def submit_with_retry(client: Any, batch: list[Any], deadline: float) -> tuple[list[Any], int]:
    """``client.submit`` of one batch, retried (same items, same keys: never
    applied twice) until *deadline* (monotonic). Returns (results, retries)."""
    from hsm.client import CoordinatorError

    retries = 0
    while True:
        try:
            return client.submit(batch, batch_size=len(batch)), retries
        except CoordinatorError:
            if time.monotonic() > deadline:
                raise
            retries += 1
            time.sleep(0.2)


def submit_worker(p: dict[str, Any], ready: Any, go: Any, out: Any, barrier: Any = None) -> None:
    """Submit p["count"] items of one kind in batches of p["batch"], with
    p["inflight"] batches in flight (threads); with *barrier*, every client
    sends batch k at the same moment (restore storm). Reports outcomes,
    timings and sampled action ids (for latencies)."""
    try:
        use_code(p)
        items = _items(p)
        client = _client(p["addresses"], p["initiator"], tls=p.get("tls"))
        client.cluster_info()  # connect before the clock starts
        B, inflight = p["batch"], max(1, p["inflight"])
        batches = [items[i:i + B] for i in range(0, len(items), B)]
        sample_every = max(1, p.get("sample_every", 0) or len(items) + 1)
        outcomes: Counter[str] = Counter()
        samples: list[tuple[int, float, float]] = []
        batch_lat: list[float] = []
        ids: list[int] = []
        retries = [0]
        lock = threading.Lock()
        errors: list[str] = []
        deadline_s = p.get("deadline", 600.0)
        cpu0 = 0.0

        def run(k: int) -> None:
            from hsm.client import outcome_name

            try:
                for j in range(k, len(batches), inflight):
                    batch = batches[j]
                    if barrier is not None:
                        barrier.wait(120)
                    t_send = time.time()
                    res, r = submit_with_retry(client, batch, time.monotonic() + deadline_s)
                    t_ack = time.time()
                    names = Counter(outcome_name(x.outcome) for x in res)
                    with lock:
                        retries[0] += r
                        outcomes.update(names)
                        batch_lat.append(t_ack - t_send)
                        base = j * B
                        for m, x in enumerate(res):
                            if (base + m) % sample_every == 0 and x.action_id:
                                samples.append((x.action_id, t_send, t_ack))
                        if p.get("return_ids"):
                            ids.extend(x.action_id for x in res if x.action_id)
            except BaseException as exc:  # noqa: BLE001 - reported to the harness
                errors.append(f"{type(exc).__name__}: {exc}")
                if barrier is not None:
                    barrier.abort()

        ready.put(os.getpid())
        go.wait()
        cpu0 = _cpu()
        t0 = time.time()
        threads = [threading.Thread(target=run, args=(k,)) for k in range(inflight)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        t1 = time.time()
        client.close()
        out.put({"pid": os.getpid(), "initiator": p["initiator"], "submitted": len(items), "outcomes": dict(outcomes),
                 "t_start": t0, "t_end": t1, "batch_latency": batch_lat, "samples": samples, "ids": ids,
                 "retries": retries[0], "errors": errors, "cpu_s": _cpu() - cpu0})
    except BaseException as exc:  # noqa: BLE001
        out.put({"pid": os.getpid(), "errors": [f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"]})


def paced_worker(p: dict[str, Any], ready: Any, go: Any, out: Any) -> None:
    """Submit p["count"] archives at a steady p["rate"] items a second: a
    batch every p["interval"] seconds, on schedule (a batch that is late
    goes at once, and the lag is reported). Item n is requested by
    ``p["users"][n % len(p["users"])]`` ([uid, gid]), so the users' shares
    of every batch follow that pattern (python -m bench policy: 10 items of
    one user for each of another). Reports outcomes per uid."""
    try:
        use_code(p)
        from hsm.client import outcome_name, submit_item
        from hsm.v1 import types_pb2 as T

        users = [(int(u), int(g)) for u, g in p["users"]]
        items = []
        for n in range(p["count"]):
            uid, gid = users[n % len(users)]
            requester = T.Requester(initiator=p["initiator"], cookie=p["cookie0"] + n, uid=uid, gid=gid)
            items.append(submit_item("simfs", T.Fid(seq=p["seq"], oid=p["oid0"] + n, ver=0), "archive",
                                     requester=requester))
        interval = float(p["interval"])
        per = max(1, round(float(p["rate"]) * interval))
        client = _client(p["addresses"], p["initiator"], tls=p.get("tls"))
        client.cluster_info()  # connect before the clock starts
        outcomes: dict[int, Counter[str]] = {u: Counter() for u, _ in users}
        retries = 0
        lag = 0.0
        ready.put(os.getpid())
        go.wait()
        cpu0 = _cpu()
        t0 = time.time()
        for j, i in enumerate(range(0, len(items), per)):
            wait = t0 + j * interval - time.time()
            if wait > 0:
                time.sleep(wait)
            else:
                lag = max(lag, -wait)
            res, r = submit_with_retry(client, items[i:i + per], time.monotonic() + p.get("deadline", 120.0))
            retries += r
            for m, x in enumerate(res):
                outcomes[users[(i + m) % len(users)][0]][outcome_name(x.outcome)] += 1
        t1 = time.time()
        client.close()
        out.put({"pid": os.getpid(), "initiator": p["initiator"], "submitted": len(items),
                 "outcomes": {str(u): dict(c) for u, c in outcomes.items()}, "t_start": t0, "t_end": t1,
                 "batch_items": per, "max_lag_s": round(lag, 3), "retries": retries, "errors": [],
                 "cpu_s": _cpu() - cpu0})
    except BaseException as exc:  # noqa: BLE001
        out.put({"pid": os.getpid(), "errors": [f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"]})


def mixed_worker(p: dict[str, Any], ready: Any, go: Any, out: Any, progress: Any) -> None:
    """Rounds of: a batch of new archives, cancels of some of them, a batch
    of restores and a batch of removes, until p["rounds"] rounds. Every
    acknowledged action id is returned, per kind; *progress* (a shared
    counter) counts acknowledged items, for the harness to kill a replica
    half-way."""
    try:
        use_code(p)
        from hsm.client import CoordinatorError, outcome_name

        c = p["client"]
        B, rounds = p["batch"], p["rounds"]
        arch = _items({"count": B * rounds, "oid0": 1, "seq": SEQ_MIXED_ARCHIVE + c, "kind": "archive",
                       "initiator": p["initiator"], "cookie0": 1})
        nr = max(1, B // 2)
        rest = _items({"count": nr * rounds, "oid0": 1, "seq": SEQ_MIXED_RESTORE + c, "kind": "restore",
                       "initiator": p["initiator"], "cookie0": 10**9, "hsm": (HS_EXISTS | HS_ARCHIVED | HS_RELEASED, 1)})
        nm = max(1, B // 4)
        rem = _items({"count": nm * rounds, "oid0": 1, "seq": SEQ_MIXED_REMOVE + c, "kind": "remove",
                      "initiator": p["initiator"], "cookie0": 2 * 10**9, "hsm": (HS_EXISTS | HS_ARCHIVED, 1)})
        client = _client(p["addresses"], p["initiator"], tls=p.get("tls"))
        client.cluster_info()
        acked: dict[str, list[int]] = {"archive": [], "restore": [], "remove": []}
        outcomes: Counter[str] = Counter()
        cancel_outcomes: Counter[str] = Counter()
        canceled: list[int] = []
        timeline: list[tuple[float, int]] = []
        retries = 0
        deadline_s = p.get("deadline", 120.0)
        ready.put(os.getpid())
        go.wait()
        cpu0 = _cpu()
        t0 = time.time()
        for r in range(rounds):
            for kind, items, n in (("archive", arch, B), ("restore", rest, nr), ("remove", rem, nm)):
                batch = items[r * n:(r + 1) * n]
                res, k = submit_with_retry(client, batch, time.monotonic() + deadline_s)
                retries += k
                outcomes.update(f"{kind}:{outcome_name(x.outcome)}" for x in res)
                ids = [x.action_id for x in res if x.action_id]
                acked[kind].extend(ids)
                with progress.get_lock():
                    progress.value += len(batch)
                timeline.append((time.time(), len(batch)))
                if kind == "archive" and p["cancel_every"]:
                    victims = ids[::p["cancel_every"]]
                    end = time.monotonic() + deadline_s
                    while victims:
                        try:
                            from hsm.client import cancel_outcome_name

                            for x in client.cancel(action_ids=victims, reason="bench mixed"):
                                cancel_outcomes[cancel_outcome_name(x.outcome)] += 1
                            canceled.extend(victims)
                            break
                        except CoordinatorError:
                            if time.monotonic() > end:
                                raise
                            retries += 1
                            time.sleep(0.2)
        t1 = time.time()
        client.close()
        out.put({"pid": os.getpid(), "initiator": p["initiator"], "acked": acked, "outcomes": dict(outcomes),
                 "cancel_outcomes": dict(cancel_outcomes), "canceled": canceled, "timeline": timeline,
                 "t_start": t0, "t_end": t1, "retries": retries, "errors": [], "cpu_s": _cpu() - cpu0})
    except BaseException as exc:  # noqa: BLE001
        out.put({"pid": os.getpid(), "errors": [f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"]})


class ClientGroup:
    """Start client processes, wait until all are ready (their requests
    built, connected), release them at once, collect their results.
    Processes are always joined or killed on exit."""

    def __init__(self, target: Callable[..., None], params: list[dict[str, Any]],
                 extra: Callable[[int], tuple[Any, ...]] = lambda i: ()) -> None:
        self.ready = CTX.Queue()
        self.out = CTX.Queue()
        self.go = CTX.Event()
        self.procs = [CTX.Process(target=target, args=(p, self.ready, self.go, self.out, *extra(i)), daemon=True)
                      for i, p in enumerate(params)]
        self.t_go = 0.0

    def __enter__(self) -> ClientGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            if p.is_alive():
                p.kill()
            p.join(5)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def start(self, timeout: float = 600.0) -> None:
        for p in self.procs:
            p.start()
        deadline = time.monotonic() + timeout
        for _ in self.procs:
            left = deadline - time.monotonic()
            try:
                self.ready.get(timeout=max(0.1, left))
            except Exception:
                early = self._drain_errors()
                raise RuntimeError(f"clients not ready in {timeout:.0f} s {early}") from None

    def _drain_errors(self) -> list[Any]:
        got = []
        while not self.out.empty():
            got.append(self.out.get_nowait())
        return got

    def release(self) -> float:
        self.t_go = time.time()
        self.go.set()
        return self.t_go

    def running(self) -> bool:
        return any(p.is_alive() for p in self.procs) and self.out.qsize() < len(self.procs)

    def results(self, timeout: float = 3600.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        got = []
        for _ in self.procs:
            got.append(self.out.get(timeout=max(0.1, deadline - time.monotonic())))
        for p in self.procs:
            p.join(10)
        errors = [e for g in got for e in g.get("errors", [])]
        if errors:
            raise RuntimeError(f"{len(errors)} client error(s), first: {errors[0]}")
        return got
