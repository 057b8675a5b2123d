"""agentd's protocol core (agentd/core.py), pure: no event loop, no
network, no threads, the clock passed in. A small fake shell carries out
the instructions (it records starts, cancels and log lines); hypothesis
then drives random event sequences and checks the credit invariant, that
an action never runs twice at once and that no completion is lost."""

from __future__ import annotations

import errno as E
import logging
from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from agentd.core import (
    KINDS,
    LEVEL_IDLE,
    RESEND_AFTER,
    ROTATE_AFTER,
    AgentCore,
    CancelJob,
    CoreConfig,
    Instruction,
    Log,
    Renumber,
    Start,
    Wake,
)
from agentd.movers.base import Result
from hsm.hsmflags import HSMA
from hsm.v1 import agent_pb2
from hsm.v1 import types_pb2 as tpb

ARCHIVE, RESTORE, REMOVE = int(HSMA.ARCHIVE), int(HSMA.RESTORE), int(HSMA.REMOVE)
OK = Result(message="done")
CANCELED = Result(errno=E.ECANCELED, message="cancelled")


def config(archive: int = 2, restore: int = 1, remove: int = 1) -> CoreConfig:
    return CoreConfig(agent_id="a1", slots={ARCHIVE: archive, RESTORE: restore, REMOVE: remove}, fsname="fs1",
                      heartbeat_interval=5.0, progress_interval=1.0)


def assignment(action_id: int, attempt: int = 1, kind: int = ARCHIVE, fsname: str = "fs1") -> agent_pb2.Assignment:
    return agent_pb2.Assignment(
        action_id=action_id, attempt=attempt, fsname=fsname, kind=kind, archive_id=1,
        fid=tpb.Fid(seq=0x200000400, oid=action_id, ver=0))


def cancel(action_id: int, attempt: int = 1, reason: str = "") -> agent_pb2.CancelOrder:
    return agent_pb2.CancelOrder(action_id=action_id, attempt=attempt, reason=reason)


@dataclass
class Shell:
    """Carries out the instructions the way agentd.daemon does, on paper."""

    core: AgentCore
    jobs: dict[int, list[int]] = field(default_factory=dict)  # run -> [action id, attempt, kind]
    cancelled: set[int] = field(default_factory=set)
    logs: list[str] = field(default_factory=list)
    woken: list[str] = field(default_factory=list)
    started: list[Start] = field(default_factory=list)

    def do(self, out: list[Instruction]) -> list[Instruction]:
        for ins in out:
            if isinstance(ins, Start):
                running = {a for a, _att, _k in self.jobs.values()}
                assert ins.job.action_id not in running, f"action {ins.job.action_id} would run twice at once"
                self.jobs[ins.run] = [ins.job.action_id, ins.job.attempt, ins.job.kind]
                self.started.append(ins)
            elif isinstance(ins, CancelJob):
                assert ins.run in self.jobs, "a cancel for a run that is not running"
                self.cancelled.add(ins.run)
            elif isinstance(ins, Renumber):
                self.jobs[ins.run][1] = ins.attempt
            elif isinstance(ins, Log):
                self.logs.append(ins.text)
            elif isinstance(ins, Wake):
                self.woken.append(ins.stream)
        return out

    def end(self, run: int, res: Result, now: float) -> list[Instruction]:
        self.jobs.pop(run)
        self.cancelled.discard(run)
        return self.do(self.core.job_ended(run, res, now))

    def run_of(self, action_id: int) -> int:
        (run,) = [r for r, (a, _att, _k) in self.jobs.items() if a == action_id]
        return run

    def said(self, text: str) -> bool:
        return any(text in line for line in self.logs)


def shell(streams: tuple[str, ...] = ("r1",), archive: int = 2, restore: int = 1, remove: int = 1) -> Shell:
    return Shell(AgentCore(config(archive, restore, remove), streams))


def welcome(sh: Shell, stream: str, now: float = 0.0, *, lease: float = 0.0, acks: bool = True) -> None:
    sh.do(sh.core.welcomed(stream, f"rep-{stream}", 5.0, lease, acks, now))
    sh.do(sh.core.rebalance(now))


def dones(sh: Shell, stream: str) -> list[tuple[int, int, int]]:
    return [(d.action_id, d.attempt, d.errno) for d in sh.core.streams[stream].pending_done]


def credits(msg: agent_pb2.AgentMessage | None) -> tuple[int, int, int, bool]:
    assert msg is not None
    c = msg.ready.credits
    return c.archive, c.restore, c.remove, msg.ready.absolute


def granted(sh: Shell, stream: str) -> tuple[int, ...]:
    return tuple(sh.core.streams[stream].granted[k] for k in KINDS)


def check_credit_invariant(core: AgentCore) -> None:
    for k in KINDS:
        deferred = sum(1 for _s, j in core.deferred.values() if j.kind == k)
        held = sum(s.granted[k] for s in core.streams.values())
        assert core.running_count[k] <= core.slots[k]
        assert core.running_count[k] + deferred + held <= core.slots[k], f"kind {k}: over-granted"
        assert all(s.granted[k] >= 0 and s.pending_credits[k] >= 0 for s in core.streams.values())


