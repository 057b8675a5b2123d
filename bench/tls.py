"""``python -m bench tls``: what mutual TLS costs the archive flood.

The archive flood at the mode's size (``--actions``; 20,000 quick,
1,000,000 full) twice per round, on a cluster in plain text and on one with
mutual TLS on every connection (``ClusterOptions.tls``: replicas, agentd
with its own agent certificate, the client processes with an operator
certificate, the harness's own calls with admin; bench.cluster), same shape
and sizes. The order alternates (round 1 plain text first, round 2 TLS
first, ...); with ``--repeat N`` every figure is the median of its rounds.

Reported: actions/s end to end with TLS off and on, the ratio on / off (the
medians' ratio, and each round's) against :data:`TARGET` (issue 13: met or
missed), CPU µs per action per process class (bench.cpu: leader / follower
replicas, agentd, clients; the whole benchmark), and for every flood the
share of the host's CPU used by processes outside the benchmark (a busy host
skews a flood: compare the shares before trusting a ratio).

Every flood checks that it ran the way it says: when it has drained, the
harness sends a plain-text health check to a replica, which a TLS cluster
must refuse in the handshake and a plain-text one must answer. A
flood whose probe disagrees is a failure (exit 1), as is an action that ran
twice; a missed target is reported, not an error.

Clients connect (and agents register) before the clock starts: the floods
measure TLS on established connections (record encryption, framing), not
handshakes. Results: ``tls-latest.json`` / ``.md`` and
``runs/<time>-tls.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bench.cluster import BenchCluster
from bench.stats import median_to, outside_cpu_share
from bench.workloads import Settings

#: issue 13: the flood with TLS keeps at least this share of its plain-text rate
TARGET = 0.85
MODES = ("off", "on")

TLS_HELP = f"""\
What mutual TLS costs, in one run: the archive flood at the mode's size (--actions; 20,000 quick,
1,000,000 full) on a plain-text cluster and on one with mutual TLS everywhere (replicas, agents,
clients and the harness's own calls), alternating which goes first, medians over --repeat rounds.
Reports actions/s for both, the ratio TLS on / off against the target {TARGET} (met / missed), CPU
µs per action per process class, and the share of the host CPU used by outside processes during
each flood. Results: RESULTS/tls-latest.json / .md and RESULTS/runs/<time>-tls.json. Exit 1 if a
flood failed, ran an action twice or did not run in the mode it claims (a plain-text probe);
a missed target is reported, not an error.
"""


def order(round_index: int) -> tuple[str, str]:
    """Which flood goes first: plain text in even rounds, TLS in odd ones."""
    return MODES if round_index % 2 == 0 else (MODES[1], MODES[0])


# ------------------------------------------------------------ the plain-text probe


def plain_text_answered(api: str, timeout: float = 3.0) -> bool:
    """Whether the replica at *api* answers a health check over a
    plain-text connection (a TLS replica refuses it in the handshake)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(api) as ch:
        try:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="hsm.v1.Coordinator"),
                                                 timeout=timeout)
        except grpc.RpcError as exc:  # any answer but "no connection" came from the replica
            return exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    return True


class Probe:
    """archive_flood's ``profile`` hook: when the flood has drained (its
    end time taken, the cluster still up), check the mode of the cluster:
    its configuration, and one plain-text health check."""

    def __init__(self, cluster: BenchCluster) -> None:
        self.cluster = cluster
        self.tls = cluster.opt.tls
        self.config_tls: bool | None = None
        self.plain_text_answered: bool | None = None

    def stop(self) -> None:
        c = self.cluster
        self.config_tls = "tls:" in c.config_path.read_text()
        self.plain_text_answered = plain_text_answered(c.spec(c.live_replicas()[0]).api)

    def problem(self) -> str | None:
        """Why the flood did not run in the mode it claims (None: it did)."""
        if self.plain_text_answered is None:
            return "the mode probe did not run"
        if self.tls and (self.plain_text_answered or not self.config_tls):
            return "the TLS cluster answered plain text" if self.plain_text_answered else "no tls: in its config"
        if not self.tls and not self.plain_text_answered:
            return "the plain-text cluster refused a plain-text health check"
        return None

    def record(self) -> dict[str, Any]:
        return {"tls": self.tls, "config_has_tls": self.config_tls, "plain_text_answered": self.plain_text_answered}


# ------------------------------------------------------------ figures


