"""``agentd`` with a record of every mover run, for the benchmarks.

Usage: ``python -m bench.agent_shim RUNS_FILE AGENTD_ARGS...``

Runs ``agentd.cli.main(AGENTD_ARGS)`` unchanged, except that the ``null``
mover's ``run`` is wrapped to append one line per run to *RUNS_FILE*::

    <unix time the run ended> <action id> <attempt> <kind> <errno> <fid>

(flushed every 0.2 s and at exit; the FID as Lustre prints it,
``[0x200002400:0x1:0x0]``). The harness counts, from these lines, how many
actions were dispatched, how often each action ran (a second run of the
same action is a duplicate), how often each FID was dispatched (restore
storm: one dispatch per FID) and the dispatch rate over time. The wrapper
costs a ``time.time()``, a ``str(fid)`` and a list append per action.
"""

from __future__ import annotations

import atexit
import sys
import threading
import time

FLUSH_INTERVAL = 0.2


class RunRecorder:
    def __init__(self, path: str) -> None:
        self.path = path
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-runs", daemon=True)

    def start(self) -> None:
        open(self.path, "a").close()
        self._thread.start()
        atexit.register(self.close)

    def record(self, action_id: int, attempt: int, kind: int, errno: int, fid: str) -> None:
        line = f"{time.time():.6f} {action_id} {attempt} {kind} {errno} {fid}\n"
        with self._lock:
            self._lines.append(line)

    def flush(self) -> None:
        with self._lock:
            lines, self._lines = self._lines, []
        if lines:
            with open(self.path, "a") as f:
                f.write("".join(lines))

    def _loop(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self.flush()


def install(recorder: RunRecorder) -> None:
    from agentd.movers.null import NullMover

    original = NullMover.run

    def run(self: NullMover, job):  # type: ignore[no-untyped-def]
        result = original(self, job)
        recorder.record(job.action_id, job.attempt, job.kind, result.errno, str(job.fid))
        return result

    NullMover.run = run  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m bench.agent_shim RUNS_FILE AGENTD_ARGS...", file=sys.stderr)
        return 2
    recorder = RunRecorder(args[0])
    recorder.start()
    install(recorder)
    from agentd.cli import main as agentd_main

    try:
        return agentd_main(args[1:])
    finally:
        recorder.close()


if __name__ == "__main__":
    sys.exit(main())
