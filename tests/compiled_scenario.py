"""A shard's history for the pickling tests of both builds
(tests/test_compiled.py): every kind of command, applied to a ShardState,
then the state as a snapshot (``coordinator.raft.serializer``) and the
commands as Raft entries carry them. Run by the tests in subprocesses, one
per build (``HSM_PURE_PYTHON=1`` or not):

    python -m tests.compiled_scenario write FILE   # snapshot + commands + what they hold
    python -m tests.compiled_scenario check FILE   # load FILE's, compare with what it says

``tests/data/snapshot-pure-*.json`` is a file written this way by the pure
build before the compiled one existed (an old snapshot)."""

from __future__ import annotations

import base64
import dataclasses
import errno as E
import json
import pickle
import sys
from collections import deque
from enum import Enum
from pathlib import Path
from typing import Any

from coordinator.raft.serializer import _PICKLE, _decode_state, _encode_state
from coordinator.state import (
    AgentLost,
    Assign,
    AssignRound,
    Cancel,
    Complete,
    Completion,
    CookieTarget,
    DrainAgent,
    FidTarget,
    Item,
    Kind,
    Lease,
    Progress,
    ProgressReport,
    ReadyQueue,
    Reclaim,
    Requester,
    SetControl,
    ShardConfig,
    ShardState,
    Submit,
)
from hsm.fid import Fid
from hsm.hsmflags import HS

FS = "lustre1"


def _fid(n: int) -> Fid:
    return Fid(0x200000400, n, 0)


def _item(n: int, kind: Kind = Kind.ARCHIVE, who: str = "mdt0", **kw: Any) -> Item:
    return Item(FS, _fid(n), kind, requester=Requester(who, cookie=n, uid=n, gid=2, projid=3, when=1.5),
                **kw)


def scenario() -> tuple[ShardState, list[Any]]:
    """The state after a history with every kind of command, and the commands."""
    st = ShardState(ShardConfig(shard=3, archive_ids=frozenset({1, 2}), max_attempts=2, remember_for=10_000.0))
    cmds: list[Any] = []
    now = 1000.0

    def apply(cmd: Any) -> Any:
        cmds.append(cmd)
        res = st.apply(cmd)
        st.check_invariants()
        return res

    def ids(res: Any) -> list[int]:
        return [r.action_id for r in res.replies]

    # archives (one with hints, an extent, a key and the file's HSM state), restores joined by
    # several initiators, removes, a second archive id
    a = ids(apply(Submit(now, tuple(_item(n, data=b"k=v", offset=4096, length=8192, key=f"k{n}",
                                          hsm_flags=int(HS.EXISTS), data_version=7, hsm_ctime=10 + n)
                                    for n in range(1, 9)))))
    r = ids(apply(Submit(now + 1, tuple(_item(20 + n % 3, Kind.RESTORE, who=f"oss{n}") for n in range(9)))))
    d = ids(apply(Submit(now + 2, (_item(40, Kind.REMOVE), _item(41, Kind.REMOVE, archive_id=2)))))
    apply(Submit(now + 2.5, (_item(1, key="k1"),)))  # an idempotent retry
    apply(Assign(now + 3, "agent-a", tuple(a[:4])))
    apply(AssignRound(now + 4, (("agent-b", (r[0], r[1])), ("agent-c", (d[0],)))))
    apply(Progress(now + 5, (ProgressReport(a[0], 1, 100, 1000), ProgressReport(a[1], 1, 5, 10)), "agent-a"))
    apply(Complete(now + 6, (Completion(a[0], 1, copy=("k", 3, 10, "sha256:00", 1, 2, 0o100600, "/p")),
                             Completion(a[1], 1, E.EIO, "disk", retry=True),
                             Completion(r[0], 1, bytes_done=77)), "agent-a"))
    apply(Complete(now + 6.5, (Completion(r[0], 1), Completion(r[1], 1)), "agent-b"))
    apply(Cancel(now + 7, action_ids=(a[4],), fids=(FidTarget(FS, _fid(6), Kind.ARCHIVE),),
                 reason="user", cookies=(CookieTarget("mdt0", 7),)))
    apply(Cancel(now + 7.5, action_ids=(a[2],), reason="stop"))
    apply(AgentLost(now + 8, "agent-c", reason="gone"))
    apply(Reclaim(now + 9, (a[3],), force=True, reason="stuck"))
    apply(SetControl(now + 10, "disabled"))
    apply(DrainAgent(now + 11, "agent-b"))
    apply(Lease(now + 12, "bridge/lustre1", "bridge-1", 30.0))
    apply(SetControl(now + 13, "enabled"))
    # a late duplicate of a restore that ended (the ended-state memory)
    apply(Submit(now + 14, (_item(20, Kind.RESTORE, who="late", hsm_flags=int(HS.EXISTS | HS.ARCHIVED),
                                  hsm_ctime=5),)))
    return st, cmds