def flood_figures(d: Mapping[str, Any]) -> dict[str, Any]:
    """The figures of one flood that this workload reports (None where a
    flood has no such figure: no follower class with 3 x 8, say)."""
    pa = d.get("cpu_per_action") or {}
    c = pa.get("classes") or {}
    reps = [r["us_per_action"] for r in (pa.get("replicas") or {}).values() if r.get("us_per_action") is not None]

    def cls(name: str, key: str = "us_per_action") -> Any:
        return (c.get(name) or {}).get(key)

    return {"actions_per_s": d.get("actions_per_s"), "seconds": d.get("seconds"),
            "leader_us_per_action": cls("leader"), "follower_us_per_action": cls("follower"),
            "replica_us_per_action": round(sum(reps) / len(reps), 1) if reps else None,
            "agentd_us_per_action": cls("agentd"), "agentd_us_per_action_per_process": cls("agentd",
                                                                                           "us_per_action_per_process"),
            "client_us_per_action": cls("client"), "total_us_per_action": pa.get("total_us_per_action"),
            "harness_us_per_action": pa.get("harness_us_per_action"),
            "outsiders_cpu_share_pct": outside_cpu_share(d), "p99_start_ms": d.get("p99_start_ms"),
            "raft_entries_per_action": d.get("raft_entries_per_action"),
            "run_twice": d.get("run_twice", 0)}


FIGURES = tuple(flood_figures({}))


#: figures whose medians keep four decimals (the others one)
PRECISE = ("raft_entries_per_action",)


def medians(floods: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    figs = [flood_figures(d) for d in floods]
    return {k: median_to((f[k] for f in figs), 4 if k in PRECISE else 1) for k in FIGURES}


def ratio(on: float | None, off: float | None) -> float | None:
    return round(on / off, 3) if on is not None and off else None


def status(r: float | None, target: float = TARGET) -> str:
    """``met`` at or above the target, ``missed`` below, ``not measured``
    without both floods."""
    if r is None:
        return "not measured"
    return "met" if r >= target else "missed"


def verdict(on: Mapping[str, Any], off: Mapping[str, Any],
            round_ratios: Sequence[float | None] = (), target: float = TARGET) -> dict[str, Any]:
    """The ratio on / off and its status against *target* (bench.metrics
    passes its own), with the CPU-bound estimate and each round's ratio."""
    r = ratio(on.get("actions_per_s"), off.get("actions_per_s"))
    per_round = [x for x in round_ratios if x is not None]
    rep_on, rep_off = on.get("replica_us_per_action"), off.get("replica_us_per_action")
    tot_on, tot_off = on.get("total_us_per_action"), off.get("total_us_per_action")
    # the rate ratio a CPU-bound run would show on this host without outsiders: the inverse ratio of the
    # whole benchmark's CPU per action (every process on the same cores); an estimate, not the target's figure
    cpu_bound = round(tot_off / tot_on, 3) if tot_on and tot_off is not None else None
    return {"ratio": r, "target": target, "status": status(r, target), "round_ratios": list(round_ratios),
            "cpu_bound_ratio": cpu_bound, "cpu_bound_status": status(cpu_bound, target),
            "round_ratio_min": min(per_round) if per_round else None,
            "round_ratio_max": max(per_round) if per_round else None,
            "replica_us_on_minus_off": round(rep_on - rep_off, 1) if rep_on is not None and rep_off is not None
            else None,
            "total_us_on_minus_off": round(tot_on - tot_off, 1) if tot_on is not None and tot_off is not None
            else None}


# ------------------------------------------------------------ the run


def alternate_floods(
        s: Settings, n: int, repeat: int, say: Callable[[str], None], *, label: str, setting: str,
        make_probe: Callable[[BenchCluster], Any], probe_key: str,
        extra: Callable[[dict[str, Any], str], tuple[dict[str, Any], str]] | None = None,
) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]], dict[str, str], list[dict[str, Any]]] | None:
    """The archive flood of *n* with the boolean *setting* (a Settings
    field) off and on, *repeat* rounds, alternating which goes first
    (:func:`order`): bench tls and bench metrics. *make_probe(cluster)*
    checks that a flood ran in its mode (``problem()``, ``record()``, and
    ``close()`` if it has one), its record kept under *probe_key*; a flood
    that failed or did not run in its mode is a failure, not counted.
    *extra(flood, mode)*: more figures for the timeline and a suffix for
    the progress line. Returns the floods per mode, each round's rates and
    ratio, the failures and the timeline; None when interrupted."""
    from bench import workloads as w

    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    pairs: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    timeline: list[dict[str, Any]] = []
    for rnd in range(repeat):
        rates: dict[str, float | None] = {}
        for k, mode in enumerate(order(rnd)):
            probes: list[Any] = []

            def hook(c: BenchCluster, _g: Any, probes: list[Any] = probes) -> Any:
                probes.append(make_probe(c))
                return probes[-1]

            name = f"{label} {mode} (round {rnd + 1})"
            say(f"== archive flood, {label} {mode} (round {rnd + 1}, {'first' if k == 0 else 'second'})")
            t1 = time.monotonic()
            entry: dict[str, Any] = {"round": rnd + 1, setting: mode, "position": k + 1}
            try:
                d = w.archive_flood(dataclasses.replace(s, **{setting: mode == "on"}), actions=n, profile=hook)
            except KeyboardInterrupt:
                say("!! interrupted")
                return None
            except Exception as exc:  # noqa: BLE001 - reported, the other floods go on
                failures[name] = f"{type(exc).__name__}: {exc}"
                say(f"!! flood with {label} {mode} failed: {exc}")
                continue
            finally:
                entry["wall_seconds"] = round(time.monotonic() - t1, 1)
                timeline.append(entry)
                for p in probes:  # a flood that failed before the drain may have left one running
                    close = getattr(p, "close", None)
                    if close is not None:
                        close()
            probe = probes[0] if probes else None
            d[probe_key] = probe.record() if probe else None
            wrong = probe.problem() if probe else "the mode probe did not run"
            fig = flood_figures(d)
            entry.update({k2: fig[k2] for k2 in ("actions_per_s", "seconds", "outsiders_cpu_share_pct",
                                                 "replica_us_per_action", "total_us_per_action",
                                                 "raft_entries_per_action")})
            more, suffix = extra(d, mode) if extra is not None else ({}, "")
            entry.update(more)
            if wrong:
                failures[name] = f"not measured in its mode: {wrong}"
                say(f"!! flood with {label} {mode}: {wrong}; not counted")
                continue
            say(f"   {label} {mode}: {fig['actions_per_s']:,.0f} actions/s; outsiders used "
                f"{fig['outsiders_cpu_share_pct']} % of the host CPU{suffix}")
            runs[mode].append(d)
            rates[mode] = fig["actions_per_s"]
        pairs.append({"round": rnd + 1, "off": rates.get("off"), "on": rates.get("on"),
                      "ratio": ratio(rates.get("on"), rates.get("off"))})
    return runs, pairs, failures, timeline


