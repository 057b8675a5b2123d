"""``python -m bench policy``: what the policy costs the archive flood, and
what fair share does for two users who submit at 10:1 (issue 16).

**Cost.** The archive flood at the mode's size (``--actions``; 20,000
quick, 1,000,000 full) twice per round, with the same items in both: every
item carries a path, a size and a requester uid/gid
(``Settings.item_facts``: :func:`bench.clients.item_facts`, a pure function
of the item's oid: ``/project/pNN/uUID/runR/file<oid>.<ext>``, 50 projects,
sizes log-uniform over 1 KiB .. 10 GiB, 20 uids). "off" runs with the
cluster's first policy (version 1, from its configuration: no rules);
"on" with that policy plus the :data:`RULES`-rule site policy of
:func:`site_rules` (``Settings.policy``: set with ``SetPolicy`` as version 2
once the cluster is up, before the clock starts; bench.cluster). Only the
rules differ: the settings of the first policy are kept (every cluster of
this benchmark runs with ``agent_grace`` :data:`AGENT_GRACE`: the 30 s
the other benchmarks use is too short for the agents' leases with their
timings, which a replica only warns about at start but a policy set that
changes it is refused for). The order
alternates (round 1 off first, round 2 on first, ...); with ``--repeat N``
every figure is the median of its rounds.

The site policy, in order: 5 deny rules (a /scratch tree, tmp directories,
core dumps, files of 1 TiB and more, root's files), 5 kind / initiator
rules, 20 uid / gid rules setting priorities, 12 more path-glob rules
setting priorities (some with ``**``) and 9 more size rules: priorities,
and routing by tag (``disk`` below 16 MiB, ``tape-y`` to 1 GiB, ``tape-x``
above, ``tape-x-fast`` for big files of some projects; no rule changes the
archive id, which needs archive ids the bench cluster does not have). A
tagged action goes only to an agent that serves its tag: the one the
product's affinity hash picks for the tag while that agent has a free slot,
else another that serves it (docs/policy.md): in both modes every agent serves
every tag the rules set (``Settings.agent_tags``, agentd ``--tags``), so
with the rules on the tags decide which agent runs what (the probe's
sample shows the split per agent). No rule says ``allow``, so every item
goes through every rule that may apply to it. **The deny rules match no
item of the flood** (it uses no such path, uid or size), so both floods
create exactly their N actions and the drain waits for the same N in
both: a flood whose items are not all CREATED is a failure. What the rules
do to the flood's items is worked out beforehand with the policy's own
``admit`` (:func:`expected_effects`: shares denied, given a priority,
tagged; rules matched per item).

Every flood checks that it ran the way it says (:class:`CostProbe`, when it
has drained): every replica's ``GetPolicy`` gives the version and text of
its mode (on: version 2 or more and exactly the document the bench set;
off: version 1 and no rules) with every shard at that version, and the
first :data:`SAMPLE` actions of the cluster carry the uid of their item's
facts and the priority and tag the rules give that item (off: 0 and none
for all; on: at least one given a priority by a rule).

**Fairness.** One client submits archives steadily (a batch every 0.1 s)
for ``--fair-seconds`` at ``--fair-rate`` items/s, 10 items of uid 1001 for
each item of uid 1002, to a cluster whose agents have
:data:`FAIR_SLOTS` and a null mover that takes :data:`FAIR_DELAY` s, so
they drain at most agents x 4 / 0.2 actions/s; the default rate makes uid
1002 alone submit :data:`FAIR_OVERLOAD` times its fair half of that, so
both users keep a backlog. Dispatch is held (``control disabled``) for the
first :data:`FAIR_HOLD` s so both have one from the start. The same
submissions run on a cluster with ``fair_share: {by: user}`` and on one
with ``fair_share: {by: none}`` (the baseline: arrival order), both set as
version 2. From every action's requester uid, ``created`` and ``started``
(ListActions, when the submission has ended): the window opens
:data:`FAIR_SETTLE` s after dispatch is enabled (or later, when both users
first have actions waiting) and closes when one user first has nothing
waiting, or when the submission ends; each user's dispatch rate is its
actions started in the window per second, and Jain's index of the two
rates, ``(x1 + x2)^2 / (2 (x1^2 + x2^2))``, is the figure: target
:data:`FAIR_TARGET` with fair share by user; by none it shows the 10:1
split (about 0.6). A fairness run does not drain: its cluster is stopped
with the backlog still waiting. A run whose window is shorter than
:data:`FAIR_MIN_WINDOW` s, whose policy is not the one set on every replica
and shard, or with an action run twice, is a failure.

**Tape.** A synthetic layout (:func:`tape_layout`, a fixed seed):
``--tape-volumes`` volumes (default :data:`TAPE_VOLUMES`) of ``--tape-files``
files each (:data:`TAPE_FILES`: 50 quick, 500 full), each file at a distinct
position on its volume; file n of the submission order (one seeded shuffle
of all files) has the FID ``[SEQ_TAPE:n+1:0]``. The same restores, in the
same order, are submitted by one client in batches of :data:`TAPE_BATCH`
(one in flight) to two fresh clusters whose agents have
:data:`TAPE_SLOTS` and a null mover of :data:`TAPE_DELAY` s: **policy**,
every restore's data ``volume=V07,position=123`` (what the coordinator reads:
``coordinator.state.hints``; a volume's restores go to one agent, in position
order, and an agent reads one volume until it has no ready restores left or
``tape.max_mount`` has passed while others wait), and **fifo**, the same
facts under keys the coordinator does not read (``vol=V07,pos=123``: arrival
order). Both run with the cluster's first policy (its ``tape.max_mount`` and
``priorities.starvation_after`` are recorded: their defaults, 600 s and
3600 s, are far longer than a run). Dispatch is held (``control disabled``)
until every restore is in and every replica has it waiting, then enabled
(``--tape-live``: submitted while dispatch runs). From ListActions when all
have ended: each agent's restores in the order of their ``started`` (the
assignment's time; restores handed to an agent in the same dispatcher round
share it, and are put in volume, then position order: what a mover given
them together would do, and what makes the fifo run's count smaller, never
larger), the volume and position of each (from the layout, by FID; the
data the coordinator holds is checked against it), and the figure: volume
switches (adjacent restores of one agent on different volumes), summed over
the agents; the ratio policy / fifo against :data:`TAPE_TARGET`. Also: the
fewest switches possible (each agent mounts each of its volumes once), the
remounts (a volume mounted again after a switch), the volumes served by
more than one agent, and the share of an agent's consecutive restores of one
volume that move forward on the tape. Every submitted restore must be
created, SUCCEEDED, and run exactly once on the movers, in both runs (a
failure otherwise). A run in which no restore ends for :data:`TAPE_STALL` s
while some wait is stopped there, a failure, with where its restores wait
(per volume, per replica leading their shards) and the volume each replica
handed each agent last (:func:`stall_picture`), and its logs kept. A missed
target is reported, not an error.

Results: ``policy-latest.json`` / ``.md`` and ``runs/<time>-policy.json``.
A missed target is reported, not an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import yaml

from bench import clients as cl
from bench.cluster import BenchCluster, max_terminal_for
from bench.tls import _f, alternate_floods, comparison_lines, medians, verdict
from bench.workloads import Settings

#: issue 16: the flood with the 50-rule policy keeps at least this share of its rate without rules
TARGET = 0.9
#: issue 16: Jain's index of the two users' dispatch rates with fair share by user
FAIR_TARGET = 0.95
MODES = ("off", "on")
#: the fair_share.by of the two fairness runs: the baseline, and fair share by user
SHARE_MODES = ("none", "user")
RULES = 50
#: agent_grace of every cluster of this benchmark (on and off alike): the bench's usual 30 s is too short
#: for the agents' leases with its Raft and heartbeat timings (a replica warns at start; a policy set that
#: changes to it is refused); 60 s is the policy language's default
AGENT_GRACE = 60.0
#: the actions the cost probe reads back (ListActions' first page)
SAMPLE = 500
#: the policy's version on a fresh cluster (the first one, from its configuration)
SEEDED_VERSION = 1
KIND_ARCHIVE, DEFAULT_ARCHIVE_ID = 20, 1

#: fairness: the two users ((uid, gid)) and how many items the first submits for each of the second
FAIR_USERS = ((1001, 1001), (1002, 1002))
FAIR_SPLIT = 10
#: fairness: agent slots and the null mover's seconds per action (the drain: agents x 4 / 0.2 per second)
FAIR_SLOTS = "archive=4,restore=4,remove=4"
FAIR_SLOTS_ARCHIVE = 4
FAIR_DELAY = 0.2
#: fairness: the second user's submit rate over its fair half of the drain, with the default --fair-rate
FAIR_OVERLOAD = 1.5
#: fairness: seconds between two batches of the submitting client
FAIR_INTERVAL = 0.1
#: fairness: seconds dispatch is held as the submission starts (both users build a backlog)
FAIR_HOLD = 2.0
#: fairness: seconds after dispatch is enabled before the window may open (the first rounds fill every slot)
FAIR_SETTLE = 1.0
#: fairness: a shorter window is a failure (no steady backlog was measured)
FAIR_MIN_WINDOW = 5.0
FAIR_SECONDS = {"quick": 30.0, "full": 60.0}
SEQ_FAIR = cl.SEQ_BASE + 0x7000

#: issue 16: volume switches with the policy over volume switches in arrival order (FIFO), at most
TAPE_TARGET = 0.1
#: tape: the two runs: the restores' volume and position under keys the coordinator does not read, and under
#: the ones it does
TAPE_MODES = ("fifo", "policy")
TAPE_VOLUMES = 20
#: tape: files per volume, per mode (--tape-files)
TAPE_FILES = {"quick": 50, "full": 500}
TAPE_SEED = 16
#: tape: a volume's files lie at distinct positions below TAPE_SPAN x its files
TAPE_SPAN = 100
#: tape: agent slots and the null mover's seconds per restore (a backlog from the first round on)
TAPE_SLOTS = "archive=1,restore=2,remove=1"
TAPE_DELAY = 0.02
#: tape: restores per Submit (one client, one batch in flight: arrival follows the submission order)
TAPE_BATCH = 100
#: tape: a run in which no restore ends for this many seconds while some wait is stopped, a failure (restores
#: of 0.02 s: far longer than any pause of a working cluster, far shorter than tape.max_mount's 600 s)
TAPE_STALL = 30.0
SEQ_TAPE = cl.SEQ_BASE + 0x8000
PARTS = ("cost", "fairness", "tape")

POLICY_HELP = f"""\
What the policy costs, what fair share does and how tape-aware restores are ordered, in one run (issue 16).
Three parts (--parts, default all):
cost: the archive flood at the mode's size (--actions; 20,000 quick, 1,000,000 full), every item with a path,
a size and a requester uid/gid (the same items in both), on a cluster with its first policy (no rules) and on
one with a {RULES}-rule site policy (uid/gid priorities, path globs, size routing tags, kind and initiator
rules, and deny rules that match none of the flood's items), alternating which goes first, medians over
--repeat rounds. Reports actions/s for both, the ratio on / off against the target {TARGET} (met / missed),
CPU µs per action per process class, and what the rules do to the flood's items.
fairness: one client submits archives steadily for --fair-seconds (default {FAIR_SECONDS['quick']:g} quick, {FAIR_SECONDS['full']:g} full)
at --fair-rate items/s, {FAIR_SPLIT} of uid {FAIR_USERS[0][0]} for each of uid {FAIR_USERS[1][0]}, to agents with {FAIR_SLOTS_ARCHIVE} archive slots and a null mover
taking {FAIR_DELAY:g} s (the default rate keeps both users backlogged; dispatch is held for the first {FAIR_HOLD:g} s),
with fair_share by user and by none (the baseline), once each per round. Each user's dispatch rate over the
window in which both had actions waiting (to the end of the submission at most), and Jain's index of the two
against the target {FAIR_TARGET} (by user; by none shows the {FAIR_SPLIT}:1 split, about 0.6).
tape: a synthetic layout of --tape-volumes volumes (default {TAPE_VOLUMES}) of --tape-files files each (default
{TAPE_FILES['quick']} quick, {TAPE_FILES['full']} full), each at a position on its volume; the same restores in the same seeded
order, in batches of {TAPE_BATCH} from one client, to agents with {TAPE_SLOTS} and a null mover taking
{TAPE_DELAY:g} s, twice: with volume=V,position=P in their data (the coordinator's tape order: one agent per
volume, in position order, one volume at a time) and with the same facts under keys it does not read (arrival
order, FIFO). Dispatch is held until every restore is in (--tape-live: not held). Volume switches (adjacent
restores of one agent on different volumes, summed over agents) with the policy over those under FIFO, against
the target {TAPE_TARGET} (at most; met / missed). Every restore must succeed, exactly once, in both runs; a run
in which no restore ends for {TAPE_STALL:g} s while some wait is stopped there (a failure; its logs are kept).
Results: RESULTS/policy-latest.json / .md and RESULTS/runs/<time>-policy.json. Exit 1 if a flood or run failed,
ran an action twice, did not run in the mode it claims (the policy's version and text on every replica and
shard; the priorities a sample of actions got), an item of the flood was not created, or a restore of the tape
part was not created, did not succeed or ran other than once; a missed target is reported, not an error.
"""


def order(round_index: int, modes: tuple[str, str] = MODES) -> tuple[str, str]:
    """Which run goes first: *modes* in even rounds, reversed in odd ones."""
    return modes if round_index % 2 == 0 else (modes[1], modes[0])


def parse_parts(text: str | None) -> tuple[str, ...]:
    """``--parts``: a comma-separated subset of :data:`PARTS` (None: all)."""
    if not text:
        return PARTS
    got = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in got if p not in PARTS]
    if bad or not got:
        raise ValueError(f"--parts: {', '.join(bad) or 'nothing'}: expected a comma-separated list of "
                         f"{', '.join(PARTS)}")
    return tuple(p for p in PARTS if p in got)


# ------------------------------------------------------------ the site policy


def site_rules() -> list[tuple[str, dict[str, Any]]]:
    """The :data:`RULES` rules of the cost benchmark, in order, each with its
    category (id, path, size, kind): what a site might write. The deny
    rules come first and match no item of the flood (see the module's
    doc); general rules before specific ones (the last priority and the
    last tag set win)."""
    out: list[tuple[str, dict[str, Any]]] = []

    def add(category: str, name: str, match: dict[str, Any], then: dict[str, Any]) -> None:
        out.append((category, {"name": name, "match": match, "then": then}))

    # refusals: none matches an item of the flood
    add("path", "deny-scratch", {"path": ["/scratch/**"]}, {"deny": "scratch is never archived"})
    add("path", "deny-tmp-dirs", {"path": ["/project/*/tmp/**", "/project/*/*/tmp/**"]},
        {"deny": "tmp directories are not archived"})
    add("path", "deny-core-dumps", {"path": ["core.[0-9]*", "**/core"]}, {"deny": "core dumps are not archived"})
    add("size", "deny-1t-and-more", {"kind": ["archive"], "size": ">= 1T"},
        {"deny": "files of 1 TiB and more go through the bulk mover"})
    add("id", "deny-root-projects", {"uid": [0], "path": ["/project/**"]},
        {"deny": "root's files under /project are not archived"})
    # kinds and initiators
    add("kind", "restores-first", {"kind": ["restore"]}, {"priority": 20})
    add("kind", "removes-last", {"kind": ["remove"]}, {"priority": -20})
    add("kind", "bridge-archives", {"kind": ["archive"], "initiator": ["bench*", "mdt-*"]}, {"priority": 2})
    add("kind", "manual-requests-first", {"initiator": ["hsmctl@*"]}, {"priority": 5})
    add("kind", "default-archive", {"kind": ["archive"], "archive_id": [1]}, {"priority": 1})
    # users and groups: priorities
    user_priorities = (3, -2, 1, 2, -1)
    for i, uid in enumerate(range(1000, 1015)):
        add("id", f"user-{uid}", {"kind": ["archive"], "uid": [uid]}, {"priority": user_priorities[i % 5]})
    for gid, prio in ((100, 4), (101, -4), (102, 2), (103, -2)):
        add("id", f"group-{gid}", {"gid": [gid]}, {"priority": prio})
    # paths
    add("path", "project-p00-urgent", {"path": ["/project/p00/**"]}, {"priority": 10})
    add("path", "project-p01", {"path": ["/project/p01/**"]}, {"priority": 8})
    add("path", "projects-p1x", {"path": ["/project/p1[0-9]/**"]}, {"priority": 3})
    add("path", "projects-p2x-early-users", {"path": ["/project/p2*/u100[0-4]/**"]}, {"priority": -3})
    add("path", "logs-last", {"path": ["*.log"]}, {"priority": -10})
    add("path", "first-runs", {"path": ["/project/*/u*/run0/**"]}, {"priority": 1})
    add("path", "hdf5", {"path": ["*.h5"]}, {"priority": 2})
    add("path", "netcdf", {"path": ["*.nc"]}, {"priority": -2})
    add("path", "projects-p30-p34", {"path": ["/project/p3[0-4]/**"]}, {"priority": 2})
    add("path", "projects-p4x-user-1019", {"path": ["/project/p4?/u1019/**"]}, {"priority": 6})
    add("path", "tarballs-of-run7", {"path": ["/project/**/run7/*.tar"]}, {"priority": -6})
    add("path", "projects-p05-p09-data", {"path": ["/project/p0[5-9]/**/*.dat"]}, {"priority": 7})
    # sizes: priorities, and routing by tag to the agents that serve it (ROUTING_TAGS; no archive id
    # changes: the bench cluster has archive id 1 only)
    add("size", "empty-files-last", {"size": "= 0"}, {"priority": -8})
    add("size", "tiny-files-last", {"size": "< 4K"}, {"priority": -5})
    add("size", "small-files", {"size": "4K..64K"}, {"priority": -3})
    add("size", "disk", {"size": "< 16M"}, {"tag": "disk"})
    add("size", "tape-y", {"size": "16M..1G"}, {"tag": "tape-y"})
    add("size", "tape-x", {"kind": ["archive"], "size": ">= 1G"}, {"tag": "tape-x"})
    add("size", "tape-x-fast", {"size": ">= 2G", "path": ["/project/p0*/**"]}, {"tag": "tape-x-fast"})
    add("size", "huge-files-later", {"size": ">= 4G"}, {"priority": -1})
    add("size", "big-urgent-p00", {"size": "256M..4G", "path": ["/project/p00/**"]}, {"priority": 12})
    return out


def routing_tags() -> tuple[str, ...]:
    """The tags the site rules set: every agent of the cost benchmark serves
    them all (``--tags``; an action with a tag goes only to an agent that
    serves it: the one the product's affinity hash picks for that tag while
    it has a free slot, else another)."""
    return tuple(dict.fromkeys(r["then"]["tag"] for _, r in site_rules() if "tag" in r["then"]))


def rules_yaml() -> str:
    """The ``rules:`` section of the site policy (what ``Settings.policy_text`` holds)."""
    body: str = yaml.safe_dump({"rules": [r for _, r in site_rules()]}, sort_keys=False, default_flow_style=None,
                               width=100)
    return body


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def flood_initiator(oid: int, n: int, clients: int) -> str:
    """The initiator of the flood's item *oid* (bench.workloads._flood_clients:
    *n* oids from 1, split over *clients* in turn, the first n % clients one more)."""
    per, extra = divmod(n, clients)
    i = oid - 1
    k = i // (per + 1) if i < extra * (per + 1) else extra + (i - extra * (per + 1)) // max(1, per)
    return f"bench{k}"


def expected_effects(n: int, clients: int, most: int = 10_000) -> dict[str, Any]:
    """What the site policy does to the flood's items, from the policy's
    own ``admit`` over at most *most* of them (every k-th): the shares
    refused, given a priority, tagged and untouched, and the mean number of
    rules whose conditions hold for an item."""
    from coordinator.policy import parse

    pol = parse(rules_yaml())
    step = max(1, n // most)
    oids = range(1, n + 1, step)
    counts: Counter[str] = Counter()
    matched = 0
    for oid in oids:
        path, size, uid, gid = cl.item_facts(oid)
        ini = flood_initiator(oid, n, clients)
        d = pol.admit(KIND_ARCHIVE, DEFAULT_ARCHIVE_ID, path, size, uid, gid, 0, ini)
        counts["denied"] += bool(d.deny)
        counts["priority"] += d.priority is not None
        counts["tagged"] += bool(d.tag)
        counts["untouched"] += not d.rule
        matched += sum(r.matches(KIND_ARCHIVE, DEFAULT_ARCHIVE_ID, path, size, uid, gid, 0, ini) for r in pol.rules)
    k = len(oids)

    def pct(key: str) -> float:
        return round(100.0 * counts[key] / k, 1) if k else 0.0

    return {"items_evaluated": k, "denied": counts["denied"], "denied_pct": pct("denied"),
            "priority_set_pct": pct("priority"), "tagged_pct": pct("tagged"), "untouched_pct": pct("untouched"),
            "mean_rules_matched": round(matched / k, 2) if k else None}


def policy_record(text: str) -> dict[str, Any]:
    """The site policy as the results give it: rule counts, digest, text."""
    rules = site_rules()
    return {"rules": len(rules), "categories": dict(Counter(c for c, _ in rules)),
            "deny_rules": [r["name"] for _, r in rules if "deny" in r["then"]],
            "routing_tags": list(routing_tags()), "rules_sha256": digest(text), "rules_bytes": len(text.encode()),
            "rules_text": text}


# ------------------------------------------------------------ the cost probe


def replica_policies(c: BenchCluster) -> dict[str, dict[str, Any]]:
    """Each live replica's answer to GetPolicy: version, text, shard versions."""
    from hsm.v1 import coordinator_pb2 as C
    from hsm.v1 import coordinator_pb2_grpc

    out = {}
    for rid in c.live_replicas():
        with c.channel(c.spec(rid).api) as ch:
            r = coordinator_pb2_grpc.CoordinatorStub(ch).GetPolicy(C.GetPolicyRequest(), timeout=30)
        out[rid] = {"version": int(r.version), "text": r.text,
                    "shards": {int(s.shard): int(s.version) for s in r.shards}}
    return out


