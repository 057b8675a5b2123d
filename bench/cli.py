"""``python -m bench``: run the benchmarks of issue 6."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import invariants, report
from bench.machine import machine
from bench.workloads import FULL, QUICK, Settings

DESCRIPTION = """\
Benchmarks of hsm-coordinator on a real local cluster: replica processes
(hsm-coordinator run), agentd processes with the null mover (every action
completes at once) and client processes driving the public client library.
Each workload starts its own cluster and stops every process it started.
Results: bench/results/runs/<time>-<workload>.json, merged into
bench/results/latest.json, and the table bench/results/latest.md.
"""

EPILOG = """\
workloads:
  all            every workload below, in order (make bench: --quick; make bench-full: --full)
  archive-flood  N unique archives from several clients through to done: actions/s end to end,
                 submit-to-start / submit-to-done p50 and p99, peak RSS per replica
  restore-storm  F released FIDs, each requested by 4 initiators at once, run twice: restores
                 of 1 s (every duplicate meets a live action) and restores that end at once
                 (late duplicates meet an ended one): actions dispatched (must equal F),
                 actions created and dispatched per FID (must be 1), requests/s, time to drain
  queue-depth    dispatch rate with a small (1k) and a large queue (agents held with control
                 disabled while the queue fills), and RSS per waiting action per replica
  replication    the archive flood on 1 replica and on 3: the ratio of their rates
  mixed          archives, restores, removes and cancels, one replica killed half-way: throughput
                 before/after, actions lost (must be 0), actions run twice (must be 0)
  profile        the archive flood under py-spy (replicas, an agentd, a client); see bench/profile.py
  compare        workloads on a baseline commit's code and on the working tree, in one run, with
                 the ratio of every figure (compare --help; bench/compare.py)
  catalog        the catalog's bytes per copy per replica (memory, snapshot) and listing times
                 (catalog --help; bench/catalog.py)
  packing        small files archived one object each, then packed into containers: objects per
                 file and the throughput ratio (packing --help; bench/packing.py)
  striping       one large file archived by 4 agents striped, against 1 agent (striping --help;
                 bench/striping.py)
  sealing        what sealing Raft messages (Fernet) costs: the flood with encryption on and off,
                 and seal + unseal per Raft entry and per action (sealing --help; bench/sealing.py)
  tls            what mutual TLS costs: the flood on a plain-text cluster and on one with TLS everywhere,
                 the ratio of their rates against the target 0.85 (tls --help; bench/tls.py)
  metrics        what the Prometheus exporters cost: the flood without exporters and with one on every
                 replica and agentd, scraped every 5 s; the ratio of their rates against the target 0.95
                 (metrics --help; bench/metrics.py)
  policy         what the policy costs: the flood (items with paths, sizes, uids) without rules and with
                 a 50-rule site policy, the ratio of their rates against the target 0.9; and fair share:
                 two users submitting at 10:1, Jain's index of their dispatch rates by user (target 0.95)
                 and by none; and tape order: restores of 20 volumes with volume/position hints and
                 without, volume switches policy / FIFO (target at most 0.1) (policy --help; bench/policy.py)
  scaleout       what a replica spends per action as the cluster grows: the flood on 3 replicas x 18 shards
                 (every replica holds all) and on 9 x 18 with replication 3 (each holds 6); CPU µs per action
                 per replica 9 / 3 against the target 0.4, at most (scaleout --help; bench/scaleout.py)
  split          8 -> 12 shards under the flood and a restore storm (3 replicas): 0 lost, 0 run twice,
                 one restore per file, per-file order, the split's duration (split --help; bench/split.py)
  move           a shard moved under the flood (4 replicas x 8 shards in groups of 3): 0 lost, 0 run twice,
                 the move's duration and the longest pause in that shard's acknowledgements (move --help;
                 bench/move.py)
  report         re-render latest.md from latest.json

exit status: 0 when every workload ran, whatever the figures (a missed performance
target is reported, not an error); 1 when a workload failed or broke an invariant
(an action lost or run twice on the movers, a FID restored by more than one action
or dispatched more than once, replicas that disagree).