def canon(x: Any) -> Any:
    """*x* as JSON-able values that do not depend on the build (no reprs
    with addresses, no class identities); dict order kept (queues)."""
    if isinstance(x, Enum):
        return [type(x).__name__, x.value]
    if isinstance(x, Fid):
        return ["Fid", str(x)]
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, bytes):
        return ["bytes", x.hex()]
    if isinstance(x, ReadyQueue):
        return ["ReadyQueue", canon(list(x.front)), canon(list(x.back))]
    if type(x).__name__ == "Action":  # its fields: ACTION_FIELDS (__slots__ before the compiled build)
        names = getattr(sys.modules[type(x).__module__], "ACTION_FIELDS", None) or type(x).__slots__
        return ["Action", {f: canon(getattr(x, f)) for f in names}]
    if type(x).__name__ == "Catalog":
        return ["Catalog", [[canon(k), canon(c.values())] for k, c in x]]
    if dataclasses.is_dataclass(x):
        return [type(x).__name__, {f.name: canon(getattr(x, f.name)) for f in dataclasses.fields(x)}]
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # NamedTuple
        return [type(x).__name__, {k: canon(v) for k, v in zip(x._fields, x, strict=True)}]
    if isinstance(x, (list, tuple, deque)):
        return [canon(v) for v in x]
    if isinstance(x, (set, frozenset)):
        return ["set", sorted((canon(v) for v in x), key=json.dumps)]
    if isinstance(x, dict):
        return ["dict", [[canon(k), canon(v)] for k, v in x.items()]]
    raise TypeError(f"canon: {type(x).__name__}")


def describe(st: ShardState) -> dict[str, Any]:
    head, actions = st.export_parts()
    return {"head": {k: canon(v) for k, v in head.items()}, "actions": [canon(a) for a in actions],
            "fid_queue": canon(st.fid_queue), "fsnames": canon(st.fsnames)}


def write(path: Path) -> None:
    st, cmds = scenario()
    path.write_text(json.dumps({
        "snapshot": base64.b64encode(_encode_state(st)).decode(),
        "commands": base64.b64encode(pickle.dumps(tuple(cmds), protocol=_PICKLE)).decode(),
        "state": describe(st),
        "command_values": canon(cmds),
    }, indent=None) + "\n")


def _same(what: str, got: Any, want: Any) -> list[str]:
    """Keys newer than *want* (attributes added since it was written) are
    not compared; Action fields likewise."""
    if isinstance(want, dict) and isinstance(got, dict):
        return [p for k, v in want.items() for p in (_same(f"{what}.{k}", got.get(k), v) if k in got
                                                       else [f"{what}.{k}: missing"])]
    if isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        return [p for i, (g, w) in enumerate(zip(got, want, strict=True)) for p in _same(f"{what}[{i}]", g, w)]
    return [] if got == want else [f"{what}: {json.dumps(got)[:200]} != {json.dumps(want)[:200]}"]


def _by_class(described: dict[str, Any]) -> dict[str, Any]:
    """*described* with its ready queues merged per (kind, archive id), in
    key order: the queues of a file written before the policy split them
    further (priority, fair share, tag, volume) compare with this build's."""
    ready = described["head"].get("ready")
    if not ready:
        return described
    merged: dict[str, list[Any]] = {}
    for key, queue in ready[1]:
        k = json.dumps(key[:2])
        m = merged.setdefault(k, ["ReadyQueue", [], []])
        m[1] += queue[1]
        m[2] += queue[2]
    head = dict(described["head"], ready=["dict", [[json.loads(k), merged[k]] for k in sorted(merged)]])
    return dict(described, head=head)


def check(path: Path) -> list[str]:
    """What differs between the file's snapshot and commands as this build
    loads them, and what the file says they hold ([]: nothing)."""
    data = json.loads(path.read_text())
    st = _decode_state(base64.b64decode(data["snapshot"]))
    st.check_invariants()
    cmds = pickle.loads(base64.b64decode(data["commands"]))
    want = _by_class(data["state"])
    problems = _same("state", _by_class(describe(st)), want)
    problems += _same("commands", canon(list(cmds)), data["command_values"])
    replayed = ShardState(st.config)
    for c in cmds:  # the entries, applied by this build: the same state
        replayed.apply(c)
    problems += _same("replayed", _by_class(describe(replayed)), want)
    # and the loaded state goes on like the one that was written
    more = Submit(5000.0, (_item(99), _item(21, Kind.RESTORE, who="later")))
    problems += _same("after", canon(st.apply(more)), canon(replayed.apply(more)))
    return problems


def main(argv: list[str]) -> int:
    cmd, path = argv[1], Path(argv[2])
    try:
        from hsm.compiled import build
    except ImportError:  # the code before the compiled build existed (the old snapshot's)
        print("build: pure (before hsm.compiled)", file=sys.stderr)
    else:
        print(f"build: {build()}", file=sys.stderr)
    if cmd == "write":
        write(path)
        return 0
    problems = check(path)
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
