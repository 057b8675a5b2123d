"""``python -m bench scaleout``: what a replica spends per action when the
cluster grows from 3 replicas to 9 (issue 19, scale-out).

The archive flood at the mode's size (``--actions``; 50,000 quick,
1,000,000 full) twice per round, on two shapes of the same 18 shards
(``--shards``), same items, same agents (agentd with the null mover),
same clients: *3*, three replicas that each hold every shard (each applies
every command), and *9*, nine replicas with ``cluster.replication: 3``
(``ClusterOptions.replication``; bench.cluster): each shard's Raft group
lives on 3 of the 9, so each replica holds 6 shards and applies a third
of the commands. The order alternates (round 1 the 3 first, round 2 the 9
first, ...); with ``--repeat N`` every figure is the median of its rounds.

Why CPU and not throughput: every process of both shapes shares this
host's cores (2 here), so nine replicas cannot move more actions per second
than three; on real machines, one replica per host, the CPU a replica
spends per action is what decides how many actions a host can carry. The
figure is CPU µs per action per replica (each replica's own CPU from
/proc over the flood's window, divided by the flood's actions, and the
mean over the replicas; bench.cpu), 9 / 3, against :data:`TARGET`
(issue 19: at most 0.4; a third is what applying a third of the commands
would give if nothing else cost anything). A replica's CPU also carries
what does not scale down with its shards: its event loop, its gRPC
servers, a stream per agent, each Raft group's timers, the learning of the
leaders of the shards it does not hold; the 9 pays that nine times over
on the same cores.

Reported for each shape: actions/s end to end, the mean, the least and the
most loaded replica's CPU µs per action (a hot replica shows), all the
replicas together per action, agentd, clients and the whole benchmark per
action, how many shards each replica holds and leads when the flood has
drained (its own ClusterInfo: the shards it answers for as leader or
follower), and the share of the host's CPU used by processes outside the
benchmark during each flood (a busy host skews a flood: compare the
shares).

The harness does not poll the cluster while most of the flood runs: it
waits for the agents' run records to show 90 % of the actions
(:data:`QUIET_UNTIL`), then polls a replica's Status for the drain as the
other floods do. A replica that does not hold every shard answers Status by
asking the members of the others, so polling from the start would charge
the 9 for the harness's curiosity.

Every flood checks that it ran in its shape (:class:`Probe`), when it has
drained: the configuration says ``cluster.replication: 3`` and places every
shard on 3 replicas, each replica holding 6 (the 9), or places nothing
(the 3); every replica's ClusterInfo shows each shard's ``members`` as
configured (empty: every replica) and answers as leader or follower for
exactly the shards it holds; each replica process listens on its API port
and on exactly its shards' Raft ports (/proc). A flood that does not run
in its shape is a failure (exit 1), as is an action run twice or a flood
that does not drain; a missed target is reported, not an error. Results:
``scaleout-latest.json`` / ``.md`` and ``runs/<time>-scaleout.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import traceback
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

from bench.cluster import BenchCluster, listening_ports
from bench.stats import median1, outside_cpu_share
from bench.workloads import Settings

#: issue 19: with 9 replicas in groups of 3, a replica spends at most this share of its CPU per action with 3
TARGET = 0.4
#: the shapes: name -> (replicas, replication; None: every replica holds every shard)
SHAPES: dict[str, tuple[int, int | None]] = {"3": (3, None), "9": (9, 3)}
MODES: tuple[str, str] = ("3", "9")
#: the shards of both shapes (--shards)
SHARDS = 18
#: the flood's archives (--actions): more than the other floods' quick 20,000, so that a flood on 9 replicas
#: lasts long enough (over 10 s here) for its start and its end not to weigh much
ACTIONS = {"quick": 50_000, "full": 1_000_000}
#: the share of the flood the agents' run records must show before the harness polls the cluster for the drain
QUIET_UNTIL = 0.9
#: seconds a cluster's start may take per replica (nine processes start on two cores)
START_TIMEOUT = 180.0

SCALEOUT_HELP = f"""\
What a replica spends per action when the cluster grows, in one run: the archive flood at the mode's
size (--actions; {ACTIONS['quick']:,} quick, {ACTIONS['full']:,} full) on 3 replicas x {SHARDS} shards (every replica holds
every shard) and on 9 replicas x {SHARDS} shards with replication 3 (each shard's Raft group on 3 of the
9: each replica holds {SHARDS * 3 // 9}), same items, agents (null mover) and clients, alternating which goes
first, medians over --repeat rounds. Every process shares this host's cores, so 9 replicas
cannot show more actions/s than 3: the figure is the CPU a replica spends per action (its own CPU
over the flood / the actions, mean over the replicas), 9 / 3, against the target {TARGET} (at most;
met / missed). On real machines, one replica per host, it decides how many actions a host carries.
Also reports actions/s of each shape, the least and most loaded replica's CPU per action, all
replicas together, agentd, clients and the whole benchmark per action, the shards each replica
holds and leads at the end, and the share of the host CPU used by outside processes during each
flood. The harness asks the cluster nothing until the agents have run {QUIET_UNTIL:.0%} of the actions.
Results: RESULTS/scaleout-latest.json / .md and RESULTS/runs/<time>-scaleout.json. Exit 1 if a
flood failed, did not drain, ran an action twice or did not run in its shape (the configuration's
placement, every replica's ClusterInfo members and the shards it answers for, each replica's
listening Raft ports); a missed target is reported, not an error.
"""


def order(round_index: int) -> tuple[str, str]:
    """Which shape goes first: the 3 in even rounds, the 9 in odd ones."""
    return MODES if round_index % 2 == 0 else (MODES[1], MODES[0])


def shape_text(shape: str, shards: int = SHARDS) -> str:
    n, r = SHAPES[shape]
    return f"{n} replicas x {shards} shards" + (f", groups of {r}" if r is not None else ", every replica holds all")


# ------------------------------------------------------------ the shape probe


class Probe:
    """archive_flood's ``profile`` hook: when the flood has drained (its
    end time taken, the cluster still up), read the configuration, ask
    every replica's ClusterInfo and read each replica's listening ports."""

    def __init__(self, cluster: BenchCluster, replication: int | None) -> None:
        self.cluster = cluster
        self.replication = replication
        self.replicas = list(cluster.live_replicas())
        self.shards = cluster.opt.shards
        self.ran = False
        self.config_replication: Any = None
        self.placement: list[list[str]] = []
        self.hosted: dict[str, list[int]] = {}
        self.members_wrong: dict[str, list[int]] = {}  # replica -> shards whose members it shows otherwise
        self.held: dict[str, list[int]] = {}  # as the replica answers: leader or follower
        self.led: dict[str, list[int]] = {}
        self.unanswered: dict[str, str] = {}
        self.ports: dict[str, dict[str, Any]] = {}  # replica -> missing / extra listening ports, Raft ports

    def stop(self) -> None:
        from hsm.v1 import coordinator_pb2 as C
        from hsm.v1 import coordinator_pb2_grpc

        c = self.cluster
        raw = yaml.safe_load(c.config_path.read_text()) or {}
        self.config_replication = (raw.get("cluster") or {}).get("replication")
        self.placement = [list(g) for g in c.placement]
        pids = c.pids()
        for rid in self.replicas:
            self.hosted[rid] = c.hosted(rid)
            try:
                with c.channel(c.spec(rid).api) as ch:
                    stub = coordinator_pb2_grpc.CoordinatorStub(ch)  # type: ignore[no-untyped-call]
                    info = stub.ClusterInfo(C.ClusterInfoRequest(), timeout=10)
            except Exception as exc:  # noqa: BLE001 - said as the problem
                self.unanswered[rid] = f"{type(exc).__name__}: {exc}"
                continue
            want = {k: (self.placement[k] if self.placement else []) for k in range(self.shards)}
            got = {sh.shard: list(sh.members) for sh in info.shards}
            self.members_wrong[rid] = sorted(k for k in set(want) | set(got) if got.get(k) != want.get(k))
            self.held[rid] = sorted(sh.shard for sh in info.shards if sh.role in ("leader", "follower"))
            self.led[rid] = sorted(sh.shard for sh in info.shards if sh.role == "leader")
            listening = listening_ports(pids[rid]) if rid in pids else set()
            own = c.own_ports(rid)
            self.ports[rid] = {"missing": sorted(own - listening), "extra": sorted(listening - own),
                               "raft": len(c.raft_ports(rid) & listening)}
        self.ran = True

    def problems(self) -> list[str]:
        """Why the flood did not run in its shape (empty: it did)."""
        if not self.ran:
            return ["the shape probe did not run"]
        out = []
        r, s = self.replication, self.shards
        if r is None:
            if self.config_replication is not None or self.placement:
                out.append(f"the configuration places the shards (replication {self.config_replication}); "
                           "every replica should hold every shard")
        else:
            if self.config_replication != r:
                out.append(f"the configuration says replication {self.config_replication}, not {r}")
            sizes = sorted({len(g) for g in self.placement})
            if len(self.placement) != s or sizes != [r]:
                out.append(f"the configuration places {len(self.placement)} shard(s) in groups of "
                           f"{', '.join(map(str, sizes)) or 'nothing'}, not {s} in groups of {r}")
            held = [len(v) for v in self.hosted.values()]
            if held and max(held) - min(held) > 1:
                out.append(f"the placement is not balanced: replicas hold {min(held)} to {max(held)} shards")
        for rid in self.replicas:
            if rid in self.unanswered:
                out.append(f"{rid} did not answer ClusterInfo: {self.unanswered[rid]}")
                continue
            if self.members_wrong.get(rid):
                out.append(f"{rid}'s ClusterInfo shows other members than configured for shard(s) "
                           f"{_list(self.members_wrong[rid])}")
            if self.held.get(rid) != self.hosted.get(rid):
                out.append(f"{rid} answers for shard(s) {_list(self.held.get(rid, []))}, it holds "
                           f"{_list(self.hosted.get(rid, []))}")
            p = self.ports.get(rid, {})
            if p.get("missing") or p.get("extra"):
                out.append(f"{rid} does not listen on exactly its API and its shards' Raft ports (missing "
                           f"{_list(p.get('missing', []))}, extra {_list(p.get('extra', []))})")
        return out

    def record(self) -> dict[str, Any]:
        return {"replication": self.replication, "config_replication": self.config_replication,
                "placement": self.placement, "hosted": self.hosted, "held": self.held, "led_at_end": self.led,
                "members_wrong": self.members_wrong, "unanswered": self.unanswered, "ports": self.ports,
                "problems": self.problems()}


def _list(xs: Sequence[Any]) -> str:
    return ",".join(map(str, xs)) if xs else "none"


# ------------------------------------------------------------ figures


def replica_us(d: Mapping[str, Any]) -> dict[str, float]:
    """Replica -> its CPU µs per action in one flood."""
    reps = (d.get("cpu_per_action") or {}).get("replicas") or {}
    return {rid: r["us_per_action"] for rid, r in reps.items() if r.get("us_per_action") is not None}


def flood_figures(d: Mapping[str, Any]) -> dict[str, Any]:
    """The figures of one flood this benchmark reports (None where it has none)."""
    pa = d.get("cpu_per_action") or {}
    c = pa.get("classes") or {}
    reps = replica_us(d)
    vals = list(reps.values())
    n = int(pa.get("count") or 0)
    all_s = sum(float(r.get("cpu_s") or 0.0) for r in (pa.get("replicas") or {}).values())

    def cls(name: str) -> Any:
        return (c.get(name) or {}).get("us_per_action")

    return {"actions_per_s": d.get("actions_per_s"), "seconds": d.get("seconds"),
            "replica_us_per_action": round(sum(vals) / len(vals), 1) if vals else None,
            "replica_us_min": min(vals) if vals else None, "replica_us_max": max(vals) if vals else None,
            "replicas_us_per_action": round(all_s * 1e6 / n, 1) if n and vals else None,
            "agentd_us_per_action": cls("agentd"), "client_us_per_action": cls("client"),
            "total_us_per_action": pa.get("total_us_per_action"), "harness_us_per_action":
                pa.get("harness_us_per_action"), "p99_start_ms": d.get("p99_start_ms"),
            "outsiders_cpu_share_pct": outside_cpu_share(d), "run_twice": d.get("run_twice", 0)}


FIGURES = tuple(flood_figures({}))


def medians(floods: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    figs = [flood_figures(d) for d in floods]
    return {k: median1(f[k] for f in figs) for k in FIGURES}


def replicas_table(floods: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per replica over a shape's floods: the median CPU µs per action, the
    mean shards led during the flood (the CPU window's polls), and the
    shards held and led at the end of the last flood."""
    out: dict[str, dict[str, Any]] = {}
    rids = sorted({rid for d in floods for rid in replica_us(d)}, key=_rid_key)
    for rid in rids:
        last: Mapping[str, Any] = next((d for d in reversed(floods) if rid in replica_us(d)), {})
        probe = last.get("shape_probe") or {}
        mean_led = ((last.get("cpu_per_action") or {}).get("replicas") or {}).get(rid, {}).get("mean_shards_led")
        out[rid] = {"us_per_action": median1(replica_us(d).get(rid) for d in floods),
                    "held": len((probe.get("held") or {}).get(rid, [])),
                    "led_at_end": len((probe.get("led_at_end") or {}).get(rid, [])),
                    "mean_shards_led": mean_led}
    return out


def _rid_key(rid: str) -> tuple[int, str]:
    digits = rid.lstrip("r")
    return (int(digits), rid) if digits.isdigit() else (1 << 30, rid)


def ratio(nine: float | None, three: float | None) -> float | None:
    return round(nine / three, 3) if nine is not None and three else None


def status(r: float | None, target: float = TARGET) -> str:
    """``met`` at or below the target (less CPU per action is better),
    ``missed`` above, ``not measured`` without both shapes."""
    if r is None:
        return "not measured"
    return "met" if r <= target else "missed"


def verdict(nine: Mapping[str, Any], three: Mapping[str, Any], round_ratios: Sequence[float | None] = (),
            target: float = TARGET) -> dict[str, Any]:
    """The figure (mean replica CPU µs per action, 9 / 3), its status, each
    round's, and the ratios of the other per-action figures."""
    r = ratio(nine.get("replica_us_per_action"), three.get("replica_us_per_action"))
    per_round = [x for x in round_ratios if x is not None]
    return {"ratio": r, "target": target, "status": status(r, target), "round_ratios": list(round_ratios),
            "round_ratio_min": min(per_round) if per_round else None,
            "round_ratio_max": max(per_round) if per_round else None,
            "max_replica_ratio": ratio(nine.get("replica_us_max"), three.get("replica_us_max")),
            "all_replicas_ratio": ratio(nine.get("replicas_us_per_action"), three.get("replicas_us_per_action")),
            "total_ratio": ratio(nine.get("total_us_per_action"), three.get("total_us_per_action")),
            "rate_ratio": ratio(nine.get("actions_per_s"), three.get("actions_per_s"))}


# ------------------------------------------------------------ the run


def alternate_shapes(s: Settings, n: int, repeat: int, say: Callable[[str], None]
                     ) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]], dict[str, str],
                                list[dict[str, Any]]] | None:
    """The archive flood of *n* on each shape, *repeat* rounds, alternating
    which goes first (:func:`order`). A flood that failed or did not run in
    its shape is a failure, not counted. Returns the floods per shape, each
    round's figure, the failures and the timeline; None when interrupted."""
    from bench import workloads as w

    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    pairs: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    timeline: list[dict[str, Any]] = []
    for rnd in range(repeat):
        per: dict[str, float | None] = {}
        for k, shape in enumerate(order(rnd)):
            replicas, replication = SHAPES[shape]
            probes: list[Probe] = []

            def hook(c: BenchCluster, _g: Any, probes: list[Probe] = probes, r: int | None = replication) -> Probe:
                probes.append(Probe(c, r))
                return probes[-1]

            name = f"{shape} replicas (round {rnd + 1})"
            say(f"== archive flood, {shape_text(shape, s.shards)} (round {rnd + 1}, {'first' if k == 0 else 'second'})")
            t1 = time.monotonic()
            entry: dict[str, Any] = {"round": rnd + 1, "shape": shape, "position": k + 1}
            ss = dataclasses.replace(s, replicas=replicas, replication=replication,
                                     start_timeout=max(START_TIMEOUT, s.start_timeout or 0.0))
            try:
                d = w.archive_flood(ss, actions=n, profile=hook, quiet_until=QUIET_UNTIL)
            except KeyboardInterrupt:
                say("!! interrupted")
                return None
            except Exception as exc:  # noqa: BLE001 - reported, the other floods go on
                failures[name] = f"{type(exc).__name__}: {exc}"
                say(f"!! flood on {shape} replicas failed: {exc}")
                traceback.print_exc()
                continue
            finally:
                entry["wall_seconds"] = round(time.monotonic() - t1, 1)
                timeline.append(entry)
            probe = probes[0] if probes else None
            d["shape_probe"] = probe.record() if probe else None
            wrong = probe.problems() if probe else ["the shape probe did not run"]
            fig = flood_figures(d)
            entry.update({k2: fig[k2] for k2 in ("actions_per_s", "seconds", "replica_us_per_action",
                                                 "replica_us_min", "replica_us_max", "total_us_per_action",
                                                 "outsiders_cpu_share_pct")})
            if probe is not None:
                entry["held"] = dict(Counter(len(v) for v in probe.held.values()))
                entry["led_at_end"] = {rid: len(v) for rid, v in probe.led.items()}
            if wrong:
                failures[name] = "not run in its shape: " + "; ".join(wrong)
                say(f"!! flood on {shape} replicas: {'; '.join(wrong)}; not counted")
                continue
            say(f"   {shape} replicas: {fig['actions_per_s']:,.0f} actions/s; CPU µs per action per replica "
                f"{fig['replica_us_per_action']} (min {fig['replica_us_min']}, max {fig['replica_us_max']}); "
                f"outsiders used {fig['outsiders_cpu_share_pct']} % of the host CPU")
            runs[shape].append(d)
            per[shape] = fig["replica_us_per_action"]
        pairs.append({"round": rnd + 1, "3": per.get("3"), "9": per.get("9"), "ratio": ratio(per.get("9"), per.get("3"))})
    return runs, pairs, failures, timeline


