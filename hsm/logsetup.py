"""Logging of the three daemons (hsm-coordinator, agentd, hsm-bridge):
``--log-format text`` (the default: one line per record, as before) or
``--log-format json`` (``log_format: json``): one JSON object per line,
made by python-json-logger, with the fields ``time`` (ISO 8601, UTC),
``level``, ``logger``, ``message``, ``process``, and, on every line about
an action, ``action_id``, ``attempt`` (when known), ``kind`` and ``fid``.

How a line gets its action fields: given as ``extra=`` by the code that
logs it, or read from the message itself. Every line about an action
starts (after an optional ``shard N: ``) with the project's canonical
prefix ``action ID[/ATTEMPT] KIND FID``, for example ``action
8001/2 ARCHIVE [0x200000400:0x1:0x0] started``; tests/test_logsetup.py
runs a replica and an agent in JSON and checks that every line naming an
action carries all of them.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from pythonjsonlogger.json import JsonFormatter

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: the canonical prefix of a line about an action (see the module's docstring)
_ACTION = re.compile(
    r"^(?:shard \d+: )?action (?P<id>\d+)(?:/(?P<attempt>\d+))?"
    r"(?: (?P<kind>ARCHIVE|RESTORE|REMOVE|CANCEL|UNSPECIFIED|KIND_\d+))?"
    r"(?: (?P<fid>\[0x[0-9a-fA-F]+:0x[0-9a-fA-F]+:0x[0-9a-fA-F]+\]))?")


class ActionFields(logging.Filter):
    """Sets ``action_id``, ``attempt``, ``kind``, ``fid`` on a record about
    an action (from its ``extra=`` or its message's prefix); never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "action_id", None) is not None:
            return True
        try:
            m = _ACTION.match(record.getMessage())
        except Exception:  # a message whose arguments do not format: the formatter says so
            return True
        if m is not None:
            record.action_id = int(m["id"])
            if m["attempt"]:
                record.attempt = int(m["attempt"])
            if m["kind"]:
                record.kind = m["kind"]
            if m["fid"]:
                record.fid = m["fid"]
        return True


class _Json(JsonFormatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        t = time.gmtime(record.created)
        return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"


def json_formatter() -> logging.Formatter:
    return _Json("%(asctime)s %(levelname)s %(name)s %(message)s %(process)d",
                 rename_fields={"asctime": "time", "levelname": "level", "name": "logger"})


def setup(level: str, fmt: str = "text", stream: TextIO | None = None, filename: Path | None = None,
          force: bool = False) -> None:
    """Configure the root logger for a daemon's process. *fmt*: text or
    json. Like logging.basicConfig, nothing changes when the root logger
    has handlers already (a test calling a daemon's main in its own
    process keeps pytest's), unless *force*."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r}: expected one of {', '.join(LOG_FORMATS)}")
    root = logging.getLogger()
    if root.handlers and not force:
        return
    handler: logging.Handler = (logging.FileHandler(filename) if filename is not None
                                else logging.StreamHandler(stream or sys.stderr))
    if fmt == "json":
        handler.setFormatter(json_formatter())
        handler.addFilter(ActionFields())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


def fields(action_id: int, attempt: int | None = None, kind: str | None = None, fid: Any = None) -> dict[str, Any]:
    """``extra=`` for a line about an action whose message cannot carry the prefix."""
    out: dict[str, Any] = {"action_id": action_id}
    if attempt is not None:
        out["attempt"] = attempt
    if kind is not None:
        out["kind"] = kind
    if fid is not None:
        out["fid"] = str(fid)
    return out