# --------------------------------------------------------------------------
# credits


def test_free_slots_are_granted_once_and_sent_as_relative_credits() -> None:
    sh = shell(("r1", "r2"))
    welcome(sh, "r1")
    assert granted(sh, "r1") == (2, 1, 1)
    assert credits(sh.core.collect("r1", 0.1)) == (2, 1, 1, False)
    sh.core.written("r1", 0.1)
    assert sh.core.collect("r1", 0.2) is None, "nothing new to say, no heartbeat due yet"
    welcome(sh, "r2")
    assert granted(sh, "r2") == (0, 0, 0), "nothing left to grant"
    beat = sh.core.collect("r1", 5.2)
    assert beat is not None and beat.heartbeat, "a heartbeat once due"
    check_credit_invariant(sh.core)


def test_leveling_moves_unused_credits_to_the_stream_whose_replica_has_work() -> None:
    sh = shell(("r1", "r2"), archive=4)
    welcome(sh, "r1")
    welcome(sh, "r2")
    assert granted(sh, "r1") == (4, 1, 1) and granted(sh, "r2") == (0, 0, 0)
    sh.core.collect("r1", 0.0)
    sh.core.written("r1", 0.0)
    sh.do(sh.core.backlog("r2", (3, 0, 0), LEVEL_IDLE))
    assert granted(sh, "r1") == (1, 1, 1) and granted(sh, "r2") == (3, 0, 0)
    # r1's credits were taken back: the whole grant, absolute, with the assignments it saw
    assert credits(sh.core.collect("r1", LEVEL_IDLE)) == (1, 1, 1, True)
    assert credits(sh.core.collect("r2", LEVEL_IDLE)) == (3, 0, 0, False)
    check_credit_invariant(sh.core)


def test_credits_stay_on_a_stream_that_just_received_work() -> None:
    sh = shell(("r1", "r2"), archive=4)
    welcome(sh, "r1")
    welcome(sh, "r2")
    sh.do(sh.core.assignment("r1", assignment(1), 5.0))  # r1's coordinator is spending its credits
    sh.do(sh.core.backlog("r2", (3, 0, 0), 5.0 + LEVEL_IDLE / 2))
    assert granted(sh, "r1")[0] == 3 and granted(sh, "r2")[0] == 0, "its assignments may be on their way"
    sh.do(sh.core.tick(5.0 + LEVEL_IDLE))
    assert granted(sh, "r1")[0] == 0 and granted(sh, "r2")[0] == 3


def test_a_single_credit_goes_round_after_ROTATE_AFTER() -> None:
    sh = shell(("r1", "r2"), archive=1, restore=0, remove=0)
    welcome(sh, "r1")
    welcome(sh, "r2")
    sh.do(sh.core.backlog("r1", (1, 0, 0), 1.0))
    sh.do(sh.core.backlog("r2", (1, 0, 0), 1.0))
    sh.do(sh.core.tick(ROTATE_AFTER - 0.1))
    assert granted(sh, "r1")[0] == 1 and granted(sh, "r2")[0] == 0
    sh.do(sh.core.tick(ROTATE_AFTER))
    assert granted(sh, "r1")[0] == 0 and granted(sh, "r2")[0] == 1
    assert credits(sh.core.collect("r1", ROTATE_AFTER)) == (0, 0, 0, True)
    assert credits(sh.core.collect("r2", ROTATE_AFTER)) == (1, 0, 0, False)


def test_a_backlog_while_holding_idle_credits_sends_the_whole_grant_again() -> None:
    sh = shell()
    welcome(sh, "r1")
    sh.core.collect("r1", 0.0)
    sh.core.written("r1", 0.0)
    sh.do(sh.core.backlog("r1", (2, 0, 0), LEVEL_IDLE / 2))
    assert sh.core.collect("r1", LEVEL_IDLE / 2) is None, "work was just granted: no disagreement yet"
    sh.do(sh.core.backlog("r1", (2, 0, 0), LEVEL_IDLE))
    assert credits(sh.core.collect("r1", LEVEL_IDLE)) == (2, 1, 1, True)


def test_a_lost_stream_forgets_its_credits_and_they_go_elsewhere() -> None:
    sh = shell(("r1", "r2"))
    welcome(sh, "r1")
    welcome(sh, "r2")
    sh.do(sh.core.stream_lost("r1", 2.0))
    assert granted(sh, "r1") == (0, 0, 0) and granted(sh, "r2") == (2, 1, 1)
    check_credit_invariant(sh.core)


# --------------------------------------------------------------------------
# assignments


