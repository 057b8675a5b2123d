"""Fuzzing the gRPC API of a live in-process coordinator (issue 13, item 6).

What is fuzzed
==============

* **Every request message of every RPC** of ``hsm.v1.Coordinator`` and
  ``hsm.v1.AgentService``, built generically from the protobuf descriptors
  (:func:`messages`): every field of every request type, nested messages,
  repeated fields (a few elements, or up to 10,001 copies of one), enums
  with unknown values, integers at their extremes (negative, 2**31, 2**63-1,
  2**64-1 ...), doubles (NaN, infinities), strings with control, format,
  separator and non-ASCII characters up to 300,000 characters, bytes up to
  400 KiB. ``HINTS`` mixes in values that pass the checks (fsnames, FIDs,
  action ids that exist, archive ids, modes, addresses, agent ids) so that
  the fuzz also reaches the state machine behind the validation.
* **The Work stream**: sequences of AgentMessages after a valid or an
  invalid Hello; and, on a second coordinator that dispatches, progress,
  completions, running reports, credits and second hellos about the actions
  the fuzzing agent really holds.
* **Bytes that are not requests**: random and mutated messages as the
  request of every method; random bytes and broken HTTP/2 (preface, frames,
  HPACK headers, gRPC message prefixes) on the API port, as they come (the
  TLS layer reads them) or inside a TLS session of a certified caller
  (HTTP/2 reads them); random bytes and broken length-prefixed frames on a
  Raft port.

The coordinators run with mutual TLS, as in production (conftest's
``tls_ca``): the calls present the admin's certificate (every method is
open to it), Report a replica's (only replicas forward agents' reports) and
a Work stream the certificate of the agent its hello names (the replica
admits only that), so that the fuzz reaches what is behind the role checks.

What every call must do
=======================

Answer OK or a clear status (``ALLOWED``: never UNKNOWN or INTERNAL) with a
message; leave the replica serving (health SERVING, every shard led, its
background tasks running); log nothing at ERROR, no traceback and no line
longer than ``MAX_LOG_LINE``; and, when refused, change nothing
(:func:`fingerprint`: every shard's actions, idempotency keys, leases,
drains and control mode, its Raft commit index, and the agent sessions).

The unary RPCs, raw bytes and Work streams run on one coordinator (``quiet``)
whose control mode stays ``disabled``: it queues and never dispatches, so
nothing changes in the background and the fingerprint check is exact.
Calls that change state legitimately stay in the fuzz: Submit, Cancel,
Lease, DrainAgent change it for good; Control is set back to ``disabled``
after each call; ChangeMembership additions of an address that passes the
checks are sent without ``force`` to a closed port (refused: no majority),
because a real addition to a one-replica group would leave it without a
majority for the rest of the module.

Budget
======

The default run uses a fixed (derandomized) set of examples and takes about
20 s on 2 cores (``make test``). ``HSM_FUZZ_EXAMPLES=N`` runs N random
examples per test instead (a deep run: ``HSM_FUZZ_EXAMPLES=2000 pytest
tests/test_fuzz_api.py``, about 8 minutes here); a failure prints the
example (long strings shortened), ``--hypothesis-seed`` replays a run, and
``HSM_FUZZ_STATS=1`` (2: with the messages) with ``-s`` prints how often
each call got each answer.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import ssl
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.certs import CertError
from coordinator.cluster import free_ports, split_addr
from coordinator.node import shard_digest
from coordinator.raft import check_addr
from coordinator.roles import AGENT, REPLICA
from hsm.ring import MAX_SHARDS
from hsm.tls import TlsFiles
from hsm.v1 import agent_pb2 as A
from hsm.v1 import agent_pb2_grpc, coordinator_pb2_grpc
from hsm.v1 import coordinator_pb2 as C
from hsm.v1 import types_pb2 as T
from tests.conftest import RunningCoordinator, SessionCa, single_replica_config

_DEEP = int(os.environ.get("HSM_FUZZ_EXAMPLES", "0"))
#: HSM_FUZZ_STATS=1 (with -s): how often each call got each answer (2: and its message)
_STATS = int(os.environ.get("HSM_FUZZ_STATS", "0"))
OUTCOMES: Counter[tuple[str, str, str]] = Counter()


def fuzz_settings(default: int) -> settings:
    """*default* fixed examples, or ``HSM_FUZZ_EXAMPLES`` random ones."""
    return settings(max_examples=_DEEP or default, derandomize=not _DEEP, deadline=None,
                    database=None if not _DEEP else settings.default.database,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example,
                                           HealthCheck.function_scoped_fixture])


#: status codes that are a clear answer (never UNKNOWN, INTERNAL, DATA_LOSS)
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.UNAVAILABLE,
           grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.PERMISSION_DENIED,
           grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.ABORTED}
#: the longest log line a request may cause
MAX_LOG_LINE = 8192
#: the longest status message: gRPC clients read at most 8 KiB of metadata
#: (16 KiB, then the call fails RESOURCE_EXHAUSTED), details included
MAX_DETAILS = 2048
CLUSTER_ID = "fuzz-cluster"
SEQ = 0x200000400
SHARDS = 2
#: a placeholder the Raft address hints use for the replica's own address
SELF_RAFT = "@self-raft"
CALL_TIMEOUT = 30.0

SERVICES = [C.DESCRIPTOR.services_by_name["Coordinator"], A.DESCRIPTOR.services_by_name["AgentService"]]
METHODS = {m.name: m for svc in SERVICES for m in svc.methods}
UNARY = sorted(name for name, m in METHODS.items() if not m.client_streaming)


def path_of(name: str) -> str:
    m = METHODS[name]
    return f"/{m.containing_service.full_name}/{name}"


# ---------------------------------------------------------------------------
# strategies: any message of a descriptor


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    pool = [s for w, s in choices for _ in range(w)]
    return st.sampled_from(pool).flatmap(lambda s: s)


FD = FieldDescriptor
_I32 = (-(1 << 31), (1 << 31) - 1)
_I64 = (-(1 << 63), (1 << 63) - 1)
_U32 = (0, (1 << 32) - 1)
_U64 = (0, (1 << 64) - 1)
INT_BOUNDS = {FD.TYPE_INT32: _I32, FD.TYPE_SINT32: _I32, FD.TYPE_SFIXED32: _I32,
              FD.TYPE_INT64: _I64, FD.TYPE_SINT64: _I64, FD.TYPE_SFIXED64: _I64,
              FD.TYPE_UINT32: _U32, FD.TYPE_FIXED32: _U32, FD.TYPE_UINT64: _U64, FD.TYPE_FIXED64: _U64}


def integers(lo: int, hi: int) -> st.SearchStrategy[int]:
    marks = {lo, lo + 1, hi - 1, hi, 0, 1, 2, 999, 1000, 1001, -1, (1 << 31) - 1, 1 << 31, (1 << 32) - 1,
             1 << 32, (1 << 53) + 1, (1 << 63) - 1, 1 << 63}
    return weighted((3, st.integers(max(lo, -8), min(hi, 64))),
                    (2, st.sampled_from(sorted(x for x in marks if lo <= x <= hi))),
                    (2, st.integers(lo, hi)))


#: characters that ids, names and log lines must survive
NASTY = "\x00\x01\t\n\r\x1b\x7f\x85\xa0\u200b\u200e\u2028\u2029\ufeff\U0001f600é: %s{}[]/'\"\\"
SMALL_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
TEXT = weighted(
    (4, SMALL_TEXT),
    (2, st.text(st.sampled_from(NASTY + "ab"), max_size=12)),
    (1, st.just("")),
    (1, st.builds(lambda c, n: c * n, st.sampled_from(["x", "é", "\x00", "\U0001f600", "%s"]),
                  st.sampled_from([128, 129, 256, 257, 1024, 1025, 4097, 70_000, 300_000]))),
)
BYTES = weighted(
    (4, st.binary(max_size=64)),
    (1, st.builds(lambda b, n: b * n, st.sampled_from([b"x", b"\x00", b"\xff"]),
                  st.sampled_from([4095, 4096, 4097, 65_536, 400_000]))),
)
DOUBLES = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324])


def _fid(oid: int) -> T.Fid:
    return T.Fid(seq=SEQ, oid=oid, ver=0)


FIDS = weighted((6, st.builds(_fid, st.integers(1, 40))), (1, st.sampled_from(
    [T.Fid(), T.Fid(seq=1), T.Fid(seq=_U64[1], oid=_U32[1], ver=_U32[1])])))
#: ids of actions that exist (``seq * 1000 + shard``), and of shards that do not
ACTION_IDS = st.builds(lambda seq, shard: seq * 1000 + shard, st.integers(1, 80), st.integers(0, SHARDS))
REQUESTERS = st.builds(lambda i, c: T.Requester(initiator=i, cookie=c),
                       st.sampled_from(["mdt0", "hsmctl@h", "lustre:fs1", "mdt0", ""]), st.integers(0, 6))
SLOTS = st.builds(lambda a, r, m: C.Slots(archive=a, restore=r, remove=m), *[st.integers(0, 4)] * 3)
KNOWN_AGENTS = ("m1", "mover-01", "a@b:c", "x" * 128)
AGENT_IDS = st.sampled_from(KNOWN_AGENTS)
HELLOS = st.builds(
    lambda agent, slots, ids, running, cluster: A.Hello(agent_id=agent, host="h", slots=slots, archive_ids=ids,
                                                        running=running, cluster_id=cluster, version="1"),
    AGENT_IDS, SLOTS, st.lists(st.integers(0, 3), max_size=2),
    st.lists(st.builds(lambda i, a: A.RunningAction(action_id=i, attempt=a), ACTION_IDS, st.integers(0, 3)),
             max_size=3),
    st.sampled_from(["", CLUSTER_ID, "another-cluster"]))

#: values that pass the checks, by ``Message.field`` or field name (for a
#: repeated field: one element)
HINTS: dict[str, st.SearchStrategy[Any]] = {
    "fsname": st.sampled_from(["fs1", "fs2", "lustre", "a", "Z_9-x", "12345678"]),
    "<Fid>": FIDS,
    "<FidSelector>": st.builds(lambda fs, fid, kind: C.FidSelector(fsname=fs, fid=fid, kind=kind),
                               st.sampled_from(["", "fs1"]), FIDS, st.sampled_from([0, 20, 21, 22])),
    "kind": st.sampled_from([20, 21, 22]),
    "kinds": st.sampled_from([20, 21, 22]),
    "states": st.integers(1, 6),
    "archive_id": st.integers(0, 3),
    "archive_ids": st.integers(0, 4),
    "SubmitItem.extent": weighted((3, st.just(T.Extent(offset=0, length=-1))), (1, st.builds(
        lambda o, n: T.Extent(offset=o, length=n), st.sampled_from([0, 4096]), st.sampled_from([-1, 1, 4096])))),
    "SubmitItem.flags": st.sampled_from([0, 1, 4, 5]),
    "HsmState.flags": st.sampled_from([0, 1, 2, 4, 8, 9, 0x1F]),
    "data": st.binary(max_size=16),
    "<Requester>": REQUESTERS,
    "idempotency_key": st.sampled_from(["", "k1", "k2", "mdt0:1"]),
    "action_id": ACTION_IDS,
    "action_ids": ACTION_IDS,
    "shards": st.integers(0, SHARDS - 1),
    "reason": st.sampled_from(["", "fuzz"]),
    "agent": st.sampled_from(["", "m1"]),
    "page_size": st.sampled_from([0, 1, 2, 10, 10_000]),
    "page_token": st.sampled_from(["", "0", "1000", "2001"]),
    "raft": st.sampled_from([SELF_RAFT, "127.0.0.1:1", "localhost:65535", "[::1]:7700", "0.0.0.0:7700",
                             "h:0", "127.0.0.1:65535"]),
    "ControlRequest.mode": st.sampled_from(["enabled", "disabled", "shutdown"]),
    "agent_id": AGENT_IDS,
    "name": st.sampled_from(["bridge:fs1", "bridge:fs2"]),
    "holder": st.sampled_from(["h1", "h2"]),
    "ttl_ms": st.sampled_from([0, 1000, 5000, 3_600_000]),
    "host": st.sampled_from(["h", "node1.example.net"]),
    "version": st.sampled_from(["", "1.0"]),
    "cluster_id": st.sampled_from(["", CLUSTER_ID, "another-cluster"]),
    "attempt": st.integers(0, 4),
    "errno": st.sampled_from([0, 1, 5, 28, 75, 125]),
    "<Slots>": SLOTS,
    "token": st.integers(0, 3),
    "lease_token": st.integers(0, 3),
    # the policy: harmless valid documents (a fuzzed one must not lock the
    # admin out of the later examples), and broken ones
    "SetPolicyRequest.text": st.sampled_from(["{}", "settings: {max_attempts: 4}\n",
                                              "rules: [{name: r, match: {uid: 5}, then: {priority: 1}}]\n",
                                              "fair_share: {by: user}\n", "settings: {max_attempts: 0}\n",
                                              "- x\n", "rules: [{name: r, then: {archive_id: 9}}]\n"]),
    "SetPolicyRequest.version": st.integers(0, 3),
    "expect_version": st.integers(0, 3),
    "SubmitItem.path": st.sampled_from(["", "/a/b", "/scratch/x"]),
    "SubmitItem.size": st.sampled_from([0, 4096, 1 << 40]),
}

#: repeated fields: how many copies of one element the "many" case sends, and
#: the most bytes it may send in all
MANY = [2, 100, 2000, 10_001]
MANY_BYTES = 8 << 20


def _scalar(f: FieldDescriptor) -> st.SearchStrategy[Any]:
    if f.type in INT_BOUNDS:
        return integers(*INT_BOUNDS[f.type])
    if f.type == FD.TYPE_ENUM:
        known = [v.number for v in f.enum_type.values]
        return weighted((3, st.sampled_from(known)), (1, integers(*_I32)))
    if f.type == FD.TYPE_BOOL:
        return st.booleans()
    if f.type in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return DOUBLES if f.type == FD.TYPE_DOUBLE else st.floats(width=32)
    if f.type == FD.TYPE_STRING:
        return TEXT
    if f.type == FD.TYPE_BYTES:
        return BYTES
    raise AssertionError(f"no strategy for field {f.full_name} (type {f.type})")


def _value(desc: Descriptor, f: FieldDescriptor, depth: int, tame: bool) -> tuple[st.SearchStrategy[Any], bool]:
    """The field's strategy, and whether it has a hint."""
    if f.type == FD.TYPE_MESSAGE:
        base = messages(f.message_type, depth + 1, tame)
        hint = HINTS.get(f"{desc.name}.{f.name}", HINTS.get(f"<{f.message_type.name}>"))
    else:
        base = _scalar(f)
        hint = HINTS.get(f"{desc.name}.{f.name}", HINTS.get(f.name))
    if hint is None:
        return base, False
    # tame: one field in eight goes wild, to reach each check with the others passing
    return (weighted((7, hint), (1, base)) if tame else weighted((2, hint), (1, base))), True