def policy_problem(answers: Mapping[str, Mapping[str, Any]], shards: int, version: int | None,
                   text: str | None) -> str | None:
    """Why the replicas' GetPolicy answers do not all show *version* with
    *text* (None: any text) on every one of *shards* shards (None: they do)."""
    if not answers:
        return "no replica answered GetPolicy"
    for rid, a in sorted(answers.items()):
        if a["version"] != version:
            return f"{rid} says version {a['version']}, not {version}"
        if text is not None and a["text"] != text:
            return f"{rid}'s policy text is not the one the bench set"
        wrong = {s: v for s, v in a["shards"].items() if v != version}
        if wrong or len(a["shards"]) != shards:
            return (f"{rid}: shards at other versions {wrong}" if wrong
                    else f"{rid} reports {len(a['shards'])} shards, not {shards}")
    return None


def data_tag(data: bytes) -> str:
    """The ``tag=`` of an action's data (``key=value,...``; "" without one)."""
    for part in data.decode(errors="replace").split(","):
        key, eq, value = part.partition("=")
        if eq and key.strip() == "tag":
            return value.strip()
    return ""


class CostProbe:
    """archive_flood's ``profile`` hook: when the flood has drained, check
    the policy on every replica and shard, and that a sample of actions
    got the uid of their item's facts and the priority the rules give it."""

    def __init__(self, cluster: BenchCluster) -> None:
        self.cluster = cluster
        self.on = bool(cluster.opt.policy)
        self.expected_text = cluster.policy_text
        self.expected_version = cluster.policy_version
        self.answers: dict[str, dict[str, Any]] = {}
        self.rules: int | None = None
        self.sampled = 0
        self.prioritized = 0
        self.wrong_uid = 0
        self.wrong_priority: list[list[int]] = []  # [action id, oid, priority, expected]
        self.wrong_tag: list[list[Any]] = []  # [action id, oid, tag, expected]
        self.per_agent: Counter[str] = Counter()
        self.per_tag: Counter[str] = Counter()
        self.ran = False

    def stop(self) -> None:
        from coordinator.policy import parse
        from hsm.client import CoordinatorClient

        c = self.cluster
        self.answers = replica_policies(c)
        first = next(iter(self.answers.values()), None)
        text = self.expected_text if self.on else (first or {}).get("text", "")
        pol = parse(text or "")
        self.rules = len(pol.rules)
        with CoordinatorClient(c.addresses, timeout=60, tls=c.harness_tls) as client:
            for a in itertools.islice(client.list_actions(include_terminal=True, page_size=SAMPLE), SAMPLE):
                self.sampled += 1
                path, size, uid, _gid = cl.item_facts(a.fid.oid)
                r = a.requesters[0]
                self.wrong_uid += r.uid != uid
                d = pol.admit(a.kind, a.archive_id, path, size, r.uid, r.gid, r.projid, r.initiator)
                want = d.priority if d.priority is not None else 0
                self.prioritized += d.priority is not None
                if a.priority != want and len(self.wrong_priority) < 10:
                    self.wrong_priority.append([a.action_id, a.fid.oid, a.priority, want])
                tag = data_tag(a.data)
                self.per_tag[tag] += 1
                self.per_agent[a.agent] += 1
                if tag != d.tag and len(self.wrong_tag) < 10:
                    self.wrong_tag.append([a.action_id, a.fid.oid, tag, d.tag])
        self.ran = True

    def problem(self) -> str | None:
        """Why the flood did not run in the mode it claims (None: it did)."""
        if not self.ran:
            return "the mode probe did not run"
        shards = self.cluster.opt.shards
        if self.on:
            if self.expected_text is None or self.expected_version is None:
                return "the bench set no policy on the cluster"
            if self.expected_version <= SEEDED_VERSION:
                return f"the policy set is version {self.expected_version}, not above {SEEDED_VERSION}"
            wrong = policy_problem(self.answers, shards, self.expected_version, self.expected_text)
            if wrong:
                return wrong
            if self.rules != RULES:
                return f"the policy set has {self.rules} rules, not {RULES}"
        else:
            if self.expected_text is not None:
                return "a policy was set on the cluster without rules"
            wrong = policy_problem(self.answers, shards, SEEDED_VERSION, None)
            if wrong:
                return wrong
            if self.rules:
                return f"the cluster's first policy has {self.rules} rules"
        if not self.sampled:
            return "no action to sample"
        if self.wrong_uid:
            return f"{self.wrong_uid} of {self.sampled} sampled actions lack their item's uid (item facts off?)"
        if self.wrong_priority:
            a = self.wrong_priority[0]
            return (f"{len(self.wrong_priority)}+ sampled actions with another priority than the rules give "
                    f"(action {a[0]}: {a[2]}, expected {a[3]})")
        if self.wrong_tag:
            a = self.wrong_tag[0]
            return (f"{len(self.wrong_tag)}+ sampled actions with another tag than the rules give "
                    f"(action {a[0]}: {a[2]!r}, expected {a[3]!r})")
        if self.on and not self.prioritized:
            return f"none of {self.sampled} sampled actions was given a priority by a rule"
        return None

    def record(self) -> dict[str, Any]:
        return {"policy": self.on, "version_set": self.expected_version,
                "text_sha256": digest(self.expected_text) if self.expected_text else None,
                "replicas": {rid: {"version": a["version"], "text_sha256": digest(a["text"]),
                                   "shard_versions": sorted(set(a["shards"].values()))}
                             for rid, a in self.answers.items()},
                "rules": self.rules, "sampled": self.sampled, "sampled_prioritized": self.prioritized,
                "wrong_uid": self.wrong_uid, "wrong_priority": self.wrong_priority, "wrong_tag": self.wrong_tag,
                "sampled_per_agent": dict(sorted(self.per_agent.items())),
                "sampled_per_tag": dict(sorted(self.per_tag.items()))}


