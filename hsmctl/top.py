"""``hsmctl top``: a live terminal view of the cluster, like top(1).

Four panels, from one ``Status`` call (and one bounded ``ListActions``) per
poll:

- **Queues**: per kind, the actions WAITING, STARTED and CANCELING now, and
  the actions that ended per second (SUCCEEDED/s, FAILED/s, CANCELED/s)
  since the previous poll.
- **Agents**: each mover, its state, host, the replica its stream is on,
  slots and running actions per kind, seconds since it was last heard of.
- **Shards**: each shard's leader, Raft term, commit/applied index, the
  role of the replica that answered, and why that replica cannot take its
  part (the ``problem``), if it cannot.
- **Transfers**: the first few STARTED actions (by action id, so the
  oldest), with their agent and progress.

Rates come from the change of the counts of *kept* ended actions between
two polls. The coordinator keeps only ``max_terminal`` ended actions per
shard and forgets the oldest beyond that, so a count can go down: such a
rate is unknown and shown as ``-``, never negative; once a shard keeps
``max_terminal`` of them, new ends push old ones out and rates read low.
(The exact counters are the replicas' ``hsm_actions_finished`` metrics.)

The live view (stdout a terminal) uses the alternate screen (``rich``
``Live`` with ``screen=True``): redrawn in place without flicker, and the
terminal is given back as it was on exit. Polls run on a thread so that
keys are read at once, even while a coordinator is slow to answer: ``q``
(read in cbreak mode) or Ctrl-C (SIGINT; SIGTERM alike) ends it with
status 0. A coordinator that does not answer is shown in the header, with
the last answer kept below, and polled again. stdout not a terminal: one
snapshot is printed (plain text) and the command ends; errors as for
``hsmctl status``.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import os
import select
import signal
import sys
import termios
import threading
import time
import tty
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hsm.client import CoordinatorClient
    from hsm.v1 import coordinator_pb2 as cpb
    from hsm.v1 import types_pb2 as tpb

log = logging.getLogger(__name__)

KINDS = ("ARCHIVE", "RESTORE", "REMOVE")
QUEUED = ("WAITING", "STARTED", "CANCELING")
ENDED = ("SUCCEEDED", "FAILED", "CANCELED")
DEFAULT_INTERVAL = 2.0
DEFAULT_TRANSFERS = 20
MAX_TRANSFERS = 200
#: seconds between redraws when no poll came in (keeps "Ns ago" current)
TICK = 1.0

Counts = dict[tuple[str, str], int]
Rates = dict[tuple[str, str], float | None]

HELP = "live view of queues and rates, agents, shards and leaders, running transfers (q quits)"

EPILOG = """\
panels (one Status call per --interval, plus one bounded listing of running actions):
  header     cluster id, the replica that answered, its version, the control mode
             (enabled, disabled, shutdown) and the time of that answer; in red, when
             the coordinator does not answer: the error (the last answer stays below,
             and it is asked again every --interval)
  Queues     per kind: actions WAITING, STARTED, CANCELING now; SUCCEEDED/s, FAILED/s,
             CANCELED/s: actions that ended per second since the previous poll. From
             the counts of kept ended actions: past max_terminal per shard the oldest
             are forgotten, a count goes down and its rate shows '-' (unknown, never
             negative); exact counters: the hsm_actions_finished metric
  Agents     id, state (active, draining, drained, gone), host, replica its stream
             is on, slots and running actions per kind (archive/restore/remove),
             seconds since last heard of
  Shards     shard, leader ((none): no leader, nothing dispatched there), Raft term,
             commit/applied index, ROLE of the answering replica in it (leader or
             follower), PROBLEM: why that replica cannot take its part, if it cannot
  Transfers  the first --transfers STARTED actions by action id (the oldest): id,
             kind, FID, agent, bytes moved of the total as the agent reported them,
             time since started
  Rows that do not fit the terminal end in '... N more'.

keys: q quits at once; Ctrl-C too (exit status 0; the terminal is restored).
When stdout is not a terminal, one snapshot is printed and hsmctl exits (rates
need two polls: '-'); an unreachable coordinator then exits 3 as for status.
"""


def interval_type(text: str) -> float:
    """``--interval``: seconds between polls, a number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"invalid interval '{text}': seconds between polls, a number > 0 "
                                         "(e.g. 2 or 0.5)")
    return value