def test_assignments_beyond_the_credits_run_on_a_free_slot_else_are_handed_back() -> None:
    sh = shell()  # never welcomed: no credits granted
    sh.do(sh.core.assignment("r1", assignment(1), 0.0))
    assert sh.said("assignment from r1 beyond the credits granted to it")
    sh.do(sh.core.assignment("r1", assignment(2), 0.0))
    sh.do(sh.core.assignment("r1", assignment(3), 0.0))
    assert [s.job.action_id for s in sh.started] == [1, 2]
    (d,) = sh.core.streams["r1"].pending_done
    assert (d.action_id, d.errno, d.retry, d.handback) == (3, E.EAGAIN, True, True)
    assert d.message == "no free archive slot on this agent"
    check_credit_invariant(sh.core)


def test_duplicate_stale_and_newer_attempts_of_a_running_action() -> None:
    sh = shell()
    welcome(sh, "r1")
    sh.do(sh.core.assignment("r1", assignment(7, 2), 1.0))
    run = sh.run_of(7)
    sh.do(sh.core.assignment("r1", assignment(7, 2), 1.0))
    assert sh.said("action 7/2 ARCHIVE [0x200000400:0x7:0x0]: already running here; duplicate assignment ignored")
    sh.do(sh.core.assignment("r1", assignment(7, 1), 1.0))
    assert sh.said("stale assignment ignored (attempt 2 is running here)")
    out = sh.do(sh.core.assignment("r1", assignment(7, 3), 1.0))
    assert Renumber(run, 3) in out and sh.said("it continues as attempt 3")
    assert len(sh.started) == 1 and sh.core.running_actions() == [(7, 3)]
    sh.end(run, OK, 2.0)
    assert dones(sh, "r1") == [(7, 3, 0)]


def test_bad_assignments_are_refused() -> None:
    sh = shell()
    sh.do(sh.core.assignment("r1", assignment(1, fsname="other"), 0.0))
    sh.do(sh.core.assignment("r1", assignment(3, kind=9), 0.0))
    assert not sh.started
    got = {d.action_id: (d.errno, d.message, d.retry) for d in sh.core.streams["r1"].pending_done}
    assert got[1] == (E.ENODEV, "this agent serves file system 'fs1', not 'other'", True)
    assert got[3] == (E.EINVAL, "unknown action kind 9", False)
    assert sh.said("action 3/1 kind 9 [0x200000400:0x3:0x0] refused: unknown action kind 9")


def test_a_cancel_for_an_unknown_action_leaves_a_tombstone_that_refuses_its_late_assignment() -> None:
    sh = shell(("r1", "r2"))
    welcome(sh, "r1")
    welcome(sh, "r2")
    sh.do(sh.core.cancel("r2", cancel(99), 1.0))
    assert dones(sh, "r2") == [(99, 1, E.ECANCELED)]
    assert sh.core.streams["r2"].pending_done[0].message == "not running on agent a1"
    sh.do(sh.core.assignment("r1", assignment(99), 2.0))  # over the other replica's stream, late
    assert not sh.started and sh.said("canceled before its assignment arrived")
    assert dones(sh, "r1") == [(99, 1, E.ECANCELED)]
    # its credit was spent, and the slot granted again (to the stream holding none)
    assert granted(sh, "r1") == (1, 1, 1) and granted(sh, "r2") == (1, 0, 0)
    check_credit_invariant(sh.core)


def test_a_cancel_after_the_run_ended_sends_its_completion_again() -> None:
    sh = shell()
    welcome(sh, "r1")
    sh.do(sh.core.assignment("r1", assignment(7), 1.0))
    sh.end(sh.run_of(7), OK, 2.0)
    first = sh.core.streams["r1"].pending_done[0]
    sh.core.streams["r1"].pending_done.clear()
    sh.do(sh.core.cancel("r1", cancel(7), 3.0))
    assert sh.core.streams["r1"].pending_done == [first]
    assert sh.said("cancel after it ended here; its completion is sent again")


def test_a_cancel_for_another_attempt_is_ignored_and_the_right_one_cancels() -> None:
    sh = shell()
    welcome(sh, "r1")
    sh.do(sh.core.assignment("r1", assignment(7), 1.0))
    run = sh.run_of(7)
    assert sh.do(sh.core.cancel("r1", cancel(7, 5), 1.0)) and run not in sh.cancelled
    assert sh.said("cancel ignored: attempt 1 is the one running here")
    assert CancelJob(run) in sh.do(sh.core.cancel("r1", cancel(7, 1, "user"), 1.0))
    assert sh.said("cancel received (user)")
    sh.end(run, CANCELED, 1.5)
    assert dones(sh, "r1") == [(7, 1, E.ECANCELED)]
    assert not sh.core.streams["r1"].pending_done[0].handback, "the user's cancel: not a handback"


