"""systemd notifications never block the replica (hsm.sdnotify): a notify
socket nobody reads fills after 10 datagrams, and a blocking send would
stop the replica's event loop (found in CI: the deploy test's replicas
ignored SIGTERM once the test stopped reading their WATCHDOG=1 pings)."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hsm import sdnotify
from tests.cluster import ProcCluster, until
from tests.notifysock import NotifySocket


@pytest.fixture
def manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    m = NotifySocket(tmp_path / "notify", reading=False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(m.path))
    yield m
    m.close()


def test_without_a_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    assert asyncio.run(sdnotify.notify_soon("READY=1", within=1)) is False


def test_a_full_queue_drops_the_message_instead_of_blocking(manager: NotifySocket) -> None:
    sent: list[bool] = []
    sender = threading.Thread(target=lambda: sent.extend(sdnotify.notify("WATCHDOG=1") for _ in range(30)),
                              daemon=True)
    sender.start()
    sender.join(10)
    assert not sender.is_alive(), "notify blocked on a notify socket nobody reads"
    assert sent[:5] == [True] * 5 and sent[-1] is False  # the queue took some, then it was full
    manager.start_reading()
    until(lambda: len(manager.messages) == sent.count(True), 5, "the queued messages")
    assert sdnotify.notify("STATUS=read again")  # room again
    until(lambda: manager.messages[-1:] == ["STATUS=read again"], 5, "the next message")


def test_notify_soon_waits_for_room(manager: NotifySocket) -> None:
    while sdnotify.notify("WATCHDOG=1"):
        pass  # fill the queue

    async def main() -> tuple[bool, bool]:
        give_up = await sdnotify.notify_soon("STOPPING=1", within=0.3)
        asyncio.get_running_loop().call_later(0.5, manager.start_reading)
        return give_up, await sdnotify.notify_soon("STOPPING=1", within=10)

    assert asyncio.run(main()) == (False, True)
    until(lambda: "STOPPING=1" in manager.messages, 5, "STOPPING=1")
    assert manager.messages.count("STOPPING=1") == 1


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProcCluster]:
    c = ProcCluster(tmp_path / "c", replicas=1, shards=1)
    try:
        yield c
    finally:
        c.stop()


def test_a_replica_serves_while_its_manager_does_not_read(cluster: ProcCluster, tmp_path: Path) -> None:
    manager = NotifySocket(tmp_path / "notify", reading=False)
    try:
        # a WATCHDOG=1 every 0.05 s: the queue is full within a second
        cluster.start("r1", env={"NOTIFY_SOCKET": str(manager.path), "WATCHDOG_USEC": "100000"})
        cluster.wait_ready()
        end = time.monotonic() + 3
        while time.monotonic() < end:  # its loop still answers, again and again
            assert cluster.status("r1").shards[0].leader
            time.sleep(0.2)
        manager.start_reading()  # READY=1 was tried again meanwhile: it gets through once there is room
        until(lambda: manager.seen("READY=1"), 40, "READY=1")
        p = cluster.procs.pop("r1")
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 0
        assert "STOPPING=1" in manager.messages
    finally:
        manager.close()