def transfers_type(text: str) -> int:
    """``--transfers``: running actions to list, 0 to MAX_TRANSFERS."""
    try:
        value = int(text, 10)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_TRANSFERS:
        raise argparse.ArgumentTypeError(f"invalid transfers '{text}': a number from 0 (do not list "
                                         f"them) to {MAX_TRANSFERS}")
    return value


# ---------------------------------------------------------------------------
# Polls and what the view keeps of them (no I/O here but in fetch())


@dataclass(frozen=True, slots=True)
class Poll:
    """One poll: the coordinator's answer, or why there is none."""

    wall: float  # time.time() when it was taken
    mono: float  # time.monotonic(), for rates
    status: cpb.StatusResponse | None = None
    transfers: tuple[tpb.Action, ...] = ()
    transfers_note: str = ""  # why the running actions are not listed
    error: str = ""


def fetch(client: CoordinatorClient, transfers: int) -> Poll:
    """Poll once: ``status()``, then, when it counts STARTED actions, the
    first *transfers* of them.

    Cost of the listing: ListActions has no index by state; each shard's
    leader walks its kept actions in id order until it has found
    ``page_size + 1`` matches, on its event loop.
    Asking for one page of at most MAX_TRANSFERS, and only when Status
    says something runs, keeps that to one RPC per poll and a walk that
    usually stops early (running actions are among the oldest not ended);
    a queue of millions behind few transfers makes it a full walk of each
    shard per poll, which --transfers 0 turns off. Raises CoordinatorError
    when the status cannot be read; a failed listing is only noted."""
    from hsm.client import CoordinatorError
    from hsm.v1 import types_pb2 as tpb

    wall, mono = time.time(), time.monotonic()
    status = client.status()
    listed: tuple[tpb.Action, ...] = ()
    note = ""
    running = sum(c.count for c in status.counts if c.state == tpb.STARTED)
    if transfers and running:
        try:
            # islice: the first page only (the generator asks for the next
            # page only when iterated past this one)
            listed = tuple(itertools.islice(
                client.list_actions(states=["STARTED"], page_size=transfers), transfers))
        except CoordinatorError as e:
            note = f"cannot list them: {e}"
    return Poll(wall, mono, status, listed, note)


def counts_of(status: cpb.StatusResponse) -> Counts:
    """Cluster-wide counts by (KIND, STATE) names."""
    from hsm.client import kind_name, state_name

    out: Counts = {}
    for c in status.counts:
        key = (kind_name(c.kind), state_name(c.state))
        out[key] = out.get(key, 0) + int(c.count)
    return out


def rates(before: Counts, after: Counts, seconds: float) -> Rates:
    """Actions ended per second, by (kind, ended state), between two polls
    *seconds* apart. None (unknown) when no time passed or a count went
    down (ended actions forgotten past max_terminal): never negative."""
    out: Rates = {}
    for kind in KINDS:
        for state in ENDED:
            delta = after.get((kind, state), 0) - before.get((kind, state), 0)
            out[(kind, state)] = None if seconds <= 0 or delta < 0 else delta / seconds
    return out


@dataclass
class TopState:
    """What the view shows: the last answer, the rates from the two last
    answers, and the error of the last poll if it failed."""

    interval: float
    transfers: int = DEFAULT_TRANSFERS
    live: bool = True
    last: Poll | None = None
    rates: Rates = field(default_factory=dict)
    error: str = ""
    polls: int = 0

    def add(self, poll: Poll) -> None:
        self.polls += 1
        if poll.status is None:
            self.error = poll.error or "no answer"
            return
        self.error = ""
        if self.last is not None and self.last.status is not None:
            self.rates = rates(counts_of(self.last.status), counts_of(poll.status), poll.mono - self.last.mono)
        self.last = poll


# ---------------------------------------------------------------------------
# Rendering


def _fmt_rate(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if value < 1:
        return f"{value:.2f}"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _fmt_seconds(seconds: float) -> str:
    from hsmctl.output import format_age

    return format_age(seconds)


def _clock(wall: float, date: bool) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S", time.localtime(wall))


def budget(space: int, wants: Sequence[int]) -> list[int]:
    """Rows for each list panel out of *space*: one each first (a panel
    with rows to show always shows one, if only '... N more'), then one
    more each in turn until every panel has its rows or space runs out."""
    got = [0] * len(wants)
    space = max(0, space)
    progress = True
    while space > 0 and progress:
        progress = False
        for i, want in enumerate(wants):
            if space > 0 and got[i] < want:
                got[i] += 1
                space -= 1
                progress = True
    return got


#: lines of everything but the rows of the three list panels: header 2 +
#: blank, Queues title + column names + 4 rows + blank, 3 x (title +
#: column names), 2 blanks between them, the footer line
FIXED_LINES = 3 + 7 + 6 + 2 + 1


def _table(title: str, columns: Sequence[tuple[str, str]]) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left", title_style="bold", box=None, pad_edge=False,
                  header_style="bold", show_edge=False)
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis")  # type: ignore[arg-type]
    return table


