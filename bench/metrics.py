"""``python -m bench metrics``: what the Prometheus exporters cost the archive flood.

Issue 15: "Metrics cost nothing measurable on the hot path". The archive
flood at the mode's size (``--actions``; 20,000 quick, 1,000,000 full)
twice per round, on a cluster without exporters and on one where every
replica runs with ``--metrics-listen`` and every agentd too
(``ClusterOptions.metrics``: each on its own free loopback port;
bench.cluster), same shape and sizes. The order alternates (round 1
exporters off first, round 2 on first, ...); with ``--repeat N`` every
figure is the median of its rounds.

What "on" costs is what a monitored production cluster pays: the counters
the hot path bumps (actions started and ended, gRPC calls, transfers) and
the scrapes. While a flood with exporters runs, a thread of the harness
GETs ``/metrics`` of every replica and every agentd every
``--scrape-interval`` seconds (default :data:`SCRAPE_INTERVAL`; Prometheus
is usually set to 15-30 s, so the default is the harsher case; the first
round of scrapes goes out as the clock starts, so even a short flood is
scraped) and parses each answer with prometheus-client's own parser, so a
broken exposition fails the flood. A scrape costs the replica its
scrape-time view (built on its event loop: the shards' counts, queues and
Raft figures) and the text; that CPU is in the replica's figures. The
scraper's own CPU is the harness's (reported apart, as for every
workload): it stands for Prometheus, which runs elsewhere. The probe's
scrapes after the drain (below) fall after the flood's end time but inside
its CPU window, like the TLS probe's health check: one round of scrapes,
a few milliseconds of CPU per process, next to the flood's seconds.

Reported: actions/s end to end with exporters off and on, the ratio on /
off (the medians' ratio, and each round's) against :data:`TARGET` (met or
missed), CPU µs per action per process class (bench.cpu), the share of the
host's CPU used by processes outside the benchmark during each flood (a
busy host skews a flood: compare the shares before trusting a ratio), and
the scrapes: how many, how long each took, how big the answers were.

Every flood checks that it ran the way it says (:class:`Probe`): with
exporters on, every scrape was answered and parsed, each port was
answered by the process it belongs to, and, when the flood has drained,
``hsm_actions_finished_total`` summed over the replicas and
``hsm_agentd_transfers_total`` summed over the agents both equal the
flood's number of archives; with exporters off, no replica or agent was
given ``--metrics-listen`` and none listens on any TCP port beyond its API
and Raft ports (so no exporter answers anywhere). In both, the processes'
listening ports are read from /proc: with exporters on, each listens on
its exporter's port, and on nothing else unexpected. A flood whose probe
disagrees is a failure (exit 1), as is an action that ran twice; a missed
target is reported, not an error. Results: ``metrics-latest.json`` /
``.md`` and ``runs/<time>-metrics.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from bench.cluster import BenchCluster, cmdline
from bench.stats import median1
from bench.tls import _f, alternate_floods, comparison_lines, medians, verdict
from bench.workloads import Settings

#: issue 15: the flood with exporters (and scrapes) keeps at least this share of its rate without
TARGET = 0.95
MODES = ("off", "on")
#: seconds between two rounds of scrapes (--scrape-interval)
SCRAPE_INTERVAL = 5.0
#: how long one scrape may take before it counts as failed
SCRAPE_TIMEOUT = 10.0
#: after the drain: how long the counters may take to show every action (the leader counts an action
#: when it applies its end, which may come a moment after the replica the harness asked saw the drain)
SETTLE_TIMEOUT = 15.0
SETTLE_POLL = 0.25
#: the counters whose sums must equal the flood's archives: over the replicas, over the agents
FINISHED, TRANSFERS = "hsm_actions_finished_total", "hsm_agentd_transfers_total"

METRICS_HELP = f"""\
What the Prometheus exporters cost, in one run: the archive flood at the mode's size (--actions;
20,000 quick, 1,000,000 full) on a cluster without exporters and on one with an exporter on every
replica and every agentd (--metrics-listen on free loopback ports), scraped by the harness every
--scrape-interval seconds (default {SCRAPE_INTERVAL:g}; Prometheus usually scrapes every 15-30 s) and
parsed with prometheus-client's parser. Alternates which flood goes first, medians over --repeat
rounds. Reports actions/s for both, the ratio exporters on / off against the target {TARGET} (met /
missed), CPU µs per action per process class, the scrapes (count, time, size), and the share of the
host CPU used by outside processes during each flood. Results: RESULTS/metrics-latest.json / .md and
RESULTS/runs/<time>-metrics.json. Exit 1 if a flood failed, ran an action twice or did not run in the
mode it claims: with exporters, a scrape failed or did not parse, or after the drain the sum of
{FINISHED} over the replicas or of {TRANSFERS} over the agents is not
the flood's number of archives; without, a process was given --metrics-listen or listens on a port
beyond its API and Raft ports. A missed target is reported, not an error.
"""


def order(round_index: int) -> tuple[str, str]:
    """Which flood goes first: exporters off in even rounds, on in odd ones."""
    return MODES if round_index % 2 == 0 else (MODES[1], MODES[0])


# ------------------------------------------------------------ scraping


def scrape(url: str, timeout: float = SCRAPE_TIMEOUT) -> tuple[list[Metric], int]:
    """GET *url* and parse the answer as Prometheus's text format: the
    families and the bytes read. Raises on anything a Prometheus server
    would count as a failed scrape: no connection, an HTTP error, a
    timeout, an exposition the parser refuses."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body = resp.read()
    return list(text_string_to_metric_families(body.decode("utf-8"))), len(body)


