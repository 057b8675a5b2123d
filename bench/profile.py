"""``python -m bench profile``: the archive flood with py-spy attached.

py-spy (a sampling profiler that reads the target's memory from outside;
needs ptrace rights, e.g. root) records, while the flood runs:

* every replica (with 3 replicas x 8 shards each replica leads some shards
  and follows the others; ``--shards 1`` gives one pure leader, r1, and pure
  followers),
* one agentd (``agent1``),
* one client process.

Samples are taken with ``--nonblocking`` (the target is not paused) and
without ``--idle`` (threads blocked in a system call or waiting for the GIL
are not counted), so percentages are shares of the time a process spent
running Python. Raw profiles (collapsed stacks, one ``frame;frame;... N``
line per stack, the first frame being the thread) and speedscope files go to
``RESULTS/profiles/``; ``<tag>-summary.md`` lists, per process, the
functions with the most samples on top of the stack (self) and on the stack
at all (total), and the share of each thread.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import workloads as w
from bench.clients import ClientGroup
from bench.cluster import BenchCluster, cpu_seconds
from bench.machine import machine


def py_spy() -> str:
    exe = Path(sys.executable).with_name("py-spy")
    if exe.exists():
        return str(exe)
    found = shutil.which("py-spy")
    if not found:
        raise RuntimeError("py-spy is not installed: make bench installs it (pip install -e '.[bench]')")
    return found


#: two recordings per process: "gil" samples only the thread holding the GIL
#: (where the Python CPU goes; its sample count / (rate x seconds) is the
#: share of time the GIL was held), "wall" samples every thread py-spy sees
#: as active, which includes threads blocked in system calls such as
#: poll() and fdatasync() (where the time goes)
MODES = {"gil": ["--gil"], "wall": []}


class Recorder:
    """One ``py-spy record`` per target process; stop() ends them (SIGINT:
    py-spy writes its output and exits)."""

    def __init__(self, targets: dict[str, int], outdir: Path, tag: str, rate: int) -> None:
        self.targets = targets
        self.outdir = outdir
        self.tag = tag
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.files: dict[str, Path] = {}
        self.cpu0 = {name: cpu_seconds(pid) for name, pid in targets.items()}
        self.cpu: dict[str, float] = {}
        self.t0 = time.time()
        self.seconds = 0.0
        self.rate = rate
        exe = py_spy()
        for name, pid in targets.items():
            for mode, flags in MODES.items():
                key = f"{name}.{mode}"
                f = outdir / f"{tag}-{name}-{mode}.txt"
                self.files[key] = f
                with open(outdir / f"{tag}-{name}-{mode}.log", "wb") as err:
                    self.procs[key] = subprocess.Popen(
                        [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--threads",
                         "--nonblocking", *flags, "--output", str(f)],
                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)

    def stop(self) -> None:
        self.seconds = time.time() - self.t0
        for name, pid in self.targets.items():
            now = cpu_seconds(pid)
            self.cpu[name] = round(now - self.cpu0[name], 2) if now else None  # None: exited (a client)
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in self.procs.values():
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    """``func (path/to/module.py:123)`` -> ``module.py:func``; the thread
    root frame is kept as is."""
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m.group("file")
    parts = Path(path).parts
    for anchor in ("site-packages", "coordinator", "agentd", "hsm", "bench", "lib"):
        if anchor in parts:
            i = len(parts) - 1 - parts[::-1].index(anchor)
            path = "/".join(parts[i + (1 if anchor in ("site-packages", "lib") else 0):])
            break
    else:
        path = parts[-1] if parts else path
    return f"{path}:{m.group('func')}"


def parse_raw(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    try:
        text = path.read_text()
    except OSError:
        return []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stacks.append((stack.split(";"), int(count)))
    return stacks


def _thread_name(frame: str) -> str:
    """'thread (8319): raft-apply-7' -> 'raft-apply' (threads of a kind together)."""
    name = frame.split("): ", 1)[1] if "): " in frame else frame
    m = re.search(r"\((\w+)\)$", name)  # 'Thread-1 (_poll_wrapper)' -> '_poll_wrapper'
    if m:
        name = m.group(1)
    return re.sub(r"[-_ ]?\d+$", "", name) or name


def summarize(stacks: list[tuple[list[str], int]], top: int = 15) -> dict[str, Any]:
    total = sum(n for _, n in stacks)
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for frames, n in stacks:
        if not frames:
            continue
        py = frames
        if frames[0].startswith(("thread", "process")):
            threads[_thread_name(frames[0])] += n
            py = [f for f in frames[1:] if not f.startswith(("thread", "process"))]
        if not py:
            continue
        self_c[_short(py[-1])] += n
        for f in {_short(f) for f in py}:
            incl[f] += n

    def pct(c: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in c.most_common(top)] if total else []

    return {"samples": total, "self": pct(self_c), "total": pct(incl), "threads": pct(threads)}


def speedscope(stacks: list[tuple[list[str], int]], name: str) -> dict[str, Any]:
    frames: dict[str, int] = {}
    samples, weights = [], []
    for fs, n in stacks:
        samples.append([frames.setdefault(_short(f), len(frames)) for f in fs])
        weights.append(n)
    return {"$schema": "https://www.speedscope.app/file-format-schema.json", "name": name,
            "shared": {"frames": [{"name": f} for f in frames]},
            "profiles": [{"type": "sampled", "name": name, "unit": "none", "startValue": 0,
                          "endValue": sum(weights), "samples": samples, "weights": weights}]}


def profile(args: argparse.Namespace, s: w.Settings, say: Callable[[str], None]) -> int:
    s.say = say
    if args.actions is None:
        s.flood_actions = 30_000
    if args.policy:
        from bench.policy import AGENT_GRACE, routing_tags, rules_yaml

        s = dataclasses.replace(s, item_facts=True, policy=args.policy == "on", policy_text=rules_yaml(),
                                agent_tags=",".join(routing_tags()), agent_grace=AGENT_GRACE)
    outdir: Path = args.results / "profiles"
    outdir.mkdir(parents=True, exist_ok=True)
    tag = args.tag or (f"flood-{s.replicas}x{s.shards}-{s.flood_actions // 1000}k"
                       + (f"-policy-{args.policy}" if args.policy else ""))
    holder: dict[str, Any] = {}

    def attach(c: BenchCluster, g: ClientGroup) -> Recorder:
        targets = dict(c.pids())
        agents = c.agent_pids()
        if agents:
            first = sorted(agents)[0]
            targets[first] = agents[first]
        if g.pids:
            targets["client0"] = g.pids[0]
        holder["leaders"] = c.leaders()
        rec = Recorder(targets, outdir, tag, args.rate)
        holder["rec"] = rec
        say(f"   py-spy attached to {', '.join(f'{k} (pid {v})' for k, v in targets.items())}")
        return rec

    say(f"== profile: archive flood of {s.flood_actions:,} on {s.replicas} replicas x {s.shards} shards")
    result = w.archive_flood(s, profile=attach)
    rec: Recorder = holder["rec"]
    leaders = holder.get("leaders", {})
    led: dict[str, list[int]] = {}
    for shard, rid in sorted(leaders.items()):
        led.setdefault(rid, []).append(shard)
    summary: dict[str, Any] = {"tag": tag, "machine": machine(), "flood": result, "seconds": round(rec.seconds, 1),
                               "rate": rec.rate, "leaders": led, "processes": {}}
    for name in rec.targets:
        entry: dict[str, Any] = {"cpu_s": rec.cpu.get(name)}
        for mode in MODES:
            stacks = parse_raw(rec.files[f"{name}.{mode}"])
            (outdir / f"{tag}-{name}-{mode}.speedscope.json").write_text(
                json.dumps(speedscope(stacks, f"{tag} {name} {mode}")))
            entry[mode] = summarize(stacks)
        gil = entry["gil"]["samples"]
        entry["gil_held_pct"] = round(100 * gil / (rec.rate * rec.seconds), 1) if rec.seconds else None
        summary["processes"][name] = entry
    (outdir / f"{tag}-summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    md = summary_markdown(summary)
    (outdir / f"{tag}-summary.md").write_text(md)
    say(md)
    return 0


def _table(p: dict[str, Any]) -> list[str]:
    lines = ["| self % | function | | total % | function |", "|---:|---|---|---:|---|"]
    for i in range(max(len(p["self"]), len(p["total"]))):
        a = p["self"][i] if i < len(p["self"]) else ("", "")
        b = p["total"][i] if i < len(p["total"]) else ("", "")
        lines.append(f"| {a[1]} | `{a[0]}` | | {b[1]} | `{b[0]}` |")
    return lines


def summary_markdown(summary: dict[str, Any]) -> str:
    flood = summary["flood"]
    lines = [f"# Profile {summary['tag']}", "",
             f"Archive flood of {flood['actions']:,} on {flood['replicas']} replicas x {flood['shards']} shards: "
             f"{flood['actions_per_s']:,.0f} actions/s end to end, profiled for {summary['seconds']} s "
             f"(py-spy {summary['rate']} Hz, non-blocking). Host CPU during the flood: "
             f"{flood['cpu']['host_busy_s']} of {flood['cpu']['host_capacity_s']} core-seconds busy, "
             f"{flood['cpu']['other_s']} s by processes outside the benchmark.",
             f"Code: commit {summary['machine'].get('git_commit')}"
             + (" plus uncommitted changes in the work tree" if summary["machine"].get("git_dirty") else "")
             + "; line numbers in the raw profiles refer to the files as they were then.",
             "Shards led: " + "; ".join(f"{r}: {', '.join(map(str, s))}" for r, s in sorted(summary["leaders"].items()))
             + ".", "",
             "Per process: **GIL** = samples of the thread holding the GIL (Python CPU; self = the function on "
             "top of the stack, total = anywhere on it); **wall** = samples of every thread py-spy counts as "
             "active, which includes threads blocked in poll() or fdatasync().", ""]
    for name, p in summary["processes"].items():
        role = ""
        if name in summary["leaders"]:
            role = f" (leads shards {', '.join(map(str, summary['leaders'][name]))}, follows the others)"
        elif name.startswith("r"):
            role = " (follower of every shard)"
        lines += [f"## {name}{role}", "",
                  f"{p['cpu_s']} CPU s during the run; GIL held {p['gil_held_pct']}% of the time "
                  f"({p['gil']['samples']:,} samples).", "",
                  "GIL samples per thread: " + ", ".join(f"{t} {v}%" for t, v in p["gil"]["threads"]), "",
                  *_table(p["gil"]), "",
                  "Wall samples per thread: " + ", ".join(f"{t} {v}%" for t, v in p["wall"]["threads"]), "",
                  *_table({"self": p["wall"]["self"][:10], "total": p["wall"]["total"][:0]}), ""]
    return "\n".join(lines)