def _text(value: object, style: str = "") -> Any:
    from rich.text import Text

    return Text(str(value), style=style)


def _fill(table: Any, rows: Sequence[Sequence[Any]], limit: int | None) -> None:
    """Add *rows*; beyond *limit*, the last row shown says how many more."""
    if limit is not None and len(rows) > limit:
        shown = rows[:max(0, limit - 1)]
        more = len(rows) - len(shown)
        for row in shown:
            table.add_row(*row)
        table.add_row(_text(f"... {more} more", "dim"))
        return
    for row in rows:
        table.add_row(*row)


def header(state: TopState, now: float) -> list[Any]:
    """Two lines: who answered, and either the error or how the view is made."""
    from rich.text import Text

    poll = state.last
    status = poll.status if poll is not None else None
    first = Text("hsmctl top", style="bold")
    if status is not None and poll is not None:
        for label, value in (("cluster", status.cluster_id or "?"), ("replica", status.replica or "?"),
                             ("version", status.version or "?"), ("control", status.control or "?")):
            first.append(f"  {label} ")
            first.append(value, style="bold red" if label == "control" and value != "enabled" else "bold")
        first.append(f"  {_clock(poll.wall, not state.live)}")
    if state.error:
        second = Text(f"coordinator not answering: {state.error}", style="bold red")
        if poll is not None:
            second.append(f" (last answer {_clock(poll.wall, False)}, {_fmt_seconds(now - poll.wall)} ago;"
                          f" asking again every {state.interval:g}s)")
        else:
            second.append(f" (asking again every {state.interval:g}s)")
    elif status is None:
        second = Text("waiting for the first answer...", style="dim")
    else:
        parts = []
        if state.live:
            parts.append(f"every {state.interval:g}s; rates: actions ended per second since the previous poll")
        else:
            parts.append("one snapshot (stdout is not a terminal); rates need two polls")
        second = Text("; ".join(parts), style="dim")
        leaderless = [s.shard for s in status.shards if not s.leader]
        if leaderless:
            second.append(f"  {len(leaderless)} shard(s) without a leader: "
                          + ",".join(str(s) for s in sorted(leaderless)), style="bold red")
    for line in (first, second):  # one line each, whatever the width: the screen budget counts on it
        line.no_wrap, line.overflow = True, "ellipsis"
    return [first, second]


def queues_table(state: TopState) -> Any:
    counts = counts_of(state.last.status) if state.last is not None and state.last.status is not None else {}
    table = _table("Queues", [("KIND", "left"), *((s, "right") for s in QUEUED),
                              *((f"{s}/s", "right") for s in ENDED)])

    def row(kinds: Sequence[str], label: str) -> list[Any]:
        cells = [_text(label, "bold" if label == "all" else "")]
        for s in QUEUED:
            cells.append(_text(sum(counts.get((k, s), 0) for k in kinds)))
        for s in ENDED:
            values = [state.rates.get((k, s)) for k in kinds]
            total = None if not state.rates or any(v is None for v in values) else sum(
                v for v in values if v is not None)
            cells.append(_text(_fmt_rate(total)))
        return cells

    for kind in KINDS:
        table.add_row(*row((kind,), kind))
    table.add_row(*row(KINDS, "all"))
    return table


def agents_table(status: cpb.StatusResponse | None, now: float, limit: int | None) -> Any:
    from hsmctl.output import agent_state

    agents = sorted(status.agents, key=lambda a: a.agent_id) if status is not None else []
    table = _table(f"Agents ({len(agents)})", [
        ("AGENT", "left"), ("STATE", "left"), ("HOST", "left"), ("REPLICA", "left"),
        ("SLOTS a/r/rm", "right"), ("RUNNING a/r/rm", "right"), ("SEEN", "right")])
    style = {"active": "", "draining": "yellow", "drained": "yellow", "gone": "dim"}
    rows = []
    for a in agents:
        st = agent_state(a)
        rows.append([
            _text(a.agent_id), _text(st, style.get(st, "")), _text(a.host or "-"), _text(a.replica or "-"),
            _text(f"{a.slots.archive}/{a.slots.restore}/{a.slots.remove}"),
            _text(f"{a.running.archive}/{a.running.restore}/{a.running.remove}"),
            _text(f"{_fmt_seconds(now - a.last_seen)} ago" if a.last_seen else "-"),
        ])
    _fill(table, rows, limit)
    return table


