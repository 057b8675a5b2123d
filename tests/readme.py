"""The README's samples are produced by the code: tests run the command a
sample shows and compare the output with the sample's lines, ignoring what
changes from run to run (numbers, temporary paths, ids, the host name)."""

from __future__ import annotations

import difflib
import re
import socket
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
#: the host name in the README's samples (they were produced on it)
SAMPLE_HOST = "vm"

_MASKS = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<uuid>"),
    (re.compile(r"/tmp/hsm-demo-[A-Za-z0-9_]+"), "<dir>"),
    (re.compile(r"\bsim[a-z0-9]{5}\b"), "<fsname>"),
    (re.compile(r"0x[0-9a-fA-F]+"), "<n>"),
    (re.compile(r"\d+(?:\.\d+)?"), "<n>"),
    (re.compile(r"[ \t]+"), " "),
]


def block_after(marker: str, readme: Path = README) -> str:
    """The first fenced code block after the first line that contains *marker*."""
    lines = readme.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if marker in line)
    opening = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("```"))
    closing = next(i for i in range(opening + 1, len(lines)) if lines[i].startswith("```"))
    return "\n".join(lines[opening + 1:closing])


def shape(text: str, host: str | None = None, replace: dict[str, str] | None = None) -> list[str]:
    """*text*'s non-empty lines with the parts that vary between runs masked."""
    for old, new in (replace or {}).items():
        text = text.replace(old, new)
    if host:
        text = re.sub(rf"\b{re.escape(host)}\b", "<host>", text)
    out = []
    for line in text.splitlines():
        for pattern, mask in _MASKS:
            line = pattern.sub(mask, line)
        if line.strip():
            out.append(line.rstrip())
    return out


def assert_sample(marker: str, actual: str, replace: dict[str, str] | None = None) -> None:
    """The README block after *marker* has the shape of *actual* (produced by
    the code on this host)."""
    sample = shape(block_after(marker), SAMPLE_HOST)
    got = shape(actual, socket.gethostname().split(".")[0], replace)
    if sample != got:
        diff = "\n".join(difflib.unified_diff(sample, got, "README", "actual output", lineterm=""))
        raise AssertionError(f"the README's sample after {marker!r} is not what the code prints "
                             f"(numbers, paths and ids ignored):\n{diff}")