def test_a_newer_attempt_waits_for_the_cancelled_one_then_starts() -> None:
    sh = shell()
    welcome(sh, "r1")
    sh.do(sh.core.assignment("r1", assignment(7, 1), 1.0))
    old = sh.run_of(7)
    sh.do(sh.core.cancel("r1", cancel(7, 1), 1.0))
    sh.do(sh.core.assignment("r1", assignment(7, 2), 1.0))  # before attempt 1 stopped
    assert len(sh.started) == 1 and sh.said("action 7/2 ARCHIVE")
    assert sh.said("starts once attempt 1, being cancelled here, has stopped")
    assert sh.core.running_list() == [(7, 1), (7, 2)]
    check_credit_invariant(sh.core)
    sh.end(old, CANCELED, 2.0)
    assert [(s.job.action_id, s.job.attempt) for s in sh.started] == [(7, 1), (7, 2)]
    assert sh.core.running_actions() == [(7, 2)]
    sh.end(sh.run_of(7), OK, 3.0)
    assert dones(sh, "r1") == [(7, 1, E.ECANCELED), (7, 2, 0)]
    assert sh.core.peak[ARCHIVE] == 1


def test_a_newer_attempt_with_no_free_slot_is_handed_back() -> None:
    sh = shell(archive=1)
    welcome(sh, "r1")
    sh.do(sh.core.assignment("r1", assignment(7, 1), 1.0))
    sh.do(sh.core.cancel("r1", cancel(7, 1), 1.0))
    sh.do(sh.core.assignment("r1", assignment(7, 2), 1.0))
    (d,) = sh.core.streams["r1"].pending_done
    assert (d.action_id, d.attempt, d.errno, d.handback) == (7, 2, E.EAGAIN, True)
    assert not sh.core.deferred
    check_credit_invariant(sh.core)


def test_a_queued_attempt_replaced_by_one_of_another_kind_needs_a_slot_of_that_kind() -> None:
    """Found by the stateful test in CI: an archive's attempt 2 queued
    behind its cancelled attempt 1, then attempt 3 of the same action as a
    RESTORE (a coordinator never changes an action's kind, but the agent
    must not trust that) took the one restore slot a running restore held:
    two restores for one slot."""
    sh = shell(archive=2, restore=1)
    welcome(sh, "r1")
    sh.do(sh.core.assignment("r1", assignment(2, 1, ARCHIVE), 1.0))
    sh.do(sh.core.assignment("r1", assignment(1, 1, RESTORE), 1.0))
    sh.do(sh.core.cancel("r1", cancel(2, 1), 1.0))
    sh.do(sh.core.assignment("r1", assignment(2, 2, ARCHIVE), 1.0))
    assert sh.core.deferred[2][1].attempt == 2
    sh.do(sh.core.assignment("r1", assignment(2, 3, RESTORE), 1.0))
    check_credit_invariant(sh.core)
    assert (2, 3, E.EAGAIN) in dones(sh, "r1")
    assert sh.core.deferred[2][1].attempt == 2  # the queued archive stays


def test_a_deferred_attempt_cancelled_before_it_started() -> None:
    sh = shell()
    welcome(sh, "r1")
    sh.do(sh.core.assignment("r1", assignment(7, 1), 1.0))
    sh.do(sh.core.cancel("r1", cancel(7, 1), 1.0))
    sh.do(sh.core.assignment("r1", assignment(7, 2), 1.0))
    sh.do(sh.core.cancel("r1", cancel(7, 2, "gone"), 1.0))
    assert sh.said("action 7/2 ARCHIVE") and sh.said("cancelled before it started (gone)")
    assert dones(sh, "r1") == [(7, 2, E.ECANCELED)] and not sh.core.deferred
    sh.end(sh.run_of(7), CANCELED, 2.0)
    assert len(sh.started) == 1


# --------------------------------------------------------------------------
# completions


def test_completions_wait_for_their_acknowledgement_and_are_sent_again() -> None:
    sh = shell(("r1", "r2"))
    welcome(sh, "r1", acks=True)
    welcome(sh, "r2", acks=True)
    for i in (7, 8):
        sh.do(sh.core.assignment("r1", assignment(i), 1.0))
        sh.end(sh.run_of(i), OK, 2.0)
    msg = sh.core.collect("r1", 2.0)
    assert msg is not None and [d.action_id for d in msg.done] == [7, 8]
    assert sh.core.running_list() == [], "in flight: neither queued nor unacknowledged"
    sh.core.written("r1", 2.0)
    assert sh.core.running_list() == [(7, 1), (8, 1)], "held until the coordinator hears them"
    sh.do(sh.core.applied([(7, 1)]))
    assert list(sh.core.streams["r1"].unacked) == [(8, 1)]
    sh.do(sh.core.tick(2.0 + RESEND_AFTER - 1))
    assert not sh.core.streams["r1"].pending_done
    sh.do(sh.core.tick(2.0 + RESEND_AFTER))
    assert dones(sh, "r1") == [(8, 1, 0)] and sh.said("not acknowledged within 30 s: sent again")
    # the write fails, the stream dies: its completions go through the other stream
    assert sh.core.collect("r1", 40.0) is not None
    sh.core.write_failed("r1")
    sh.do(sh.core.stream_lost("r1", 40.0))
    assert dones(sh, "r2") == [(8, 1, 0)] and sh.said("go through r2 instead")