def shards_table(status: cpb.StatusResponse | None, limit: int | None) -> Any:
    shards = sorted(status.shards, key=lambda s: s.shard) if status is not None else []
    table = _table(f"Shards ({len(shards)})", [
        ("SHARD", "right"), ("LEADER", "left"), ("TERM", "right"), ("COMMIT/APPLIED", "right"),
        ("ROLE", "left"), ("PROBLEM", "left")])
    rows = []
    for s in shards:
        rows.append([
            _text(s.shard), _text(s.leader or "(none)", "" if s.leader else "bold red"), _text(s.term),
            _text(f"{s.commit_index}/{s.applied_index}"), _text(s.role or "-"),
            _text(s.problem or "-", "bold red" if s.problem else ""),
        ])
    _fill(table, rows, limit)
    return table


def transfers_table(state: TopState, now: float, limit: int | None) -> Any:
    from hsm.client import kind_name
    from hsmctl.output import fid_text, format_progress

    poll = state.last
    running = sum(counts_of(poll.status).get((k, "STARTED"), 0) for k in KINDS) \
        if poll is not None and poll.status is not None else 0
    listed = list(poll.transfers) if poll is not None else []
    if not state.transfers:
        title = f"Transfers ({running} running; not listed: --transfers 0)"
    elif poll is not None and poll.transfers_note:
        title = f"Transfers ({running} running; {poll.transfers_note})"
    elif len(listed) < running:
        title = f"Transfers (the first {len(listed)} of {running} running, by action id)"
    else:
        title = f"Transfers ({running} running)"
    table = _table(title, [("ID", "right"), ("KIND", "left"), ("FID", "left"), ("AGENT", "left"),
                           ("PROGRESS", "right"), ("RUNNING", "right")])
    rows = [[_text(a.action_id), _text(kind_name(a.kind)), _text(fid_text(a.fid)), _text(a.agent or "-"),
             _text(format_progress(a)), _text(_fmt_seconds(now - a.started) if a.started else "-")]
            for a in listed]
    _fill(table, rows, limit)
    return table


def render(state: TopState, now: float, height: int | None = None) -> Any:
    """The whole view. *height*: the terminal's lines, which the list
    panels share (None: every row, as for a one-shot snapshot)."""
    from rich.console import Group
    from rich.text import Text

    status = state.last.status if state.last is not None else None
    limits: list[int | None] = [None, None, None]
    if height is not None:
        wants = [len(status.shards) if status is not None else 0,
                 len(status.agents) if status is not None else 0,
                 len(state.last.transfers) if state.last is not None else 0]
        limits = list(budget(height - FIXED_LINES, wants))
    parts: list[Any] = [*header(state, now), Text(""), queues_table(state), Text(""),
                        shards_table(status, limits[0]), Text(""),
                        agents_table(status, now, limits[1]), Text(""),
                        transfers_table(state, now, limits[2])]
    if state.live:
        parts.append(Text("q quit   Ctrl-C quit", style="dim"))
    return Group(*parts)


# ---------------------------------------------------------------------------
# Running it


class Poller:
    """Polls on its own thread, every *interval* seconds from the start of
    the previous poll, and wakes the drawing loop through *wake* (a pipe)."""

    def __init__(self, client: CoordinatorClient, interval: float, transfers: int, wake: int) -> None:
        self.client = client
        self.interval = interval
        self.transfers = transfers
        self._wake = wake
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._polls: list[Poll] = []
        self._thread = threading.Thread(target=self._run, name="hsmctl-top-poll", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, client: CoordinatorClient | None = None, timeout: float = 0.5) -> None:
        """Stop polling; closing *client* ends a call still waiting for an answer."""
        self._stop.set()
        if client is not None:
            client.close()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def take(self) -> list[Poll]:
        with self._lock:
            polls, self._polls = self._polls, []
        return polls

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                poll = fetch(self.client, self.transfers)
            except Exception as e:  # shown in the header; polled again (never ends the view)
                log.debug("poll failed: %s", e)
                poll = Poll(time.time(), time.monotonic(), error=str(e) or type(e).__name__)
            if self._stop.is_set():
                return
            with self._lock:
                self._polls.append(poll)
            _poke(self._wake, b"p")
            next_at = max(next_at + self.interval, time.monotonic())
            self._stop.wait(next_at - time.monotonic())