# ------------------------------------------------------------ fairness: figures


def jain(xs: Iterable[float]) -> float | None:
    """Jain's fairness index ``(sum x)^2 / (n sum x^2)``: 1 when every x is
    equal, 1/n when one takes everything; None without a positive x."""
    v = list(xs)
    sq = sum(x * x for x in v)
    if not v or sq <= 0:
        return None
    return round(sum(v) ** 2 / (len(v) * sq), 4)


def backlog_window(actions: Iterable[tuple[int, float, float]], users: Sequence[int], t_from: float,
                   t_to: float) -> tuple[float, float, str] | None:
    """The window in which every user of *users* had actions waiting:
    from the first moment at or after *t_from* when each had one, to the
    first moment after that when one had none, or *t_to* at most; with why
    it closed. *actions*: (uid, created, started; 0 if not started). An
    action waits from its creation to its start; at equal times creations
    count first. None: the users never all had actions waiting before *t_to*."""
    events: list[tuple[float, int, int, int]] = []
    for uid, created, started in actions:
        if uid not in users:
            continue
        events.append((created, 0, uid, 1))
        if started:
            events.append((started, 1, uid, -1))
    events.sort()
    waiting = dict.fromkeys(users, 0)
    i = 0
    while i < len(events) and events[i][0] <= t_from:
        _, _, u, d = events[i]
        waiting[u] += d
        i += 1
    start = t_from if all(waiting[u] > 0 for u in users) else None
    for t, _, u, d in events[i:]:
        if t >= t_to:
            break
        waiting[u] += d
        if start is None:
            if all(waiting[v] > 0 for v in users):
                start = t
        elif waiting[u] <= 0:
            return start, t, f"uid {u} had nothing waiting"
    if start is None or start >= t_to:
        return None
    return start, t_to, "the submission ended"


