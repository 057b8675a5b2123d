"""Prometheus metrics of agentd (issue 15): ``metrics_listen`` (flag
``--metrics-listen HOST:PORT``) serves them at ``/metrics``.

Counted as the movers work (on the event loop, by ``agentd.daemon``):
transfers ended and their seconds, mover errors by errno, and the bytes
moved, counted as the movers report progress (so ``rate()`` of
``hsm_agentd_bytes_total`` is the transfer rate while a long copy runs,
not only when it ends). Read when Prometheus scrapes
(:class:`AgentdView`, on the event loop): slots, running actions and
unused credits per coordinator stream and kind, which streams are up, and
how many actions the agent holds a lease on. Metric names start with
``hsm_agentd_`` (a replica's own view of its agents is ``hsm_agent_*``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily, Metric

from hsm.metrics import RUN_BUCKETS, Exporter, errno_label, kind_label


@dataclass
class AgentdView:
    agent_id: str
    slots: dict[int, int] = field(default_factory=dict)
    running: dict[int, int] = field(default_factory=dict)
    #: (coordinator address, kind) -> credits granted to that stream, unused
    credits: dict[tuple[str, int], int] = field(default_factory=dict)
    #: coordinator address -> stream welcomed
    streams: dict[str, bool] = field(default_factory=dict)
    leases_held: int = 0


@dataclass(slots=True)
class _Run:
    kind: int
    started: float
    counted: int = 0  # bytes already added to hsm_agentd_bytes


def _agentd_families(v: AgentdView) -> Iterator[Metric]:
    """The scrape-time families of agentd (its core, read on its event loop)."""
    slots = GaugeMetricFamily("hsm_agentd_slots", "Slots, by kind", labels=["agent", "kind"])
    running = GaugeMetricFamily("hsm_agentd_running", "Actions running here, by kind", labels=["agent", "kind"])
    for fam, values in ((slots, v.slots), (running, v.running)):
        for kind, n in sorted(values.items()):
            fam.add_metric([v.agent_id, kind_label(kind)], n)
    credits = GaugeMetricFamily("hsm_agentd_credits", "Credits granted to a coordinator stream, unused, by kind",
                                labels=["agent", "coordinator", "kind"])
    for (address, kind), n in sorted(v.credits.items()):
        credits.add_metric([v.agent_id, address, kind_label(kind)], n)
    up = GaugeMetricFamily("hsm_agentd_stream_up", "1 if the stream to this coordinator is up (welcomed)",
                           labels=["agent", "coordinator"])
    for address, ok in sorted(v.streams.items()):
        up.add_metric([v.agent_id, address], int(ok))
    leases = GaugeMetricFamily("hsm_agentd_leases_held", "Actions this agent holds a lease on",
                               labels=["agent"])
    leases.add_metric([v.agent_id], v.leases_held)
    yield from (slots, running, credits, up, leases)


class AgentdMetrics(Exporter):
    """agentd's registry; fed on the event loop (:meth:`started`,
    :meth:`progress`, :meth:`ended`) with plain numbers (hsm.metrics
    Tally, Spread), labels made when scraped."""

    def __init__(self, agent_id: str, view: Callable[[], AgentdView | None] | None = None) -> None:
        super().__init__()
        self.agent_id = agent_id

        def kind(key: int) -> list[str]:
            return [agent_id, kind_label(key)]

        def kind_errno(key: tuple[int, int]) -> list[str]:
            return [agent_id, kind_label(key[0]), errno_label(key[1])]

        self.transfers = self.tally("hsm_agentd_transfers", "Transfers ended (any result), by kind",
                                    ["agent", "kind"], kind)
        self.errors = self.tally("hsm_agentd_mover_errors", "Transfers that ended with an error, by kind and errno",
                                 ["agent", "kind", "errno"], kind_errno)
        self.bytes = self.tally("hsm_agentd_bytes", "Bytes moved, by kind, counted as the movers report progress "
                                "(rate() is the transfer rate)", ["agent", "kind"], kind)
        self.seconds = self.spread("hsm_agentd_transfer_seconds", "Seconds a transfer took, by kind",
                                   ["agent", "kind"], kind, RUN_BUCKETS)
        self._runs: dict[int, _Run] = {}
        if view is not None:
            self.scraped(view, _agentd_families)

    def inline(self, kind: int, errno: int, bytes_done: int, seconds: float) -> None:
        """A transfer run and ended at once on the event loop (the null mover)."""
        if bytes_done > 0:
            self.bytes.inc(kind, bytes_done)
        self.transfers.inc(kind)
        self.seconds.observe(kind, seconds if seconds > 0 else 0.0)
        if errno:
            self.errors.inc((kind, abs(errno)))

    def started(self, run: int, kind: int, now: float) -> None:
        self._runs[run] = _Run(kind, now)

    def progress(self, run: int, bytes_done: int) -> None:
        r = self._runs.get(run)
        if r is not None and bytes_done > r.counted:
            self.bytes.inc(r.kind, bytes_done - r.counted)
            r.counted = bytes_done

    def ended(self, run: int, errno: int, bytes_done: int, now: float) -> None:
        r = self._runs.pop(run, None)
        if r is None:
            return
        if bytes_done > r.counted:
            self.bytes.inc(r.kind, bytes_done - r.counted)
        self.transfers.inc(r.kind)
        self.seconds.observe(r.kind, now - r.started if now > r.started else 0.0)
        if errno:
            self.errors.inc((r.kind, abs(errno)))
