"""A service manager's end of ``NOTIFY_SOCKET`` (sd_notify(3)) for tests:
a datagram socket whose messages a thread collects, from the start as
systemd reads them, or only once told (a manager that does not read: the
socket's queue fills after 10 datagrams)."""

from __future__ import annotations

import socket
import threading
from pathlib import Path


class NotifySocket:
    def __init__(self, path: Path, reading: bool = True) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if reading:
            self.start_reading()

    def start_reading(self) -> None:
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.extend(self.sock.recv(4096).decode(errors="replace").splitlines())
            except TimeoutError:
                pass

    def seen(self, line: str) -> bool:
        return line in self.messages

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sock.close()