def test_an_unacknowledged_completion_of_a_lost_stream_is_delivered_again() -> None:
    sh = shell()
    welcome(sh, "r1", acks=True)
    sh.do(sh.core.assignment("r1", assignment(7), 1.0))
    sh.end(sh.run_of(7), OK, 2.0)
    sh.core.collect("r1", 2.0)
    sh.core.written("r1", 2.0)
    sh.do(sh.core.stream_lost("r1", 3.0))
    assert dones(sh, "r1") == [(7, 1, 0)], "delivered again on the next stream"
    welcome(sh, "r1", 4.0, acks=False)
    msg = sh.core.collect("r1", 4.0)
    assert msg is not None and [d.action_id for d in msg.done] == [7]
    sh.core.written("r1", 4.0)
    assert sh.core.running_list() == [], "a replica that does not acknowledge: written is delivered"


def test_progress_is_rate_limited_and_rides_on_a_live_stream() -> None:
    sh = shell(("r1", "r2"))
    welcome(sh, "r1")
    welcome(sh, "r2")
    sh.do(sh.core.assignment("r1", assignment(7), 1.0))
    run = sh.run_of(7)
    sh.core.collect("r1", 1.0)
    sh.core.written("r1", 1.0)
    assert sh.do(sh.core.progress(run, 10, 100)) == [Wake("r1")]
    assert sh.do(sh.core.progress(run, 20, 100)) == [], "already waiting to be sent"
    msg = sh.core.collect("r1", 1.5)
    assert msg is not None and [(p.bytes_done, p.bytes_total) for p in msg.progress] == [(20, 100)]
    sh.core.written("r1", 1.5)
    sh.do(sh.core.progress(run, 30, 100))
    assert sh.core.collect("r1", 2.0) is None and sh.core.next_send("r1", 2.0) == 2.5
    sh.do(sh.core.stream_lost("r1", 2.6))
    msg = sh.core.collect("r2", 2.6)
    assert msg is not None and [p.bytes_done for p in msg.progress] == [30]
    sh.end(run, OK, 3.0)
    assert sh.do(sh.core.progress(run, 40, 100)) == [], "a late report of an ended run"


def test_a_running_report_lists_runs_deferred_attempts_and_undelivered_completions() -> None:
    sh = shell()
    welcome(sh, "r1")
    sh.do(sh.core.assignment("r1", assignment(7), 1.0))
    sh.do(sh.core.assignment("r1", assignment(8), 1.0))
    sh.end(sh.run_of(8), OK, 1.5)
    sh.do(sh.core.request_running("r1", 42))
    msg = sh.core.collect("r1", 2.0)
    assert msg is not None and msg.running.token == 42
    # the completion of 8 rides in this very message
    assert [(a.action_id, a.attempt) for a in msg.running.actions] == [(7, 1)]
    assert [d.action_id for d in msg.done] == [8]


# --------------------------------------------------------------------------
# the lease


def test_a_run_whose_lease_ends_is_stopped_and_given_back() -> None:
    sh = shell()
    welcome(sh, "r1", lease=2.0)
    msg = sh.core.collect("r1", 0.0)
    assert msg is not None and msg.lease_token
    sh.core.written("r1", 0.0)
    sh.do(sh.core.assignment("r1", assignment(7), 1.0))  # renewed from 0: the replica heard the Hello then
    run = sh.run_of(7)
    sh.do(sh.core.lease_granted("r1", msg.lease_token, [7]))  # the token sent at 0: nothing newer
    assert sh.do(sh.core.check_leases(1.9)) == [] and sh.core.leases.valid(7, 1.9)
    out = sh.do(sh.core.check_leases(2.0))
    assert CancelJob(run) in out and sh.said("no leader of shard 7 renewed this agent's lease")
    assert sh.do(sh.core.check_leases(4.0)) == [], "named once"
    sh.end(run, CANCELED, 3.1)
    (d,) = sh.core.streams["r1"].pending_done
    assert (d.errno, d.retry, d.handback) == (E.ECANCELED, True, True)
    assert d.message == "agent a1 lost its lease (no leader confirmed it for 2.0 s) and stopped the action"
    assert sh.core.leases.holding() == 0


def test_a_lease_grant_keeps_the_run_going() -> None:
    sh = shell()
    welcome(sh, "r1", lease=2.0)
    sh.do(sh.core.assignment("r1", assignment(7), 0.0))
    msg = sh.core.collect("r1", 0.4)
    assert msg is not None and msg.lease_token
    sh.do(sh.core.lease_granted("r1", msg.lease_token, [7]))
    assert sh.do(sh.core.check_leases(2.1)) == []
    assert sh.core.check_leases(2.4)