def _poke(fd: int, what: bytes) -> None:
    try:
        os.write(fd, what)
    except OSError:  # pipe full (the loop has wake-ups waiting already) or closed
        pass


def _drain(fd: int) -> bytes:
    """Everything written to the wake-up pipe so far."""
    woken = b""
    try:
        while chunk := os.read(fd, 1024):
            woken += chunk
    except BlockingIOError:
        pass
    return woken


def snapshot(client: CoordinatorClient, out: IO[str], interval: float, transfers: int) -> int:
    """stdout not a terminal: one poll, printed as plain text."""
    from hsmctl.output import emit, make_console

    state = TopState(interval, transfers, live=False)
    state.add(fetch(client, transfers))
    emit(make_console(out), render(state, time.time()))
    return 0


def live(client: CoordinatorClient, out: IO[str], interval: float, transfers: int,
         keys: IO[str] | None = None) -> int:
    """The live view until q, Ctrl-C or SIGTERM; returns 0."""
    from rich.console import Console
    from rich.live import Live

    keys = sys.stdin if keys is None else keys
    state = TopState(interval, transfers, live=True)
    console = Console(file=out, highlight=False)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    poller = Poller(client, interval, transfers, wake_w)
    key_fd: int | None = None  # None: no keys to read (stdin not a terminal, or closed)
    tty_fd: int | None = None
    saved_tty: list[Any] | None = None
    saved_signals: dict[signal.Signals, Any] = {}

    def on_quit(signum: int, frame: FrameType | None) -> None:
        _poke(wake_w, b"q")

    def on_resize(signum: int, frame: FrameType | None) -> None:
        _poke(wake_w, b"r")

    try:
        if threading.current_thread() is threading.main_thread():
            # Ctrl-C and SIGTERM only wake the loop, which then leaves
            # cleanly: no KeyboardInterrupt in the middle of drawing.
            for signum, handler in ((signal.SIGINT, on_quit), (signal.SIGTERM, on_quit),
                                    (signal.SIGWINCH, on_resize)):
                saved_signals[signum] = signal.signal(signum, handler)
        try:
            if keys.isatty():
                tty_fd = keys.fileno()
                saved_tty = termios.tcgetattr(tty_fd)
                tty.setcbreak(tty_fd, termios.TCSANOW)  # keys one by one, no echo; Ctrl-C still SIGINT
                key_fd = tty_fd
        except (OSError, ValueError, termios.error) as e:  # no usable stdin: Ctrl-C only
            log.debug("no keys from stdin: %s", e)
        poller.start()
        with Live(render(state, time.time(), console.size.height), console=console, screen=True,
                  auto_refresh=False, redirect_stdout=False, redirect_stderr=False) as view:
            while True:
                fds = [wake_r] if key_fd is None else [wake_r, key_fd]
                ready, _, _ = select.select(fds, [], [], TICK)
                if key_fd is not None and key_fd in ready:
                    typed = os.read(key_fd, 1024)
                    if not typed:
                        key_fd = None  # stdin closed: Ctrl-C still works
                    elif b"q" in typed.lower():
                        break
                if wake_r in ready and b"q" in _drain(wake_r):
                    break
                for poll in poller.take():
                    state.add(poll)
                view.update(render(state, time.time(), console.size.height), refresh=True)
    except KeyboardInterrupt:  # a Ctrl-C before the handler was set
        pass
    finally:
        poller.stop(client)
        if saved_tty is not None and tty_fd is not None:
            try:
                termios.tcsetattr(tty_fd, termios.TCSADRAIN, saved_tty)
            except termios.error as e:
                log.debug("cannot restore the terminal: %s", e)
        for sig, old in saved_signals.items():
            signal.signal(sig, old)
        if not poller.alive():  # else it may still poke the pipe: left to the exit to close
            os.close(wake_r)
            os.close(wake_w)
    return 0


def run(client: CoordinatorClient, out: IO[str], interval: float = DEFAULT_INTERVAL,
        transfers: int = DEFAULT_TRANSFERS) -> int:
    """``hsmctl top``: the live view on a terminal, else one snapshot."""
    if not (hasattr(out, "isatty") and out.isatty()):
        return snapshot(client, out, interval, transfers)
    return live(client, out, interval, transfers)