def sample_sum(families: Iterable[Metric], name: str) -> float:
    """The sum of every sample called *name* (``..._total`` for a counter),
    whatever its labels."""
    return sum(s.value for f in families for s in f.samples if s.name == name)


def names_itself(families: Iterable[Metric], name: str, replica: bool) -> bool:
    """Whether a scrape came from replica or agent *name*: a replica's
    ``hsm_replica_info`` names it, an agentd labels its ``hsm_agentd_*``
    samples with its agent id (a replica's ``hsm_agent_*`` name agents too,
    so only agentd's own count)."""
    for f in families:
        for s in f.samples:
            if replica and s.name == "hsm_replica_info" and s.labels.get("replica") == name:
                return True
            if not replica and s.name.startswith("hsm_agentd_") and s.labels.get("agent") == name:
                return True
    return False


@dataclasses.dataclass
class TargetStats:
    """One exporter's scrapes: how many, how many failed, bytes and seconds in all."""

    scrapes: int = 0
    failures: int = 0
    bytes: int = 0
    seconds: float = 0.0
    last_error: str = ""


class Scraper:
    """Scrapes every target (name -> URL) in turn, one round every
    *interval* seconds on a thread (:meth:`start` / :meth:`stop`), as a
    Prometheus server would; or one round at a time (:meth:`scrape_all`)."""

    def __init__(self, targets: Mapping[str, str], interval: float = SCRAPE_INTERVAL,
                 timeout: float = SCRAPE_TIMEOUT) -> None:
        self.targets = dict(targets)
        self.interval = interval
        self.timeout = timeout
        self.stats = {name: TargetStats() for name in self.targets}
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-scraper", daemon=True)

    def scrape_all(self) -> dict[str, list[Metric] | None]:
        """One round: every target's families (None: that scrape failed)."""
        out: dict[str, list[Metric] | None] = {}
        for name, url in self.targets.items():
            st = self.stats[name]
            t = time.monotonic()
            try:
                out[name], size = scrape(url, self.timeout)
                st.bytes += size
            except Exception as exc:  # noqa: BLE001 - a failed scrape is counted and said, not raised
                out[name] = None
                st.failures += 1
                st.last_error = f"{type(exc).__name__}: {exc}"
            st.scrapes += 1
            st.seconds += time.monotonic() - t
        self.rounds += 1
        return out

    def _loop(self) -> None:
        self.scrape_all()  # the first round as the clock starts: even a short flood is scraped
        while not self._stop.wait(self.interval):
            self.scrape_all()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> bool:
        """Stop after the round under way; False if the thread did not end."""
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(self.timeout * max(1, len(self.targets)) + 5)
        return not self._thread.is_alive()

    def totals(self) -> dict[str, Any]:
        return totals(self.stats)


def totals(stats: Mapping[str, TargetStats], names: Iterable[str] | None = None) -> dict[str, Any]:
    """Scrapes, failures, mean milliseconds and kilobytes per scrape over
    *names* (default: every target)."""
    sts = [stats[n] for n in (stats if names is None else names) if n in stats]
    n = sum(s.scrapes for s in sts)
    ok = n - sum(s.failures for s in sts)
    return {"scrapes": n, "failures": n - ok,
            "ms_per_scrape": round(1000 * sum(s.seconds for s in sts) / n, 1) if n else None,
            "kb_per_scrape": round(sum(s.bytes for s in sts) / 1024 / ok, 1) if ok else None}


# ------------------------------------------------------------ the probe