def _size(value: Any) -> int:
    if isinstance(value, Message):
        return value.ByteSize() + 4
    if isinstance(value, str | bytes):
        return len(value) * 4 + 2
    return 10


@st.composite
def messages(draw: st.DrawFn, desc: Descriptor, depth: int = 0, tame: bool | None = None) -> Message:
    """Any message of type *desc*: each field left unset or set to any value
    of its type (see the module docstring). A *tame* one (half of them, by
    default) takes every hinted field from its hint and sets few others:
    it often passes the checks."""
    if tame is None:
        tame = draw(st.booleans())
    msg = GetMessageClass(desc)()
    for f in desc.fields:
        value, hinted = _value(desc, f, depth, tame)
        if tame and hinted:
            pass  # always there: an absent field is the wild messages' part
        elif not draw(st.booleans() if not tame else weighted((3, st.just(False)), (1, st.just(True)))):
            continue
        if f.is_repeated:
            if draw(weighted((12 if tame else 6, st.just(False)), (1, st.just(True)))):
                one = draw(value)
                n = min(draw(st.sampled_from(MANY)), max(2, MANY_BYTES // _size(one)))
                values = [one] * n
            else:
                values = draw(st.lists(value, min_size=int(tame), max_size=3 if tame else 4))
            getattr(msg, f.name).extend(values)
        elif f.type == FD.TYPE_MESSAGE:
            getattr(msg, f.name).CopyFrom(draw(value))
        else:
            setattr(msg, f.name, draw(value))
    return msg


def shown(msg: Message, most: int = 1500) -> str:
    """A message for a failure report: long strings and bytes abbreviated."""
    text = re.sub(r'"(([^"\\]|\\.){60})([^"\\]|\\.){40,}"', lambda m: f'"{m.group(1)}..."',
                  text_format.MessageToString(msg, as_one_line=True))
    return (text if len(text) <= most else text[:most] + " ...") + f" ({msg.ByteSize()} bytes)"


class Request:
    """A drawn request (hypothesis prints its short form on a failure)."""

    def __init__(self, msg: Message) -> None:
        self.msg = msg

    def __repr__(self) -> str:
        return f"<{type(self.msg).__name__} {shown(self.msg)}>"


def requests(name: str) -> st.SearchStrategy[Request]:
    return messages(METHODS[name].input_type).map(Request)


# ---------------------------------------------------------------------------
# the coordinators and what every call must leave as it was


class LogWatch(logging.Handler):
    """Every log record of the process (all threads) from INFO up."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self.examined: set[int] = set()  # indexes of records a call's check has seen
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock:
            self.records.append(record)

    def mark(self) -> int:
        with self._lock:
            return len(self.records)

    def bad_since(self, mark: int, also: Callable[[logging.LogRecord], bool] = lambda r: False,
                  stop: int | None = None) -> list[str]:
        """Records since *mark* at ERROR or above, with a traceback, longer
        than MAX_LOG_LINE, or matching *also*."""
        with self._lock:
            records = self.records[mark:stop]
            self.examined.update(range(mark, mark + len(records)))
        bad = []
        for r in records:
            try:
                text = r.getMessage()
            except Exception as exc:  # a record that cannot even be formatted
                text = f"unformattable record {r.msg!r}: {exc}"
                bad.append(text)
                continue
            if r.name == "hsm.audit" and len(text) > MAX_LOG_LINE:
                continue  # coordinator/edge.py's audit lines: see test_audit_lines_are_bounded
            if (r.levelno >= logging.ERROR or r.exc_info or r.stack_info or "Traceback" in text
                    or len(text) > MAX_LOG_LINE or also(r)):
                bad.append(f"{r.levelname} {r.name}: {text[:500]}")
        return bad


@pytest.fixture(scope="module")
def logwatch() -> Iterator[LogWatch]:
    root = logging.getLogger()
    watch = LogWatch()
    level = root.level
    root.setLevel(logging.INFO)
    root.addHandler(watch)
    try:
        yield watch
        # what no call's check saw: setup, teardown, and anything late
        unseen = [i for i in range(watch.mark()) if i not in watch.examined]
        bad = [line for i in unseen for line in watch.bad_since(i, stop=i + 1)]
        assert not bad, f"bad log records outside the calls: {bad}"
    finally:
        if _STATS:
            for key, n in sorted(OUTCOMES.items()):
                print(f"{n:6d}  {' '.join(key)}")
        root.removeHandler(watch)
        root.setLevel(level)


#: no limit on message sizes: the replica's are tested
UNLIMITED = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
#: the agent whose certificate a Work stream presents unless its hello
#: names one of the others (a stream under another id is refused)
FUZZ_AGENT = "m1"


class Fuzzed:
    """A running coordinator, channels to it (the admin's, a replica's for
    Report, an agent's for each Work stream) and the checks."""

    def __init__(self, rc: RunningCoordinator, logs: LogWatch) -> None:
        self.rc = rc
        self.logs = logs
        self.channel = rc.channel(options=UNLIMITED)
        self.stub = coordinator_pb2_grpc.CoordinatorStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        #: Report: what replicas forward (no other role may call it)
        self.replica_channel = rc.channel(REPLICA, "peer", options=UNLIMITED)
        self.report_stub = agent_pb2_grpc.AgentServiceStub(self.replica_channel)
        self._agents: dict[str, grpc.Channel] = {}
        self.self_raft = rc.node.me.raft_addr(0)
        self.closed_raft = f"127.0.0.1:{free_ports(SHARDS)}"  # nothing listens there

    def agent_channel(self, agent_id: str = FUZZ_AGENT) -> grpc.Channel:
        """A channel presenting agent *agent_id*'s certificate (FUZZ_AGENT's
        when no certificate can name it)."""
        if agent_id not in self._agents:
            try:
                self.rc.tls(AGENT, agent_id)
            except CertError:  # e.g. a name of 65-128 characters: an agent id, not a certificate's CN (64 at most)
                return self.agent_channel()
            self._agents[agent_id] = self.rc.channel(AGENT, agent_id, options=UNLIMITED)
        return self._agents[agent_id]

    def agent_stub(self, agent_id: str = FUZZ_AGENT) -> agent_pb2_grpc.AgentServiceStub:
        return agent_pb2_grpc.AgentServiceStub(self.agent_channel(agent_id))

    def channel_for(self, method: str) -> grpc.Channel:
        """The channel of a caller *method* admits."""
        return {"Work": self.agent_channel(), "Report": self.replica_channel}.get(method, self.channel)

    def close(self) -> None:
        for ch in (self.channel, self.replica_channel, *self._agents.values()):
            ch.close()
        self.rc.stop()

    def fingerprint(self) -> tuple[Any, ...]:
        """Everything a refused call must leave as it was."""

        def read() -> tuple[Any, ...]:
            node = self.rc.node
            parts = []
            for s in node.shards:
                with s.reading() as st:
                    actions = hashlib.sha256(repr([
                        (a.id, a.state, a.agent, a.attempt, a.errno, a.error, len(a.requesters), a.bytes_done,
                         a.bytes_total, a.started, a.ended, a.priority)
                        for a in st.actions.values()]).encode()).hexdigest()
                    parts.append((s.commit_index, s.applied_index, st.next_seq, st.control, shard_digest(st),
                                  actions, hash(frozenset(st.keys.items())), sorted(st.drained.items()),
                                  sorted(st.leases.items()), len(st.ended_states)))
            sessions = sorted((a, s.alive) for a, s in node.book.sessions.items())
            return tuple(parts), tuple(sessions)

        return self.rc.call(read)  # type: ignore[no-any-return]

    def check_serving(self) -> None:
        node = self.rc.node
        answer = self.health.Check(health_pb2.HealthCheckRequest(service="hsm.v1.Coordinator"), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        led, tasks = self.rc.call(lambda: (all(s.leader_ready for s in node.shards),
                                           [t.get_name() for t in node._tasks if t.done()]))
        assert led, "a shard lost its leader"
        assert not tasks, f"background task(s) ended: {tasks}"

    def check_invariants(self) -> None:
        def check() -> None:
            for s in self.rc.node.shards:
                with s.reading() as st:
                    st.check_invariants()

        self.rc.call(check)

    def checked(self, call: Callable[[], tuple[grpc.StatusCode, str]], what: str,
                also: Callable[[logging.LogRecord], bool] = lambda r: False) -> grpc.StatusCode:
        """Run *call* (it answers its status code and details) and check
        what every call must do."""
        before = self.fingerprint()
        mark = self.logs.mark()
        code, details = call()
        OUTCOMES[(what, code.name, details[:60] if _STATS > 1 else "")] += 1
        assert code in ALLOWED, f"{what}: answered {code.name}: {details[:1000]}"
        if code != grpc.StatusCode.OK:
            assert details.strip(), f"{what}: {code.name} without a message"
            assert "Traceback" not in details and "Unexpected <class" not in details, details
            # a client reads at most 8 KiB of metadata (the details included)
            assert len(details.encode()) <= MAX_DETAILS, f"{what}: {len(details)} characters of details"
            assert "metadata size" not in details, f"{what}: the answer was too large to read: {details}"
        self.check_serving()
        bad = self.logs.bad_since(mark, also)
        assert not bad, f"{what}: logged {bad}"
        if code != grpc.StatusCode.OK:
            assert self.fingerprint() == before, f"{what}: refused ({code.name}: {details[:300]}) but changed state"
        return code


def unary(fn: Callable[..., Any], request: Any) -> tuple[grpc.StatusCode, str, Any]:
    try:
        return grpc.StatusCode.OK, "", fn(request, timeout=CALL_TIMEOUT)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or "", None


@pytest.fixture(scope="module")
def quiet(tmp_path_factory: Any, logwatch: LogWatch, tls_ca: SessionCa) -> Iterator[Fuzzed]:
    """A coordinator that never dispatches (control mode disabled) and keeps
    a disconnected agent's session for an hour: nothing changes in the
    background, so a refused call must leave its fingerprint as it was."""
    rc = RunningCoordinator(single_replica_config(tmp_path_factory.mktemp("fuzz-quiet"), shards=SHARDS,
                                                  cluster_id=CLUSTER_ID, ca=tls_ca, agent_grace=3600.0), tls_ca)
    fx = Fuzzed(rc, logwatch)
    fx.stub.Control(C.ControlRequest(mode="disabled"), timeout=10)
    fx.stub.Submit(C.SubmitRequest(items=[
        C.SubmitItem(fsname="fs1", fid=_fid(n), kind=T.ARCHIVE, requester=T.Requester(initiator="seed"))
        for n in range(1, 41)]), timeout=10)
    yield fx
    fx.close()


# ---------------------------------------------------------------------------
# every unary RPC


def defuse(fx: Fuzzed, name: str, request: Any) -> Any:
    """Keep a request from wedging the shared coordinator (see the module
    docstring): a Raft address that would really be added goes, without
    force, to a closed port; a split that would really run (its driver
    would go on changing every shard after the call) asks for more shards
    than a ring may have, and is refused."""
    if name == "Reshard" and request.add:
        request.add = max(request.add, MAX_SHARDS)
    if name == "ChangeMembership":
        if request.raft == SELF_RAFT:
            request.raft = fx.self_raft
        if request.add and request.raft != fx.self_raft:
            try:
                check_addr(request.raft, "Raft address")
                fits = split_addr(request.raft)[1] + SHARDS - 1 <= 65535
            except ValueError:
                fits = False
            if fits:
                request.raft = fx.closed_raft
                request.force = False
    return request


def call_watch(fx: Fuzzed, request: C.WatchRequest) -> tuple[grpc.StatusCode, str]:
    """Watch until every action's first event (its state now) has come."""
    want = set(request.action_ids)
    seen: set[int] = set()
    events = fx.stub.Watch(request, timeout=CALL_TIMEOUT)
    try:
        for ev in events:
            seen.add(ev.action.action_id)
            if seen >= want:
                events.cancel()
                break
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.CANCELLED or seen < want:
            return exc.code(), exc.details() or ""
    assert seen <= want, f"events about actions not watched: {sorted(seen - want)[:10]}"
    return grpc.StatusCode.OK, ""


def call_unary(fx: Fuzzed, name: str, request: Any) -> tuple[grpc.StatusCode, str]:
    if name == "Watch":
        return call_watch(fx, request)
    stub = fx.report_stub if name == "Report" else fx.stub
    code, details, response = unary(getattr(stub, name), request)
    if code == grpc.StatusCode.OK:
        if name == "Submit":
            assert len(response.results) == len(request.items)
            assert all(r.outcome in (C.CREATED, C.JOINED, C.NOT_NEEDED, C.REJECTED) for r in response.results)
        elif name == "Control":
            fx.stub.Control(C.ControlRequest(mode="disabled"), timeout=10)  # back to no dispatch
    return code, details


@pytest.mark.parametrize("name", UNARY)
@fuzz_settings(60)
@given(data=st.data())
def test_fuzz_every_rpc(quiet: Fuzzed, name: str, data: st.DataObject) -> None:
    request = defuse(quiet, name, data.draw(requests(name), label="request").msg)
    quiet.checked(lambda: call_unary(quiet, name, request), name)


# ---------------------------------------------------------------------------
# the Work stream


AGENT_MESSAGES = messages(A.DESCRIPTOR.message_types_by_name["AgentMessage"]).map(Request)


def stream_ended(r: logging.LogRecord) -> bool:
    """The servicer's note of an exception while it read a Work stream (a
    clean end by the client logs nothing): a bug in message handling."""
    return r.getMessage().startswith("agent ") and " stream ended: " in r.getMessage()


def call_work(fx: Fuzzed, msgs: list[A.AgentMessage]) -> tuple[grpc.StatusCode, str]:
    """Send *msgs* as the agent the hello names (or FUZZ_AGENT), end the
    stream, read everything until the coordinator ends it."""
    got = []
    agent_id = msgs[0].hello.agent_id if msgs and msgs[0].HasField("hello") else FUZZ_AGENT
    if agent_id not in KNOWN_AGENTS:
        agent_id = FUZZ_AGENT  # not a name to issue certificates for: refused as not the certificate's
    # (an id no certificate can name, "x" * 128, is presented as FUZZ_AGENT's: refused the same way)
    try:
        for msg in fx.agent_stub(agent_id).Work(iter(msgs), timeout=CALL_TIMEOUT):
            got.append(msg)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    if got:
        assert got[0].HasField("welcome"), "the first message on an accepted stream is the welcome"
    return grpc.StatusCode.OK, ""


@fuzz_settings(100)
@given(first=weighted((3, messages(A.Hello.DESCRIPTOR).map(lambda h: Request(A.AgentMessage(hello=h)))),
                      (1, AGENT_MESSAGES)),
       rest=st.lists(AGENT_MESSAGES, max_size=6))
def test_fuzz_work_stream(quiet: Fuzzed, first: Request, rest: list[Request]) -> None:
    msgs = [first.msg, *(r.msg for r in rest)]
    quiet.checked(lambda: call_work(quiet, msgs), "Work", also=stream_ended)
    # the session ended with the stream
    alive = quiet.rc.call(lambda: [a for a, s in quiet.rc.node.book.sessions.items() if s.alive])
    assert not alive, f"sessions still alive after their stream ended: {alive}"


# ---------------------------------------------------------------------------
# bytes that are not a request


def _mutate(raw: bytes, how: int, at: int, junk: bytes) -> bytes:
    if not raw:
        return junk
    at %= len(raw)
    if how == 0:
        return raw[:at]  # truncated
    if how == 1:
        return raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1:]  # one byte flipped
    if how == 2:
        return raw[:at] + junk + raw[at:]  # inserted
    return raw + junk  # appended


class Raw(bytes):
    """Bytes that hypothesis prints abbreviated."""

    def __repr__(self) -> str:
        return f"Raw({bytes(self[:200])!r}{'...' if len(self) > 200 else ''} {len(self)} bytes)"


@st.composite
def request_bytes(draw: st.DrawFn, name: str) -> Raw:
    if draw(st.booleans()):
        return Raw(draw(st.binary(max_size=2048)))
    raw = draw(requests(name)).msg.SerializeToString()
    return Raw(_mutate(raw, draw(st.integers(0, 3)), draw(st.integers(0, 1 << 20)),
                       draw(st.binary(min_size=1, max_size=16))))


@fuzz_settings(200)
@given(data=st.data())
def test_fuzz_request_bytes_of_every_method(quiet: Fuzzed, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(METHODS)), label="method")
    m = METHODS[name]
    if m.client_streaming:
        frames = data.draw(st.lists(request_bytes(name), min_size=1, max_size=4), label="frames")
    else:
        frames = [data.draw(request_bytes(name), label="bytes")]
    path = path_of(name)
    frames = [bytes(f) for f in frames]

    def call() -> tuple[grpc.StatusCode, str]:
        ch = quiet.channel_for(name)
        try:
            if m.client_streaming:
                for _ in ch.stream_stream(path)(iter(frames), timeout=CALL_TIMEOUT):
                    pass
            elif m.server_streaming:
                events = ch.unary_stream(path)(frames[0], timeout=CALL_TIMEOUT)
                # a Watch that decoded to real action ids: its first event is enough
                for _ in events:
                    events.cancel()
                    break
            else:
                ch.unary_unary(path)(frames[0], timeout=CALL_TIMEOUT)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED and m.server_streaming:
                return grpc.StatusCode.OK, ""
            return exc.code(), exc.details() or ""
        if name == "Control":
            quiet.stub.Control(C.ControlRequest(mode="disabled"), timeout=10)
        return grpc.StatusCode.OK, ""

    if name in ("ChangeMembership", "Reshard"):
        # decoded, it is such a request: defused like the fuzzed ones
        try:
            req = (C.ReshardRequest if name == "Reshard" else C.ChangeMembershipRequest).FromString(frames[0])
        except Exception:
            req = None
        if req is not None:
            frames = [defuse(quiet, name, req).SerializeToString()]
    quiet.checked(call, name)


def test_unknown_methods_are_unimplemented(quiet: Fuzzed) -> None:
    for path in ("/hsm.v1.Coordinator/Nope", "/hsm.v1.Nope/Submit", "/", "/x"):
        def call(path: str = path) -> tuple[grpc.StatusCode, str]:
            try:
                quiet.channel.unary_unary(path)(b"\x08\x01", timeout=CALL_TIMEOUT)
            except grpc.RpcError as exc:
                return exc.code(), exc.details() or ""
            return grpc.StatusCode.OK, ""

        assert quiet.checked(call, path) == grpc.StatusCode.UNIMPLEMENTED


# ---------------------------------------------------------------------------
# garbage on the API and Raft ports


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _h2_frame(kind: int, flags: int, stream: int, payload: bytes, length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    return struct.pack(">I", n)[1:] + bytes([kind & 0xFF, flags & 0xFF]) + struct.pack(">I", stream) + payload


def _hpack_literal(name: bytes, value: bytes) -> bytes:
    """A literal header field without indexing, new name (RFC 7541 6.2.2);
    lengths below 127 only."""
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def _grpc_headers(path: bytes) -> bytes:
    return b"".join(_hpack_literal(k, v) for k, v in (
        (b":method", b"POST"), (b":scheme", b"http"), (b":path", path[:100]), (b":authority", b"x"),
        (b"content-type", b"application/grpc"), (b"te", b"trailers")))


FRAMES = st.builds(
    _h2_frame, st.integers(0, 12), st.integers(0, 255), st.sampled_from([0, 1, 3, (1 << 31) - 1, 1 << 31]),
    st.binary(max_size=64), st.none() | st.sampled_from([0, 1, 9, 1 << 14, (1 << 24) - 1]))
GRPC_CALL = st.builds(
    lambda path, end, compressed, length, body: (
        _h2_frame(1, 0x4 | end, 1, _grpc_headers(path))
        + _h2_frame(0, 0x1, 1, bytes([compressed]) + struct.pack(">I", length) + body)),
    st.sampled_from([path_of(n).encode() for n in sorted(METHODS)] + [b"/x", b""]), st.sampled_from([0, 1]),
    st.integers(0, 255), st.sampled_from([0, 1, 5, 64, (1 << 32) - 1]), st.binary(max_size=64))
API_GARBAGE = weighted(
    (2, st.binary(min_size=1, max_size=4096)),
    (1, st.builds(lambda junk: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + junk, st.binary(max_size=64))),
    (3, st.builds(lambda pre, frames: pre + b"".join(frames),
                  st.sampled_from([H2_PREFACE, H2_PREFACE[:10], H2_PREFACE + _h2_frame(4, 0, 0, b""),
                                   H2_PREFACE.replace(b"2.0", b"9.9")]),
                  st.lists(FRAMES | GRPC_CALL, max_size=6))),
)


def send_raw(address: str, payload: bytes, tls: TlsFiles | None = None) -> None:
    """Send *payload*, end our side, read until the peer closes (or 10 s).
    With *tls*: inside a TLS session (ALPN h2) presenting *tls*'s
    certificate, as a gRPC client's bytes would be."""
    host, port = split_addr(address)
    with socket.create_connection((host, port), timeout=10) as raw:
        s: socket.socket = raw
        if tls is not None:
            ctx = ssl.create_default_context(cafile=str(tls.ca))
            ctx.load_cert_chain(str(tls.cert), str(tls.key))
            ctx.set_alpn_protocols(["h2"])
            s = ctx.wrap_socket(raw, server_hostname=host)  # the handshake must succeed
        try:
            s.sendall(payload)
            raw.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and s.recv(65536):
                pass
        except OSError:
            pass  # reset by the peer (or a TLS session ended without close_notify): fine


@fuzz_settings(60)
@given(payload=API_GARBAGE, inside_tls=st.booleans())
def test_fuzz_garbage_on_the_api_port(quiet: Fuzzed, payload: bytes, inside_tls: bool) -> None:
    """As they come, the bytes meet the TLS layer; inside an admin's TLS
    session, HTTP/2 and gRPC's framing."""
    def call() -> tuple[grpc.StatusCode, str]:
        send_raw(quiet.rc.address, payload, quiet.rc.tls() if inside_tls else None)
        return grpc.StatusCode.OK, ""

    # nothing may change, even though the "call" itself is not refused
    before = quiet.fingerprint()
    quiet.checked(call, "garbage on the API port")
    assert quiet.fingerprint() == before


RAFT_GARBAGE = weighted(
    (1, st.binary(min_size=1, max_size=4096)),
    (2, st.builds(lambda frames: b"".join(frames), st.lists(st.builds(
        lambda n, body: struct.pack("<i", len(body) if n is None else n) + body,
        st.none() | st.sampled_from([-(1 << 31), -1, 0, 1, 1 << 20, (1 << 31) - 1]),
        st.binary(max_size=256) | st.builds(zlib.compress, st.binary(max_size=256))),
        min_size=1, max_size=4))),
)


@fuzz_settings(40)
@given(payload=RAFT_GARBAGE, shard=st.integers(0, SHARDS - 1))
def test_fuzz_garbage_on_a_raft_port(quiet: Fuzzed, payload: bytes, shard: int) -> None:
    def call() -> tuple[grpc.StatusCode, str]:
        send_raw(quiet.rc.node.me.raft_addr(shard), payload)
        return grpc.StatusCode.OK, ""

    before = quiet.fingerprint()
    quiet.checked(call, "garbage on a Raft port")
    assert quiet.fingerprint() == before


def test_raft_still_commits_after_the_garbage(quiet: Fuzzed) -> None:
    for shard in range(SHARDS):
        send_raw(quiet.rc.node.me.raft_addr(shard), b"\xff" * 64)
    reply = quiet.stub.Lease(C.LeaseRequest(name="after-garbage", holder="fuzz", ttl_ms=1000), timeout=10)
    assert reply.granted


# ---------------------------------------------------------------------------
# an agent that holds actions, fuzzing what it reports about them


@pytest.fixture(scope="module")
def busy(tmp_path_factory: Any, logwatch: LogWatch, tls_ca: SessionCa) -> Iterator[Fuzzed]:
    """A coordinator that dispatches, and keeps a disconnected agent's
    actions for an hour (nothing is requeued while the module runs)."""
    rc = RunningCoordinator(single_replica_config(tmp_path_factory.mktemp("fuzz-busy"), shards=SHARDS,
                                                  cluster_id=CLUSTER_ID, ca=tls_ca, agent_grace=3600.0), tls_ca)
    fx = Fuzzed(rc, logwatch)
    yield fx
    fx.close()


class Agent:
    """One Work stream driven from the test, presenting the certificate of
    the agent its hello names."""

    def __init__(self, fx: Fuzzed, hello: A.Hello) -> None:
        self.inbox: list[A.CoordinatorMessage] = []
        self.cond = threading.Condition()
        self.outbox: list[A.AgentMessage | None] = [A.AgentMessage(hello=hello)]
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.calls = fx.agent_stub(hello.agent_id).Work(self._requests(), timeout=CALL_TIMEOUT)
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _requests(self) -> Iterator[A.AgentMessage]:
        while True:
            with self.cond:
                self.cond.wait_for(lambda: bool(self.outbox))
                msg = self.outbox.pop(0)
            if msg is None:
                return
            yield msg

    def _pump(self) -> None:
        try:
            for msg in self.calls:
                with self.cond:
                    self.inbox.append(msg)
                    self.cond.notify_all()
            self.code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            self.code, self.details = exc.code(), exc.details() or ""
        with self.cond:
            self.cond.notify_all()

    def send(self, *msgs: A.AgentMessage | None) -> None:
        with self.cond:
            self.outbox.extend(msgs)
            self.cond.notify_all()

    def wait_for(self, what: Callable[[list[A.CoordinatorMessage]], bool], timeout: float = 10.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: what(self.inbox) or self.code is not None, timeout)

    def assignments(self) -> list[A.Assignment]:
        with self.cond:
            return [a for m in self.inbox for a in m.assign]


_counter = iter(range(1, 1 << 30))


@st.composite
def reports_about(draw: st.DrawFn, held: list[A.Assignment]) -> A.AgentMessage:
    """An AgentMessage about *held* actions: right or wrong ids and attempts,
    any errno, retry, handback, byte counts, running reports, credits."""
    ids = st.sampled_from([(a.action_id, a.attempt) for a in held]) if held else st.nothing()
    pair = weighted((4, ids), (1, st.tuples(ACTION_IDS, st.integers(0, 4))))

    def attempt(a: int) -> st.SearchStrategy[int]:
        return weighted((4, st.just(a)), (1, integers(*_U32)))

    @st.composite
    def progress(draw: st.DrawFn) -> A.Progress:
        i, a = draw(pair)
        return A.Progress(action_id=i, attempt=draw(attempt(a)), bytes_done=draw(integers(*_U64)),
                          bytes_total=draw(integers(*_U64)))

    @st.composite
    def done(draw: st.DrawFn) -> A.Done:
        i, a = draw(pair)
        return A.Done(action_id=i, attempt=draw(attempt(a)), errno=draw(weighted((3, HINTS["errno"]),
                                                                                 (1, integers(*_I32)))),
                      message=draw(TEXT), retry=draw(st.booleans()), bytes_done=draw(integers(*_U64)),
                      handback=draw(st.booleans()))

    @st.composite
    def running(draw: st.DrawFn) -> A.RunningReport:
        acts = [A.RunningAction(action_id=i, attempt=a) for i, a in draw(st.lists(pair, max_size=4))]
        return A.RunningReport(actions=acts, token=draw(integers(*_U64)))

    msg = A.AgentMessage()
    if draw(st.booleans()):
        msg.progress.extend(draw(st.lists(progress(), min_size=1, max_size=3)))
    if draw(st.booleans()):
        msg.done.extend(draw(st.lists(done(), min_size=1, max_size=3)))
    if draw(weighted((3, st.just(False)), (1, st.just(True)))):
        msg.running.CopyFrom(draw(running()))
    if draw(weighted((3, st.just(False)), (1, st.just(True)))):
        msg.ready.CopyFrom(draw(messages(A.DESCRIPTOR.message_types_by_name["Ready"])))
    if draw(weighted((5, st.just(False)), (1, st.just(True)))):
        msg.hello.CopyFrom(draw(HELLOS))
    msg.heartbeat = draw(st.booleans())
    msg.lease_token = draw(weighted((3, st.just(0)), (1, integers(*_U64))))
    return msg


@fuzz_settings(40)
@given(data=st.data())
def test_fuzz_reports_about_held_actions(busy: Fuzzed, data: st.DataObject) -> None:
    """A real agent takes three actions, then sends anything about them."""
    n = next(_counter)
    agent_id = f"held-{n}"
    busy.stub.Submit(C.SubmitRequest(items=[
        C.SubmitItem(fsname="fs1", fid=_fid(10_000 * n + i), kind=kind, requester=T.Requester(initiator="fuzz"))
        for i, kind in enumerate((T.ARCHIVE, T.RESTORE, T.REMOVE))]), timeout=10)
    agent = Agent(busy, A.Hello(agent_id=agent_id, host="h", slots=C.Slots(archive=4, restore=4, remove=4)))
    try:
        agent.send(A.AgentMessage(ready=A.Ready(credits=C.Slots(archive=1, restore=1, remove=1))))
        assert agent.wait_for(lambda inbox: sum(len(m.assign) for m in inbox) >= 3), (agent.code, agent.details)
        held = agent.assignments()
        msgs = [r.msg for r in data.draw(st.lists(reports_about(held).map(Request), min_size=1, max_size=8),
                                         label="messages")]

        def call() -> tuple[grpc.StatusCode, str]:
            agent.send(*msgs, None)
            agent.thread.join(CALL_TIMEOUT)
            assert agent.code is not None, "the stream did not end after the agent ended it"
            return agent.code, agent.details

        busy.checked(call, "Work (held actions)", also=stream_ended)
        busy.check_invariants()
        alive = busy.rc.call(lambda: busy.rc.node.book.sessions[agent_id].alive)
        assert not alive, "the session outlived its stream"
    finally:
        agent.send(None)
        agent.calls.cancel()


# ---------------------------------------------------------------------------
# regressions: what the fuzzing found, one test each


def _items_of_shard(rc: RunningCoordinator, shard: int, n: int, data: bytes = b"") -> list[C.SubmitItem]:
    from hsm.fid import Fid

    out = []
    oid = 1
    while len(out) < n:
        if rc.node.ring.shard_of(Fid(SEQ, oid, 0)) == shard:
            out.append(C.SubmitItem(fsname="fs1", fid=_fid(oid), kind=T.ARCHIVE, data=data,
                                    requester=T.Requester(initiator="big")))
        oid += 1
    return out


def _no_error_logged(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r.getMessage()[:300] for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, bad


def test_a_submit_too_large_for_one_raft_entry_is_refused_whole(coordinator_factory: Any,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """It was UNKNOWN with a traceback, and the part for the other shard
    was committed: now INVALID_ARGUMENT before anything is proposed."""
    rc = coordinator_factory(shards=2)
    items = _items_of_shard(rc, 0, 1) + _items_of_shard(rc, 1, 900, b"x" * 4096)  # 3.7 MB for shard 1
    with rc.channel() as ch:
        stub = coordinator_pb2_grpc.CoordinatorStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            stub.Submit(C.SubmitRequest(items=items), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "more than one Raft entry may carry" in err.value.details()
        assert not stub.Status(C.StatusRequest()).counts, "nothing may be queued"
        # one shard alone: refused the same way
        with pytest.raises(grpc.RpcError) as err:
            stub.Submit(C.SubmitRequest(items=items[1:]), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert not stub.Status(C.StatusRequest()).counts
        assert stub.Submit(C.SubmitRequest(items=items[:1]), timeout=10).results[0].outcome == C.CREATED
    _no_error_logged(caplog)


def test_a_cancel_too_large_for_one_raft_entry_is_refused_whole(coordinator_factory: Any,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    rc = coordinator_factory(shards=2)
    [small] = _items_of_shard(rc, 0, 1)
    many = _items_of_shard(rc, 1, 120_000)
    with rc.channel(options=[("grpc.max_receive_message_length", -1)]) as ch:
        stub = coordinator_pb2_grpc.CoordinatorStub(ch)
        [res] = stub.Submit(C.SubmitRequest(items=[small]), timeout=10).results
        selectors = [C.FidSelector(fsname="fs1", fid=it.fid) for it in many]
        with pytest.raises(grpc.RpcError) as err:
            stub.Cancel(C.CancelRequest(action_ids=[res.action_id], fids=selectors), timeout=60)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert stub.GetAction(C.GetActionRequest(action_id=res.action_id)).state == T.WAITING
    _no_error_logged(caplog)


def test_agent_reports_too_large_for_one_raft_entry_are_split_not_refused(
        coordinator: Any, caplog: pytest.LogCaptureFixture) -> None:
    """4,000 completions of 1,000 characters each (about 4 MB), forwarded
    by a replica: applied in several entries; it was UNKNOWN with a traceback."""
    done = [A.Done(action_id=i * 1000, attempt=1, errno=5, message="e" * 1000) for i in range(1, 4001)]
    with coordinator.channel(REPLICA, "peer") as ch:
        agent_pb2_grpc.AgentServiceStub(ch).Report(A.ReportRequest(agent_id="m1", done=done), timeout=60)
    _no_error_logged(caplog)


@pytest.mark.parametrize("what", ["fsname", "control mode", "cluster id"])
def test_status_messages_never_echo_a_long_value_whole(coordinator: Any, what: str) -> None:
    """A 300,000-character value echoed in the status message made it more
    metadata than a gRPC client reads: it saw RESOURCE_EXHAUSTED, not why."""
    long = "x" * 300_000
    with coordinator.channel() as ch, coordinator.channel(AGENT, "m1") as agent:
        stub = coordinator_pb2_grpc.CoordinatorStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            if what == "fsname":
                stub.Submit(C.SubmitRequest(items=[C.SubmitItem(fsname=long, fid=_fid(1), kind=T.ARCHIVE)]))
            elif what == "control mode":
                stub.Control(C.ControlRequest(mode=long))
            else:
                list(agent_pb2_grpc.AgentServiceStub(agent).Work(iter([A.AgentMessage(hello=A.Hello(
                    agent_id="m1", cluster_id=long))]), timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()[:200]
    assert len(err.value.details()) <= MAX_DETAILS


def test_an_agents_error_text_cannot_flood_the_log(coordinator: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with coordinator.channel(REPLICA, "peer") as ch:  # a replica forwarding m1's report
        agent_pb2_grpc.AgentServiceStub(ch).Report(A.ReportRequest(agent_id="m1", done=[
            A.Done(action_id=1000, attempt=1, errno=5, message="\x00" * 300_000)]), timeout=10)
    lines = [r.getMessage() for r in caplog.records if "ended on m1" in r.getMessage()]
    assert lines and all(len(line) <= MAX_LOG_LINE for line in lines)


def test_an_agents_archive_ids_are_bounded_and_cannot_flood_the_log(coordinator: Any,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A hello with 10,001 archive ids was taken, and logged whole (a 20 KB line)."""
    caplog.set_level(logging.INFO)
    with coordinator.channel(AGENT, "m1") as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Work(iter([A.AgentMessage(hello=A.Hello(agent_id="m1", archive_ids=[7] * 10_001))]),
                           timeout=10))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "archive ids" in err.value.details()
        got = list(stub.Work(iter([A.AgentMessage(hello=A.Hello(agent_id="m1", archive_ids=range(1, 1001)))]),
                             timeout=10))
        assert got[0].HasField("welcome")
    lines = [r.getMessage() for r in caplog.records if "agent m1 connected" in r.getMessage()]
    assert len(lines) == 1 and "and 980 more" in lines[0] and len(lines[0]) < 500


def test_adding_a_replica_that_is_already_a_member_changes_nothing(coordinator: Any) -> None:
    """Adding the leader itself was UNAVAILABLE (clients retry that) with
    "already a member": it is done already, like any retried addition."""
    me = coordinator.node.me.raft_addr(0)
    with coordinator.channel() as ch:
        stub = coordinator_pb2_grpc.CoordinatorStub(ch)
        assert list(stub.ChangeMembership(C.ChangeMembershipRequest(add=True, raft=me), timeout=10).shards) == [0]
    assert coordinator.call(lambda: coordinator.node.shards[0].peers) == []


def test_drain_of_an_unknown_agent_names_at_most_ten_connected_ones(coordinator: Any) -> None:
    """The NOT_FOUND message listed every connected agent: with a thousand
    mover nodes, more than a client reads."""
    from tests.test_node import FakeAgentStream

    agents = [FakeAgentStream(coordinator, f"mover-{i:02d}") for i in range(12)]
    try:
        for a in agents:
            a.expect("welcome")
        with coordinator.channel() as ch:
            with pytest.raises(grpc.RpcError) as err:
                coordinator_pb2_grpc.CoordinatorStub(ch).DrainAgent(C.DrainAgentRequest(agent_id="nope", drain=True))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "mover-09 and 2 more" in err.value.details() and "mover-11" not in err.value.details()
    finally:
        for a in agents:
            a.close()


@pytest.mark.parametrize("call", [
    lambda s: s.Cancel(C.CancelRequest(all=True, reason="r" * 300_000)),
    lambda s: s.Lease(C.LeaseRequest(name="n" * 300_000, holder="h", ttl_ms=5000)),
    lambda s: s.Control(C.ControlRequest(mode="m" * 300_000)),
    lambda s: s.Submit(C.SubmitRequest(items=[C.SubmitItem(fsname="f" * 10_000, fid=_fid(1), kind=T.ARCHIVE)] * 100)),
    lambda s: s.Control(C.ControlRequest(mode="enabled", shards=[5] * 100_000)),
], ids=["cancel-reason", "lease-name", "control-mode", "submit-fsnames", "shards"])
def test_audit_lines_are_bounded(coordinator: Any, caplog: pytest.LogCaptureFixture, call: Any) -> None:
    caplog.set_level(logging.INFO, logger="hsm.audit")
    with coordinator.channel() as ch:
        try:
            call(coordinator_pb2_grpc.CoordinatorStub(ch))
        except grpc.RpcError:
            pass  # refused or not: its audit line is written either way
    lines = [r.getMessage() for r in caplog.records if r.name == "hsm.audit"]
    assert lines and max(map(len, lines)) <= MAX_LOG_LINE, max(map(len, lines))
