"""``hsmctl policy get|set|check|diff``: the cluster's replicated policy
(docs/policy.md), as ``lctl get_param/set_param mdt.*.hsm.*`` are for the
in-kernel coordinator, but one document for every replica."""

from __future__ import annotations

import argparse
import re
import sys
import time
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hsm.v1 import coordinator_pb2 as cpb

HELP = "show, check or replace the cluster's policy (scheduling, admission, limits, runtime settings)"

EPILOG = """\
  get              print the policy document and its version (as the replica asked sees it)
  set FILE         replace the whole policy on every shard, as the next version; prints what
                   changed. A document with errors changes nothing (every error is printed,
                   FILE:LINE: message, exit 1)
  check FILE       report every error of FILE with its line; change nothing. Without --local
                   the cluster checks it (its parser, and what it knows: configured archive
                   ids, the agents' lease) and says what set would change
  diff FILE        what set FILE would change, one line per setting or rule ("no change" when
                   none)
FILE: - reads standard input. The language: docs/policy.md.
prints (get):  # policy version 3, set 2026-12-06 04:40:00 UTC by admin (role admin)
               then the document as it was set
--json: get {"version", "set_at", "set_by", "text", "shards": [{"shard", "version"}]};
        set, check, diff {"version", "changes": [...], "warnings": [...], "errors": [{"line", "message"}]}
exit status: 0 done (check: valid), 1 errors in FILE or refused, 2 usage, 3 unreachable"""

_LINE = re.compile(r"^line (\d+): (.*)$")


def add_arguments(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    """``policy get|set|check|diff``, each its own parser (options go
    anywhere: ``policy check --local FILE``)."""
    ops = p.add_subparsers(dest="op", metavar="OP", required=True)
    fmt = argparse.RawDescriptionHelpFormatter
    for op, text in (("get", "print the policy document and its version"),
                     ("set", "replace the policy on every shard as the next version"),
                     ("check", "report every error of FILE with its line; change nothing"),
                     ("diff", "what set FILE would change")):
        q = ops.add_parser(op, help=text, description=text, parents=[common], formatter_class=fmt, epilog=EPILOG)
        q.set_defaults(_parser=q)
        if op != "get":
            q.add_argument("file", metavar="FILE", help="the policy document (docs/policy.md); - for stdin")
        if op == "set":
            q.add_argument("--expect-version", type=int, default=0, metavar="N",
                           help="refuse unless the policy is at version N now (another admin may have set it)")
        if op == "check":
            q.add_argument("--local", action="store_true",
                           help="with this hsmctl's parser only, without asking the cluster")
        q.add_argument("--json", action="store_true", help="JSON output (see below)")


def _read(path: str, stdin: IO[str]) -> str:
    if path == "-":
        return stdin.read()
    with open(path, encoding="utf-8", errors="strict") as f:
        return f.read()


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t else "never"


def errors_of(details: str) -> list[tuple[int, str]]:
    """(line, message) of each ``line N: message`` line of a refusal; a
    line without a number is (0, the line)."""
    out = []
    for raw in details.splitlines():
        m = _LINE.match(raw.strip())
        if m:
            out.append((int(m.group(1)), m.group(2)))
        elif raw.strip() and not raw.rstrip().endswith("nothing was changed:"):
            out.append((0, raw.strip()))
    return out


def get_text(reply: cpb.PolicyResponse) -> str:
    """What ``hsmctl policy get`` prints."""
    head = f"# policy version {reply.version}, set {_when(reply.set_at)}"
    if reply.set_by:
        head += f" by {reply.set_by}"
    if not reply.version:
        head = "# policy version 0: none set yet (the replicas' configuration files)"
    text = reply.text if reply.text.endswith("\n") or not reply.text else reply.text + "\n"
    return f"{head}\n{text}"


def behind(reply: cpb.PolicyResponse) -> str:
    """A warning when shards are at different versions, else ""."""
    lagging = [s.shard for s in reply.shards if s.version != reply.version]
    if not lagging:
        return ""
    shown = ",".join(map(str, lagging[:20])) + (" ..." if len(lagging) > 20 else "")
    return (f"shard(s) {shown} of {len(reply.shards)} are not at version {reply.version} (a set did not reach "
            "them, or this replica has not applied it yet): run 'hsmctl policy set' again with the same file")


def run(args: argparse.Namespace, client: Any, out: IO[str], err: IO[str], stdin: IO[str] = sys.stdin) -> int:
    """One policy command; returns the exit status (0, 1; usage errors are
    raised as ValueError with their message)."""
    from hsm.client import InvalidArgument
    from hsmctl.output import write_json

    if args.op == "get":
        reply = client.get_policy()
        if args.json:
            write_json(out, {"version": reply.version, "set_at": reply.set_at, "set_by": reply.set_by,
                             "text": reply.text,
                             "shards": [{"shard": s.shard, "version": s.version} for s in reply.shards]})
        else:
            out.write(get_text(reply))
        warning = behind(reply)
        if warning:
            err.write(f"hsmctl: warning: {warning}\n")
        return 0
    name = "<stdin>" if args.file == "-" else args.file
    try:
        text = _read(args.file, stdin)
    except (OSError, UnicodeDecodeError) as exc:
        err.write(f"hsmctl: {name}: {getattr(exc, 'strerror', None) or exc}\n")
        return 1
    errors: list[tuple[int, str]] = []
    changes: list[str] = []
    warnings: list[str] = []
    version = 0
    local = getattr(args, "local", False)
    if args.op == "check" and local:
        from coordinator.policy import PolicyError, parse

        try:
            parse(text)
        except PolicyError as exc:
            errors = list(exc.errors)
    else:
        try:
            reply = client.set_policy(text, dry_run=args.op != "set",
                                      expect_version=getattr(args, "expect_version", 0))
            changes, version, warnings = list(reply.changes), reply.version, list(reply.warnings)
        except InvalidArgument as exc:
            errors = errors_of(exc.details or str(exc))
    if args.json:
        write_json(out, {"version": version, "changes": changes, "warnings": warnings,
                         "errors": [{"line": n, "message": m} for n, m in errors]})
    for w in warnings:
        m = _LINE.match(w)
        err.write(f"{name}:{m.group(1)}: warning: {m.group(2)}\n" if m else f"{name}: warning: {w}\n")
    for n, m in errors:
        err.write(f"{name}:{n}: {m}\n" if n else f"{name}: {m}\n")
    if errors:
        if not args.json:
            err.write(f"hsmctl: {name}: {len(errors)} error(s); nothing was changed\n")
        return 1
    if args.json:
        return 0
    if args.op == "set":
        out.write(f"policy version {version} set on every shard\n" if changes else
                  f"policy version {version} set on every shard; no change in meaning\n")
    elif args.op == "check":
        if local:
            out.write(f"{name}: valid\n")
        else:
            out.write(f"{name}: valid; set would change {len(changes)} thing(s)\n" if changes else
                      f"{name}: valid; no change from version {version}\n")
    elif not changes:
        out.write(f"no change from version {version}\n")
    for line in changes:
        out.write(f"  {line}\n")
    return 0