class Probe:
    """archive_flood's ``profile`` hook. Made as the clock starts: with
    exporters on, it starts the scraper. Its :meth:`stop` runs when the
    flood has drained (end time taken, the cluster still up): it stops the
    scraper, reads which processes were given ``--metrics-listen`` and
    which ports they listen on, and, with exporters on, scrapes until the
    counters show the flood's *expected* archives (or SETTLE_TIMEOUT)."""

    def __init__(self, cluster: BenchCluster, expected: int, interval: float = SCRAPE_INTERVAL,
                 timeout: float = SCRAPE_TIMEOUT) -> None:
        self.cluster = cluster
        self.metrics = cluster.opt.metrics
        self.expected = expected
        self.interval = interval
        self.replicas = list(cluster.live_replicas())
        self.agents = list(cluster.agents)
        self.ports = dict(cluster.metrics_ports)
        self.scraper = Scraper(cluster.metrics_urls(), interval, timeout) if self.metrics else None
        self.final = Scraper(cluster.metrics_urls(), interval, timeout) if self.metrics else None
        self.ran = False
        self.scraper_stopped = True
        self.config_metrics: bool | None = None
        self.flagged: list[str] = []
        self.listeners: dict[str, list[int]] = {}
        self.finished: float | None = None
        self.transfers: float | None = None
        self.strangers: list[str] = []  # ports answered by another process than their own
        if self.scraper is not None:
            self.scraper.start()

    def close(self) -> None:
        """Stop the scraper without checking anything (a flood that failed)."""
        if self.scraper is not None:
            self.scraper.stop()

    def stop(self) -> None:
        c = self.cluster
        if self.scraper is not None:
            self.scraper_stopped = self.scraper.stop()
        self.config_metrics = "metrics_listen" in c.config_path.read_text()
        procs = {**c.pids(), **c.agent_pids()}
        self.flagged = sorted(name for name, pid in procs.items() if "--metrics-listen" in cmdline(pid))
        self.listeners = {name: sorted(ports) for name, ports in c.unexpected_listeners().items()}
        if self.final is not None:
            self._settle()
        self.ran = True

    def _settle(self) -> None:
        """Scrape every exporter until both sums equal the flood's archives
        or SETTLE_TIMEOUT has passed; keep the last round's sums."""
        assert self.final is not None
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            got = self.final.scrape_all()
            if all(got.get(n) is not None for n in [*self.replicas, *self.agents]):
                self.finished = sum(sample_sum(got[r] or [], FINISHED) for r in self.replicas)
                self.transfers = sum(sample_sum(got[a] or [], TRANSFERS) for a in self.agents)
                self.strangers = [n for n in [*self.replicas, *self.agents]
                                  if not names_itself(got[n] or [], n, n in self.replicas)]
                if self.finished == self.expected and self.transfers == self.expected:
                    return
            if time.monotonic() > deadline:
                return
            time.sleep(SETTLE_POLL)

    def problem(self) -> str | None:
        """Why the flood did not run in the mode it claims (None: it did)."""
        if not self.ran:
            return "the mode probe did not run"
        everyone = sorted([*self.replicas, *self.agents])
        if not self.metrics:
            if self.config_metrics or self.flagged or self.ports:
                return ("metrics configured with the exporters off: "
                        + ", ".join([*(["metrics_listen in the config"] if self.config_metrics else []),
                                     *(f"{n} run with --metrics-listen" for n in self.flagged),
                                     *([f"ports picked for {', '.join(sorted(self.ports))}"] if self.ports else [])]))
            extra = {n: p for n, p in self.listeners.items() if p}
            if extra:
                return "; ".join(f"{n} listens on {', '.join(map(str, p))} beyond its API and Raft ports"
                                 for n, p in sorted(extra.items()))
            return None
        if sorted(self.ports) != everyone:
            return f"exporters on {', '.join(sorted(self.ports)) or 'no process'}, not on every one of {', '.join(everyone)}"
        if self.flagged != everyone:
            missing = sorted(set(everyone) - set(self.flagged))
            return f"not run with --metrics-listen: {', '.join(missing)}"
        wrong = {n: p for n, p in self.listeners.items() if p != [self.ports.get(n)]}
        if wrong:
            return "; ".join(f"{n} listens on {', '.join(map(str, p)) or 'nothing'} beyond its API and Raft ports, "
                             f"not on its exporter's port {self.ports.get(n)} alone" for n, p in sorted(wrong.items()))
        if not self.scraper_stopped:
            return "the scraper did not stop"
        for label, sc in (("during the flood", self.scraper), ("after the drain", self.final)):
            assert sc is not None
            t = sc.totals()
            if t["failures"]:
                bad = next(f"{n}: {s.last_error}" for n, s in sc.stats.items() if s.failures)
                return f"{t['failures']} of {t['scrapes']} scrapes {label} failed (e.g. {bad})"
            never = [n for n in everyone if not sc.stats.get(n, TargetStats()).scrapes]
            if never:
                return f"never scraped {label}: {', '.join(never)}"
        if self.strangers:
            return f"a port did not answer as its own process: {', '.join(self.strangers)}"
        if self.finished != self.expected:
            return (f"{FINISHED} summed over the replicas is {_count(self.finished)}, not the flood's "
                    f"{self.expected:,} archives")
        if self.transfers != self.expected:
            return (f"{TRANSFERS} summed over the agents is {_count(self.transfers)}, not the flood's "
                    f"{self.expected:,} archives")
        return None

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "metrics": self.metrics, "config_has_metrics_listen": self.config_metrics,
            "run_with_metrics_listen": self.flagged, "ports": self.ports, "unexpected_listeners": self.listeners,
            "expected": self.expected, "finished_total": self.finished, "transfers_total": self.transfers}
        if self.scraper is not None and self.final is not None:
            out.update({
                "scrape_interval": self.interval, "rounds": self.scraper.rounds,
                "scrapes": {n: dataclasses.asdict(s) for n, s in self.scraper.stats.items()},
                "replicas": totals(self.scraper.stats, self.replicas),
                "agents": totals(self.scraper.stats, self.agents), "all": self.scraper.totals(),
                "after_drain": {**self.final.totals(), "rounds": self.final.rounds}})
        return out


