"""Helpers for tests that run the stand-in: the library build (skipping when
there is no C compiler) and the MDT as a process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest

from hsm.fid import Fid
from tests.cluster import until as cluster_until
from tests.lustre_standin import build as standin_build
from tests.lustre_standin import protocol as P

REPO = Path(__file__).resolve().parents[2]


def until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> Any:
    """``tests.cluster.until``, polling more often (the stand-in answers in microseconds)."""
    return cluster_until(cond, timeout, what, interval)


def library_or_skip(dest: str | os.PathLike[str]) -> Path:
    """The stand-in liblustreapi built in *dest* (reused when unchanged);
    skips the test when there is no C compiler."""
    try:
        return standin_build.build(dest)
    except standin_build.CompilerMissing as e:
        pytest.skip(str(e))


class MdtProcess:
    """``python -m tests.lustre_standin.mdt --root ROOT ...`` (keyword
    arguments become options: ``max_requests=3`` -> ``--max-requests 3``),
    started and waited for; its log (DEBUG) goes to *log*."""

    def __init__(self, root: str | os.PathLike[str], log: str | os.PathLike[str], **params: Any) -> None:
        self.root = Path(root)
        self.client = P.MdtClient(self.root)
        args = [sys.executable, "-m", "tests.lustre_standin.mdt", "--root", str(self.root),
                "--log-level", str(params.pop("log_level", "DEBUG"))]
        for k, v in params.items():
            args += [f"--{k.replace('_', '-')}", str(v)]
        self.log = Path(log)
        self._logf: IO[bytes] = open(self.log, "ab")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=self._logf, stderr=subprocess.STDOUT)
        until(lambda: self.proc.poll() is not None or self.client.ping(), 15, "the MDT to listen")
        if self.proc.poll() is not None:
            self._logf.close()
            raise AssertionError(f"the MDT exited ({self.proc.returncode}): {self.log.read_text()}")

    def stats(self) -> dict[str, Any]:
        return self.client.stats()

    def cookie(self, cookie: int) -> dict[str, Any]:
        """What the MDT saw of one cookie: sent, begins, progress, ends, status."""
        out: dict[str, Any] = self.stats()["cookies"][str(cookie)]
        return out

    def records(self, fid: Fid | None = None) -> list[dict[str, Any]]:
        """The action log (finished records stay for ``grace_delay``)."""
        recs: list[dict[str, Any]] = self.stats()["records"]
        return [r for r in recs if fid is None or r["fid"] == str(fid)]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logf.close()
