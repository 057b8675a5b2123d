"""Results: one JSON file per run, ``latest.json`` (the newest figures of
every workload, merged) and ``latest.md`` (each figure beside its target)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import cpu, invariants

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = ("archive_flood", "restore_storm", "restore_storm_instant", "queue_depth", "memory", "replication", "mixed")
STORM_LABEL = {"restore_storm": "restore storm (1 s restores)", "restore_storm_instant": "restore storm (instant restores)"}

ANCHOR_FLOOD = "in-kernel: 1M archives in 187 s ≈ 5,300/s (LU-18556)"
ANCHOR_QUEUE = "in-kernel: 10k archives enqueued behind 200k queued took 4 s ≈ 2,500/s (LU-14793)"


def _get(d: dict[str, Any], path: str) -> Any:
    cur: Any = d
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


# (section, label, value path, check, target text, anchor, format)
Check = Callable[[Any, dict[str, Any]], bool | None]
TARGETS: list[tuple[str, str, str, Check | None, str, str, str]] = [
    ("archive_flood", "archive flood, end to end", "actions_per_s",
     lambda v, s: v >= 20_000, "≥ 20,000 actions/s", ANCHOR_FLOOD, "{:,.0f} actions/s"),
    ("archive_flood", "archive flood, submit-to-start p50 / p99", "p50_start_ms", None, "", "", "{} ms"),
    ("archive_flood", "archive flood, submit-to-done p50 / p99", "p50_done_ms", None, "", "", "{} ms"),
    ("archive_flood", "archive flood, peak RSS per replica", "peak_rss", None, "", "", "{}"),
    ("archive_flood", "archive flood, actions the movers ran twice", "run_twice",
     lambda v, s: v == 0, "0 (one run per action)", "", "{:,}"),
    *[row for sec in STORM_LABEL for row in (
        (sec, f"{STORM_LABEL[sec]}, actions dispatched", "dispatched",
         lambda v, s: v == s["fids"] and s.get("run_twice", 0) == 0, "= FIDs (one per FID)", "", "{:,}"),
        (sec, f"{STORM_LABEL[sec]}, RESTORE actions created per FID, max / mean", "per_fid.created.max",
         lambda v, s: v <= 1, "1 / 1.00 (invariant)", "", "{}"),
        (sec, f"{STORM_LABEL[sec]}, dispatches per FID, max / mean", "per_fid.dispatched.max",
         lambda v, s: v <= 1, "1 / 1.00 (invariant)", "", "{}"),
        (sec, f"{STORM_LABEL[sec]}, requests accepted", "requests_per_s",
         lambda v, s: v >= 50_000, "≥ 50,000 requests/s", "", "{:,.0f} requests/s"),
        (sec, f"{STORM_LABEL[sec]}, time to drain", "drain_seconds", None, "", "", "{:,.1f} s"))],
    ("queue_depth", "queue depth, dispatch rate large / small", "ratio",
     lambda v, s: v >= 0.8, "≥ 0.8", ANCHOR_QUEUE, "{:.2f}"),
    ("memory", "memory per waiting action (worst replica)", "bytes_per_waiting_action",
     lambda v, s: v < 1024, "< 1 KiB per replica", "", "{:,.0f} bytes"),
    ("replication", "replication, rate 3 replicas / 1", "ratio",
     lambda v, s: v >= 0.5, "≥ 0.5", "", "{:.2f}"),
    ("mixed", "mixed + replica killed, actions lost", "lost", lambda v, s: v == 0, "0", "", "{}"),
    ("mixed", "mixed + replica killed, actions run twice", "duplicates", lambda v, s: v == 0, "0", "", "{}"),
]


#: rows whose failed check breaks an invariant (status INVARIANT BROKEN, not "missed")
INVARIANT_PATHS = {"per_fid.created.max", "per_fid.dispatched.max"}


def _mib(v: int | None) -> str:
    return "?" if v is None else f"{v / 2**20:,.0f} MiB"


def _value_text(section: str, path: str, fmt: str, data: dict[str, Any]) -> str:
    v = _get(data, path)
    if v is None:
        return "n/a"
    if path == "p50_start_ms":
        return f"{v} / {data.get('p99_start_ms')} ms"
    if path == "p50_done_ms":
        return f"{v} / {data.get('p99_done_ms')} ms"
    if path == "peak_rss":
        return ", ".join(f"{k} {_mib(x)}" for k, x in sorted(v.items()))
    if section in STORM_LABEL and path == "dispatched":
        return f"{v:,} for {data['fids']:,} FIDs ({data.get('run_twice', 0)} run twice)"
    if path in INVARIANT_PATHS:
        d = _get(data, path.rsplit(".", 1)[0])
        return f"{v} / {d.get('mean')} ({d.get('over_1', 0):,} of {data['per_fid'].get('fids', 0):,} FIDs above 1)"
    if section == "queue_depth":
        return f"{v:.2f} ({data['rate_1m']:,.0f}/s at {data['large']:,} vs {data['rate_1k']:,.0f}/s at {data['small']:,})"
    if section == "replication":
        return f"{v:.2f} ({data['rate_3']:,.0f}/s vs {data['rate_1']:,.0f}/s)"
    return fmt.format(v)


def _size(section: str, data: dict[str, Any]) -> str:
    if section == "archive_flood":
        return f"{data['actions']:,} archives, {data['clients']} clients"
    if section in STORM_LABEL:
        return f"{data['fids']:,} FIDs x {data['initiators']}"
    if section == "queue_depth":
        return f"{data['small']:,} vs {data['large']:,} waiting"
    if section == "memory":
        return f"{data['waiting']:,} waiting"
    if section == "replication":
        return f"{data['actions']:,} archives"
    if section == "mixed":
        return f"{data['acknowledged_actions']:,} actions, {data.get('killed') or 'no'} killed"
    return ""


def _cluster_text(section: str, data: dict[str, Any]) -> str:
    if section == "replication":
        one = data.get("run_1") or {}
        return f"1 vs 3 x{one.get('shards', '?')}"
    c = data.get("cluster")
    if not isinstance(c, dict):
        return ""
    return f"{c['replicas']}x{c['shards']}"


def markdown(latest: dict[str, Any]) -> str:
    m = latest.get("machine", {})
    lines = [
        "# hsm-coordinator benchmark: latest figures",
        "",
        f"Machine: {m.get('cores')} cores ({m.get('cpu', '?')}), "
        f"{(m.get('memory_bytes') or 0) / 2**30:.0f} GiB, {m.get('os', '?')}, Python {m.get('python', '?')}; "
        + ", ".join(f"{k} {v}" for k, v in sorted(m.get("versions", {}).items()))
        + f"; commit {m.get('git_commit', '?')}{' (dirty)' if m.get('git_dirty') else ''}.",
        "",
        "Targets are for 3 replicas x 8 shards at the full sizes (`make bench-full`); quick mode "
        "(`make bench`) runs smaller sizes, shown in the size column. Agents use the `null` mover "
        "(actions complete at once; in the first restore storm each restore takes 1 s), so these figures "
        "measure the coordinator alone.",
        "",
        "| figure | measured | target | status | size (mode, commit) | cluster | in-kernel anchor |",
        "|---|---|---|---|---|---|---|",
    ]
    for section, label, path, check, target, anchor, fmt in TARGETS:
        data = latest.get(section)
        if not isinstance(data, dict):
            lines.append(f"| {label} | not run | {target or '—'} | {'not run' if check else '—'} |  |  | {anchor} |")
            continue
        v = _get(data, path)
        status = "—"
        if check is not None:
            broken = "**INVARIANT BROKEN**" if path in INVARIANT_PATHS else "**missed**"
            status = "n/a" if v is None else ("**met**" if check(v, data) else broken)
        mode = data.get("mode", "?")
        lines.append(f"| {label} | {_value_text(section, path, fmt, data)} | {target or '—'} | {status} | "
                     f"{_size(section, data)} ({mode}, {data.get('commit', '?')}) | {_cluster_text(section, data)} "
                     f"| {anchor} |")
    lines += [""]
    lines += invariant_lines(latest)
    lines += ["Details of every figure (timings, CPU seconds per process, outcomes, cluster options) are in "
              "`latest.json`; one file per run under `runs/`.", ""]
    lines += cpu_table(latest)
    for sec, label in STORM_LABEL.items():
        st = latest.get(sec)
        if not isinstance(st, dict):
            continue
        if st.get("note"):
            lines += [f"{label[0].upper()}{label[1:]}: {st['note']}", ""]
        if "fids_with_several_restores" in st:
            lines += [f"{label[0].upper()}{label[1:]}: {st['fids_with_several_restores']:,} of {st['fids']:,} FIDs "
                      f"got more than one RESTORE: {st.get('extra_restores_after_previous_ended', 0):,} extra "
                      "restores were created after the FID's earlier restore had ended (the initiator still saw the "
                      "file released; nothing live was left to join), "
                      f"{st.get('extra_restores_timestamps_overlap', 0):,} within one commit of it "
                      f"(timestamps overlap by at most {st.get('max_timestamp_overlap_ms')} ms).", ""]
    busy = []
    for name in SECTIONS:
        d = latest.get(name)
        cpu = d.get("cpu") if isinstance(d, dict) else None
        if isinstance(cpu, dict) and cpu.get("host_capacity_s"):
            share = cpu["other_s"] / cpu["host_capacity_s"]
            busy.append(f"{name} {100 * share:.0f}%")
    if busy:
        lines += ["Share of the host's CPU used by processes outside the benchmark during each measurement "
                  "(a busy host lowers the figures): " + ", ".join(busy) + ".", ""]
    rs = latest.get("mixed")
    if isinstance(rs, dict) and "requests_per_s_before" in rs:
        lines += [f"Mixed run: requests/s before the kill {rs.get('requests_per_s_before')}, after "
                  f"{rs.get('requests_per_s_after')}; mover runs/s before {rs.get('runs_per_s_before')}, after "
                  f"{rs.get('runs_per_s_after')}; longest pause in acknowledgements after the kill "
                  f"{rs.get('longest_ack_gap_after_kill_s')} s; replicas consistent: {rs.get('replicas_consistent')}.",
                  ""]
    return "\n".join(lines)


def invariant_lines(latest: dict[str, Any]) -> list[str]:
    """One loud line per broken per-FID invariant of the restore storms
    (bench.invariants), saying whether it failed the run."""
    breaks = invariants.all_per_fid_breaks(latest)
    if not breaks:
        return []
    return [f"- **INVARIANT BROKEN**: {b}; the run failed (exit 1)." for b in breaks] + [
        "", "One RESTORE and one dispatch per FID is what dedup promises: a second one moves the data twice, "
        "exactly like an action run twice.", ""]


def _us_cell(d: dict[str, Any] | None) -> str:
    if not d or not d.get("processes"):
        return "none"
    v = d.get("us_per_action")
    return f"{'n/a' if v is None else f'{v:,.0f}'} ({d['processes']})"


def _replicas_cell(pa: dict[str, Any]) -> str:
    out = []
    for rid, r in pa.get("replicas", {}).items():
        v = r.get("us_per_action")
        led = r.get("shards_led") or []
        out.append(f"{rid} {'n/a' if v is None else f'{v:,.0f}'} ({len(led)} led)")
    return ", ".join(out)


def _throughputs(latest: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(figure, measured, cpu_per_action) for every throughput figure with CPU figures."""
    out = []
    d = latest.get("archive_flood")
    if isinstance(d, dict):
        out.append(("archive flood, end to end", f"{d.get('actions_per_s', 0):,.0f} actions/s", d))
    for sec, label in STORM_LABEL.items():
        d = latest.get(sec)
        if isinstance(d, dict):
            out.append((f"{label}, requests accepted", f"{d.get('requests_per_s', 0):,.0f} requests/s", d))
    d = latest.get("queue_depth")
    if isinstance(d, dict) and isinstance(d.get("large_run"), dict):
        out.append((f"queue depth, dispatch from {d['large']:,} waiting", f"{d['large_run'].get('rate', 0):,.0f}/s",
                    d["large_run"]))
    d = latest.get("replication")
    if isinstance(d, dict) and isinstance(d.get("run_1"), dict):
        out.append(("replication, archive flood on 1 replica", f"{d['run_1'].get('actions_per_s', 0):,.0f} actions/s",
                    d["run_1"]))
    d = latest.get("mixed")
    if isinstance(d, dict):
        out.append(("mixed + replica killed, requests before / after the kill",
                    f"{d.get('requests_per_s_before')} / {d.get('requests_per_s_after')} requests/s", d))
    return [(a, b, x["cpu_per_action"]) for a, b, x in out if isinstance(x.get("cpu_per_action"), dict)]


