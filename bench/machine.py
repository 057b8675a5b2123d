"""What the benchmark ran on: recorded with every result."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("hsm-coordinator", "grpcio", "protobuf", "pysyncobj", "uvloop", "cryptography", "py-spy", "pyinstrument")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "cpu": _cpu_model(),
        "memory_bytes": _mem_total(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "python_impl": platform.python_implementation(),
        "versions": versions,
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "load_avg_at_start": os.getloadavg(),
        # the hot modules' build the benchmark's processes run: "compiled (mypyc)" or "pure (...)"
        "build": _build(),
    }


def _build() -> str:
    from hsm.compiled import build

    return build()
