"""``python -m bench sealing``: what sealing the Raft messages costs.

Every message between the replicas of a shard is sealed by pysyncobj's
transport (``TcpConnection.send``: ``zlib.compress(pickle.dumps(message),
3)``, then ``encryptor.encrypt_at_time``; the receiver calls
``extract_timestamp`` and ``decrypt``). With ``raft.encrypt`` (the default)
the encryptor is Fernet (AES-128-CBC + HMAC-SHA256, base64) under a key
derived from the cluster password; with ``--no-encrypt`` it is
``coordinator.raft.encryptor._HmacSealer`` (authenticated, readable). There
is no setting without any seal: the password is mandatory (peers exchange
pickles). So "off" below means HMAC only.

Two measurements, in one run:

1. **The archive flood, sealing on and off** (same size, same cluster
   shape; the order alternates with ``--repeat``): actions/s and CPU µs per
   action per replica (bench.cpu), the outsiders' share of the host CPU
   during each.
2. **Seal + unseal, directly**, on the Raft entries the sealed flood wrote
   (read back from replica r1's journal: every shard's log), wrapped as
   pysyncobj 0.3.17 sends them. Per entry and per follower, the leader
   sends the AppendEntries that carries it (``appendEntriesUseBatch`` is
   off: sent as soon as it is added) and, when it applies the entry, an
   AppendEntries without entries that carries the new commit index
   (``needSendAppendEntries``); the follower answers each with a
   ``next_node_idx``. That is 4 messages per entry per follower, each
   sealed once and unsealed once (an upper bound: entries applied in the
   same tick share one commit message). Measured: µs per message for Fernet and for the HMAC sealer,
   and from them µs per Raft entry, per action and per action per replica,
   and bytes sealed per action. The idle cost (heartbeats: one empty
   AppendEntries per follower per shard every ``heartbeat`` s) apart. An
   AES-GCM sealer (``cryptography``'s AESGCM) is timed on the same
   messages as a reference for what a cheaper seal would cost; the product
   does not have one.

Whether it matters: the direct figure (Fernet minus HMAC, per action per
replica) as a share of a replica's CPU per action in the sealed flood;
:data:`MATTERS_AT` or more is "matters".

Results: ``sealing-latest.json`` / ``.md`` and ``runs/<time>-sealing.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.cluster import BenchCluster
from bench.stats import median1, outside_cpu_share
from bench.workloads import Settings

#: sizes of the floods when --actions is not given (full: 1M floods take minutes each; the cost
#: per action hardly depends on the size, the share of a replica's CPU somewhat does)
SIZES = {"quick": 20_000, "full": 200_000}
#: a share of a replica's CPU per action at or above this (percent) "matters"
MATTERS_AT = 5.0
#: at most this many Raft entries are timed (a uniform sample; the sums are scaled up)
MAX_TIMED = 20_000

SEALING_HELP = """\
What sealing the Raft messages costs, in one run: the archive flood with Raft encryption (Fernet)
on and off (--no-encrypt: HMAC only) at the same size, with CPU µs per action per replica, and a
direct measurement of seal + unseal per Raft entry and per action on the entries the flood wrote.
Sizes: --actions (default 20,000 quick, 200,000 full). Results: RESULTS/sealing-latest.json / .md
and RESULTS/runs/<time>-sealing.json. Exit 1 if a flood failed or an action ran twice.
"""


# ------------------------------------------------------------ the journal


def read_journal(data_dir: Path) -> dict[int, list[tuple[bytes, int, int]]]:
    """Every Raft entry still in the journals under *data_dir* (one
    replica's data dir: ``shard-<n>/journal-*.log``), per shard, in order."""
    import re

    from coordinator.raft.journal import _REC, _SEG_MAGIC

    out: dict[int, list[tuple[bytes, int, int]]] = {}
    for shard_dir in sorted(data_dir.glob("shard-*")):
        m = re.fullmatch(r"shard-(\d+)", shard_dir.name)
        if not m:
            continue
        entries: list[tuple[bytes, int, int]] = []
        for seg in sorted(shard_dir.glob("journal-*.log")):
            data = seg.read_bytes()
            if data[:len(_SEG_MAGIC)] != _SEG_MAGIC:
                continue
            off = len(_SEG_MAGIC)
            while off + _REC.size <= len(data):
                size, _crc, idx, term = _REC.unpack_from(data, off)
                end = off + _REC.size + size
                if end > len(data):
                    break
                entries.append((data[off + _REC.size:end], idx, term))
                off = end
        out[int(m.group(1))] = entries
    return out


def journal_summary(journal: Mapping[int, Sequence[tuple[bytes, int, int]]]) -> dict[str, Any]:
    """Entries kept and entries written (the last Raft index: the log starts
    at 1; a compacted log keeps only its tail), their bytes."""
    kept = sum(len(v) for v in journal.values())
    written = sum(v[-1][1] for v in journal.values() if v)
    nbytes = sum(len(e[0]) for v in journal.values() for e in v)
    compacted = any(v and v[0][1] > 2 for v in journal.values())
    return {"shards": len(journal), "entries_kept": kept, "entries_written": written,
            "entry_bytes_kept": nbytes, "mean_entry_bytes": round(nbytes / kept, 1) if kept else None,
            "compacted": compacted}


class JournalGrab:
    """archive_flood's ``profile`` hook: when the flood has drained (the
    cluster still up), read replica r1's journals."""

    def __init__(self, cluster: BenchCluster) -> None:
        self.cluster = cluster
        self.journal: dict[int, list[tuple[bytes, int, int]]] = {}

    def stop(self) -> None:
        rid = self.cluster.specs[0].id
        self.journal = read_journal(self.cluster.dir / "data" / rid)


# ------------------------------------------------------------ sealers and messages


class AesGcmSealer:
    """A reference, not in the product: AES-128-GCM with a random 96-bit
    nonce and the timestamp as associated data (the encryptor interface
    pysyncobj's transport calls)."""

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(key[:16])

    def encrypt_at_time(self, data: bytes, current_time: int) -> bytes:
        head = int(current_time).to_bytes(8, "big") + os.urandom(12)
        return head + self._aead.encrypt(head[8:], data, head[:8])

    def extract_timestamp(self, token: bytes) -> int:
        return int.from_bytes(token[:8], "big")

    def decrypt(self, token: bytes) -> bytes:
        return self._aead.decrypt(token[8:20], token[20:], token[:8])


def sealers(password: str = "bench-sealing", shard: int = 0) -> dict[str, Any]:
    """The two sealers a replica uses (coordinator.raft.shard._init_raft),
    under the same keys, and the AES-GCM reference."""
    from pysyncobj.encryptor import getEncryptor

    from coordinator.raft.encryptor import _derive_key, _HmacSealer

    key = _derive_key(password, shard)
    return {"fernet": getEncryptor(f"{password}\0hsm-coordinator shard {shard}"),
            "hmac": _HmacSealer(key), "aesgcm (reference)": AesGcmSealer(key)}


_RAND_KEY = os.urandom(32)


def wire(message: Mapping[str, Any]) -> bytes:
    """What pysyncobj's transport seals for *message* (sendRandKey set, as
    it is once a sealed connection is up)."""
    return zlib.compress(pickle.dumps((_RAND_KEY, dict(message))), 3)


def entry_messages(entry: tuple[bytes, int, int]) -> tuple[bytes, bytes]:
    """The AppendEntries that carries *entry* to a follower, and the
    follower's answer, as sealed on the wire (before sealing)."""
    payload, idx, term = entry
    ae = {"type": "append_entries", "term": term, "commit_index": idx - 1, "entries": [(payload, idx, term)],
          "prevLogIdx": idx - 1, "prevLogTerm": term}
    ack = {"type": "next_node_idx", "next_node_idx": idx + 1, "reset": False, "success": True}
    return wire(ae), wire(ack)


def heartbeat_messages(idx: int = 1000, term: int = 3) -> tuple[bytes, bytes]:
    ae = {"type": "append_entries", "term": term, "commit_index": idx, "entries": [], "prevLogIdx": idx,
          "prevLogTerm": term}
    ack = {"type": "next_node_idx", "next_node_idx": idx + 1, "reset": False, "success": True}
    return wire(ae), wire(ack)


def time_sealer(sealer: Any, blobs: Sequence[bytes], repeats: int = 3) -> dict[str, float]:
    """CPU seconds (this process) to seal every blob, and to unseal every
    token as pysyncobj does (extract_timestamp, then decrypt): the least
    of *repeats* runs; and the sealed bytes."""
    now = int(time.monotonic())
    best_seal = best_unseal = float("inf")
    sealed = 0
    for _ in range(max(1, repeats)):
        t0 = time.process_time()
        tokens = [sealer.encrypt_at_time(b, now) for b in blobs]
        t1 = time.process_time()
        for tok in tokens:
            sealer.extract_timestamp(tok)
            sealer.decrypt(tok)
        t2 = time.process_time()
        best_seal, best_unseal = min(best_seal, t1 - t0), min(best_unseal, t2 - t1)
        sealed = sum(len(t) for t in tokens)
    if tokens and sealer.decrypt(tokens[0]) != blobs[0]:
        raise RuntimeError(f"{type(sealer).__name__}: a sealed message does not unseal to itself")
    return {"seal_s": best_seal, "unseal_s": best_unseal, "plain_bytes": float(sum(len(b) for b in blobs)),
            "sealed_bytes": float(sealed)}


def time_framing(entries: Sequence[tuple[bytes, int, int]], repeats: int = 3) -> tuple[float, float]:
    """CPU seconds to frame every entry's AppendEntries and answer as
    pysyncobj does before sealing (pickle + zlib), and to unframe them
    (zlib + unpickle): the least of *repeats* runs. Not sealing: the same
    with either sealer, for scale."""
    best_out = best_in = float("inf")
    for _ in range(max(1, repeats)):
        t0 = time.process_time()
        blobs = [b for e in entries for b in entry_messages(e)]
        t1 = time.process_time()
        for b in blobs:
            pickle.loads(zlib.decompress(b))
        t2 = time.process_time()
        best_out, best_in = min(best_out, t1 - t0), min(best_in, t2 - t1)
    return best_out, best_in


def _sample(items: Sequence[Any], limit: int) -> list[Any]:
    if len(items) <= limit:
        return list(items)
    step = len(items) / limit
    return [items[int(k * step)] for k in range(limit)]


def micro(journal: Mapping[int, Sequence[tuple[bytes, int, int]]], actions: int, replicas: int, shards: int,
          heartbeat: float = 0.1, repeats: int = 3,
          sealer_set: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Seal + unseal of the flood's Raft entries, per message, per entry,
    per action and per action per replica, for each sealer.

    Per entry and per follower (F = replicas - 1): the AppendEntries that
    carries it, the one that carries its commit index (the shape of a
    heartbeat), and the follower's answer to each; every message sealed
    once and unsealed once. Entries written but no longer in the journal
    (compacted) count at the mean cost of those kept."""
    summary = journal_summary(journal)
    entries = [e for v in journal.values() for e in v]
    timed = _sample(entries, MAX_TIMED)
    msgs = [entry_messages(e) for e in timed]
    ae, acks = [m[0] for m in msgs], [m[1] for m in msgs]
    hb = heartbeat_messages()
    followers = max(0, replicas - 1)
    scale = summary["entries_written"] / len(timed) if timed else 0.0
    out: dict[str, Any] = {"journal": summary, "entries_timed": len(timed), "actions": actions,
                           "replicas": replicas, "followers_per_entry": followers, "shards": shards,
                           "messages_per_entry_per_follower": 4,
                           "heartbeat_s": heartbeat, "repeats": repeats, "sealers": {}}
    for name, sealer in (sealer_set or sealers()).items():
        a = time_sealer(sealer, ae, repeats)
        k = time_sealer(sealer, acks, repeats)
        h = time_sealer(sealer, list(hb) * 200, repeats)
        n = len(timed) or 1
        hb_pair_us = 1e6 * (h["seal_s"] + h["unseal_s"]) / 200  # one empty AppendEntries and its answer
        # the entry's AppendEntries and answer, plus its commit notice and answer, to each follower
        per_entry_us = followers * (1e6 * (a["seal_s"] + a["unseal_s"] + k["seal_s"] + k["unseal_s"]) / n
                                    + hb_pair_us)
        total_s = per_entry_us / 1e6 * len(timed) * scale
        per_action = 1e6 * total_s / actions if actions else None
        idle = shards * followers * hb_pair_us / heartbeat / replicas  # µs of CPU per second, per replica
        hb_bytes = (h["sealed_bytes"] / 200, h["plain_bytes"] / 200)
        out["sealers"][name] = {
            "seal_us_per_append_entries": round(1e6 * a["seal_s"] / n, 2),
            "unseal_us_per_append_entries": round(1e6 * a["unseal_s"] / n, 2),
            "seal_us_per_answer": round(1e6 * k["seal_s"] / n, 2),
            "unseal_us_per_answer": round(1e6 * k["unseal_s"] / n, 2),
            "us_per_entry_cluster": round(per_entry_us, 2),
            "us_per_action_cluster": None if per_action is None else round(per_action, 2),
            "us_per_action_per_replica": None if per_action is None else round(per_action / replicas, 2),
            "seal_us_per_commit_notice_and_answer": round(1e6 * h["seal_s"] / 200, 2),
            "unseal_us_per_commit_notice_and_answer": round(1e6 * h["unseal_s"] / 200, 2),
            "sealed_bytes_per_action": round(followers * (a["sealed_bytes"] + k["sealed_bytes"] + n * hb_bytes[0])
                                             * scale / actions, 1) if actions else None,
            "idle_us_per_s_per_replica": round(idle, 1),
        }
        out["plain_bytes_per_action"] = round(followers * (a["plain_bytes"] + k["plain_bytes"] + n * hb_bytes[1])
                                              * scale / actions, 1) if actions else None
        out["plain_bytes_per_append_entries"] = round(a["plain_bytes"] / n, 1)
    # for scale: pysyncobj's framing of the same messages (pickle + zlib and back), which no sealer changes
    f_out, f_in = time_framing(timed, repeats)
    f_entry = 1e6 * followers * (f_out + f_in) / (len(timed) or 1)
    f_action = f_entry * len(timed) * scale / actions if actions else None
    out["framing"] = {"us_per_entry_cluster": round(f_entry, 2),
                      "us_per_action_per_replica": None if f_action is None else round(f_action / replicas, 2)}
    return out


# ------------------------------------------------------------ the floods


def _replica_us(d: Mapping[str, Any]) -> float | None:
    reps = (d.get("cpu_per_action") or {}).get("replicas") or {}
    v = [r["us_per_action"] for r in reps.values() if r.get("us_per_action") is not None]
    return round(sum(v) / len(v), 1) if v else None


def flood_figures(d: Mapping[str, Any]) -> dict[str, Any]:
    c = (d.get("cpu_per_action") or {}).get("classes") or {}
    return {"actions_per_s": d.get("actions_per_s"), "replica_us_per_action": _replica_us(d),
            "agentd_us_per_action": (c.get("agentd") or {}).get("us_per_action_per_process"),
            "client_us_per_action": (c.get("client") or {}).get("us_per_action"),
            "total_us_per_action": (d.get("cpu_per_action") or {}).get("total_us_per_action"),
            "outsiders_cpu_share_pct": outside_cpu_share(d), "run_twice": d.get("run_twice", 0),
            "seconds": d.get("seconds")}


def verdict(micro_fig: Mapping[str, Any], on: Mapping[str, Any], off: Mapping[str, Any]) -> dict[str, Any]:
    """The cost of Fernet beyond HMAC, directly and in the floods, and
    whether it matters (MATTERS_AT % of a replica's CPU per action)."""
    s = micro_fig.get("sealers", {})
    f = (s.get("fernet") or {}).get("us_per_action_per_replica")
    h = (s.get("hmac") or {}).get("us_per_action_per_replica")
    extra = round(f - h, 2) if f is not None and h is not None else None
    rep_on = on.get("replica_us_per_action")
    share = round(100.0 * extra / rep_on, 1) if extra is not None and rep_on else None
    share_all = round(100.0 * f / rep_on, 1) if f is not None and rep_on else None
    r_on, r_off = on.get("actions_per_s"), off.get("actions_per_s")
    rep_off = off.get("replica_us_per_action")
    return {"fernet_minus_hmac_us_per_action_per_replica": extra,
            "fernet_us_per_action_per_replica": f, "hmac_us_per_action_per_replica": h,
            "share_of_replica_cpu_pct": share, "fernet_share_of_replica_cpu_pct": share_all,
            "flood_rate_on_over_off": round(r_on / r_off, 3) if r_on and r_off else None,
            "flood_replica_us_on_minus_off": round(rep_on - rep_off, 1) if rep_on is not None and rep_off is not None
            else None,
            "matters_at_pct": MATTERS_AT, "matters": None if share is None else share >= MATTERS_AT}


def sealing(args: argparse.Namespace, s: Settings, say: Callable[[str], None]) -> int:
    from bench import workloads as w
    from bench.compare import save
    from bench.machine import machine

    n = args.actions if getattr(args, "actions", None) else SIZES.get(s.mode, SIZES["quick"])
    repeat = max(1, int(getattr(args, "repeat", 1) or 1))
    mach = machine()
    t0 = time.monotonic()
    say(f"== sealing ({s.mode}): archive flood of {n:,} with Raft sealing on (Fernet) and off (HMAC only), "
        f"{repeat} pair(s); then seal + unseal of its Raft entries")
    runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    failures: dict[str, str] = {}
    journal: dict[int, list[tuple[bytes, int, int]]] = {}
    timeline = []
    for rnd in range(repeat):
        for flag in (("on", "off") if rnd % 2 == 0 else ("off", "on")):
            grab: list[JournalGrab] = []

            def hook(c: BenchCluster, _g: Any, grab: list[JournalGrab] = grab) -> JournalGrab:
                grab.append(JournalGrab(c))
                return grab[-1]

            say(f"== archive flood, sealing {flag} ({'Fernet' if flag == 'on' else 'HMAC only, --no-encrypt'})")
            t1 = time.monotonic()
            try:
                d = w.archive_flood(dataclasses.replace(s, encrypt=flag == "on"), actions=n, profile=hook)
            except KeyboardInterrupt:
                say("!! interrupted")
                return 130
            except Exception as exc:  # noqa: BLE001 - reported, the other flood goes on
                failures[f"{flag} (round {rnd + 1})"] = f"{type(exc).__name__}: {exc}"
                say(f"!! flood with sealing {flag} failed: {exc}")
                continue
            finally:
                timeline.append({"sealing": flag, "round": rnd + 1, "seconds": round(time.monotonic() - t1, 1)})
            runs[flag].append(d)
            if flag == "on" and not journal and grab and grab[0].journal:
                journal = grab[0].journal
    if not journal:  # no sealed flood: the unsealed one's entries are the same commands
        say("   (no journal from a sealed flood; timing the entries of the other)")
    mfig: dict[str, Any] = {}
    if journal:
        say(f"   timing seal + unseal of {sum(len(v) for v in journal.values()):,} Raft entries")
        mfig = micro(journal, n, s.replicas, s.shards)
    on = {k: median1(flood_figures(d)[k] for d in runs["on"]) for k in flood_figures({})}
    off = {k: median1(flood_figures(d)[k] for d in runs["off"]) for k in flood_figures({})}
    v = verdict(mfig, on, off) if mfig else {}
    broken = [f"sealing {flag}: {d['run_twice']} actions ran twice" for flag in runs for d in runs[flag]
              if d.get("run_twice")]
    out = {"kind": "sealing", "mode": s.mode, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "wall_seconds": round(time.monotonic() - t0, 1), "machine": mach, "actions": n, "rounds": repeat,
           "cluster": {"replicas": s.replicas, "shards": s.shards, "agents": s.agents, "fsync": s.fsync},
           "flood": {"on": on, "off": off}, "micro": mfig, "verdict": v, "timeline": timeline,
           "failures": failures, "invariant_breaks": broken, "floods": runs}
    md = markdown(out)
    if not args.no_save:
        paths = save(out, md, args.results, name="sealing")
        say(f"   results: {', '.join(str(p) for p in paths)}")
    say(md)
    return 1 if failures or broken else 0


# ------------------------------------------------------------ output


def _f(v: Any, fmt: str = "{:,.1f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def markdown(out: Mapping[str, Any]) -> str:
    m = out.get("machine", {})
    on, off = out["flood"]["on"], out["flood"]["off"]
    v = out.get("verdict") or {}
    mf = out.get("micro") or {}
    lines = [
        "# hsm-coordinator benchmark: the cost of sealing Raft messages",
        "",
        f"{out['when']}, {out['mode']} mode, {out['wall_seconds']:,.0f} s; {m.get('cores')} cores "
        f"({m.get('cpu', '?')}), Python {m.get('python', '?')}, cryptography "
        f"{m.get('versions', {}).get('cryptography', '?')}, commit {m.get('git_commit', '?')}"
        f"{' (dirty)' if m.get('git_dirty') else ''}. Cluster {out['cluster']['replicas']} replicas x "
        f"{out['cluster']['shards']} shards. Sealing on: Fernet (the default, `raft.encrypt`); off: "
        "`--no-encrypt`, messages still authenticated with HMAC-SHA256 (there is no unsealed setting).",
        "",
        f"## Archive flood of {out['actions']:,}, sealing on and off ({out['rounds']} pair(s), medians)",
        "",
        "| figure | sealing on (Fernet) | off (HMAC only) | on / off |",
        "|---|---|---|---|",
    ]
    for key, label in (("actions_per_s", "actions/s end to end"),
                       ("replica_us_per_action", "CPU µs per action, per replica (mean)"),
                       ("agentd_us_per_action", "CPU µs per action, per agentd"),
                       ("client_us_per_action", "CPU µs per action, clients together"),
                       ("total_us_per_action", "CPU µs per action, whole benchmark"),
                       ("outsiders_cpu_share_pct", "outsiders' share of the host CPU (%)")):
        a, b = on.get(key), off.get(key)
        r = f"{a / b:.3f}" if a is not None and b else "n/a"
        lines.append(f"| {label} | {_f(a)} | {_f(b)} | {r} |")
    lines += [""]
    if mf:
        j = mf["journal"]
        lines += [
            "## Seal + unseal, measured directly",
            "",
            f"On the {j['entries_kept']:,} Raft entries replica r1's journals kept after the sealed flood "
            f"({j['entries_written']:,} written over {j['shards']} shards, mean {_f(j['mean_entry_bytes'])} bytes; "
            f"{'compacted: the entries no longer kept count at the mean cost' if j['compacted'] else 'none compacted'}"
            f"; {mf['entries_timed']:,} timed), each wrapped as pysyncobj sends it (pickled and zlib-compressed: "
            f"{_f(mf.get('plain_bytes_per_append_entries'))} bytes per AppendEntries on average). Per entry, to each "
            f"of {mf['followers_per_entry']} followers: the AppendEntries that carries it, the one that carries its "
            "commit index, and an answer to each (4 messages, each sealed and unsealed once; an upper bound, "
            "entries that commit together share a commit notice). This process's CPU time, least of "
            f"{mf['repeats']} runs. Plain (compressed) bytes per action on the wire: "
            f"{_f(mf.get('plain_bytes_per_action'))}.",
            "",
            "| sealer | seal / unseal µs per AppendEntries | per answer | µs per entry (cluster) "
            "| µs per action (cluster) | µs per action per replica | sealed bytes per action "
            "| idle (heartbeats) µs per s per replica |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, x in mf["sealers"].items():
            lines.append(f"| {name} | {_f(x['seal_us_per_append_entries'], '{:.1f}')} / "
                         f"{_f(x['unseal_us_per_append_entries'], '{:.1f}')} | {_f(x['seal_us_per_answer'], '{:.1f}')}"
                         f" / {_f(x['unseal_us_per_answer'], '{:.1f}')} | {_f(x['us_per_entry_cluster'])} | "
                         f"{_f(x['us_per_action_cluster'], '{:.2f}')} | {_f(x['us_per_action_per_replica'], '{:.2f}')}"
                         f" | {_f(x['sealed_bytes_per_action'])} | {_f(x['idle_us_per_s_per_replica'], '{:,.0f}')} |")
        fr = mf.get("framing") or {}
        lines += ["", "AES-GCM is a reference for what a cheaper seal would cost; the product has no such sealer. "
                  "For scale, pysyncobj's framing of the entries' AppendEntries and answers (pickle + zlib, and back; "
                  "not sealing, the same with any sealer): "
                  f"{_f(fr.get('us_per_entry_cluster'))} µs per entry (cluster), "
                  f"{_f(fr.get('us_per_action_per_replica'), '{:.2f}')} µs per action per replica.", ""]
    if v:
        matters = v.get("matters")
        lines += [
            "## Does it matter?",
            "",
            f"Fernet costs {_f(v.get('fernet_us_per_action_per_replica'), '{:.2f}')} µs per action per replica "
            f"({_f(v.get('fernet_share_of_replica_cpu_pct'))} % of a replica's "
            f"{_f(on.get('replica_us_per_action'))} µs per action in the sealed flood); HMAC only "
            f"{_f(v.get('hmac_us_per_action_per_replica'), '{:.2f}')} µs. Turning encryption off saves "
            f"{_f(v.get('fernet_minus_hmac_us_per_action_per_replica'), '{:.2f}')} µs per action per replica, "
            f"{_f(v.get('share_of_replica_cpu_pct'))} % of a replica's CPU per action. In the floods: rate on / off "
            f"{_f(v.get('flood_rate_on_over_off'), '{:.3f}')}, replica CPU per action on minus off "
            f"{_f(v.get('flood_replica_us_on_minus_off'))} µs (run-to-run noise on a shared host is several µs "
            "and several % of the rate: the direct figure is the precise one).",
            "",
            f"Rule: it matters at {v.get('matters_at_pct')} % of a replica's CPU per action or more: "
            + ("**it matters**." if matters else "it does not matter." if matters is not None else "undecided."),
            "",
        ]
    if out.get("failures") or out.get("invariant_breaks"):
        lines += ["**Failures:** " + "; ".join([*[f"{k}: {x}" for k, x in out.get("failures", {}).items()],
                                                 *out.get("invariant_breaks", [])]), ""]
    lines += ["Every flood's full results are in `sealing-latest.json`; one file per run under `runs/`.", ""]
    return "\n".join(lines)