def cpu_table(latest: dict[str, Any]) -> list[str]:
    """CPU µs per action by process class beside each throughput figure."""
    rows = _throughputs(latest)
    if not rows:
        return []
    lines = ["CPU per action, by process class, beside each throughput figure: CPU µs per action of all the "
             "processes of the class together (number of processes in brackets), from each process's own "
             "counters (/proc utime + stime; clients: their own getrusage) at the start and end of the measured "
             "phase. Classes: " + cpu.CLASSIFICATION + ". With 3 replicas x 8 shards every replica leads some "
             "shards, so the follower class is usually empty; see the per-replica column.", "",
             "| throughput figure | measured | per | leader | follower | agentd | client | total | harness "
             "| per replica (shards led) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, measured, pa in rows:
        c = pa.get("classes", {})
        total, harness = pa.get("total_us_per_action"), pa.get("harness_us_per_action")
        lines.append(f"| {label} | {measured} | {pa.get('unit')} ({pa.get('count', 0):,}) | "
                     + " | ".join(_us_cell(c.get(k)) for k in cpu.CLASSES)
                     + f" | {'n/a' if total is None else f'{total:,.0f}'} | "
                     f"{'n/a' if harness is None else f'{harness:,.0f}'} | {_replicas_cell(pa)} |")
    return lines + [""]


def save(section_results: dict[str, dict[str, Any]], machine: dict[str, Any], settings: dict[str, Any],
         results_dir: Path = RESULTS) -> tuple[Path, Path, list[Path]]:
    """Write one run file per section, merge into latest.json, render latest.md."""
    results_dir.mkdir(parents=True, exist_ok=True)
    runs = results_dir / "runs"
    runs.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    written = []
    for name, data in section_results.items():
        data.setdefault("mode", settings.get("mode"))
        data.setdefault("when", when)
        data.setdefault("commit", machine.get("git_commit", "") + ("+dirty" if machine.get("git_dirty") else ""))
        p = runs / f"{stamp}-{name}.json"
        p.write_text(json.dumps({"machine": machine, "settings": settings, name: data}, indent=1, default=str) + "\n")
        written.append(p)
    latest_path = results_dir / "latest.json"
    try:
        latest = json.loads(latest_path.read_text())
    except (OSError, ValueError):
        latest = {}
    latest["machine"] = machine
    latest["updated"] = when
    latest.update(section_results)
    latest_path.write_text(json.dumps(latest, indent=1, default=str) + "\n")
    md = results_dir / "latest.md"
    md.write_text(markdown(latest))
    return latest_path, md, written
