"""systemd's notify protocol (sd_notify(3)) without libsystemd: one datagram
to ``$NOTIFY_SOCKET``. A no-op when not started by systemd.

A send never blocks: the socket's queue holds a few datagrams (Linux's
``net.unix.max_dgram_qlen``, 10 by default) and a manager that does not read
them would otherwise stop the caller, the replica's event loop, in
``sendto``, and with it everything the replica serves. A message that finds
the queue full is dropped (:func:`notify` returns False): a missed
``WATCHDOG=1`` is followed by the next one; :func:`notify_soon` tries again
for the messages that must arrive (``READY=1``, ``STOPPING=1``)."""

from __future__ import annotations

import asyncio
import os
import socket
import time


def _address() -> str | None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return None
    return "\0" + addr[1:] if addr.startswith("@") else addr  # "@": the abstract namespace


def notify(state: str) -> bool:
    """Send e.g. ``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``, ``STATUS=...``.
    True when sent; False when there is no notify socket or its queue is
    full (dropped, see the module's docstring)."""
    addr = _address()
    if addr is None:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as s:
        try:
            s.connect(addr)
            s.send(state.encode())
        except BlockingIOError:
            return False
    return True


async def notify_soon(state: str, within: float = 30.0) -> bool:
    """:func:`notify`, tried again every 0.1 s while the queue is full, for
    up to *within* seconds; whether it was sent."""
    if _address() is None:
        return False
    end = time.monotonic() + within
    while not notify(state):
        if time.monotonic() >= end:
            return False
        await asyncio.sleep(0.1)
    return True


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 2e6, 0.05)
    except ValueError:
        return None