def _count(v: float | None) -> str:
    return "n/a (no scrape answered)" if v is None else f"{v:,.0f}"


def scrape_figures(record: Mapping[str, Any] | None) -> dict[str, Any]:
    """The scrape figures of one flood's probe record (None without scrapes)."""
    r = record or {}
    rep, ag, al = r.get("replicas") or {}, r.get("agents") or {}, r.get("all") or {}
    return {"scrape_rounds": r.get("rounds"), "scrapes": al.get("scrapes"), "scrape_failures": al.get("failures"),
            "replica_scrape_ms": rep.get("ms_per_scrape"), "replica_scrape_kb": rep.get("kb_per_scrape"),
            "agent_scrape_ms": ag.get("ms_per_scrape"), "agent_scrape_kb": ag.get("kb_per_scrape")}


SCRAPE_FIGURES = tuple(scrape_figures(None))


def scrape_medians(floods: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    figs = [scrape_figures(d.get("metrics_probe")) for d in floods]
    return {k: median1(f[k] for f in figs) for k in SCRAPE_FIGURES}


# ------------------------------------------------------------ the run


def metrics(args: argparse.Namespace, s: Settings, say: Callable[[str], None]) -> int:
    from bench.compare import save
    from bench.machine import machine

    n = s.flood_actions
    repeat = max(1, int(getattr(args, "repeat", 1) or 1))
    interval = float(getattr(args, "scrape_interval", SCRAPE_INTERVAL) or SCRAPE_INTERVAL)
    mach = machine()
    t0 = time.monotonic()
    say(f"== metrics ({s.mode}): archive flood of {n:,} with Prometheus exporters off and on (scraped every "
        f"{interval:g} s), {repeat} round(s); {mach['cores']} cores")
    def scraped(d: dict[str, Any], mode: str) -> tuple[dict[str, Any], str]:
        fig = scrape_figures(d["metrics_probe"])
        return fig, (f"; {fig['scrapes']} scrapes, {fig['replica_scrape_ms']} ms per replica scrape"
                     if mode == "on" else "")

    got = alternate_floods(s, n, repeat, say, label="exporters", setting="metrics",
                           make_probe=lambda c: Probe(c, n, interval), probe_key="metrics_probe", extra=scraped)
    if got is None:
        return 130
    runs, pairs, failures, timeline = got
    on, off = medians(runs["on"]), medians(runs["off"])
    v = verdict(on, off, [p["ratio"] for p in pairs], target=TARGET)
    broken = [f"exporters {mode}: {d['run_twice']} actions ran twice" for mode in MODES for d in runs[mode]
              if d.get("run_twice")]
    out = {"kind": "metrics", "mode": s.mode, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "wall_seconds": round(time.monotonic() - t0, 1), "machine": mach, "actions": n, "rounds": repeat,
           "scrape_interval": interval,
           "cluster": {"replicas": s.replicas, "shards": s.shards, "agents": s.agents, "clients": s.clients,
                       "batch": s.batch, "inflight": s.inflight, "fsync": s.fsync, "encrypt": s.encrypt,
                       "tls": s.tls},
           "flood": {"on": on, "off": off}, "scrapes": scrape_medians(runs["on"]), "verdict": v,
           "rounds_detail": pairs, "timeline": timeline, "failures": failures, "invariant_breaks": broken,
           "floods": runs}
    md = markdown(out)
    if not args.no_save:
        paths = save(out, md, args.results, name="metrics")
        say(f"   results: {', '.join(str(p) for p in paths)}")
    say(md)
    return 1 if failures or broken else 0


# ------------------------------------------------------------ output


def markdown(out: Mapping[str, Any]) -> str:
    m = out.get("machine", {})
    on, off = out["flood"]["on"], out["flood"]["off"]
    v = out.get("verdict") or {}
    cl = out["cluster"]
    sc = out.get("scrapes") or {}
    interval = out.get("scrape_interval", SCRAPE_INTERVAL)
    lines = [
        "# hsm-coordinator benchmark: the cost of the Prometheus exporters",
        "",
        f"{out['when']}, {out['mode']} mode, {out['wall_seconds']:,.0f} s; {m.get('cores')} cores "
        f"({m.get('cpu', '?')}), Python {m.get('python', '?')}, grpcio {m.get('versions', {}).get('grpcio', '?')}, "
        f"commit {m.get('git_commit', '?')}{' (dirty)' if m.get('git_dirty') else ''}. Cluster "
        f"{cl['replicas']} replicas x {cl['shards']} shards, {cl['agents']} agentd (null mover), {cl['clients']} "
        f"client processes (batches of {cl['batch']}, {cl['inflight']} in flight)"
        f"{', mutual TLS' if cl.get('tls') else ''}. Exporters on: every replica and every agentd serves "
        f"/metrics on a loopback port, and the harness scrapes them all every {interval:g} s (the first round "
        "as the clock starts), parsing each answer with prometheus-client's parser; off: no exporter, nothing "
        "counted. The scraper's own CPU is the harness's (it stands for Prometheus, which runs elsewhere).",
        "",
        f"## Archive flood of {out['actions']:,}, exporters on and off ({out['rounds']} round(s), medians)",
        "",
        *comparison_lines("exporters", v, on, off),
    ]
    lines += ["", f"Scrapes per flood with exporters on (medians): {_f(sc.get('scrapes'), '{:,.0f}')} in "
              f"{_f(sc.get('scrape_rounds'), '{:,.0f}')} round(s), {_f(sc.get('scrape_failures'), '{:,.0f}')} failed; "
              f"a replica's took {_f(sc.get('replica_scrape_ms'))} ms for {_f(sc.get('replica_scrape_kb'))} KB, "
              f"an agentd's {_f(sc.get('agent_scrape_ms'))} ms for {_f(sc.get('agent_scrape_kb'))} KB.",
              "", "CPU classes as in bench/cpu.py: a replica that led a shard at any poll is a leader (with 3 x 8 "
              "every replica leads some shards, so the follower class is empty); a class's figure is the CPU of "
              "all its processes per action.", "",
              "## Every flood", "",
              "| round | exporters | ran | actions/s | seconds | replica µs per action | whole µs per action "
              "| outsiders' CPU share (%) | scrapes | ms per replica scrape | wall s (with start and stop) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in out.get("timeline", []):
        lines.append(f"| {e['round']} | {e['metrics']} | {'first' if e['position'] == 1 else 'second'} | "
                     f"{_f(e.get('actions_per_s'))} | {_f(e.get('seconds'))} | {_f(e.get('replica_us_per_action'))} "
                     f"| {_f(e.get('total_us_per_action'))} | {_f(e.get('outsiders_cpu_share_pct'))} | "
                     f"{_f(e.get('scrapes'), '{:,.0f}')} | {_f(e.get('replica_scrape_ms'))} | "
                     f"{_f(e.get('wall_seconds'))} |")
    lines += ["", "A flood run while outsiders used much of the host's CPU is slower for that reason alone: "
              "compare the shares before reading a ratio (more rounds: `--repeat N`).", "",
              f"Each flood checked its mode: with exporters, every scrape answered and parsed, and after the drain "
              f"`{FINISHED}` summed over the replicas and `{TRANSFERS}` summed over the agents equal the "
              "flood's archives; without, no process was given `--metrics-listen` or listens beyond its API and "
              "Raft ports.", ""]
    if out.get("failures") or out.get("invariant_breaks"):
        lines += ["**Failures:** " + "; ".join([*[f"{k}: {x}" for k, x in out.get("failures", {}).items()],
                                                 *out.get("invariant_breaks", [])]), ""]
    lines += ["Every flood's full results are in `metrics-latest.json`; one file per run under `runs/`.", ""]
    return "\n".join(lines)