def scaleout(args: argparse.Namespace, s: Settings, say: Callable[[str], None]) -> int:
    from bench.compare import save
    from bench.machine import machine

    n = args.actions if getattr(args, "actions", None) is not None else ACTIONS.get(s.mode, ACTIONS["quick"])
    s.flood_actions = n
    s.shards = args.shards or SHARDS
    repeat = max(1, int(getattr(args, "repeat", 1) or 1))
    mach = machine()
    t0 = time.monotonic()
    say(f"== scaleout ({s.mode}): archive flood of {n:,} on {shape_text('3', s.shards)} and on "
        f"{shape_text('9', s.shards)}, {repeat} round(s); {mach['cores']} cores")
    got = alternate_shapes(s, n, repeat, say)
    if got is None:
        return 130
    runs, pairs, failures, timeline = got
    nine, three = medians(runs["9"]), medians(runs["3"])
    v = verdict(nine, three, [p["ratio"] for p in pairs])
    broken = [f"{shape} replicas: {d['run_twice']} actions ran twice" for shape in MODES for d in runs[shape]
              if d.get("run_twice")]
    out = {"kind": "scaleout", "mode": s.mode, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "wall_seconds": round(time.monotonic() - t0, 1), "machine": mach, "actions": n, "rounds": repeat,
           "quiet_until": QUIET_UNTIL,
           "cluster": {"shards": s.shards, "shapes": {k: {"replicas": a, "replication": b} for k, (a, b) in SHAPES.items()},
                       "agents": s.agents, "clients": s.clients, "batch": s.batch, "inflight": s.inflight,
                       "fsync": s.fsync, "encrypt": s.encrypt},
           "flood": {"3": three, "9": nine}, "replicas": {shape: replicas_table(runs[shape]) for shape in MODES},
           "verdict": v, "rounds_detail": pairs, "timeline": timeline, "failures": failures,
           "invariant_breaks": broken, "floods": runs}
    md = markdown(out)
    if not args.no_save:
        paths = save(out, md, args.results, name="scaleout")
        say(f"   results: {', '.join(str(p) for p in paths)}")
    say(md)
    return 1 if failures or broken else 0


