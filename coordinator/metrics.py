"""Prometheus metrics of a replica (issue 15): ``metrics_listen`` in the
replica's configuration (``--metrics-listen HOST:PORT``) serves them over
HTTP at ``/metrics``, in Prometheus's text format, from prometheus-client's
own server thread.

Two kinds of figures, so that the hot path pays (almost) nothing:

* read when Prometheus scrapes (:class:`ReplicaView`, built by
  ``CoordinatorNode.metrics_view`` on the event loop, where the node's
  state is consistent): actions per shard, kind and state; the dispatch
  queues' depths per shard, kind and archive id; each shard's Raft term,
  commit and applied index, whether this replica leads it and whether it
  has a leader, its journal's size and its last snapshot's duration; each
  agent's slots, credits and running actions as this replica sees them;
* counted as things happen: what the shards' state machine reports
  (``coordinator.state`` effects :class:`~coordinator.state.FirstStart`,
  :class:`~coordinator.state.Requeued`, :class:`~coordinator.state.Ended`),
  counted by the replica leading the shard when it applies them, so that a
  sum over the replicas counts each once (a leader change may drop or
  double the few being applied then); and every gRPC call by method and
  status code, on the replica that answered it.

Counters restart from 0 when a replica restarts (Prometheus's ``rate``
handles that). Label values: ``kind`` archive, restore or remove;
``state`` as ``hsmctl`` prints it (SUCCEEDED, FAILED, CANCELED, ...);
``errno`` its symbolic name (EIO, ECANCELED; ``0`` for none).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily, Metric

from coordinator.state import Ended, FirstStart, Requeued, State
from hsm.metrics import RUN_BUCKETS, WAIT_BUCKETS, Exporter, errno_label, kind_label


@dataclass
class ShardView:
    index: int
    term: int
    commit_index: int
    applied_index: int
    leading: bool
    has_leader: bool
    unwritable: bool
    journal_bytes: int
    last_snapshot_seconds: float
    #: (kind, state) -> actions
    counts: dict[tuple[int, int], int] = field(default_factory=dict)
    #: (kind, archive id) -> actions ready to be dispatched
    queues: dict[tuple[int, int], int] = field(default_factory=dict)
    #: HSM event log: records kept, dropped by retention, and per consumer (lag, missed)
    events_retained: int = 0
    events_dropped: int = 0
    consumers: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass
class AgentView:
    agent_id: str
    connected: bool  # a live session on this replica
    slots: Mapping[int, int] = field(default_factory=dict)  # by kind (coordinator.state.Kind)
    credits: Mapping[int, int] = field(default_factory=dict)
    running: Mapping[int, int] = field(default_factory=dict)


@dataclass
class ReplicaView:
    replica: str
    version: str
    cluster_id: str
    shards: list[ShardView] = field(default_factory=list)
    agents: list[AgentView] = field(default_factory=list)


def _replica_families(v: ReplicaView) -> Iterator[Metric]:
    """The scrape-time families of a replica (its state, read on its event loop)."""
    info = GaugeMetricFamily("hsm_replica_info", "This replica (value 1)",
                             labels=["replica", "version", "cluster"])
    info.add_metric([v.replica, v.version, v.cluster_id], 1)
    yield info

    def shard_gauge(name: str, doc: str, value: Callable[[ShardView], float]) -> GaugeMetricFamily:
        g = GaugeMetricFamily(name, doc, labels=["shard"])
        for s in v.shards:
            g.add_metric([str(s.index)], value(s))
        return g

    yield shard_gauge("hsm_raft_term", "The shard's Raft term as this replica knows it", lambda s: s.term)
    yield shard_gauge("hsm_raft_commit_index", "The shard's Raft commit index", lambda s: s.commit_index)
    yield shard_gauge("hsm_raft_applied_index", "The shard's last entry applied here", lambda s: s.applied_index)
    yield shard_gauge("hsm_raft_leading", "1 if this replica leads the shard", lambda s: int(s.leading))
    yield shard_gauge("hsm_raft_has_leader", "1 if this replica knows a leader of the shard",
                      lambda s: int(s.has_leader))
    yield shard_gauge("hsm_raft_journal_unwritable",
                      "1 if this replica cannot write the shard's journal (disk full, ...): it does not lead it",
                      lambda s: int(s.unwritable))
    yield shard_gauge("hsm_raft_journal_bytes", "The shard's Raft journal on this replica's disk",
                      lambda s: s.journal_bytes)
    yield shard_gauge("hsm_raft_last_snapshot_seconds", "How long this replica's last snapshot of the shard took",
                      lambda s: s.last_snapshot_seconds)

    actions = GaugeMetricFamily("hsm_actions", "Actions the shard holds, by kind and state (ended ones "
                                "while they are kept)", labels=["shard", "kind", "state"])
    queued = GaugeMetricFamily("hsm_queue_depth", "Actions ready to be dispatched, by kind and archive id",
                               labels=["shard", "kind", "archive_id"])
    for s in v.shards:
        for (kind, state), n in sorted(s.counts.items()):
            actions.add_metric([str(s.index), kind_label(kind), State(state).name], n)
        for (kind, archive_id), n in sorted(s.queues.items()):
            queued.add_metric([str(s.index), kind_label(kind), str(archive_id)], n)
    yield actions
    yield queued

    retained = GaugeMetricFamily("hsm_events_retained", "HSM event records kept for their consumers",
                                 labels=["shard"])
    dropped = GaugeMetricFamily("hsm_events_dropped", "HSM event records the retention dropped before every "
                                "consumer acknowledged them (since the log began)", labels=["shard"])
    lag = GaugeMetricFamily("hsm_events_consumer_lag", "Records kept after the consumer's cursor",
                            labels=["shard", "consumer"])
    missed = GaugeMetricFamily("hsm_events_consumer_missed", "Records the retention dropped before the "
                               "consumer acknowledged them", labels=["shard", "consumer"])
    for s in v.shards:
        retained.add_metric([str(s.index)], s.events_retained)
        dropped.add_metric([str(s.index)], s.events_dropped)
        for name, (n_lag, n_missed) in sorted(s.consumers.items()):
            lag.add_metric([str(s.index), name], n_lag)
            missed.add_metric([str(s.index), name], n_missed)
    yield from (retained, dropped, lag, missed)

    connected = GaugeMetricFamily("hsm_agent_connected", "1 if the agent has a live stream to this replica",
                                  labels=["agent"])
    slots = GaugeMetricFamily("hsm_agent_slots", "The agent's slots, by kind", labels=["agent", "kind"])
    credits = GaugeMetricFamily("hsm_agent_credits", "Credits the agent granted this replica, unused, by kind",
                                labels=["agent", "kind"])
    running = GaugeMetricFamily("hsm_agent_running", "Actions the shards say the agent runs, by kind",
                                labels=["agent", "kind"])
    for a in v.agents:
        connected.add_metric([a.agent_id], int(a.connected))
        for fam, values in ((slots, a.slots), (credits, a.credits), (running, a.running)):
            for kind, n in sorted(values.items()):
                fam.add_metric([a.agent_id, kind_label(kind)], n)
    yield connected
    yield slots
    yield credits
    yield running


def _kind(key: int) -> list[str]:
    return [kind_label(key)]


def _kind_state(key: tuple[int, int]) -> list[str]:
    return [kind_label(key[0]), State(key[1]).name]


def _kind_state_errno(key: tuple[int, int, int]) -> list[str]:
    return [kind_label(key[0]), State(key[1]).name, errno_label(key[2])]


def _kind_errno(key: tuple[int, int]) -> list[str]:
    return [kind_label(key[0]), errno_label(key[1])]


def _as_is(key: tuple[str, str]) -> list[str]:
    return list(key)


class ReplicaMetrics(Exporter):
    """A replica's registry. *view*: a function returning the scrape-time
    view (called on the exporter's thread; see ``view_from_loop``). The
    counted families are plain numbers on the event loop (hsm.metrics
    Tally, Spread): a few dict operations per action, no lock, labels
    made when scraped."""

    def __init__(self, view: Callable[[], ReplicaView | None] | None = None) -> None:
        super().__init__()
        self.started = self.tally("hsm_actions_started", "Actions started for the first time (counted by the "
                                  "shard's leader)", ["kind"], _kind)
        self.finished = self.tally("hsm_actions_finished", "Actions ended, by kind, final state and errno "
                                   "(counted by the shard's leader)", ["kind", "state", "errno"], _kind_state_errno)
        self.requeued = self.tally("hsm_actions_requeued", "Started actions sent back to their queue, by kind and "
                                   "errno (counted by the shard's leader)", ["kind", "errno"], _kind_errno)
        self.wait = self.spread("hsm_action_wait_seconds", "Seconds from submit to the first start", ["kind"],
                                _kind, WAIT_BUCKETS)
        self.run = self.spread("hsm_action_run_seconds", "Seconds from the last start to the end, by final state",
                               ["kind", "state"], _kind_state, RUN_BUCKETS)
        self.calls = self.tally("hsm_grpc_calls", "gRPC calls this replica answered, by method and status code",
                                ["method", "code"], _as_is)
        if view is not None:
            self.scraped(view, _replica_families)

    # -- fed by the node (event loop) -------------------------------------------------

    def effect(self, e: object) -> None:
        """One of the shard state's counted effects, on the shard's leader."""
        if isinstance(e, Ended):
            self.finished.inc((e.kind, e.state, e.errno))
            if e.ran >= 0:
                self.run.observe((e.kind, e.state), e.ran)
        elif isinstance(e, FirstStart):
            self.started.inc(e.kind)
            self.wait.observe(e.kind, e.waited if e.waited > 0 else 0.0)
        elif isinstance(e, Requeued):
            self.requeued.inc((e.kind, e.errno))

    def call(self, method: str, code: str) -> None:
        self.calls.inc((method, code))