def tls(args: argparse.Namespace, s: Settings, say: Callable[[str], None]) -> int:
    from bench.compare import save
    from bench.machine import machine

    n = s.flood_actions
    repeat = max(1, int(getattr(args, "repeat", 1) or 1))
    mach = machine()
    t0 = time.monotonic()
    say(f"== tls ({s.mode}): archive flood of {n:,} with mutual TLS off and on, {repeat} round(s); "
        f"{mach['cores']} cores")
    got = alternate_floods(s, n, repeat, say, label="TLS", setting="tls", make_probe=Probe, probe_key="tls_probe")
    if got is None:
        return 130
    runs, pairs, failures, timeline = got
    on, off = medians(runs["on"]), medians(runs["off"])
    v = verdict(on, off, [p["ratio"] for p in pairs])
    broken = [f"TLS {mode}: {d['run_twice']} actions ran twice" for mode in MODES for d in runs[mode]
              if d.get("run_twice")]
    out = {"kind": "tls", "mode": s.mode, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "wall_seconds": round(time.monotonic() - t0, 1), "machine": mach, "actions": n, "rounds": repeat,
           "cluster": {"replicas": s.replicas, "shards": s.shards, "agents": s.agents, "clients": s.clients,
                       "batch": s.batch, "inflight": s.inflight, "fsync": s.fsync, "encrypt": s.encrypt},
           "flood": {"on": on, "off": off}, "verdict": v, "rounds_detail": pairs, "timeline": timeline,
           "failures": failures, "invariant_breaks": broken, "floods": runs}
    md = markdown(out)
    if not args.no_save:
        paths = save(out, md, args.results, name="tls")
        say(f"   results: {', '.join(str(p) for p in paths)}")
    say(md)
    return 1 if failures or broken else 0


# ------------------------------------------------------------ output


def _f(v: Any, fmt: str = "{:,.1f}") -> str:
    return "n/a" if v is None else fmt.format(v)


ROWS = (("actions_per_s", "actions/s end to end"),
        ("leader_us_per_action", "CPU µs per action, leader replicas (class)"),
        ("follower_us_per_action", "CPU µs per action, follower replicas (class)"),
        ("replica_us_per_action", "CPU µs per action, per replica (mean)"),
        ("agentd_us_per_action", "CPU µs per action, agentd (class)"),
        ("client_us_per_action", "CPU µs per action, clients (class)"),
        ("total_us_per_action", "CPU µs per action, whole benchmark"),
        ("harness_us_per_action", "CPU µs per action, the harness (apart)"),
        ("p99_start_ms", "submit-to-start p99 (ms)"),
        ("raft_entries_per_action", "Raft entries per action (every shard)"),
        ("outsiders_cpu_share_pct", "outsiders' share of the host CPU (%)"))