def test_a_deferred_attempt_whose_lease_ends_is_given_back_unstarted() -> None:
    sh = shell()
    welcome(sh, "r1", lease=2.0)
    sh.do(sh.core.assignment("r1", assignment(7, 1), 1.0))
    old = sh.run_of(7)
    sh.do(sh.core.cancel("r1", cancel(7, 1), 1.0))
    sh.do(sh.core.assignment("r1", assignment(7, 2), 1.0))
    sh.do(sh.core.check_leases(3.0))
    assert sh.said("action 7/2 ARCHIVE [0x200000400:0x7:0x0]: not started: no leader of shard 7 renewed")
    (d,) = sh.core.streams["r1"].pending_done
    assert (d.action_id, d.attempt, d.errno, d.handback) == (7, 2, E.ECANCELED, True)
    assert d.message == "agent a1 lost its lease before it started"
    sh.end(old, CANCELED, 3.5)
    assert len(sh.started) == 1


def test_an_assignment_that_waited_past_the_lease_in_a_frozen_agent_is_given_back_unstarted() -> None:
    """Nemesis, pause_agent: the agent is frozen (SIGSTOP) with an
    assignment in its socket; the replica gives the action to another
    agent after its grace. On SIGCONT the assignment arrives: renewed from
    when the replica last heard the agent (0), its lease is over; it is not
    started, handed back (no attempt used) and its credit granted again."""
    sh = shell()
    welcome(sh, "r1", lease=2.0)  # the Hello went out at 0
    before = granted(sh, "r1")
    sh.do(sh.core.assignment("r1", assignment(7), 40.0))
    assert sh.started == [] and 7 not in sh.core.runs
    (d,) = sh.core.streams["r1"].pending_done
    assert (d.action_id, d.attempt, d.errno, d.retry, d.handback) == (7, 1, E.ECANCELED, True, True)
    assert d.message == ("arrived after this agent's lease ended: 40.0 s after its replica last heard from this "
                         "agent, lease 2.0 s; it may run elsewhere; not started")
    assert sh.said("action 7/1 ARCHIVE")
    assert granted(sh, "r1") == before, "its credit granted again"
    assert sh.core.leases.holding() == 0
    check_credit_invariant(sh.core)


def test_a_newer_attempt_that_arrives_late_is_not_queued_behind_the_one_being_stopped() -> None:
    sh = shell()
    welcome(sh, "r1", lease=2.0)
    sh.do(sh.core.assignment("r1", assignment(7, 1), 0.5))
    old = sh.run_of(7)
    sh.do(sh.core.cancel("r1", cancel(7, 1), 1.0))
    sh.do(sh.core.assignment("r1", assignment(7, 2), 30.0))  # waited in the socket
    assert 7 not in sh.core.deferred
    (d,) = sh.core.streams["r1"].pending_done
    assert (d.action_id, d.attempt, d.errno, d.handback) == (7, 2, E.ECANCELED, True)
    sh.end(old, CANCELED, 30.1)
    assert len(sh.started) == 1, "attempt 2 never started here"
    check_credit_invariant(sh.core)


def test_an_assignment_renewed_by_a_fresh_answer_starts() -> None:
    sh = shell()
    welcome(sh, "r1", lease=2.0)
    msg = sh.core.collect("r1", 39.5)
    assert msg is not None and msg.lease_token
    sh.core.written("r1", 39.5)
    sh.do(sh.core.lease_granted("r1", msg.lease_token, []))  # the replica heard us at 39.5
    sh.do(sh.core.assignment("r1", assignment(7), 40.0))
    assert sh.run_of(7) and sh.core.leases.valid(7, 41.4) and not sh.core.leases.valid(7, 41.5)


# --------------------------------------------------------------------------
# stopping


def test_stop_takes_back_the_credits_refuses_new_work_and_hands_back_what_it_cancels() -> None:
    sh = shell(("r1", "r2"))
    welcome(sh, "r1")
    welcome(sh, "r2")
    sh.do(sh.core.assignment("r1", assignment(7), 1.0))
    sh.core.collect("r1", 1.0)
    sh.core.written("r1", 1.0)
    sh.do(sh.core.stop(2.0))
    assert sh.said("taking back the 3 unused credit(s) of the stream to r1")
    assert credits(sh.core.collect("r1", 2.0)) == (0, 0, 0, True)
    assert granted(sh, "r2") == (0, 0, 0)
    sh.do(sh.core.assignment("r1", assignment(8), 2.0))  # sent before the coordinator saw the Ready
    (refused,) = sh.core.streams["r1"].pending_done
    assert (refused.action_id, refused.errno, refused.retry, refused.handback) == (8, E.ECANCELED, True, True)
    assert refused.message == "agent a1 is stopping; not started"
    sh.do(sh.core.rebalance(2.5))
    sh.do(sh.core.tick(10.0))
    assert granted(sh, "r1") == (0, 0, 0) and granted(sh, "r2") == (0, 0, 0), "nothing granted any more"
    out = sh.do(sh.core.stop_running(3.0))
    assert out == [CancelJob(sh.run_of(7))]
    sh.end(sh.run_of(7), CANCELED, 3.1)
    d = sh.core.streams["r1"].pending_done[-1]
    assert (d.action_id, d.errno, d.retry, d.handback) == (7, E.ECANCELED, True, True)
    assert d.message == "agent a1 stopped before the action ended"
    assert not sh.started[1:], "nothing started after the stop"


