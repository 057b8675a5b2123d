"""``python -m bench split``: shards added under a flood (issue 19, item 3):
8 -> 12 shards while an archive flood runs and a restore storm asks for the
same files across the split. 0 lost, 0 run twice, per-FID order kept, one
restore per FID.

One cluster of 3 replicas x 8 shards (every replica holds every shard),
each replica's Raft ports leaving room for the 4 shards the split adds
(``ClusterOptions.raft_room``), agentd with the null mover taking archives
and removes but **no restores** (``--slots restore=0``): the storm's
restores wait, so every request for one file must join the one restore of
that file, before, during and after the split. Then:

* the storm's files (:data:`STORM_FILES`, ``[SEQ_STORM:oid:0]``) are
  archived first, and run;
* the archive flood at the mode's size (``--actions``) runs from client
  processes, as in the other floods;
* when the agents' run records show :data:`SPLIT_AT` of the flood run, the
  harness runs ``hsm-coordinator reshard --add 4 --wait`` and keeps its
  output lines with their times; meanwhile :data:`STORM_CLIENTS` threads
  (one initiator each) submit a RESTORE of every storm file, in batches of
  100, pass after pass, from just before the command until it ends, each
  pass with new idempotency keys (users asking again), through
  ``hsm.client`` (which resends the items refused while their file moves,
  same keys, and reads the shard map again after the switch);
* the harness waits until every archive has run, then checks, with the
  cluster up, and finally cancels the storm's restores.

Checks (a failure is exit 1):

* the command exited 0 with its ``done`` line; every replica's ClusterInfo
  shows 12 shards, ring version 2;
* the flood: every item acknowledged CREATED with distinct ids, every
  flood and storm file's archive run by exactly one action, no action run
  twice (the agents' records);
* the storm: every answer CREATED or JOINED, one restore action id per file
  across all answers of all passes; each restore WAITING, listed once, on
  the shard the new ring gives its file; the cluster's RESTORE count is the
  storm's file count;
* per-FID order: each storm file's actions, as its shard lists them, are its
  archive (SUCCEEDED) then its restore, in arrival (id) order;
* Status counts: SUCCEEDED = flood + storm archives, WAITING = storm
  files; the replicas of every shard hold identical states (digests);
* nothing stuck: the flood's last run comes at most :data:`STALL` s after
  both the split and the flood's submissions ended.

Figures: the split's duration (command to ``done`` line) and when each
phase was first seen (the command polls every second); the storm's
per-batch latency (p50 / p99) and longest gap between two acknowledged
batches, inside and outside the split; the flood's mover runs/s before,
during and after the split. Results: ``split-latest.json`` / ``.md`` and
``runs/<time>-split.json``.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bench import clients as cl
from bench.cluster import ENV, REPO, BenchCluster, CpuWindow, max_terminal_for, until
from bench.move import RunCounter
from bench.stats import ms, percentile, rate, window_rate
from bench.workloads import Settings
from hsm.fid import Fid

SHARDS, ADDED, REPLICAS = 8, 4, 3
ACTIONS = {"quick": 50_000, "full": 1_000_000}
#: files the storm asks restores of, and its clients (one initiator each)
STORM_FILES = {"quick": 2_000, "full": 20_000}
STORM_CLIENTS = 4
STORM_BATCH = 100
SEQ_STORM = cl.SEQ_BASE + 0x7800
#: the share of the flood's actions run (agents' records) when the split starts
SPLIT_AT = 1 / 3
SPLIT_TIMEOUT = {"quick": 600.0, "full": 3600.0}
#: seconds the flood may still run after both the split and its submissions ended (more: actions were stuck;
#: a run here drains 50,000 in about 40 s at the flood's rate)
STALL = 60.0
FS = "simfs"
#: ActionState values (hsm.v1)
WAITING, SUCCEEDED = 1, 4

SPLIT_HELP = f"""\
Shards added under a flood (issue 19): {REPLICAS} replicas x {SHARDS} shards grow to {SHARDS + ADDED} with
hsm-coordinator reshard while an archive flood runs and a restore storm ({STORM_CLIENTS} initiators asking for the
same files, pass after pass) spans the split. Checks: nothing lost or run twice, one restore per file, each
action on the shard the new ring gives its file, per-file order. Figures: the split's duration and phases, the
storm's latency and longest gap during the split, the flood's runs/s before, during and after.
"""


class Storm:
    """Threads, one initiator each, submitting a RESTORE of every storm
    file, pass after pass, until stopped; each answer kept."""

    def __init__(self, c: BenchCluster, files: int) -> None:
        self.c, self.files = c, files
        #: (initiator, pass, oid, action id, outcome name)
        self.answers: list[tuple[int, int, int, int, str]] = []
        #: (t_send, t_ack) per batch
        self.batches: list[tuple[float, float]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(k,), name=f"bench-split-storm-{k}", daemon=True)
                         for k in range(STORM_CLIENTS)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(300)

    def _run(self, k: int) -> None:
        from hsm.client import CoordinatorClient, outcome_name, submit_item

        initiator = f"storm{k}"
        try:
            with CoordinatorClient(self.c.addresses, timeout=60, initiator=initiator, retry_unavailable=60.0,
                                   tls=self.c.harness_tls, retry_moving=300.0) as client:
                p = 0
                while not self._stop.is_set():
                    for first in range(1, self.files + 1, STORM_BATCH):
                        oids = range(first, min(first + STORM_BATCH, self.files + 1))
                        items = [submit_item(FS, Fid(SEQ_STORM, oid, 0), "restore", initiator=initiator,
                                             idempotency_key=f"{initiator}:{p}:{oid}") for oid in oids]
                        t0 = time.time()
                        results = client.submit(items, batch_size=STORM_BATCH)
                        t1 = time.time()
                        with self._lock:
                            self.batches.append((t0, t1))
                            self.answers.extend((k, p, oid, r.action_id, outcome_name(r.outcome))
                                                for oid, r in zip(oids, results, strict=True))
                    p += 1
        except Exception as exc:  # noqa: BLE001 - reported as a failure
            self.errors.append(f"{initiator} at {time.strftime('%H:%M:%S')}: {type(exc).__name__}: {exc}")
            traceback.print_exc()

    def record(self, w0: float, w1: float) -> dict[str, Any]:
        inside = [b - a for a, b in self.batches if a < w1 and b > w0]
        outside = [b - a for a, b in self.batches if not (a < w1 and b > w0)]
        acks = sorted(b for _a, b in self.batches)
        gaps_in = [y - x for x, y in zip(acks, acks[1:], strict=False) if x < w1 and y > w0]
        gaps_out = [y - x for x, y in zip(acks, acks[1:], strict=False) if not (x < w1 and y > w0)]
        return {"clients": STORM_CLIENTS, "files": self.files, "batches": len(self.batches),
                "answers": len(self.answers), "passes": 1 + max((a[1] for a in self.answers), default=-1),
                "outcomes": dict(Counter(a[4] for a in self.answers)), "errors": self.errors,
                "p50_batch_ms_during": ms(percentile(inside, 50)), "p99_batch_ms_during": ms(percentile(inside, 99)),
                "p50_batch_ms_outside": ms(percentile(outside, 50)),
                "p99_batch_ms_outside": ms(percentile(outside, 99)),
                "longest_gap_s_during": round(max(gaps_in), 3) if gaps_in else None,
                "longest_gap_s_outside": round(max(gaps_out), 3) if gaps_out else None}


def _env(c: BenchCluster) -> dict[str, str]:
    """The environment of an admin command: with TLS, the harness's (admin) certificate."""
    from hsm.tls import ENV_CA, ENV_CERT, ENV_KEY

    f = c.harness_tls
    return dict(ENV) if f is None else dict(ENV, **{ENV_CA: str(f.ca), ENV_CERT: str(f.cert), ENV_KEY: str(f.key)})


