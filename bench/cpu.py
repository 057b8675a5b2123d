"""CPU per action, by process class (pure functions, no cluster).

``bench.cluster.CpuWindow`` reads each process's own counters (utime +
stime from ``/proc/<pid>/stat``) when a measured phase starts and when it
ends, and polls the shard leaders meanwhile; the functions here turn those
samples into CPU microseconds per action for each class of process:

* **leader**: a replica that led at least one shard at some poll of the
  phase; **follower**: a replica that led none. With several shards per
  replica (3 x 8: shards spread over every replica) each replica leads some
  shards and follows the others, so every replica is a "leader" and the
  follower class is empty; the shards each replica led are reported per
  replica, with its own figure (``--shards 1`` gives one pure leader and
  pure followers).
* **agentd**: the agentd processes (``bench.agent_shim``, null mover).
* **client**: the benchmark's client processes (one process per client,
  separate from the harness); each measures its own CPU (``getrusage``)
  from the common start signal to the end of its requests and reports it.
  The harness process (this one: it polls for the drain and the leaders) is
  reported apart, as ``harness``.

A class's figure is the CPU of all its processes together divided by the
actions of the phase (the classes add up to the whole cost of an action);
``us_per_action_per_process`` divides that by the number of processes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

CLASSES = ("leader", "follower", "agentd", "client")

CLASSIFICATION = ("a replica is a leader if it led at least one shard at any poll of the phase (ClusterInfo "
                  "every 0.5 s, plus at the start and the end), else a follower; per replica: the shards it led "
                  "and its own figure; client = the client processes' own CPU (getrusage), the harness apart")


def deltas(before: Mapping[str, float], after: Mapping[str, float],
           last_seen: Mapping[str, float] | None = None) -> dict[str, float]:
    """CPU seconds each process used between two samples. A process gone by
    the second sample (killed) counts up to its last sample in *last_seen*
    (if any); a process absent from *before* (started meanwhile) is left out."""
    out = {}
    for name, t0 in before.items():
        t1 = after.get(name)
        if t1 is None and last_seen is not None:
            t1 = last_seen.get(name)
        if t1 is None:
            continue
        out[name] = round(max(0.0, t1 - t0), 3)
    return out


def classify_replicas(replicas: Iterable[str], led: Mapping[str, Iterable[int]]) -> dict[str, str]:
    """``leader`` for each replica that led at least one shard, else ``follower``."""
    return {rid: "leader" if any(True for _ in led.get(rid, ())) else "follower" for rid in replicas}


def _us(seconds: float, count: int) -> float | None:
    return round(seconds * 1e6 / count, 1) if count > 0 else None


def per_action(cpu: Mapping[str, Any], count: int, unit: str) -> dict[str, Any]:
    """CPU µs per action for each class, from a ``CpuWindow.stop()`` result.

    Reads ``processes_s`` (name -> CPU s), ``replica_class`` (replica ->
    leader / follower), ``shards_led``, ``mean_shards_led``, ``agents``
    (agentd names), ``clients_s`` / ``clients_n`` and ``harness_s``."""
    procs: Mapping[str, float] = cpu.get("processes_s", {})
    roles: Mapping[str, str] = cpu.get("replica_class", {})
    agents = set(cpu.get("agents", ()))
    members: dict[str, list[str]] = {c: [] for c in CLASSES}
    seconds: dict[str, float] = dict.fromkeys(CLASSES, 0.0)
    for name, s in procs.items():
        cls = roles.get(name) or ("agentd" if name in agents else None)
        if cls is None:
            continue
        members[cls].append(name)
        seconds[cls] += s
    n_clients = int(cpu.get("clients_n", 0))
    seconds["client"] = float(cpu.get("clients_s", 0.0))
    classes = {}
    for c in CLASSES:
        n = n_clients if c == "client" else len(members[c])
        us = _us(seconds[c], count) if n else None
        classes[c] = {"processes": n, "names": sorted(members[c]), "cpu_s": round(seconds[c], 3),
                      "us_per_action": us,
                      "us_per_action_per_process": round(us / n, 1) if us is not None and n else None}
    led = cpu.get("shards_led", {})
    mean_led = cpu.get("mean_shards_led", {})
    replicas = {rid: {"class": role, "shards_led": list(led.get(rid, [])), "mean_shards_led": mean_led.get(rid),
                      "cpu_s": procs.get(rid), "us_per_action": _us(procs.get(rid) or 0.0, count)
                      if rid in procs else None}
                for rid, role in sorted(roles.items())}
    total = sum(seconds.values())
    return {"unit": unit, "count": count, "classes": classes, "replicas": replicas,
            "total_us_per_action": _us(total, count),
            "harness_us_per_action": _us(float(cpu.get("harness_s", 0.0)), count),
            "classification": CLASSIFICATION}