def fairness_figures(actions: Sequence[tuple[int, float, float]], users: Sequence[int], t_from: float,
                     t_to: float, t0: float = 0.0) -> dict[str, Any]:
    """Each user's dispatch rate (actions started per second) over the
    :func:`backlog_window`, Jain's index of the rates, the second user's
    share of the dispatches; times relative to *t0*."""
    w = backlog_window(actions, users, t_from, t_to)
    total = Counter(u for u, _, _ in actions)
    out: dict[str, Any] = {"created": {str(u): total[u] for u in users}, "window": None, "window_seconds": None,
                           "window_closed_by": None, "started": {}, "rates": {}, "jain": None,
                           "second_user_share": None}
    if w is None:
        return out
    lo, hi, why = w
    span = hi - lo
    started = Counter(u for u, _, s in actions if s and lo <= s < hi)
    rates = {u: started[u] / span for u in users}
    out.update({"window": [round(lo - t0, 3), round(hi - t0, 3)], "window_seconds": round(span, 3),
                "window_closed_by": why, "started": {str(u): started[u] for u in users},
                "rates": {str(u): round(r, 2) for u, r in rates.items()}, "jain": jain(rates.values()),
                "total_rate": round(sum(rates.values()), 2)})
    n = sum(started[u] for u in users)
    if n and len(users) > 1:
        out["second_user_share"] = round(started[users[1]] / n, 4)
    waiting_at_end = Counter(u for u, c, s in actions if c <= hi and (not s or s > hi))
    out["waiting_at_window_end"] = {str(u): waiting_at_end[u] for u in users}
    return out


def drain_capacity(agents: int) -> float:
    """Actions a second the fairness cluster's agents can run at most."""
    return agents * FAIR_SLOTS_ARCHIVE / FAIR_DELAY


def fair_rate(agents: int) -> float:
    """The default --fair-rate: the second user (1 item in FAIR_SPLIT + 1)
    submits FAIR_OVERLOAD times its fair half of the drain capacity."""
    return round(FAIR_OVERLOAD * drain_capacity(agents) / 2 * (FAIR_SPLIT + 1), 1)


def fair_sections(by: str) -> str:
    return f"fair_share: {{by: {by}}}\n"


# ------------------------------------------------------------ fairness: the run


def fairness_run(s: Settings, by: str, seconds: float, rate: float) -> dict[str, Any]:
    """The paced two-user submission on a fresh cluster with fair_share *by*."""
    from bench.workloads import KIND_ARCHIVE as RUN_ARCHIVE
    from bench.workloads import _run_counts, _settle_runs, fresh_cluster
    from coordinator.policy import parse
    from hsm.client import CoordinatorClient

    count = max(1, int(rate * seconds))
    users = [list(FAIR_USERS[0])] * FAIR_SPLIT + [list(FAIR_USERS[1])]
    opt = s.cluster_options(slots=FAIR_SLOTS, null_delay=FAIR_DELAY, policy=fair_sections(by))
    problem: str | None = None
    with fresh_cluster(s, f"fair-{by}", opt) as c:
        answers = replica_policies(c)
        problem = policy_problem(answers, opt.shards, c.policy_version, c.policy_text)
        share_by = parse(c.policy_text or "").share_by
        if problem is None and share_by != by:
            problem = f"the policy set shares by {share_by}, not {by}"
        params = [{**c.client_params(), "addresses": c.addresses, "count": count, "oid0": 1, "seq": SEQ_FAIR,
                   "initiator": "fair0", "cookie0": 1, "users": users, "rate": rate, "interval": FAIR_INTERVAL}]
        with CoordinatorClient(c.addresses, timeout=60, tls=c.harness_tls) as client:
            client.control("disabled")
            with cl.ClientGroup(cl.paced_worker, params) as g:
                g.start()
                s.say(f"   fair share by {by}: submitting {count:,} archives over {seconds:g} s ({rate:g}/s, "
                      f"{FAIR_SPLIT} of uid {FAIR_USERS[0][0]} for each of uid {FAIR_USERS[1][0]}); dispatch held "
                      f"for {FAIR_HOLD:g} s")
                t0 = g.release()
                time.sleep(FAIR_HOLD)
                t_enable = time.time()
                client.control("enabled")
                res = g.results(timeout=seconds * 2 + 120)
            t_sub = res[0]["t_end"]
            acts = [(a.requesters[0].uid if a.requesters else -1, a.created, a.started)
                    for a in client.list_actions(include_terminal=True, page_size=10_000)]
        rc = _run_counts(_settle_runs(c), RUN_ARCHIVE)
    uids = [u for u, _ in FAIR_USERS]
    fig = fairness_figures(acts, uids, t_enable + FAIR_SETTLE, t_sub, t0)
    outcomes = res[0]["outcomes"]
    submitted = {u: sum(outcomes.get(str(u), {}).values()) for u in uids}
    created = {u: outcomes.get(str(u), {}).get("CREATED", 0) for u in uids}
    if problem is None and created != submitted:
        problem = f"not every submitted item was created: {outcomes}"
    if problem is None and (fig["window_seconds"] or 0) < FAIR_MIN_WINDOW:
        problem = (f"the window in which both users had actions waiting lasted {fig['window_seconds']} s, "
                   f"less than {FAIR_MIN_WINDOW:g} s")
    out = {"share_by": by, "seconds": seconds, "rate": rate, "items": count,
           "submitted": {str(u): n for u, n in submitted.items()}, "outcomes": outcomes,
           "submit_seconds": round(t_sub - t0, 2), "dispatch_enabled_at": round(t_enable - t0, 3),
           "max_submit_lag_s": res[0].get("max_lag_s"), "batch_items": res[0].get("batch_items"),
           "drain_capacity": drain_capacity(opt.agents), **fig, "run_twice": rc["run_twice"],
           "policy_version": c.policy_version, "policy_sha256": digest(c.policy_text or ""),
           "problem": problem, "cluster": opt.describe()}
    rates = fig["rates"]
    s.say(f"   fair share by {by}: window {fig['window_seconds']} s ({fig['window_closed_by']}); dispatch/s "
          + ", ".join(f"uid {u} {rates.get(str(u))}" for u in uids) + f"; Jain {fig['jain']}"
          + (f"; !! {problem}" if problem else ""))
    return out