def test_a_deferred_attempt_is_not_started_once_stopping() -> None:
    sh = shell()
    welcome(sh, "r1")
    sh.do(sh.core.assignment("r1", assignment(7, 1), 1.0))
    sh.do(sh.core.cancel("r1", cancel(7, 1), 1.0))
    sh.do(sh.core.assignment("r1", assignment(7, 2), 1.0))
    sh.do(sh.core.stop(2.0))
    sh.end(sh.run_of(7), CANCELED, 2.5)
    assert len(sh.started) == 1 and sh.said("action 7/2 ARCHIVE [0x200000400:0x7:0x0]: not started, the agent is stopping")
    assert dones(sh, "r1") == [(7, 1, E.ECANCELED), (7, 2, E.ECANCELED)]
    assert sh.core.streams["r1"].pending_done[1].handback


# --------------------------------------------------------------------------
# random event sequences

STREAMS = ("r1", "r2", "r3")
SLOTS = {ARCHIVE: 2, RESTORE: 1, REMOVE: 1}


class CoreMachine(RuleBasedStateMachine):
    """Any order of events, from any stream, whatever the credits: the
    core never runs more than its slots, never grants more than it can run,
    never runs an action twice at once and never loses a completion."""

    def __init__(self) -> None:
        super().__init__()
        self.sh = Shell(AgentCore(CoreConfig("a1", SLOTS, "fs1", 5.0, 1.0), STREAMS))
        self.core = self.sh.core
        self.now = 0.0
        self.expected: set[tuple[int, int]] = set()  # completions of ended runs, not yet delivered
        self.tokens: dict[str, list[int]] = {s: [] for s in STREAMS}
        self.attempts: dict[int, int] = {}  # the latest attempt of each action the coordinator assigned
        self.steps = 0
        self.stopped = False
        self.starts_at_stop = 0

    def do(self, out: list[Instruction]) -> None:
        self.steps += 1
        self.sh.do(out)

    def after_message(self, stream: str) -> None:
        self.do(self.core.rebalance(self.now))  # the shell rebalances after every message

    @rule(stream=st.sampled_from(STREAMS), acks=st.booleans(), lease=st.sampled_from([0.0, 0.0, 10.0]))
    def welcome(self, stream: str, acks: bool, lease: float) -> None:
        if self.core.streams[stream].welcomed:
            return
        self.do(self.core.welcomed(stream, "rep", 5.0, lease, acks, self.now))
        self.after_message(stream)

    @rule(stream=st.sampled_from(STREAMS))
    def lose(self, stream: str) -> None:
        self.do(self.core.stream_lost(stream, self.now))

    @rule(stream=st.sampled_from(STREAMS), action_id=st.integers(1, 12), attempt=st.integers(1, 3),
          kind=st.sampled_from([ARCHIVE, ARCHIVE, RESTORE, REMOVE]))
    def assign(self, stream: str, action_id: int, attempt: int, kind: int) -> None:
        """Any assignment, within the credits or beyond them."""
        self.do(self.core.assignment(stream, assignment(action_id, attempt, kind), self.now))
        self.after_message(stream)

    @rule(data=st.data(), action_id=st.integers(1, 12), kind=st.sampled_from([ARCHIVE, ARCHIVE, RESTORE, REMOVE]))
    def assign_on_a_credit(self, data: st.DataObject, action_id: int, kind: int) -> None:
        """What a coordinator does: spend a credit it holds."""
        holding = [s.address for s in self.core.streams.values() if s.welcomed and s.granted[kind]]
        if holding:
            stream = data.draw(st.sampled_from(holding))
            self.do(self.core.assignment(stream, assignment(action_id, self.attempts.get(action_id, 1), kind),
                                         self.now))
            self.after_message(stream)

    @rule(data=st.data(), newer=st.booleans())
    def cancel_a_run(self, data: st.DataObject, newer: bool) -> None:
        """A coordinator cancels what runs here, and maybe assigns the action again at once."""
        if not self.sh.jobs:
            return
        action_id, attempt, kind = self.sh.jobs[data.draw(st.sampled_from(sorted(self.sh.jobs)))]
        stream = data.draw(st.sampled_from(STREAMS))
        self.do(self.core.cancel(stream, cancel(action_id, attempt), self.now))
        if newer:
            self.attempts[action_id] = attempt + 1
            self.do(self.core.assignment(stream, assignment(action_id, attempt + 1, kind), self.now))
        self.after_message(stream)

    @rule(stream=st.sampled_from(STREAMS), action_id=st.integers(1, 12), attempt=st.integers(0, 3))
    def cancel(self, stream: str, action_id: int, attempt: int) -> None:
        self.do(self.core.cancel(stream, cancel(action_id, attempt), self.now))
        self.after_message(stream)

    @rule(stream=st.sampled_from(STREAMS), a=st.integers(0, 3), r=st.integers(0, 2), m=st.integers(0, 2))
    def backlog(self, stream: str, a: int, r: int, m: int) -> None:
        self.do(self.core.backlog(stream, (a, r, m), self.now))
        self.after_message(stream)

    @rule(data=st.data(), result=st.sampled_from([OK, CANCELED, Result(errno=E.EIO, message="io", retry=True)]))
    def job_ends(self, data: st.DataObject, result: Result) -> None:
        if not self.sh.jobs:
            return
        run = data.draw(st.sampled_from(sorted(self.sh.jobs)))
        action_id, attempt, _kind = self.sh.jobs[run]
        self.now += 0.01
        self.sh.end(run, result, self.now)
        self.expected.add((action_id, attempt))

    @rule(data=st.data(), done=st.integers(0, 100))
    def progress(self, data: st.DataObject, done: int) -> None:
        if self.sh.jobs:
            self.do(self.core.progress(data.draw(st.sampled_from(sorted(self.sh.jobs))), done, 100))

    @rule(stream=st.sampled_from(STREAMS), ok=st.booleans())
    def write(self, stream: str, ok: bool) -> None:
        s = self.core.streams[stream]
        if not s.welcomed:
            return
        msg = self.core.collect(stream, self.now)
        if msg is None:
            return
        if msg.lease_token:
            self.tokens[stream].append(msg.lease_token)
        if not ok:
            self.core.write_failed(stream)
            self.do(self.core.stream_lost(stream, self.now))
            return
        self.core.written(stream, self.now)
        if not s.acks_done:
            self.expected -= {(d.action_id, d.attempt) for d in msg.done}

    @rule(data=st.data())
    def acknowledge(self, data: st.DataObject) -> None:
        unacked = sorted({k for s in self.core.streams.values() for k in s.unacked})
        if unacked:
            key = data.draw(st.sampled_from(unacked))
            self.do(self.core.applied([key]))
            self.expected.discard(key)  # the coordinator has it

    @rule(stream=st.sampled_from(STREAMS), token=st.integers(1, 5))
    def request_running(self, stream: str, token: int) -> None:
        self.do(self.core.request_running(stream, token))

    @rule(stream=st.sampled_from(STREAMS), data=st.data())
    def lease_grant(self, stream: str, data: st.DataObject) -> None:
        if self.tokens[stream]:
            token = data.draw(st.sampled_from(self.tokens[stream]))
            self.do(self.core.lease_granted(stream, token, list(range(10))))

    @rule(dt=st.sampled_from([0.1, 0.5, 1.0, 2.0, 5.0, 11.0, 31.0]))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        self.do(self.core.tick(self.now))
        self.do(self.core.check_leases(self.now))

    @precondition(lambda self: not self.stopped and self.steps > 60)  # late: little happens after it
    @rule()
    def stop(self) -> None:
        self.stopped = True
        self.do(self.core.stop(self.now))
        self.starts_at_stop = len(self.sh.started)

    @precondition(lambda self: self.stopped)
    @rule()
    def stop_running(self) -> None:
        self.do(self.core.stop_running(self.now))
        assert all(run in self.sh.cancelled for run in self.sh.jobs)

    # -- after every step ----------------------------------------------------

    @invariant()
    def never_more_than_the_slots(self) -> None:
        check_credit_invariant(self.core)
        for k in KINDS:
            assert sum(1 for _a, _att, kind in self.sh.jobs.values() if kind == k) == self.core.running_count[k]

    @invariant()
    def one_run_per_action(self) -> None:
        ids = [a for a, _att, _k in self.sh.jobs.values()]
        assert len(ids) == len(set(ids))
        assert sorted((a, att) for a, att, _k in self.sh.jobs.values()) == self.core.running_actions()
        assert set(self.core.deferred) <= set(self.core.runs), "a deferred attempt waits for a running one"

    @invariant()
    def no_completion_is_lost(self) -> None:
        held: set[tuple[int, int]] = set()
        for s in self.core.streams.values():
            held.update((d.action_id, d.attempt) for d in s.pending_done + s.in_flight)
            held.update(s.unacked)
        missing = self.expected - held
        assert not missing, f"completions lost: {sorted(missing)}"

    @invariant()
    def lost_streams_hold_nothing(self) -> None:
        for s in self.core.streams.values():
            if not s.welcomed:
                assert not any(s.granted.values()) and not s.unacked

    @invariant()
    def nothing_starts_after_stop(self) -> None:
        if self.stopped:
            assert len(self.sh.started) == self.starts_at_stop
            assert not any(s.granted[k] for s in self.core.streams.values() for k in KINDS), "credits taken back"


TestCoreMachine = CoreMachine.TestCase
TestCoreMachine.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)


def test_log_lines_are_formatted_only_with_their_arguments() -> None:
    assert Log(logging.INFO, "action %d/%d: %s", (7, 1, "x")).text == "action 7/1: x"
    assert Log(logging.INFO, "100%").text == "100%"