#: a row's format when not "{:,.1f}"
ROW_FORMATS = {"raft_entries_per_action": "{:.3f}"}


def comparison_lines(label: str, v: Mapping[str, Any], on: Mapping[str, Any], off: Mapping[str, Any]) -> list[str]:
    """The verdict, the CPU-bound estimate and the figures' table of an
    on/off comparison (bench tls, bench metrics)."""
    st = v.get("status", "not measured")
    lines = [
        f"**{label} on / off: {_f(v.get('ratio'), '{:.3f}')}** (target ≥ {v.get('target', TARGET)}: "
        f"**{st}**)" + (f"; per round {', '.join(_f(x, '{:.3f}') for x in v.get('round_ratios', []))}"
                        if len(v.get("round_ratios", [])) > 1 else "") + ".",
        "",
        "CPU-bound estimate: every process of the benchmark runs on this host's cores, so a run that is "
        "CPU-bound with nobody else on the host would show about the inverse ratio of the whole benchmark's "
        "CPU per action: "
        f"{_f(off.get('total_us_per_action'))} / "
        f"{_f(on.get('total_us_per_action'))} µs = **{_f(v.get('cpu_bound_ratio'), '{:.3f}')}** "
        f"({v.get('cpu_bound_status', 'not measured')} against the same target; an estimate that the outsiders' "
        "share does not skew, not the measured ratio).",
        "",
        f"| figure | {label} on | {label} off | on / off |",
        "|---|---|---|---|",
    ]
    for key, name in ROWS:
        a, b = on.get(key), off.get(key)
        fmt = ROW_FORMATS.get(key, "{:,.1f}")
        lines.append(f"| {name} | {_f(a, fmt)} | {_f(b, fmt)} | {_f(ratio(a, b), '{:.3f}')} |")
    return lines


def markdown(out: Mapping[str, Any]) -> str:
    m = out.get("machine", {})
    on, off = out["flood"]["on"], out["flood"]["off"]
    v = out.get("verdict") or {}
    cl = out["cluster"]
    lines = [
        "# hsm-coordinator benchmark: the cost of mutual TLS",
        "",
        f"{out['when']}, {out['mode']} mode, {out['wall_seconds']:,.0f} s; {m.get('cores')} cores "
        f"({m.get('cpu', '?')}), Python {m.get('python', '?')}, grpcio {m.get('versions', {}).get('grpcio', '?')}, "
        f"commit {m.get('git_commit', '?')}{' (dirty)' if m.get('git_dirty') else ''}. Cluster "
        f"{cl['replicas']} replicas x {cl['shards']} shards, {cl['agents']} agentd (null mover), {cl['clients']} "
        f"client processes (batches of {cl['batch']}, {cl['inflight']} in flight). TLS on: mutual TLS on every "
        "gRPC connection (replicas, agents with their own agent certificates, clients with an operator "
        "certificate, the harness with admin); off: plain text (`insecure: true`). Raft traffic is sealed "
        "(Fernet) in both. Connections are made before the clock starts: this is TLS on established "
        "connections, not handshakes.",
        "",
        f"## Archive flood of {out['actions']:,}, TLS on and off ({out['rounds']} round(s), medians)",
        "",
        *comparison_lines("TLS", v, on, off),
    ]
    lines += ["", "CPU classes as in bench/cpu.py: a replica that led a shard at any poll is a leader (with 3 x 8 "
              "every replica leads some shards, so the follower class is empty); a class's figure is the CPU of "
              "all its processes per action.", "",
              "## Every flood", "",
              "| round | TLS | ran | actions/s | seconds | replica µs per action | whole µs per action "
              "| outsiders' CPU share (%) | wall s (with start and stop) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for e in out.get("timeline", []):
        lines.append(f"| {e['round']} | {e['tls']} | {'first' if e['position'] == 1 else 'second'} | "
                     f"{_f(e.get('actions_per_s'))} | {_f(e.get('seconds'))} | {_f(e.get('replica_us_per_action'))} "
                     f"| {_f(e.get('total_us_per_action'))} | {_f(e.get('outsiders_cpu_share_pct'))} | "
                     f"{_f(e.get('wall_seconds'))} |")
    lines += ["", "A flood run while outsiders used much of the host's CPU is slower for that reason alone: "
              "compare the shares before reading a ratio (more rounds: `--repeat N`).", ""]
    if out.get("failures") or out.get("invariant_breaks"):
        lines += ["**Failures:** " + "; ".join([*[f"{k}: {x}" for k, x in out.get("failures", {}).items()],
                                                 *out.get("invariant_breaks", [])]), ""]
    lines += ["Every flood's full results are in `tls-latest.json`; one file per run under `runs/`.", ""]
    return "\n".join(lines)