def fairness_medians(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    def med(get: Callable[[Mapping[str, Any]], Any]) -> Any:
        v = [x for x in (get(r) for r in runs) if x is not None]
        return round(statistics.median(v), 4) if v else None

    def rate_of(uid: str) -> Callable[[Mapping[str, Any]], Any]:
        return lambda r: (r.get("rates") or {}).get(uid)

    keys = ("jain", "second_user_share", "window_seconds", "total_rate")
    return {**{k: med(lambda r, k=k: r.get(k)) for k in keys},  # type: ignore[misc]
            "rates": {str(u): med(rate_of(str(u))) for u, _ in FAIR_USERS}, "runs": len(runs)}


def fairness_verdict(user: Mapping[str, Any], none: Mapping[str, Any], target: float = FAIR_TARGET) -> dict[str, Any]:
    j, base = user.get("jain"), none.get("jain")
    st = "not measured" if j is None else ("met" if j >= target else "missed")
    return {"jain": j, "baseline_jain": base, "target": target, "status": st,
            "jain_over_baseline": round(j / base, 3) if j is not None and base else None}


# ------------------------------------------------------------ tape: the layout and the figures


def tape_layout(volumes: int, files: int, seed: int = TAPE_SEED) -> list[tuple[str, int]]:
    """(volume, position) of every file of the synthetic layout, in the
    order the restores are submitted (file n has the FID oid n + 1):
    *volumes* volumes ``V00``, ``V01``, ... of *files* files each, at
    distinct positions below ``TAPE_SPAN * files``, all shuffled; a pure
    function of its arguments."""
    if volumes < 1 or files < 1:
        raise ValueError(f"a layout needs volumes and files, not {volumes} x {files}")
    rng = random.Random(seed * 1_000_003 + volumes * 1_009 + files)
    width = max(2, len(str(volumes - 1)))
    out: list[tuple[str, int]] = []
    for v in range(volumes):
        name = f"V{v:0{width}d}"
        out += [(name, pos) for pos in sorted(rng.sample(range(files * TAPE_SPAN), files))]
    rng.shuffle(out)
    return out


def tape_data(volume: str, position: int, mode: str) -> str:
    """A restore's request data: the coordinator's tape hints (policy), or
    the same facts under keys it does not read (fifo)."""
    if mode == "policy":
        return f"volume={volume},position={position}"
    if mode == "fifo":
        return f"vol={volume},pos={position}"
    raise ValueError(f"tape mode {mode!r}: expected one of {', '.join(TAPE_MODES)}")


def data_fields(data: bytes) -> dict[str, str]:
    """The ``key=value`` pairs of an action's data."""
    out = {}
    for part in data.decode(errors="replace").split(","):
        key, eq, value = part.partition("=")
        if eq:
            out[key.strip()] = value.strip()
    return out


def data_matches(data: bytes, volume: str, position: int, mode: str) -> bool:
    """Whether an action's data is what *mode* sends for (volume, position),
    and the coordinator reads it as it should: the volume and position with
    the policy, no tape hint under fifo (``coordinator.state.hints``)."""
    from coordinator.state import hints

    if data.decode(errors="replace") != tape_data(volume, position, mode):
        return False
    return hints(data) == (("", volume, position) if mode == "policy" else ("", "", 0))


def agent_sequences(rows: Iterable[tuple[str, float, str, int]]) -> dict[str, list[tuple[str, int]]]:
    """Each agent's restores, (volume, position), in the order they were
    handed to it: *rows* are (agent, started, volume, position); restores
    with the same ``started`` (one dispatcher round) in volume, then
    position order."""
    per: dict[str, list[tuple[float, str, int]]] = {}
    for agent, started, volume, position in rows:
        per.setdefault(agent, []).append((started, volume, position))
    return {a: [(v, p) for _, v, p in sorted(xs)] for a, xs in sorted(per.items())}


def switches(volumes: Sequence[str]) -> int:
    """Volume switches: adjacent entries on different volumes."""
    return sum(1 for a, b in zip(volumes, volumes[1:], strict=False) if a != b)


def sequence_figures(seqs: Mapping[str, Sequence[tuple[str, int]]]) -> dict[str, Any]:
    """Per agent and in all: restores, volume switches, the volumes it read,
    the fewest switches that reads them (each mounted once), remounts (a
    mount of a volume it read before), and of its consecutive restores of
    one volume how many move forward on the tape; the volumes read by more
    than one agent."""
    per: dict[str, dict[str, Any]] = {}
    owners: dict[str, set[str]] = {}
    for agent, seq in seqs.items():
        vols = [v for v, _ in seq]
        sw = switches(vols)
        distinct = set(vols)
        for v in distinct:
            owners.setdefault(v, set()).add(agent)
        pairs = [(a, b) for a, b in zip(seq, seq[1:], strict=False) if a[0] == b[0]]
        mounts = sw + 1 if seq else 0
        per[agent] = {"restores": len(seq), "switches": sw, "volumes": len(distinct),
                      "fewest_switches": max(0, len(distinct) - 1), "mounts": mounts,
                      "remounts": mounts - len(distinct), "same_volume_pairs": len(pairs),
                      "forward_pairs": sum(1 for a, b in pairs if b[1] > a[1])}

    def total(key: str) -> int:
        return sum(d[key] for d in per.values())

    pairs_n = total("same_volume_pairs")
    return {"restores": total("restores"), "switches": total("switches"),
            "fewest_switches": total("fewest_switches"), "mounts": total("mounts"), "remounts": total("remounts"),
            "volumes": len(owners), "volumes_on_several_agents": sorted(v for v, a in owners.items() if len(a) > 1),
            "forward_share": round(total("forward_pairs") / pairs_n, 4) if pairs_n else None,
            "per_agent": per}


def mount_runs(seq: Sequence[tuple[str, int]], most: int = 200) -> list[list[Any]]:
    """An agent's restores as mounts: [volume, restores read in a row], the
    first *most* of them."""
    out: list[list[Any]] = []
    for v, _ in seq:
        if out and out[-1][0] == v:
            out[-1][1] += 1
        elif len(out) >= most:
            break
        else:
            out.append([v, 1])
    return out


def replica_figures(rows: Iterable[tuple[str, float, str, int, str]]) -> dict[str, Any]:
    """Who made the switches, with several replicas leading shards (each
    decides on its own which volume an agent reads, for the shards it
    leads): *rows* are (agent, started, volume, position, replica that
    handed it over). Of the switches (in each agent's order, as
    :func:`agent_sequences`), those between restores two different replicas
    handed over; and the switches within each replica's own hand-outs to
    each agent, summed."""
    per: dict[str, list[tuple[float, str, int, str]]] = {}
    for agent, started, volume, position, by in rows:
        per.setdefault(agent, []).append((started, volume, position, by))
    between = within = 0
    for xs in per.values():
        xs.sort()
        between += sum(1 for a, b in zip(xs, xs[1:], strict=False) if a[1] != b[1] and a[3] != b[3])
        mine: dict[str, list[str]] = {}
        for _, v, _, by in xs:
            mine.setdefault(by, []).append(v)
        within += sum(switches(vs) for vs in mine.values())
    return {"switches_between_replicas": between, "switches_within_each_replica": within}


def forward_within_shard(rows: Iterable[tuple[str, float, str, int, int]]) -> float | None:
    """Of each agent's consecutive restores of one volume from one shard
    (*rows*: agent, started, volume, position, shard; in the order of
    :func:`agent_sequences`), the share that moves forward on the tape: a
    shard keeps its restores of a volume in position order, the cluster
    spreads a volume's files over the shards by FID."""
    per: dict[str, list[tuple[float, str, int, int]]] = {}
    for agent, started, volume, position, shard in rows:
        per.setdefault(agent, []).append((started, volume, position, shard))
    pairs = forward = 0
    for xs in per.values():
        xs.sort()
        for a, b in zip(xs, xs[1:], strict=False):
            if a[1] == b[1] and a[3] == b[3]:
                pairs += 1
                forward += b[2] > a[2]
    return round(forward / pairs, 4) if pairs else None


def fifo_expected_switches(layout: Sequence[tuple[str, int]], agents: int) -> float:
    """Switches to expect in arrival order: each agent's restores a random
    sample of the submission order, adjacent ones on different volumes with
    probability 1 - sum(share of each volume)^2."""
    n = len(layout)
    if n < 2:
        return 0.0
    shares = Counter(v for v, _ in layout)
    differ = 1.0 - sum((k / n) ** 2 for k in shares.values())
    return round(differ * max(0, n - max(1, agents)), 1)


def tape_medians(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    def med(key: str) -> Any:
        v = [r[key] for r in runs if r.get(key) is not None]
        return round(statistics.median(v), 4) if v else None

    return {**{k: med(k) for k in ("switches", "fewest_switches", "remounts", "forward_share", "drain_seconds",
                                   "restores_per_s", "switches_between_replicas", "switches_within_each_replica",
                                   "forward_share_within_shard")},
            "runs": len(runs)}


def tape_verdict(policy_switches: float | None, fifo_switches: float | None,
                 target: float = TAPE_TARGET) -> dict[str, Any]:
    """The figure: switches with the policy over switches in arrival order,
    at most *target*."""
    if policy_switches is None or not fifo_switches:
        return {"ratio": None, "target": target, "status": "not measured", "policy_switches": policy_switches,
                "fifo_switches": fifo_switches}
    ratio = round(policy_switches / fifo_switches, 4)
    return {"ratio": ratio, "target": target, "status": "met" if ratio <= target else "missed",
            "policy_switches": policy_switches, "fifo_switches": fifo_switches}


def stall_picture(acts: Iterable[tuple[str, str, str, float, bool]]) -> dict[str, Any]:
    """Where a stalled run's restores wait and what was handed out last:
    *acts* are (agent, leader of its shard, volume, started, waiting).
    ``waiting``: volume -> replica leading the shards of its waiting
    restores -> how many; ``last_handed``: agent -> replica -> the volume of
    the last restore that replica's shards gave it (replicas that gave one
    agent different volumes decide its mounted volume apart)."""
    waiting: dict[str, Counter[str]] = {}
    last: dict[str, dict[str, tuple[float, str]]] = {}
    for agent, leader, volume, started, is_waiting in acts:
        if is_waiting:
            waiting.setdefault(volume, Counter())[leader] += 1
        elif agent and started:
            seen = last.setdefault(agent, {}).get(leader)
            if seen is None or started > seen[0]:
                last[agent][leader] = (started, volume)
    return {"waiting": {v: dict(sorted(c.items())) for v, c in sorted(waiting.items())},
            "last_handed": {a: {r: v for r, (_, v) in sorted(d.items())} for a, d in sorted(last.items())}}


def drain_or_stall(c: BenchCluster, timeout: float, stall: float = TAPE_STALL,
                   interval: float = 0.1) -> tuple[float, str | None]:
    """Until nothing waits or runs (the time then, None), or until the
    count of what waits and runs has not moved for *stall* seconds, or
    *timeout* has passed (the time then, why)."""
    t0 = last_change = time.monotonic()
    last: int | None = None
    while True:
        c.check_alive()
        try:
            pending: int | None = c.pending()
        except RuntimeError:
            pending = None
        if pending == 0:
            return time.time(), None
        now = time.monotonic()
        if pending != last:
            last, last_change = pending, now
        elif now - last_change >= stall:
            return time.time(), f"stalled: {pending:,} restores waiting or running, none ended for {stall:g} s"
        if now - t0 >= timeout:
            return time.time(), f"not drained in {timeout:g} s ({pending} waiting or running)"
        time.sleep(interval)


# ------------------------------------------------------------ tape: the run


def tape_run(s: Settings, mode: str, layout: Sequence[tuple[str, int]], hold: bool = True) -> dict[str, Any]:
    """The layout's restores, in its order, on a fresh cluster, with the
    data of *mode*; *hold*: dispatch held until all are waiting everywhere."""
    from bench import workloads as wl
    from coordinator.policy import parse
    from hsm.client import CoordinatorClient
    from hsm.v1 import types_pb2 as T

    n = len(layout)
    data = [tape_data(v, pos, mode) for v, pos in layout]
    opt = s.cluster_options(slots=TAPE_SLOTS, null_delay=TAPE_DELAY, policy="",
                            max_terminal=max_terminal_for(n, s.shards))
    problems: list[str] = []
    with wl.fresh_cluster(s, f"tape-{mode}", opt) as c:
        params = [{**c.client_params(), "addresses": c.addresses, "count": n, "oid0": 1, "seq": SEQ_TAPE,
                   "kind": "restore", "initiator": f"tape-{mode}", "cookie0": 1, "batch": TAPE_BATCH, "inflight": 1,
                   "data": data}]
        with CoordinatorClient(c.addresses, timeout=60, tls=c.harness_tls) as client:
            got = client.get_policy()
            pol = parse(got.text)
            if hold:
                client.control("disabled")
            with cl.ClientGroup(cl.submit_worker, params) as g:
                g.start()
                s.say(f"   tape ({mode}): submitting {n:,} restores of {len(set(v for v, _ in layout))} volumes "
                      f"(batches of {TAPE_BATCH}){'; dispatch held until all are in' if hold else ''}")
                t0 = g.release()
                res = g.results(timeout=max(300, n / 20))
            t_sub = res[0]["t_end"]
            outcomes = res[0]["outcomes"]
            created = outcomes.get("CREATED", 0)
            if outcomes != {"CREATED": n}:
                problems.append(f"outcomes {outcomes}, not {n:,} CREATED")
            t_enable = t_sub if hold else t0
            if hold:
                wl.wait_waiting(c, created, max(60, n / 500))
                t_enable = time.time()
                client.control("enabled")
            t_end, stalled = drain_or_stall(c, timeout=max(300, n / 5))
            acts = [a for a in client.list_actions(include_terminal=True, page_size=10_000) if a.kind == T.RESTORE]
        rc = wl._run_counts(wl._settle_runs(c), wl.KIND_RESTORE)
        leaders = c.leaders()
        stall: dict[str, Any] | None = None
        if stalled:
            stall = {"why": stalled, "leaders": {str(k): v for k, v in sorted(leaders.items())},
                     **stall_picture((a.agent, leaders.get(a.shard, "?"), layout[a.fid.oid - 1][0], a.started,
                                      a.state == T.WAITING) for a in acts
                                     if a.fid.seq == SEQ_TAPE and 1 <= a.fid.oid <= n)}
            stall["waiting_examples"] = [  # [action id, shard, its leader, volume, position, attempt, last agent]
                [a.action_id, a.shard, leaders.get(a.shard, "?"), *layout[a.fid.oid - 1], a.attempt, a.agent]
                for a in acts if a.state == T.WAITING and a.fid.seq == SEQ_TAPE and 1 <= a.fid.oid <= n][:20]
            stall["evidence"] = wl._keep_evidence(s, c, f"tape-{mode}", stalled)
    per_oid: dict[int, list[Any]] = {}
    for a in acts:
        per_oid.setdefault(a.fid.oid if a.fid.seq == SEQ_TAPE else -1, []).append(a)
    missing = [oid for oid in range(1, n + 1) if oid not in per_oid]
    several = [oid for oid, xs in per_oid.items() if len(xs) > 1]
    states = Counter(T.ActionState.Name(a.state) for a in acts)
    wrong_data = [a.action_id for a in acts if 1 <= a.fid.oid <= n and a.fid.seq == SEQ_TAPE
                  and not data_matches(a.data, *layout[a.fid.oid - 1], mode)]
    if stall:
        problems.append(stall["why"])
    if missing or several or -1 in per_oid:
        problems.append(f"{len(missing)} restores missing, {len(several)} FIDs with several restores, "
                        f"{len(per_oid.get(-1, []))} foreign restores")
    if states != Counter({"SUCCEEDED": n}):
        problems.append(f"restore states {dict(states)}, not {n:,} SUCCEEDED")
    if rc["run_twice"] or rc["actions_run"] != n:
        problems.append(f"{rc['actions_run']:,} restores run on the movers ({rc['run_twice']} more than once), "
                        f"not {n:,} once each")
    if wrong_data:
        problems.append(f"{len(wrong_data)} restores whose data is not what was sent or is read otherwise "
                        f"(action {wrong_data[0]})")
    rows = [(a.agent, a.started, *layout[a.fid.oid - 1], leaders.get(a.shard, "?")) for a in acts
            if a.fid.seq == SEQ_TAPE and 1 <= a.fid.oid <= n and a.started]
    seqs = agent_sequences(r[:4] for r in rows)
    fig = {**sequence_figures(seqs), **replica_figures(rows),
           "forward_share_within_shard": forward_within_shard(
               (a.agent, a.started, *layout[a.fid.oid - 1], a.shard) for a in acts
               if a.fid.seq == SEQ_TAPE and 1 <= a.fid.oid <= n and a.started)}
    ties = sum(k - 1 for k in Counter((a.agent, a.started) for a in acts if a.started).values())
    drain = t_end - t_enable
    out = {"mode": mode, "restores": n, "dispatch_held": hold, "outcomes": outcomes, "states": dict(states),
           "submit_seconds": round(t_sub - t0, 2), "drain_seconds": round(drain, 2),
           "restores_per_s": round(n / drain, 1) if drain > 0 else None, **fig,
           "fifo_expected_switches": fifo_expected_switches(layout, opt.agents),
           "restores_sharing_a_start": ties, "retried": sum(1 for a in acts if a.attempt > 1),
           "run_twice": rc["run_twice"], "mover_runs": rc["runs"], "problems": problems, "stall": stall,
           "shard_leaders": {str(k): v for k, v in sorted(leaders.items())},
           "mount_runs": {a: mount_runs(sq) for a, sq in seqs.items()},
           "policy_version": int(got.version), "max_mount": pol.max_mount,
           "starvation_after": pol.starvation_after, "slots": TAPE_SLOTS, "null_delay": TAPE_DELAY,
           "batch": TAPE_BATCH, "cluster": opt.describe()}
    s.say(f"   tape ({mode}): {n:,} restores drained in {drain:.1f} s; {fig['switches']:,} volume switches "
          f"(fewest possible {fig['fewest_switches']}, remounts {fig['remounts']}); forward share "
          f"{fig['forward_share']} ({fig['forward_share_within_shard']} between restores of one shard); switches between restores two replicas handed over "
          f"{fig['switches_between_replicas']}, within each replica's own {fig['switches_within_each_replica']}; per agent "
          + ", ".join(f"{a} {d['restores']} restores / {d['volumes']} volumes / {d['switches']} switches"
                      for a, d in fig["per_agent"].items())
          + (f"; !! {'; '.join(problems)}" if problems else ""))
    if stall:
        s.say(f"   !! tape ({mode}) stalled; waiting restores per volume and shard leader: {stall['waiting']}; the "
              f"volume each replica handed each agent last: {stall['last_handed']}")
    return out


# ------------------------------------------------------------ the run


def policy(args: argparse.Namespace, s: Settings, say: Callable[[str], None]) -> int:
    from bench.compare import save
    from bench.machine import machine

    n = s.flood_actions
    repeat = max(1, int(getattr(args, "repeat", 1) or 1))
    parts = parse_parts(getattr(args, "parts", None))
    seconds = float(getattr(args, "fair_seconds", None) or FAIR_SECONDS.get(s.mode, FAIR_SECONDS["quick"]))
    rate = float(getattr(args, "fair_rate", None) or fair_rate(s.agents))
    tape_volumes = int(getattr(args, "tape_volumes", None) or TAPE_VOLUMES)
    tape_files = int(getattr(args, "tape_files", None) or TAPE_FILES.get(s.mode, TAPE_FILES["quick"]))
    tape_hold = not getattr(args, "tape_live", False)
    mach = machine()
    t0 = time.monotonic()
    rules = rules_yaml()
    s = dataclasses.replace(s, agent_grace=AGENT_GRACE)
    say(f"== policy ({s.mode}): {', '.join(parts)}; {repeat} round(s); {mach['cores']} cores")
    failures: dict[str, str] = {}
    broken: list[str] = []
    out: dict[str, Any] = {
        "kind": "policy", "mode": s.mode, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": mach,
        "parts": list(parts), "rounds": repeat, "policy": policy_record(rules),
        "cluster": {"replicas": s.replicas, "shards": s.shards, "agents": s.agents, "clients": s.clients,
                    "batch": s.batch, "inflight": s.inflight, "fsync": s.fsync, "encrypt": s.encrypt,
                    "tls": s.tls, "agent_grace": AGENT_GRACE}}
    if "cost" in parts:
        effects = expected_effects(n, s.clients)
        out["policy"]["expected_effects"] = effects
        say(f"== cost: archive flood of {n:,} (items with facts) without rules and with {RULES} rules; the rules "
            f"give {effects['priority_set_pct']} % of the items a priority and tag {effects['tagged_pct']} %, "
            f"refuse {effects['denied_pct']} %; {effects['mean_rules_matched']} rules match an item on average")
        sc = dataclasses.replace(s, item_facts=True, policy_text=rules, agent_tags=",".join(routing_tags()))

        def sampled(d: dict[str, Any], mode: str) -> tuple[dict[str, Any], str]:
            pr = d.get("policy_probe") or {}
            return ({"sampled": pr.get("sampled"), "sampled_prioritized": pr.get("sampled_prioritized"),
                     "sampled_per_agent": pr.get("sampled_per_agent")},
                    f"; {pr.get('sampled_prioritized')} of {pr.get('sampled')} sampled actions given a priority "
                    f"by a rule; per agent {pr.get('sampled_per_agent')}")

        got = alternate_floods(sc, n, repeat, say, label="policy", setting="policy", make_probe=CostProbe,
                               probe_key="policy_probe", extra=sampled)
        if got is None:
            return 130
        runs, pairs, fl, timeline = got
        failures.update(fl)
        on, off = medians(runs["on"]), medians(runs["off"])
        broken += [f"policy {mode}: {d['run_twice']} actions ran twice" for mode in MODES for d in runs[mode]
                   if d.get("run_twice")]
        broken += [f"policy {mode}: outcomes {d.get('outcomes')}, not {n:,} CREATED" for mode in MODES
                   for d in runs[mode] if d.get("outcomes") != {"CREATED": n}]
        out["cost"] = {"actions": n, "flood": {"on": on, "off": off},
                       "verdict": verdict(on, off, [p["ratio"] for p in pairs], target=TARGET),
                       "rounds_detail": pairs, "timeline": timeline, "floods": runs}
    if "fairness" in parts:
        say(f"== fairness: two users at {FAIR_SPLIT}:1, {rate:g} archives/s for {seconds:g} s; agents drain at "
            f"most {drain_capacity(s.agents):g}/s; fair share by none and by user")
        got = _alternate(repeat, SHARE_MODES, "fair share by {mode}", lambda by: fairness_run(s, by, seconds, rate),
                         ("share_by", "jain", "rates", "window_seconds", "window_closed_by", "second_user_share"),
                         say, failures, broken)
        if got is None:
            return 130
        fair, fair_timeline = got
        med = {by: fairness_medians(fair[by]) for by in SHARE_MODES}
        out["fairness"] = {"target": FAIR_TARGET, "seconds": seconds, "rate": rate, "split": FAIR_SPLIT,
                           "users": [u for u, _ in FAIR_USERS], "slots": FAIR_SLOTS, "null_delay": FAIR_DELAY,
                           "hold": FAIR_HOLD, "settle": FAIR_SETTLE, "drain_capacity": drain_capacity(s.agents),
                           "medians": med, "verdict": fairness_verdict(med["user"], med["none"]),
                           "timeline": fair_timeline, "runs": fair}
    if "tape" in parts:
        layout = tape_layout(tape_volumes, tape_files)
        say(f"== tape: {tape_volumes} volumes x {tape_files} files = {len(layout):,} restores, the same seeded order "
            f"with volume and position in their data (policy) and under keys the coordinator does not read (fifo)")
        got = _alternate(repeat, TAPE_MODES, "tape {mode}", lambda mode: tape_run(s, mode, layout, hold=tape_hold),
                         ("mode", "switches", "fewest_switches", "remounts", "forward_share", "drain_seconds"),
                         say, failures, broken)
        if got is None:
            return 130
        tape, tape_timeline = got
        tmed = {m: tape_medians(tape[m]) for m in TAPE_MODES}
        out["tape"] = {"target": TAPE_TARGET, "volumes": tape_volumes, "files_per_volume": tape_files,
                       "restores": len(layout), "seed": TAPE_SEED, "span": TAPE_SPAN, "slots": TAPE_SLOTS,
                       "null_delay": TAPE_DELAY, "batch": TAPE_BATCH, "dispatch_held": tape_hold,
                       "fifo_expected_switches": fifo_expected_switches(layout, s.agents), "medians": tmed,
                       "verdict": tape_verdict(tmed["policy"]["switches"], tmed["fifo"]["switches"]),
                       "timeline": tape_timeline, "runs": tape}
    out.update({"wall_seconds": round(time.monotonic() - t0, 1), "failures": failures, "invariant_breaks": broken})
    md = markdown(out)
    if not args.no_save:
        paths = save(out, md, args.results, name="policy")
        say(f"   results: {', '.join(str(p) for p in paths)}")
    say(md)
    return 1 if failures or broken else 0


def _alternate(repeat: int, modes: Sequence[str], label: str, run: Callable[[str], dict[str, Any]],
               keep: Sequence[str], say: Callable[[str], None], failures: dict[str, str],
               broken: list[str]) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]] | None:
    """*run(mode)* for each of *modes*, *repeat* rounds, alternating which
    goes first (:func:`order`): the fairness and tape parts. A run that
    raises is a failure (the others go on); one whose result names a
    ``problem`` is a failure too, and one with ``problems`` or
    ``run_twice`` breaks an invariant. Returns the counted results per
    mode and the timeline (the *keep* figures of every run); None when
    interrupted."""
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    timeline: list[dict[str, Any]] = []
    for rnd in range(repeat):
        for k, mode in enumerate(order(rnd, modes)):
            name = f"{label.format(mode=mode)} (round {rnd + 1})"
            say(f"== {name}, {'first' if k == 0 else 'second'}")
            t1 = time.monotonic()
            try:
                d = run(mode)
            except KeyboardInterrupt:
                say("!! interrupted")
                return None
            except Exception as exc:  # noqa: BLE001 - reported, the other runs go on
                failures[name] = f"{type(exc).__name__}: {exc}"
                say(f"!! {name} failed: {exc}")
                continue
            d.update({"round": rnd + 1, "position": k + 1, "wall_seconds": round(time.monotonic() - t1, 1)})
            timeline.append({key: d.get(key) for key in ("round", *keep, "position", "wall_seconds")})
            if d.get("run_twice"):
                broken.append(f"{name}: {d['run_twice']} actions ran twice")
            if d.get("problems"):
                broken.append(f"{name}: {'; '.join(d['problems'])}")
                continue
            if d.get("problem"):
                failures[name] = f"not measured as designed: {d['problem']}"
                continue
            results[mode].append(d)
    return results, timeline