# ------------------------------------------------------------ output


def _f(v: Any, fmt: str = "{:,.1f}") -> str:
    return "n/a" if v is None else fmt.format(v)


ROWS = (("actions_per_s", "actions/s end to end"),
        ("replica_us_per_action", "**CPU µs per action per replica (mean)**"),
        ("replica_us_min", "CPU µs per action, least loaded replica"),
        ("replica_us_max", "CPU µs per action, most loaded replica"),
        ("replicas_us_per_action", "CPU µs per action, all replicas together"),
        ("agentd_us_per_action", "CPU µs per action, agentd (all)"),
        ("client_us_per_action", "CPU µs per action, clients (all)"),
        ("total_us_per_action", "CPU µs per action, whole benchmark"),
        ("harness_us_per_action", "CPU µs per action, the harness (apart)"),
        ("p99_start_ms", "submit-to-start p99 (ms)"),
        ("outsiders_cpu_share_pct", "outsiders' share of the host CPU (%)"))


def markdown(out: Mapping[str, Any]) -> str:
    m = out.get("machine", {})
    nine, three = out["flood"]["9"], out["flood"]["3"]
    v = out.get("verdict") or {}
    cl = out["cluster"]
    shards = cl["shards"]
    st = v.get("status", "not measured")
    lines = [
        "# hsm-coordinator benchmark: scale-out, CPU per action per replica",
        "",
        f"{out['when']}, {out['mode']} mode, {out['wall_seconds']:,.0f} s; {m.get('cores')} cores "
        f"({m.get('cpu', '?')}), Python {m.get('python', '?')}, grpcio {m.get('versions', {}).get('grpcio', '?')}, "
        f"commit {m.get('git_commit', '?')}{' (dirty)' if m.get('git_dirty') else ''}. Two shapes of "
        f"{shards} shards: **3** = 3 replicas, every replica holds every shard (applies every command); "
        f"**9** = 9 replicas with `cluster.replication: 3`, each shard's Raft group on 3 of the 9 (each replica "
        f"holds {shards * 3 // 9}). Both: {cl['agents']} agentd (null mover), {cl['clients']} client processes "
        f"(batches of {cl['batch']}, {cl['inflight']} in flight), the same {out['actions']:,} archives.",
        "",
        "Every process of both shapes shares this host's cores, so 9 replicas cannot show more actions/s than 3: "
        "the figure is the CPU a replica spends per action (its own CPU over the flood, from /proc, / the "
        "flood's actions; the mean over the replicas). On real machines, one replica per host, it decides how "
        "many actions a host carries. A third is what applying a third of the commands would give if nothing "
        "else cost anything; a replica also pays for what does not shrink with its shards (its event loop and "
        "gRPC servers, a stream per agent, each Raft group's timers, learning the leaders of shards it does not "
        "hold).",
        "",
        f"## Archive flood of {out['actions']:,} on 3 and on 9 replicas ({out['rounds']} round(s), medians)",
        "",
        f"**CPU µs per action per replica, 9 / 3: {_f(v.get('ratio'), '{:.3f}')}** (target ≤ "
        f"{v.get('target', TARGET)}: **{st}**)"
        + (f"; per round {', '.join(_f(x, '{:.3f}') for x in v.get('round_ratios', []))}"
           if len(v.get("round_ratios", [])) > 1 else "") + ".",
        "",
        "| figure | 3 replicas | 9 replicas | 9 / 3 |",
        "|---|---|---|---|",
    ]
    for key, name in ROWS:
        a, b = three.get(key), nine.get(key)
        lines.append(f"| {name} | {_f(a)} | {_f(b)} | {_f(ratio(b, a), '{:.3f}')} |")
    lines += ["", "All replicas together, 9 / 3: the cluster's whole replica CPU per action (each command is "
              "applied on 3 replicas in both shapes, so 1.0 would be a scale-out that costs nothing).", ""]
    for shape in MODES:
        table = (out.get("replicas") or {}).get(shape) or {}
        if not table:
            continue
        lines += [f"### {shape} replicas, per replica", "",
                  "| replica | CPU µs per action | shards held | shards led at the end | shards led during the "
                  "flood (mean of the polls) |", "|---|---|---|---|---|"]
        for rid, r in table.items():
            lines.append(f"| {rid} | {_f(r.get('us_per_action'))} | {r.get('held')} | {r.get('led_at_end')} | "
                         f"{_f(r.get('mean_shards_led'), '{:.2f}')} |")
        lines.append("")
    lines += ["Held and led at the end: each replica's own ClusterInfo once the last flood of the shape had "
              "drained (the shards it answers for as leader or follower, and as leader). Led during the flood: "
              "the harness's ClusterInfo polls of the first replica every 0.5 s (bench.cpu); with 9 replicas "
              "that replica knows the leaders of the shards it does not hold as it last learned them from their "
              "members (every few seconds), so the column is approximate there.", "",
              "## Every flood", "",
              "| round | shape | ran | actions/s | seconds | replica µs per action (mean, min, max) | whole µs per "
              "action | shards held per replica | outsiders' CPU share (%) | wall s (with start and stop) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for e in out.get("timeline", []):
        held = ", ".join(f"{k} x {n}" for k, n in sorted((e.get("held") or {}).items()))
        lines.append(f"| {e['round']} | {e['shape']} | {'first' if e['position'] == 1 else 'second'} | "
                     f"{_f(e.get('actions_per_s'))} | {_f(e.get('seconds'))} | {_f(e.get('replica_us_per_action'))} "
                     f"({_f(e.get('replica_us_min'))}, {_f(e.get('replica_us_max'))}) | "
                     f"{_f(e.get('total_us_per_action'))} | {held or 'n/a'} | "
                     f"{_f(e.get('outsiders_cpu_share_pct'))} | {_f(e.get('wall_seconds'))} |")
    lines += ["", "A flood run while outsiders used much of the host's CPU is slower for that reason alone, and its "
              "replicas' per-second costs spread over fewer actions: compare the shares before reading the ratio "
              "(more rounds: `--repeat N`).", "",
              f"Each flood checked its shape when it had drained: the configuration's `cluster.replication` and "
              "placement, every replica's ClusterInfo (each shard's members as configured, and the shards it "
              "answers for as leader or follower exactly those it holds), and each replica process's listening "
              "ports (its API port and exactly its shards' Raft ports, from /proc). The harness asked the "
              f"cluster nothing until the agents' run records showed {out.get('quiet_until', QUIET_UNTIL):.0%} "
              "of the actions run, then polled a replica's Status for the drain.", ""]
    if out.get("failures") or out.get("invariant_breaks"):
        lines += ["**Failures:** " + "; ".join([*[f"{k}: {x}" for k, x in out.get("failures", {}).items()],
                                                 *out.get("invariant_breaks", [])]), ""]
    lines += ["Every flood's full results are in `scaleout-latest.json`; one file per run under `runs/`.", ""]
    return "\n".join(lines)