def parse_split_output(lines: Sequence[tuple[float, str]]) -> dict[str, Any]:
    """When each phase was first seen (s after the command) and when it was done."""
    phases: dict[str, float] = {}
    for t, line in lines:
        for name in ("opening", "moving", "activating", "done", "aborting", "aborted"):
            if f"): {name}" in line and name not in phases:
                phases[name] = round(t, 3)
    return {"phases": phases, "done_s": phases.get("done")}


def run_split(s: Settings, n: int, files: int, say: Callable[[str], None]) -> dict[str, Any]:
    from bench import workloads as w
    from hsm.client import CoordinatorClient, submit_item
    from hsm.ring import Ring

    opt = s.cluster_options(max_terminal=max_terminal_for(n + files, SHARDS))
    opt.raft_room = ADDED
    opt.slots = "archive=1024,restore=0,remove=256"
    old, new = Ring(SHARDS), Ring(SHARDS).with_shard_added(ADDED)
    out: dict[str, Any] = {"cluster": opt.describe(), "actions": n, "storm_files": files}
    timeout = SPLIT_TIMEOUT.get(s.mode, SPLIT_TIMEOUT["quick"])
    with w.fresh_cluster(s, "split", opt) as c:
        # the storm's files archived first
        with CoordinatorClient(c.addresses, timeout=60, initiator="storm-archive", tls=c.harness_tls) as client:
            storm_fids = [Fid(SEQ_STORM, oid, 0) for oid in range(1, files + 1)]
            res = client.submit([submit_item(FS, f, "archive", initiator="storm-archive") for f in storm_fids])
        storm_archives = [r.action_id for r in res]
        w.wait_drained(c, timeout=300)
        say(f"   {files:,} storm files archived; the flood of {n:,} archives starts")
        params = w._flood_clients(s, c, n, cl.SEQ_FLOOD)
        at = math.ceil(SPLIT_AT * n)
        storm = Storm(c, files)
        counter = RunCounter(c.runs_dir, f"0x{SEQ_STORM:x}:")
        lines: list[tuple[float, str]] = []
        with cl.ClientGroup(cl.submit_worker, params) as g:
            g.start()
            cpu = CpuWindow(c)
            t0 = g.release()
            deadline = time.monotonic() + max(600.0, n / 50)
            while counter.count() < at:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{at:,} flood runs not seen in {max(600.0, n / 50):.0f} s")
                time.sleep(0.05)
            storm.start()
            time.sleep(1.0)  # the storm under way before the split
            env = _env(c)
            cmd = [sys.executable, "-m", "coordinator.cli", "reshard", "--add", str(ADDED), "--wait", "--timeout",
                   f"{timeout:g}", "--coordinators", c.addresses]
            w0 = time.time()
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=env, cwd=str(REPO))
            assert p.stdout is not None
            for line in p.stdout:
                lines.append((time.time() - w0, line.rstrip("\n")))
            rc = p.wait()
            stderr = p.stderr.read() if p.stderr else ""
            w1 = time.time()
            time.sleep(1.0)  # and after it
            storm.stop()
            results = g.results(timeout=max(600, n / 50))
        until(lambda: c.counts().get("SUCCEEDED", 0) >= n + files, max(300, n / 100), "every archive to end", 0.5)
        t_end = time.time()
        cpu_used = cpu.stop(sum(r["cpu_s"] for r in results), len(results))
        for t, line in lines:
            say(f"   [{t:6.2f} s] {line}")
        parsed = parse_split_output(lines)
        say("   checking: ring, runs, the storm's restores, per-file order, counts, states")
        problems: list[str] = []
        if rc != 0 or parsed["done_s"] is None:
            problems.append(f"reshard exited {rc} without its done line: {stderr.strip()[-300:]}")
        infos = {rid: w._stub(c, rid).ClusterInfo(_info_request(), timeout=10) for rid in c.live_replicas()}
        wrong_ring = {rid: (i.shard_count, i.ring_version) for rid, i in infos.items()
                      if (i.shard_count, i.ring_version) != (SHARDS + ADDED, 2)}
        if wrong_ring:
            problems.append(f"replicas not on the new ring: {wrong_ring}")
        # the flood
        outcomes: Counter[str] = Counter()
        for r in results:
            outcomes.update(r["outcomes"])
        if outcomes.get("CREATED", 0) != n:
            problems.append(f"flood: {dict(outcomes)} for {n} items")
        runs = w._settle_runs(c)
        rc_all = w._run_counts(runs)
        if rc_all["run_twice"]:
            problems.append(f"{rc_all['run_twice']} action(s) ran twice: {rc_all['run_twice_examples']}")
        run_fids = Counter(r.fid for r in runs)
        flood_fids = [str(Fid(q["seq"], oid, 0)) for q in params for oid in range(q["oid0"], q["oid0"] + q["count"])]
        not_once = [f for f in flood_fids + [str(f) for f in storm_fids] if run_fids.get(f) != 1]
        if not_once:
            problems.append(f"{len(not_once)} file(s) not archived by exactly one run, e.g. {not_once[:3]}")
        restores_run = sum(1 for r in runs if r.kind == w.KIND_RESTORE)
        if restores_run:
            problems.append(f"{restores_run} restore(s) ran: the agents take none")
        # the storm: one restore per file, on its new shard
        st = storm.record(w0, w1)
        if storm.errors:
            problems.append(f"storm: {storm.errors[:3]}")
        bad = {k: v for k, v in st["outcomes"].items() if k not in ("CREATED", "JOINED")}
        if bad:
            problems.append(f"storm: answers {bad}")
        per_file: dict[int, set[int]] = {}
        for _k, _p, oid, action_id, _o in storm.answers:
            per_file.setdefault(oid, set()).add(action_id)
        split_ids = {oid: ids for oid, ids in per_file.items() if len(ids) != 1}
        if split_ids or len(per_file) != files:
            problems.append(f"storm: {len(split_ids)} file(s) with more than one restore, "
                            f"{files - len(per_file)} without an answer")
        restore_of = {oid: next(iter(ids)) for oid, ids in per_file.items()}
        with CoordinatorClient(c.addresses, timeout=60, tls=c.harness_tls) as client:
            listed = list(client.list_actions(kinds=["restore"], include_terminal=True))
            counted = Counter(a.action_id for a in listed)
            twice = [i for i, k in counted.items() if k > 1]
            misplaced = [a.action_id for a in listed
                         if a.shard != new.shard_of(Fid(a.fid.seq, a.fid.oid, a.fid.ver)) or a.state != WAITING]
            if len(listed) != files or twice or misplaced or set(counted) != set(restore_of.values()):
                problems.append(f"restores listed: {len(listed)} for {files} files, {len(twice)} listed twice, "
                                f"{len(misplaced)} not waiting on their new shard")
            moved = sum(1 for f in storm_fids if old.shard_of(f) != new.shard_of(f))
            order_bad = []
            for oid in range(1, files + 1, max(1, files // 200)):  # per-file order, on a sample of 200 files
                acts = list(client.list_actions(fid=(FS, Fid(SEQ_STORM, oid, 0)), include_terminal=True))
                kinds = [(a.kind, a.state) for a in acts]
                ids = [a.action_id for a in acts]
                if (kinds != [(w.KIND_ARCHIVE, SUCCEEDED), (w.KIND_RESTORE, WAITING)] or ids != sorted(ids)
                        or ids[1] != restore_of.get(oid)):
                    order_bad.append((oid, kinds, ids))
            if order_bad:
                problems.append(f"per-file order: {len(order_bad)} file(s), e.g. {order_bad[:2]}")
            counts = c.counts()
            if counts.get("SUCCEEDED") != n + files or counts.get("WAITING") != files:
                problems.append(f"counts {counts}: expected {n + files} SUCCEEDED and {files} WAITING")
            digests = _digest_problems(c)
            problems.extend(digests)
            client.cancel(fids=[(FS, f, "restore") for f in storm_fids], reason="bench split: the storm's end")
        w.wait_drained(c, timeout=300)
        flood_runs = sorted(r.time for r in runs if r.kind == w.KIND_ARCHIVE and not r.fid.startswith(f"[0x{SEQ_STORM:x}:"))
        t_last = flood_runs[-1] if flood_runs else t_end
        t_sub = max(r["t_end"] for r in results)
        tail = t_last - max(w1, t_sub)
        if tail > STALL:
            problems.append(f"the flood's last run came {tail:.0f} s after the split and the submissions ended: "
                            "actions were stuck")
        out.update({
            "split": {"command": " ".join(cmd[1:]), "returncode": rc, "stdout": [[round(t, 3), x] for t, x in lines],
                      "stderr": stderr[-2000:], **parsed, "seconds": parsed["done_s"]},
            "storm": st, "storm_files_moved": moved,
            "flood": {"outcomes": dict(outcomes), "actions_per_s": rate(n, t_last - t0),
                      "runs_per_s_before": window_rate(flood_runs, t0, w0),
                      "runs_per_s_during": window_rate(flood_runs, w0, w1),
                      "runs_per_s_after": window_rate(flood_runs, w1, t_last) if t_last > w1 else None,
                      "split_started_s": round(w0 - t0, 2), "split_ended_s": round(w1 - t0, 2),
                      "submit_ended_s": round(t_sub - t0, 2), "last_run_s": round(t_last - t0, 2),
                      "cpu": cpu_used},
            "runs": {k: rc_all[k] for k in ("runs", "actions_run", "run_twice")},
            "storm_archive_ids": len(set(storm_archives)), "problems": problems})
        if problems:
            out["evidence"] = w._keep_evidence(s, c, "split", f"{len(problems)} check(s) failed")
    return out


def _info_request() -> Any:
    from hsm.v1 import coordinator_pb2 as C

    return C.ClusterInfoRequest()


def _digest_problems(c: BenchCluster) -> list[str]:
    """The members of every shard hold identical states (Status digests), within 30 s."""
    from bench import workloads as w
    from hsm.v1 import coordinator_pb2 as C

    deadline = time.monotonic() + 30
    while True:
        views: dict[int, set[tuple[int, str]]] = {}
        for rid in c.live_replicas():
            st = w._stub(c, rid).Status(C.StatusRequest(digest=True, shards=range(SHARDS + ADDED)), timeout=30)
            for row in st.shards:
                views.setdefault(row.shard, set()).add((row.applied_index, row.digest))
        diverged = [k for k, v in views.items() if len(v) > 1]
        if not diverged and len(views) == SHARDS + ADDED:
            return []
        if time.monotonic() > deadline:
            return [f"shards {diverged} differ between their members (or not every shard answered: {sorted(views)})"]
        time.sleep(0.5)


def split(args: argparse.Namespace, s: Settings, say: Callable[[str], None]) -> int:
    from bench.compare import save
    from bench.machine import machine

    n = args.actions if getattr(args, "actions", None) is not None else ACTIONS.get(s.mode, ACTIONS["quick"])
    files = STORM_FILES.get(s.mode, STORM_FILES["quick"])
    s.flood_actions = n
    s.replicas, s.shards = REPLICAS, SHARDS
    mach = machine()
    t0 = time.monotonic()
    say(f"== split ({s.mode}): {SHARDS} -> {SHARDS + ADDED} shards on {REPLICAS} replicas under an archive flood "
        f"of {n:,} and a restore storm of {STORM_CLIENTS} x {files:,} files; {mach['cores']} cores")
    base = {"kind": "split", "mode": s.mode, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": mach,
            "split_at": round(SPLIT_AT, 3),
            "settings": {"replicas": REPLICAS, "shards": SHARDS, "added": ADDED, "agents": s.agents,
                         "clients": s.clients, "batch": s.batch, "inflight": s.inflight, "fsync": s.fsync,
                         "encrypt": s.encrypt}}
    try:
        got = run_split(s, n, files, say)
        failure = ""
    except KeyboardInterrupt:
        say("!! interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - reported
        traceback.print_exc()
        got, failure = {}, f"{type(exc).__name__}: {exc}"
    out = {**base, **got, "wall_seconds": round(time.monotonic() - t0, 1)}
    found = ([f"the run failed: {failure}"] if failure else []) + list(got.get("problems", []))
    out["problems"] = found
    out["passed"] = not found
    md = markdown(out)
    if not args.no_save:
        paths = save(out, md, args.results, name="split")
        say(f"   results: {', '.join(str(p) for p in paths)}")
    say(md)
    return 1 if found else 0


def _f(v: Any, fmt: str = "{:,.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def markdown(out: Mapping[str, Any]) -> str:
    sp, st, fl = out.get("split", {}), out.get("storm", {}), out.get("flood", {})
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in sp.get("phases", {}).items())
    lines = [
        f"# split ({out.get('mode')}): {SHARDS} -> {SHARDS + ADDED} shards under a flood",
        "",
        f"{'PASSED' if out.get('passed') else 'FAILED'}; {out.get('actions', 0):,} flood archives, "
        f"{out.get('storm_files', 0):,} storm files ({out.get('storm_files_moved', '-')} of them moved), "
        f"{st.get('clients', '-')} storm initiators, {st.get('passes', '-')} passes",
        "",
        "| figure | value |",
        "|---|---|",
        f"| split: command to done | {_f(sp.get('seconds'), '{:.1f}')} s ({phases}) |",
        f"| storm batch latency p50 / p99, during the split | {_f(st.get('p50_batch_ms_during'))} / "
        f"{_f(st.get('p99_batch_ms_during'))} ms |",
        f"| storm batch latency p50 / p99, outside | {_f(st.get('p50_batch_ms_outside'))} / "
        f"{_f(st.get('p99_batch_ms_outside'))} ms |",
        f"| storm: longest gap between two acknowledged batches, during / outside | "
        f"{_f(st.get('longest_gap_s_during'), '{:.2f}')} / {_f(st.get('longest_gap_s_outside'), '{:.2f}')} s |",
        f"| storm answers | {st.get('answers', '-')} ({st.get('outcomes', {})}) |",
        f"| flood mover runs/s before / during / after the split | {_f(fl.get('runs_per_s_before'))} / "
        f"{_f(fl.get('runs_per_s_during'))} / {_f(fl.get('runs_per_s_after'))} |",
        f"| flood actions/s | {_f(fl.get('actions_per_s'))} |",
        f"| runs, actions run, run twice | {out.get('runs', {}).get('runs', '-')}, "
        f"{out.get('runs', {}).get('actions_run', '-')}, {out.get('runs', {}).get('run_twice', '-')} |",
        "",
    ]
    if out.get("problems"):
        lines += ["Problems:", ""] + [f"- {p}" for p in out["problems"]] + [""]
    lines.append("Repeat: `python -m bench split` (`--full` for 1,000,000 archives and 20,000 storm files).")
    return "\n".join(lines) + "\n"