# ------------------------------------------------------------ output


def markdown(out: Mapping[str, Any]) -> str:
    m = out.get("machine", {})
    cl_ = out["cluster"]
    pol = out.get("policy") or {}
    lines = [
        "# hsm-coordinator benchmark: the policy (admission rules, fair share, tape order)",
        "",
        f"{out['when']}, {out['mode']} mode, {out.get('wall_seconds', 0):,.0f} s; {m.get('cores')} cores "
        f"({m.get('cpu', '?')}), Python {m.get('python', '?')}, grpcio {m.get('versions', {}).get('grpcio', '?')}, "
        f"commit {m.get('git_commit', '?')}{' (dirty)' if m.get('git_dirty') else ''}. Cluster "
        f"{cl_['replicas']} replicas x {cl_['shards']} shards, {cl_['agents']} agentd (null mover), "
        f"{cl_['clients']} client processes (batches of {cl_['batch']}, {cl_['inflight']} in flight)"
        f"{', mutual TLS' if cl_.get('tls') else ''}; agent_grace {cl_.get('agent_grace', AGENT_GRACE):g} s in every "
        "cluster (the policy's default; the bench's usual 30 s is shorter than the agents' leases need).",
        "",
    ]
    cost = out.get("cost")
    if cost:
        on, off = cost["flood"]["on"], cost["flood"]["off"]
        v = cost.get("verdict") or {}
        eff = pol.get("expected_effects") or {}
        cats = pol.get("categories") or {}
        lines += [
            f"## Cost: archive flood of {cost['actions']:,} with {pol.get('rules')} rules and without "
            f"({out['rounds']} round(s), medians)",
            "",
            "Both floods send the same items, each with a path, a size and a requester uid/gid "
            "(bench.clients.item_facts); off: the cluster's first policy (version 1, no rules); on: the same "
            f"policy with the site rules (sha256 {pol.get('rules_sha256')}, {pol.get('rules_bytes')} bytes: "
            + ", ".join(f"{n} {c}" for c, n in sorted(cats.items())) + " rules; deny rules "
            + ", ".join(f"`{r}`" for r in pol.get("deny_rules", [])) + ", which match no item of the flood), "
            "set as version 2 before the clock starts. What the rules do to the flood's items (the policy's own "
            f"admit over {eff.get('items_evaluated', 'n/a')} of them): {eff.get('priority_set_pct', 'n/a')} % get "
            f"a priority, {eff.get('tagged_pct', 'n/a')} % a tag, {eff.get('denied_pct', 'n/a')} % are refused, "
            f"{eff.get('untouched_pct', 'n/a')} % untouched; {eff.get('mean_rules_matched', 'n/a')} rules match an "
            "item on average.",
            "",
            *comparison_lines("policy", v, on, off),
            "",
            "| round | policy | ran | actions/s | seconds | replica µs per action | whole µs per action "
            "| Raft entries per action | outsiders' CPU share (%) | sampled actions given a priority "
            "| sampled actions per agent | wall s (with start and stop) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for e in cost.get("timeline", []):
            lines.append(f"| {e['round']} | {e['policy']} | {'first' if e['position'] == 1 else 'second'} | "
                         f"{_f(e.get('actions_per_s'))} | {_f(e.get('seconds'))} | "
                         f"{_f(e.get('replica_us_per_action'))} | {_f(e.get('total_us_per_action'))} | "
                         f"{_f(e.get('raft_entries_per_action'), '{:.3f}')} | "
                         f"{_f(e.get('outsiders_cpu_share_pct'))} | {e.get('sampled_prioritized', 'n/a')} of "
                         f"{e.get('sampled', 'n/a')} | "
                         + (", ".join(f"{a} {k}" for a, k in (e.get("sampled_per_agent") or {}).items()) or "n/a")
                         + f" | {_f(e.get('wall_seconds'))} |")
        lines += ["", "Each flood checked its mode: every replica's GetPolicy gave the version and text of its "
                  "mode with every shard at that version, and the first actions listed carry their item's uid "
                  "and the priority and tag the rules give their item. Every agent serves the routing tags "
                  f"({', '.join(pol.get('routing_tags', []))}) in both modes; a tagged action goes to the agent "
                  "the product's affinity hash picks for its tag while that agent has a free slot, else to "
                  "another that serves the tag.", ""]
    fair = out.get("fairness")
    if fair:
        v = fair.get("verdict") or {}
        med = fair.get("medians") or {}
        u1, u2 = (str(u) for u in fair["users"])
        lines += [
            f"## Fairness: two users at {fair['split']}:1, fair share by user and by none",
            "",
            f"One client submits {fair['rate']:g} archives/s for {fair['seconds']:g} s, {fair['split']} of uid "
            f"{u1} for each of uid {u2}; agents with {fair['slots']} and a null mover of {fair['null_delay']:g} s "
            f"(at most {fair['drain_capacity']:g} actions/s), dispatch held for the first {fair['hold']:g} s. "
            f"Window: from {fair['settle']:g} s after dispatch is enabled while both users have actions waiting, "
            "until one has none or the submission ends. Each user's dispatch rate is its actions started in the "
            "window per second; Jain's index (x1 + x2)^2 / (2 (x1^2 + x2^2)) of the two.",
            "",
            f"**Jain's index with fair share by user: {_f(v.get('jain'), '{:.3f}')}** (target ≥ {v.get('target')}: "
            f"**{v.get('status')}**); by none (the baseline): {_f(v.get('baseline_jain'), '{:.3f}')}; ratio "
            f"{_f(v.get('jain_over_baseline'), '{:.3f}')}.",
            "",
            f"| fair share by | Jain's index | uid {u1} dispatch/s | uid {u2} dispatch/s | uid {u2}'s share of "
            "dispatches | window (s) | runs |",
            "|---|---|---|---|---|---|---|",
        ]
        for by in SHARE_MODES:
            mm = med.get(by) or {}
            r = mm.get("rates") or {}
            lines.append(f"| {by} | {_f(mm.get('jain'), '{:.3f}')} | {_f(r.get(u1))} | {_f(r.get(u2))} | "
                         f"{_f(mm.get('second_user_share'), '{:.3f}')} | {_f(mm.get('window_seconds'))} | "
                         f"{mm.get('runs', 0)} |")
        lines += ["", "| round | by | ran | Jain's index | window (s) | closed by | wall s |", "|---|---|---|---|---|---|---|"]
        for e in fair.get("timeline", []):
            lines.append(f"| {e['round']} | {e['share_by']} | {'first' if e['position'] == 1 else 'second'} | "
                         f"{_f(e.get('jain'), '{:.3f}')} | {_f(e.get('window_seconds'))} | "
                         f"{e.get('window_closed_by') or 'n/a'} | {_f(e.get('wall_seconds'))} |")
        lines.append("")
    if out.get("failures") or out.get("invariant_breaks"):
        lines += ["**Failures:** " + "; ".join([*[f"{k}: {x}" for k, x in out.get("failures", {}).items()],
                                                 *out.get("invariant_breaks", [])]), ""]
    tape = out.get("tape")
    if tape:
        v = tape.get("verdict") or {}
        med = tape.get("medians") or {}
        lines += [
            f"## Tape-aware restore order: {tape['volumes']} volumes x {tape['files_per_volume']} files, with the "
            "policy and in arrival order",
            "",
            f"{tape['restores']:,} restores of a synthetic layout (seed {tape['seed']}; each file at a distinct "
            "position on its volume), submitted in the same shuffled order by one client in batches of "
            f"{tape['batch']}, to agents with {tape['slots']} and a null mover of {tape['null_delay']:g} s; "
            + ("dispatch held until every restore was in. " if tape.get("dispatch_held")
               else "submitted while dispatch ran. ")
            + "policy: `volume=V,position=P` in each restore's data; fifo: the same facts as `vol=V,pos=P`, which "
            "the coordinator does not read. A switch: two restores handed to an agent one after the other on "
            "different volumes (restores handed over in one dispatcher round: in volume, then position order), "
            "summed over the agents. Each replica decides which volume an agent reads for the shards it leads: "
            "a switch between restores two replicas handed over is theirs together. A step forward: the next "
            "restore of the same volume lies further on the tape (each shard keeps its restores of a volume in "
            "position order; a volume's files are spread over the shards).",
            "",
            f"**Volume switches, policy / fifo: {_f(v.get('ratio'), '{:.4f}')}** (target ≤ {v.get('target')}: "
            f"**{v.get('status')}**); policy {_f(v.get('policy_switches'), '{:,.0f}')}, fifo "
            f"{_f(v.get('fifo_switches'), '{:,.0f}')} (arrival order: about "
            f"{_f(tape.get('fifo_expected_switches'), '{:,.0f}')} expected).",
            "",
            "| run | volume switches | fewest possible | remounts | switches between two replicas' hand-outs "
            "| same-volume steps forward on the tape (of them, within one shard) | drain (s) | restores/s | runs |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for mode in TAPE_MODES:
            mm = med.get(mode) or {}
            lines.append(f"| {mode} | {_f(mm.get('switches'), '{:,.0f}')} | {_f(mm.get('fewest_switches'), '{:,.0f}')}"
                         f" | {_f(mm.get('remounts'), '{:,.0f}')} | {_f(mm.get('switches_between_replicas'), '{:,.0f}')}"
                         f" | {_f(mm.get('forward_share'), '{:.3f}')} "
                         f"({_f(mm.get('forward_share_within_shard'), '{:.3f}')}) | "
                         f"{_f(mm.get('drain_seconds'))} | {_f(mm.get('restores_per_s'))} | {mm.get('runs', 0)} |")
        lines += ["", "| round | run | ran | volume switches | remounts | forward share | drain (s) | wall s |",
                  "|---|---|---|---|---|---|---|---|"]
        for e in tape.get("timeline", []):
            lines.append(f"| {e['round']} | {e['mode']} | {'first' if e['position'] == 1 else 'second'} | "
                         f"{_f(e.get('switches'), '{:,.0f}')} | {_f(e.get('remounts'), '{:,.0f}')} | "
                         f"{_f(e.get('forward_share'), '{:.3f}')} | {_f(e.get('drain_seconds'))} | "
                         f"{_f(e.get('wall_seconds'))} |")
        lines.append("")
    lines += ["Every run's full results (and the rules' text) are in `policy-latest.json`; one file per run under "
              "`runs/`.", ""]
    return "\n".join(lines)
