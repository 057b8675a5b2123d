"""The nemesis's client: archives, restores, removes and cancels on a simfs
tree, run as ``python -m tests.nemesis.workload`` in a client namespace,
while the harness breaks the cluster around it.

It behaves as an idempotent client must: every request has its own
idempotency key and is sent again with the same key (the same item, byte
for byte) until a replica acknowledges it, however long the cluster is
broken, so a request is never half-known. What it knows is written down at
once, one JSON line each, flushed, for the checker (the formats are in
``tests/nemesis/__init__.py``):

* ``files.jsonl``: every file, with its FID and SHA-256, before anything is
  asked for it. Files are written once and never again, so every archive
  object of that FID must hold exactly those bytes, and every restore must
  bring them back.
* ``acks.jsonl``: every acknowledgement (a submit's outcome and action id, a
  cancel's outcome); a request it stops retrying when told to stop is
  written with ``gave_up``.

One file is worked on by one request at a time (the workload waits for the
action to end, by asking the cluster, before touching the file again): an
archive, then a release and a restore, or a remove, then an archive again.
Cancels hit actions in flight, mostly archives of the few large files,
which take seconds to copy.

Control, from the harness, by files in ``RUN/control``: ``<client>.pause``
(start nothing new; requests in flight are still retried until
acknowledged), ``stop`` (the same, then exit once they are, or after
``--drain`` seconds). The workload writes ``<client>.state.json`` twice a
second: whether it saw the pause and how many requests are in flight.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from hsm.client import (
    CoordinatorClient,
    CoordinatorError,
    cancel_outcome_name,
    is_terminal,
    outcome_name,
    state_name,
)
from hsm.fid import Fid
from hsm.hsmflags import HS
from hsm.simfs import SimFS
from hsm.tls import TlsFiles
from hsm.v1 import coordinator_pb2 as cpb

log = logging.getLogger("nemesis.workload")

KiB, MiB = 1 << 10, 1 << 20


@dataclass
class FileRec:
    path: Path
    fid: Fid
    size: int
    large: bool
    #: the action the workload waits for before touching the file again (0: none)
    busy: int = 0
    busy_kind: str = ""
    #: when *busy* was last looked up (monotonic)
    checked: float = 0.0
    #: a worker is acting on the file
    claimed: bool = False


class Workload:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.client_name: str = args.client
        self.run_dir = Path(args.run_dir)
        self.control = self.run_dir / "control"
        self.pause_file = self.control / f"{self.client_name}.pause"
        self.stop_file = self.control / "stop"
        self.state_file = self.control / f"{self.client_name}.state.json"
        self.fs = SimFS.open(args.fs_root)
        self.dir = self.fs.root / self.client_name
        self.dir.mkdir(exist_ok=True)
        tls = TlsFiles.from_args(None, None, None)
        initiator = f"nemesis-{self.client_name}"
        #: requests: each try at most 5 s, the caller retries
        self.client = CoordinatorClient(args.coordinators, timeout=5.0, retry_unavailable=2.0, tls=tls,
                                         initiator=initiator)
        #: look-ups of the actions waited for: short, never in the way
        self.lookup = CoordinatorClient(args.coordinators, timeout=2.0, retry_unavailable=0.5, tls=tls,
                                        initiator=initiator)
        self.rng = random.Random(f"{args.seed}-{self.client_name}")
        self.lock = threading.Lock()
        self.files: list[FileRec] = []
        self.seq = 0
        self.inflight = 0
        self.counts: dict[str, int] = {}
        self.stopping = threading.Event()
        self.drain_deadline = float("inf")
        self.end = time.monotonic() + args.duration
        self._out = threading.Lock()
        self.acks = open(self.run_dir / "acks.jsonl", "a", buffering=1)  # noqa: SIM115 - closed in main()
        self.files_out = open(self.run_dir / "files.jsonl", "a", buffering=1)  # noqa: SIM115

    # -- records ---------------------------------------------------------------

    def _write(self, f: Any, rec: dict[str, Any]) -> None:
        # one write of one line on an O_APPEND file: lines of several
        # workload processes never interleave
        with self._out:
            f.write(json.dumps(rec) + "\n")
            f.flush()

    def ack(self, op: str, key: str, rec: FileRec, action_id: int, outcome: str, target: int = 0,
            **extra: Any) -> None:
        self._write(self.acks, {"t": round(time.time(), 3), "client": self.client_name, "op": op, "key": key,
                                "fid": str(rec.fid), "path": str(rec.path), "action_id": action_id,
                                "outcome": outcome, "target": target, **extra})
        with self.lock:
            self.counts[op] = self.counts.get(op, 0) + 1

    def gave_up(self, op: str, key: str, rec: FileRec) -> None:
        self._write(self.acks, {"t": round(time.time(), 3), "client": self.client_name, "op": op, "key": key,
                                "fid": str(rec.fid), "path": str(rec.path), "gave_up": True})

    def new_key(self, op: str) -> str:
        with self.lock:
            self.seq += 1
            return f"nemesis-{self.client_name}-{self.args.seed}-{self.seq}-{op}"

    # -- control ---------------------------------------------------------------

    def paused(self) -> bool:
        return self.pause_file.exists() or self.stopping.is_set()

    def request_stop(self) -> None:
        """What the stop file asks, for this process alone (SIGTERM)."""
        if not self.stopping.is_set():
            log.info("stop asked: no new request; draining for %.0f s at most", self.args.drain)
            self.drain_deadline = time.monotonic() + self.args.drain
            self.stopping.set()

    def giving_up(self) -> bool:
        """Requests in flight are retried until this is true."""
        return time.monotonic() > self.drain_deadline or time.monotonic() > self.end + self.args.drain

    def write_state(self) -> None:
        with self.lock:
            state = {"t": round(time.time(), 3), "paused": self.paused(), "inflight": self.inflight,
                     "files": len(self.files), "counts": dict(self.counts), "stopping": self.stopping.is_set()}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state_file)

    # -- talking to the cluster ---------------------------------------------------

    def retry(self, what: str, call: Callable[[], Any]) -> Any | None:
        """*call* until it returns (the same request each time), or None
        once the workload gives up."""
        delay = 0.2
        tries = 0
        while True:
            tries += 1
            try:
                return call()
            except CoordinatorError as e:
                if self.giving_up():
                    log.warning("%s: giving up after %d tries: %s", what, tries, e)
                    return None
                log.info("%s: try %d: %s: %s", what, tries, e.code_name, str(e)[:200])
                time.sleep(delay)
                delay = min(1.0, delay * 1.5)

    def submit(self, op: str, rec: FileRec) -> cpb.SubmitResult | None:
        version, attrs = self.fs.state_and_version(rec.path)
        ctime = os.stat(rec.path).st_ctime_ns
        key = self.new_key(op)
        item = self.client.submit_item(self.fs.fsname, rec.fid, op, hsm=(int(attrs.flags), int(attrs.archive_id),
                                                                          version, ctime), idempotency_key=key)
        res = self.retry(f"{op} {rec.fid} ({key})", lambda: self.client.submit([item])[0])
        if res is None:
            self.gave_up(op, key, rec)
            return None
        outcome = outcome_name(res.outcome)
        extra = {"errno": res.errno, "reason": res.reason} if outcome == "REJECTED" else {}
        self.ack(op, key, rec, res.action_id, outcome, **extra)
        if res.action_id:
            with self.lock:
                rec.busy, rec.busy_kind, rec.checked = res.action_id, op, time.monotonic()
        return res  # type: ignore[no-any-return]

    def cancel(self, rec: FileRec, action_id: int) -> None:
        key = self.new_key("cancel")
        results = self.retry(f"cancel {action_id} ({key})", lambda: self.client.cancel(
            action_ids=[action_id], reason=f"nemesis {self.client_name}"))
        if results is None:
            self.gave_up("cancel", key, rec)
            return
        outcome = cancel_outcome_name(results[0].outcome) if results else "NO_RESULT"
        self.ack("cancel", key, rec, 0, outcome, target=action_id,
                 state=state_name(results[0].state) if results else "")

    def refresh(self, limit: int = 3) -> None:
        """Look up a few of the actions waited for (each at most once a second)."""
        now = time.monotonic()
        with self.lock:
            due = [r for r in self.files if r.busy and now - r.checked > 1.0]
            due.sort(key=lambda r: r.checked)
            for r in due[:limit]:
                r.checked = now
        for r in due[:limit]:
            action_id = r.busy
            try:
                action = self.lookup.get_action(action_id)
            except CoordinatorError as e:
                log.debug("look-up of action %d: %s", action_id, e)
                continue
            if is_terminal(action.state):
                with self.lock:
                    if r.busy == action_id:
                        r.busy, r.busy_kind = 0, ""

    # -- operations --------------------------------------------------------------

    def _flags(self, rec: FileRec) -> int:
        return int(self.fs.hsm_state(rec.path).flags)

    def new_file(self, large: bool = False) -> FileRec:
        a = self.args
        size = a.large_size if large else self.rng.randint(a.min_size, a.max_size)
        with self.lock:
            n = len(self.files)
        path = self.dir / (f"big{n}" if large else f"f{n}")
        data = os.urandom(size)
        path.write_bytes(data)
        fid = self.fs.fid_of(path)
        self._write(self.files_out, {"t": round(time.time(), 3), "fid": str(fid), "path": str(path), "size": size,
                                     "sha256": hashlib.sha256(data).hexdigest(), "client": self.client_name})
        rec = FileRec(path, fid, size, large, claimed=True)
        with self.lock:
            self.files.append(rec)
        return rec

    def op_new(self) -> None:
        rec = self.new_file()
        try:
            self.submit("archive", rec)
        finally:
            rec.claimed = False

    def op_archive(self, rec: FileRec) -> None:
        self.submit("archive", rec)

    def op_restore(self, rec: FileRec) -> None:
        if not self._flags(rec) & HS.RELEASED:
            try:
                self.fs.release(rec.path)
            except (OSError, ValueError) as e:
                log.info("%s: not released: %s", rec.path, e)
                return
        self.submit("restore", rec)

    def op_remove(self, rec: FileRec) -> None:
        self.submit("remove", rec)

    def op_archive_and_cancel(self, rec: FileRec) -> None:
        res = self.submit("archive", rec)
        if res is None or not res.action_id:
            return
        time.sleep(self.rng.uniform(0.3, 2.5))
        self.cancel(rec, res.action_id)

    def op_cancel(self, rec: FileRec) -> None:
        if rec.busy:
            self.cancel(rec, rec.busy)

    def pick(self) -> Callable[[], None] | None:
        """An operation, drawn among those the files' states allow; the
        file it works on is claimed."""
        with self.lock:
            idle = [r for r in self.files if not r.claimed and not r.busy]
            busy = [r for r in self.files if r.busy and not r.claimed]
            small = sum(1 for r in self.files if not r.large)
        choices: list[tuple[float, str, Callable[[], None], FileRec | None]] = []
        if small < self.args.max_files:
            choices.append((3.0 if small < 6 else 1.5, "new", self.op_new, None))
        for r in idle:
            try:
                flags = self._flags(r)
            except OSError:
                continue
            archived = flags & HS.ARCHIVED and not flags & HS.DIRTY
            if r.large:
                if not archived:
                    choices.append((1.5, "archive+cancel", partial(self.op_archive_and_cancel, r), r))
                continue
            if not archived:
                choices.append((1.0, "archive", partial(self.op_archive, r), r))
            elif flags & HS.RELEASED:
                choices.append((1.0, "restore", partial(self.op_restore, r), r))
            else:
                choices.append((0.6, "restore", partial(self.op_restore, r), r))
                choices.append((0.25, "remove", partial(self.op_remove, r), r))
        for r in busy:
            choices.append((0.1, "cancel", partial(self.op_cancel, r), r))
        if not choices:
            return None
        _weight, kind, op, rec = self.rng.choices(choices, weights=[c[0] for c in choices])[0]
        if rec is not None:
            with self.lock:
                if rec.claimed or (kind == "cancel") != bool(rec.busy):
                    return None  # another worker got there first
                rec.claimed = True

        def run() -> None:
            try:
                op()
            finally:
                if rec is not None:
                    rec.claimed = False
        return run

    # -- threads -------------------------------------------------------------------

    def worker(self, k: int) -> None:
        rng = random.Random(f"{self.args.seed}-{self.client_name}-{k}")
        while not self.stopping.is_set() and time.monotonic() < self.end:
            self.refresh()
            with self.lock:
                go = not self.paused()
                if go:
                    self.inflight += 1
            if not go:
                time.sleep(0.2)
                continue
            try:
                op = self.pick()
                if op is not None:
                    op()
            except Exception:
                log.exception("operation failed")
            finally:
                with self.lock:
                    self.inflight -= 1
            time.sleep(rng.uniform(self.args.min_pause, self.args.max_pause))

    def run(self) -> int:
        for _ in range(self.args.large):
            rec = self.new_file(large=True)
            rec.claimed = False
        workers = [threading.Thread(target=self.worker, args=(k,), daemon=True, name=f"worker-{k}")
                   for k in range(self.args.threads)]
        for t in workers:
            t.start()
        try:
            while any(t.is_alive() for t in workers):
                if self.stop_file.exists():
                    self.request_stop()
                self.write_state()
                time.sleep(0.5)
        finally:
            self.stopping.set()
            self.write_state()
            self.client.close()
            self.lookup.close()
            self.acks.close()
            self.files_out.close()
        log.info("stopped: %s", self.counts)
        return 0


def _size(text: str) -> int:
    t = text.strip().upper()
    mult = {"K": KiB, "M": MiB}.get(t[-1:], 1)
    return int(float(t[:-1] if mult != 1 else t) * mult)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.nemesis.workload")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--client", required=True)
    p.add_argument("--coordinators", required=True)
    p.add_argument("--fs-root", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-files", type=int, default=24)
    p.add_argument("--large", type=int, default=2, help="large files, archived then cancelled")
    p.add_argument("--large-size", type=_size, default=4 * MiB)
    p.add_argument("--min-size", type=_size, default=64 * KiB)
    p.add_argument("--max-size", type=_size, default=1 * MiB)
    p.add_argument("--min-pause", type=float, default=0.3)
    p.add_argument("--max-pause", type=float, default=1.2)
    p.add_argument("--duration", type=float, default=6 * 3600, help="stop after this long at most (s)")
    p.add_argument("--drain", type=float, default=60.0, help="after stop, retry unacknowledged requests this long")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("hsm.simfs").setLevel(logging.WARNING)
    wl = Workload(args)
    signal.signal(signal.SIGTERM, lambda *_: wl.request_stop())
    return wl.run()


if __name__ == "__main__":
    sys.exit(main())