CPU: every throughput figure comes with CPU microseconds per action for each class
of process (replica leader / follower, agentd, client), from the processes' own
counters at the start and end of the measured phase (see bench/cpu.py).

sizes (quick / full):
  --actions 20,000 / 1,000,000   --fids 10,000 / 100,000   --small 1,000 / 1,000
  --large 100,000 / 1,000,000     --replication-actions 10,000 / 1,000,000 (full: reuses the flood)
  --mixed-rounds 10 / 40 with --mixed-batch 500 / 1,000 archives per round per client

examples:
  python -m bench all --quick
  python -m bench archive-flood --actions 20000
  python -m bench restore-storm --fids 5000 --keep
  python -m bench profile --actions 30000
"""

SIZE_FLAGS = {
    "actions": "flood_actions", "fids": "restore_fids", "initiators": "restore_initiators",
    "restore_batch": "restore_batch", "small": "queue_small", "large": "queue_large", "rounds": "queue_rounds",
    "replication_actions": "replication_actions", "mixed_rounds": "mixed_rounds", "mixed_batch": "mixed_batch",
    "cancel_every": "mixed_cancel_every",
}
OTHER_FLAGS = ("replicas", "shards", "agents", "slots", "clients", "batch", "inflight", "samples", "log_level")


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("mode and cluster")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="small sizes, a few minutes in all (default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help="the sizes of issue 6")
    g.add_argument("--replicas", type=int, help="coordinator replicas (default 3)")
    g.add_argument("--shards", type=int, help="shards (default 8)")
    g.add_argument("--agents", type=int, help="agentd processes (default 2)")
    g.add_argument("--slots", help="agentd --slots (default archive=1024,restore=1024,remove=256)")
    g.add_argument("--no-fsync", dest="fsync", action="store_false", default=None,
                   help="Raft journal without fdatasync (not a production setting)")
    g.add_argument("--no-encrypt", dest="encrypt", action="store_false", default=None,
                   help="Raft traffic authenticated, not encrypted")
    g.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   help="log level of replicas and agents (default warning: per-action INFO lines cost CPU)")
    c = p.add_argument_group("clients")
    c.add_argument("--clients", type=int, help="client processes (default 4)")
    c.add_argument("--batch", type=int, help="items per Submit (default 1000)")
    c.add_argument("--inflight", type=int, help="batches in flight per client, one thread each (default 2)")
    c.add_argument("--samples", type=int, help="actions sampled for latencies (default 2000)")
    s = p.add_argument_group("sizes (defaults depend on --quick / --full)")
    s.add_argument("--actions", type=int, help="archive flood: archives")
    s.add_argument("--fids", type=int, help="restore storm: released FIDs")
    s.add_argument("--initiators", type=int, help="restore storm: initiators per FID (default 4)")
    s.add_argument("--restore-batch", type=int, help="restore storm: items per Submit (default 2000)")
    s.add_argument("--small", type=int, help="queue depth: the small queue")
    s.add_argument("--large", type=int, help="queue depth: the large queue")
    s.add_argument("--rounds", type=int, help="queue depth: rounds of the small queue (median; default 3)")
    s.add_argument("--replication-actions", type=int, help="replication: archives per flood")
    s.add_argument("--mixed-rounds", type=int, help="mixed: rounds per client")
    s.add_argument("--mixed-batch", type=int, help="mixed: archives per round per client")
    s.add_argument("--cancel-every", type=int, help="mixed: cancel 1 archive in N (default 10)")
    o = p.add_argument_group("output")
    o.add_argument("--workdir", type=Path, help="where cluster directories go (default: the system temp dir)")
    o.add_argument("--keep", action="store_true", help="keep each cluster's directory (logs, Raft data)")
    o.add_argument("--results", type=Path, default=report.RESULTS, help="results directory (default bench/results)")
    o.add_argument("--no-save", action="store_true", help="print the figures, write no result files")
    return p


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    p = argparse.ArgumentParser(prog="python -m bench", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="workload", required=True, metavar="WORKLOAD")
    for name, text in (("all", "every workload"), ("archive-flood", "archive flood"),
                       ("restore-storm", "restore storm"), ("queue-depth", "queue depth and memory"),
                       ("replication", "1 replica versus 3"), ("mixed", "mixed workload, one replica killed")):
        sub.add_parser(name, parents=[common], help=text, description=text)
    prof = sub.add_parser("profile", parents=[common], help="archive flood under py-spy",
                          description="Run the archive flood with py-spy recording replicas, an agentd and a "
                                      "client; raw profiles and a summary under RESULTS/profiles/.")
    prof.add_argument("--rate", type=int, default=100, help="py-spy samples per second (default 100)")
    prof.add_argument("--tag", default="", help="name of this profile run (default: the cluster shape)")
    prof.add_argument("--policy", choices=("on", "off"), default="",
                      help="the flood of `bench policy`'s cost part: items with paths, sizes and uids, agents "
                           "serving its routing tags, and its 50-rule site policy (on) or none (off)")
    sub.add_parser("report", parents=[common], help="re-render latest.md from latest.json")
    from bench import compare, sealing
    from bench import metrics as metricsmod
    from bench import policy as policymod
    from bench import tls as tlsmod

    cmp = sub.add_parser("compare", parents=[common], help="baseline code versus the working tree, in one run",
                         description=compare.COMPARE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmp.add_argument("--baseline", default=compare.DEFAULT_BASELINE, metavar="REV",
                     help=f"the baseline commit (default {compare.DEFAULT_BASELINE}, the README's figures)")
    cmp.add_argument("--workloads", metavar="LIST",
                     help="comma-separated, of " + ", ".join(compare.WORKLOADS)
                          + " (or all); default " + ",".join(compare.DEFAULT_WORKLOADS))
    cmp.add_argument("--repeat", type=int, default=1, metavar="N",
                     help="rounds; the side that goes first alternates, figures are medians (default 1)")
    seal = sub.add_parser("sealing", parents=[common], help="the cost of sealing Raft messages (Fernet)",
                          description=sealing.SEALING_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    seal.add_argument("--repeat", type=int, default=1, metavar="N",
                      help="pairs of floods (on/off, then off/on, ...); figures are medians (default 1)")
    tls = sub.add_parser("tls", parents=[common], help="the cost of mutual TLS: the flood with TLS off and on",
                         description=tlsmod.TLS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    tls.add_argument("--repeat", type=int, default=1, metavar="N",
                     help="rounds of two floods (off/on, then on/off, ...); figures are medians (default 1)")
    met = sub.add_parser("metrics", parents=[common],
                         help="the cost of the Prometheus exporters: the flood with them off and on",
                         description=metricsmod.METRICS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    met.add_argument("--repeat", type=int, default=1, metavar="N",
                     help="rounds of two floods (off/on, then on/off, ...); figures are medians (default 1)")
    met.add_argument("--scrape-interval", type=float, default=metricsmod.SCRAPE_INTERVAL, metavar="SECONDS",
                     help="seconds between two scrapes of every exporter while a flood with exporters runs "
                          f"(default {metricsmod.SCRAPE_INTERVAL:g}; Prometheus usually scrapes every 15-30 s)")
    pol = sub.add_parser("policy", parents=[common],
                         help="the cost of a 50-rule policy on the flood, fair share between two users, tape restore order",
                         description=policymod.POLICY_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    pol.add_argument("--repeat", type=int, default=1, metavar="N",
                     help="rounds of two floods (off/on, then on/off, ...) and of two fairness runs (by none / by "
                          "user, alternating); figures are medians (default 1)")
    pol.add_argument("--parts", metavar="LIST", help="comma-separated, of " + ", ".join(policymod.PARTS)
                     + " (default all)")
    pol.add_argument("--fair-seconds", type=float, metavar="SECONDS",
                     help="fairness: seconds of submission per run (default "
                          + " / ".join(f"{v:g}" for v in policymod.FAIR_SECONDS.values()) + " quick / full)")
    pol.add_argument("--fair-rate", type=float, metavar="ITEMS",
                     help="fairness: archives submitted per second, both users together (default: the second "
                          f"user submits {policymod.FAIR_OVERLOAD:g} x its fair half of what the agents drain: "
                          f"{policymod.fair_rate(2):g} with 2 agents)")
    pol.add_argument("--tape-volumes", type=int, metavar="N",
                     help=f"tape: volumes of the synthetic layout (default {policymod.TAPE_VOLUMES})")
    pol.add_argument("--tape-files", type=int, metavar="N",
                     help="tape: files per volume (default "
                          + " / ".join(f"{v:g}" for v in policymod.TAPE_FILES.values()) + " quick / full)")
    pol.add_argument("--tape-live", action="store_true",
                     help="tape: submit the restores while dispatch runs (default: dispatch held until all are in)")
    from bench import scaleout as scaleoutmod

    so = sub.add_parser("scaleout", parents=[common],
                        help="CPU per action per replica on 3 replicas and on 9 with replication 3",
                        description=scaleoutmod.SCALEOUT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    so.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="rounds of two floods (3 then 9 replicas, then 9 then 3, ...); figures are medians "
                         "(default 1)")
    from bench import split as splitmod

    sub.add_parser("split", parents=[common],
                   help="8 -> 12 shards under a flood and a restore storm: nothing lost or run twice, one restore "
                        "per file, per-file order",
                   description=splitmod.SPLIT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    from bench import move as movemod

    mvp = sub.add_parser("move", parents=[common],
                         help="a shard moved under a flood: nothing lost or run twice, the pause in its acknowledgements",
                         description=movemod.MOVE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    mvp.add_argument("--move-shard", type=int, default=0, metavar="N",
                     help="the shard that moves (default 0): its preferred leader moves to the replica outside its group")
    from bench import catalog as catalogmod

    cat = sub.add_parser("catalog", parents=[common], help="the catalog's memory and snapshot bytes per copy, "
                         "and listing times", description=catalogmod.CATALOG_HELP,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    cat.add_argument("--copies", type=int, metavar="N",
                     help="copies (default " + " / ".join(f"{v:,}" for v in catalogmod.COPIES.values())
                          + " quick / full)")
    from bench import packing as packingmod

    pk = sub.add_parser("packing", parents=[common], help="small files archived one object each and packed "
                        "into containers, in one run", description=packingmod.PACKING_HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    pk.add_argument("--files", type=int, metavar="N",
                    help="files (default " + " / ".join(f"{v:,}" for v in packingmod.FILES.values())
                         + " quick / full)")
    from bench import striping as stripingmod

    sp = sub.add_parser("striping", parents=[common], help="one large file archived by 4 agents striped, "
                        "against 1 agent", description=stripingmod.STRIPING_HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("--size-mib", type=int, metavar="N",
                    help=f"the file's size in MiB (default {stripingmod.SIZE // stripingmod.MiB})")
    sp.add_argument("--link", type=int, metavar="MIB_PER_S",
                    help=f"each agent's link in the link model (default {stripingmod.LINK_MIB} MiB/s)")
    sp.add_argument("--part-mib", type=int, metavar="N",
                    help=f"the parts' size in MiB (default {stripingmod.PART // stripingmod.MiB})")
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    mode = args.mode or "quick"
    s = Settings(mode=mode, **(FULL if mode == "full" else QUICK))
    for flag, attr in SIZE_FLAGS.items():
        v = getattr(args, flag, None)
        if v is not None:
            setattr(s, attr, v)
    for attr in OTHER_FLAGS:
        v = getattr(args, attr, None)
        if v is not None:
            setattr(s, attr, v)
    for attr in ("fsync", "encrypt"):
        v = getattr(args, attr, None)
        if v is not None:
            setattr(s, attr, v)
    s.workdir = args.workdir
    s.results = args.results
    s.keep = args.keep
    return s


def _say(msg: str) -> None:
    print(msg, flush=True)


def run(args: argparse.Namespace) -> int:
    from bench import workloads as w

    s = settings_from(args)
    s.say = _say
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(s).items() if k != "say"}
    mach = machine()
    done: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    t0 = time.monotonic()
    order = ["archive-flood", "restore-storm", "queue-depth", "replication", "mixed"]
    todo = order if args.workload == "all" else [args.workload]
    _say(f"== hsm-coordinator bench ({s.mode}): {', '.join(todo)}; {mach['cores']} cores, Python {mach['python']}")

    def keep(name: str, data: dict[str, Any]) -> None:
        done[name] = data
        if not args.no_save:  # save after every workload: a later failure keeps the earlier figures
            report.save({name: data}, mach, settings, args.results)

    for name in todo:
        _say(f"== {name}")
        try:
            if name == "archive-flood":
                keep("archive_flood", w.archive_flood(s))
            elif name == "restore-storm":
                for section, delay in w.STORM_VARIANTS:  # both, even if the first fails
                    try:
                        keep(section, w.restore_storm(s, delay, section))
                    except Exception as exc:  # noqa: BLE001
                        failed.append(section)
                        _say(f"!! {section} failed: {exc}")
                        traceback.print_exc()
            elif name == "queue-depth":
                qd, mem = w.queue_depth(s)
                keep("queue_depth", qd)
                keep("memory", mem)
            elif name == "replication":
                flood = done.get("archive_flood")
                reuse = flood if flood and flood.get("replicas") == 3 and s.replication_actions == flood["actions"] else None
                keep("replication", w.replication(s, reuse))
            elif name == "mixed":
                keep("mixed", w.mixed(s))
        except KeyboardInterrupt:
            _say("!! interrupted")
            return 130
        except Exception as exc:  # noqa: BLE001 - report and go on with the next workload
            failed.append(name)
            _say(f"!! {name} failed: {exc}")
            traceback.print_exc()
    broken = correctness_failures(done)
    for b in broken:
        _say(f"!! correctness: {b}")
    _say(f"== done in {time.monotonic() - t0:.0f} s" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    if not args.no_save and done:
        _say(f"   results: {args.results / 'latest.json'}, table: {args.results / 'latest.md'}")
        _say((args.results / "latest.md").read_text())
    return 1 if failed or broken else 0


def correctness_failures(done: dict[str, dict[str, Any]]) -> list[str]:
    """Invariants, not performance targets: a run that breaks one exits 1
    (a missed performance target does not), the restore storm's per-FID
    invariants (one RESTORE and one dispatch per FID) included."""
    out = []
    for name in ("archive_flood", *invariants.STORM_SECTIONS):
        n = done.get(name, {}).get("run_twice", 0)
        if n:
            out.append(f"{name}: {n} actions ran twice on the movers")
    out += invariants.all_per_fid_breaks(done)
    mixed = done.get("mixed", {})
    if mixed.get("lost"):
        out.append(f"mixed: {mixed['lost']} acknowledged actions never ended")
    if mixed.get("duplicates"):
        out.append(f"mixed: {mixed['duplicates']} actions ran twice on the movers")
    if mixed and mixed.get("replicas_consistent") is False:
        out.append("mixed: the live replicas' shard digests differ")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.workload == "report":
        import json

        latest = json.loads((args.results / "latest.json").read_text())
        (args.results / "latest.md").write_text(report.markdown(latest))
        print((args.results / "latest.md").read_text())
        return 0
    if args.workload == "catalog":
        from bench import catalog as catalogmod

        if args.copies is not None and args.copies < 1:
            build_parser().error("catalog: --copies must be at least 1")
        return catalogmod.catalog(args, _say)
    if args.workload == "packing":
        from bench import packing as packingmod

        if args.files is not None and args.files < 1:
            build_parser().error("packing: --files must be at least 1")
        return packingmod.packing(args, settings_from(args), _say)
    if args.workload == "striping":
        from bench import striping as stripingmod

        if (args.size_mib is not None and args.size_mib < 1024) or (args.link is not None and args.link < 1) or (
                args.part_mib is not None and args.part_mib < 1):
            build_parser().error("striping: --size-mib must be at least 1024 (striping starts at 1 GiB), "
                                 "--link and --part-mib at least 1")
        return stripingmod.striping(args, settings_from(args), _say)
    if args.workload == "scaleout":
        from bench import scaleout as scaleoutmod

        if args.repeat < 1:
            build_parser().error("scaleout: --repeat must be at least 1")
        if args.replicas is not None:
            build_parser().error("scaleout: the shapes are fixed (3 replicas, and 9 in groups of 3): no --replicas")
        if args.shards is not None and args.shards < 1:
            build_parser().error("scaleout: --shards must be at least 1")
        s = settings_from(args)
        s.say = _say
        return scaleoutmod.scaleout(args, s, _say)
    if args.workload == "split":
        from bench import split as splitmod

        if args.replicas is not None or args.shards is not None:
            build_parser().error("split: the shape is fixed (3 replicas, 8 shards grown to 12): no --replicas, "
                                 "no --shards")
        if args.actions is not None and args.actions < 3:
            build_parser().error("split: --actions must be at least 3")
        s = settings_from(args)
        s.say = _say
        return splitmod.split(args, s, _say)
    if args.workload == "move":
        from bench import move as movemod

        if args.replicas is not None and args.replicas <= movemod.REPLICATION:
            build_parser().error(f"move: --replicas must be more than {movemod.REPLICATION} (groups of "
                                 f"{movemod.REPLICATION}, and a replica outside the moved shard's group)")
        if args.shards is not None and args.shards < 1:
            build_parser().error("move: --shards must be at least 1")
        if not 0 <= args.move_shard < (args.shards or movemod.SHARDS):
            build_parser().error("move: --move-shard must be one of the cluster's shards (0 to --shards - 1)")
        if args.actions is not None and args.actions < 3:
            build_parser().error("move: --actions must be at least 3")
        s = settings_from(args)
        s.say = _say
        return movemod.move(args, s, _say)
    if args.workload == "profile":
        from bench.profile import profile

        return profile(args, settings_from(args), _say)
    if args.workload in ("compare", "sealing", "tls", "metrics", "policy"):
        from bench import compare, sealing
        from bench import metrics as metricsmod
        from bench import policy as policymod
        from bench import tls as tlsmod

        s = settings_from(args)
        s.say = _say
        if args.workload == "compare":
            try:
                compare.parse_workloads(args.workloads)
            except ValueError as exc:
                build_parser().error(str(exc))
            return compare.compare(args, s, _say)
        if args.workload == "tls":
            if args.repeat < 1:
                build_parser().error("tls: --repeat must be at least 1")
            return tlsmod.tls(args, s, _say)
        if args.workload == "metrics":
            if args.repeat < 1:
                build_parser().error("metrics: --repeat must be at least 1")
            if not args.scrape_interval > 0:
                build_parser().error("metrics: --scrape-interval must be more than 0 seconds")
            return metricsmod.metrics(args, s, _say)
        if args.workload == "policy":
            if args.repeat < 1:
                build_parser().error("policy: --repeat must be at least 1")
            try:
                policymod.parse_parts(args.parts)
            except ValueError as exc:
                build_parser().error(f"policy: {exc}")
            if args.fair_seconds is not None and not args.fair_seconds > 0:
                build_parser().error("policy: --fair-seconds must be more than 0")
            if args.fair_rate is not None and not args.fair_rate > 0:
                build_parser().error("policy: --fair-rate must be more than 0")
            if args.tape_volumes is not None and args.tape_volumes < 2:
                build_parser().error("policy: --tape-volumes must be at least 2")
            if args.tape_files is not None and args.tape_files < 1:
                build_parser().error("policy: --tape-files must be at least 1")
            return policymod.policy(args, s, _say)
        return sealing.sealing(args, s, _say)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
