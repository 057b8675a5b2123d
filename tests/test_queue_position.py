"""Where am I in the queue? (issue 15, item 5): a waiting action's place in
the queue it starts from and an estimate of when, from that queue's recent
dispatch rate, through the real API and hsmctl; the rank itself comes from
tickets (coordinator/state.py ReadyQueue), never a scan of the queue."""

from __future__ import annotations

from typing import Any

from hsm.v1 import types_pb2 as tpb
from hsmctl.output import action_line, format_queue
from tests.cluster import until
from tests.test_agentd import agent_config, registered, running_agent, submit, tree  # noqa: F401 - fixture

KiB = 1024


def test_waiting_actions_know_their_place_and_when_they_should_start(coordinator_factory: Any, tree: Any) -> None:  # noqa: F811
    c = coordinator_factory()
    files = [tree.add(f"f{i}", 64 * KiB) for i in range(8)]
    with c.client(timeout=10) as client:
        ids = [submit(client, fid, "archive") for _, fid, _ in files]
        places = [(a.queue_position, a.queue_length, a.start_estimate) for a in map(client.get_action, ids)]
        assert places == [(k, 8, 0.0) for k in range(1, 9)], "no agent yet: no dispatch rate, no estimate"
        listed = {a.action_id: a.queue_position for a in client.list_actions()}
        assert [listed[i] for i in ids] == list(range(1, 9))
        client.cancel([ids[1]])
        assert client.get_action(ids[4]).queue_position == 4, "a cancel ahead moves it up"

        c.call(c.node.sample_dispatch)
        # one archive at a time, 64 KiB at 128 KiB/s: about half a second each
        with running_agent(agent_config(c, tree, slots=_one_archive(), mover={"bandwidth_limit": 128 * KiB})):
            until(lambda: registered(client, "a1"), 10, "agent a1 to register")
            until(lambda: client.get_action(ids[3]).state != tpb.WAITING, 30, "three archives to start")
            c.call(c.node.sample_dispatch)
            last = client.get_action(ids[7])
            # the last one in: always last of those still waiting (4 of 4 at most)
            assert last.state == tpb.WAITING and 1 <= last.queue_position == last.queue_length <= 4
            assert last.start_estimate > 0, "dispatches were seen: an estimate"
            text = format_queue(last)
            assert text.startswith(f"queue {last.queue_position}/{last.queue_length} ~")
            assert text in action_line(last)
            running = client.get_action(ids[3])
            assert running.queue_position == 0 and format_queue(running) == ""
            done = client.wait(ids, deadline=60)
    assert {done[i].state for i in ids} == {tpb.SUCCEEDED, tpb.CANCELED}


def _one_archive() -> Any:
    from agentd.config import SlotsConfig
    return SlotsConfig(archive=1, restore=1, remove=1)
