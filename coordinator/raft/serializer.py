"""Snapshots and pickling (pysyncobj's ``serializer``): how a ``ShardState``
becomes snapshot bytes and back (``_encode_state``, ``_decode_state``), the
snapshot file format (``_read_snapshot``; written by
``RaftShard._write_snapshot`` in ``coordinator.raft.shard``), and the pickle
protocol of our entries, snapshots and pysyncobj's messages (``_PICKLE``).

Snapshots and log compaction
============================

pysyncobj compacts the log after ``compaction_min_entries`` entries or
``compaction_min_time`` seconds, and we force it when the log in memory passes
``max_log_bytes``. A snapshot pickles the whole ``ShardState`` on the applier
thread (no fork: ``useFork`` is off because gRPC runs in the same process),
compresses it (zlib level 1, ~5x) and writes it. Cost, measured on this
2-core machine: 1.2-1.7 s of CPU per 100k actions on an idle core (~250
bytes per action before zlib, ~32 after), 5.4 s for 150k actions on a busy
machine. The garbage collector is paused while it pickles (a full
collection over a big heap holds the GIL for ~0.25 s per 100k actions and
starved heartbeats into an election in a test; with the pause, no
election). While a snapshot runs, entries keep being committed and
acknowledged by the followers (heartbeats and the journal live on the tick
thread), but applying them waits: on the leader, clients see that pause as
extra latency once per compaction. Installing or restoring a snapshot costs
about twice its pickling. Memory: the log since the last compaction
(bounded by the three limits above) plus one serialized copy of the state
while a snapshot is written. (Giving ``Action`` a compact ``__reduce__``
of plain tuples makes pickling ~7x and unpickling ~20x faster.)

Durability
==========

Snapshots (``snapshot``) are written to a temporary file, fsynced, renamed
and the directory fsynced **before** pysyncobj drops the journal entries
they cover. An installed snapshot (from the leader) is fsynced before the
follower acknowledges it.

How it hooks into pysyncobj 0.3.17 (re-check on any upgrade)
============================================================

* ``pysyncobj.pickle``'s protocol is raised from 2 to 5 (see ``_PICKLE``),
  once, at import.
* A custom ``serializer``/``deserializer``/``serializeChecker`` (methods of
  ``RaftShard``): the serializer queues the snapshot for the applier and
  raises ``_SnapshotStarted``, which pysyncobj's ``Serializer`` records as
  "not finished" until the checker reports the end."""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pysyncobj.pickle as _ps_pickle

from coordinator.raft.errors import _REPLACE, RaftStorageError
from coordinator.raft.journal import Entry
from coordinator.state import ShardState

# --------------------------------------------------------------------------
# Pickle protocol (pysyncobj's messages too: installed once, at import)
# --------------------------------------------------------------------------

#: the pickle protocol of our entries, snapshots and (below) pysyncobj's messages
_PICKLE = 5

#: pysyncobj pickles messages and commands with protocol 2, which turns every
#: bytes object into a latin-1 string (1.5x larger, ~7 ms/MiB each way).
#: Protocol 5 is read by any Python >= 3.8, so replicas with and without
#: this setting still understand each other.
setattr(_ps_pickle, "__protocol", _PICKLE)


# --------------------------------------------------------------------------
# Snapshot files
# --------------------------------------------------------------------------

_SNAP_MAGIC = b"HSMRSNP1"
_SNAP_LEN = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class _SnapshotHeader:
    last: Entry
    prev: Entry
    cluster: Any  # set of pysyncobj Nodes
    size: int
    crc: int


def _read_snapshot(path: Path, shard: int) -> tuple[_SnapshotHeader, bytes, tuple[int, int, int]]:
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        data = f.read()
    ident = (st.st_ino, st.st_size, st.st_mtime_ns)
    bad = f"shard {shard}: snapshot {path} is damaged"
    if data[: len(_SNAP_MAGIC)] != _SNAP_MAGIC or len(data) < len(_SNAP_MAGIC) + _SNAP_LEN.size:
        raise RaftStorageError(f"{bad} (not a snapshot file). {_REPLACE}")
    (hlen,) = _SNAP_LEN.unpack_from(data, len(_SNAP_MAGIC))
    start = len(_SNAP_MAGIC) + _SNAP_LEN.size
    try:
        last, prev, cluster, size, crc = pickle.loads(data[start: start + hlen])
    except Exception as e:
        raise RaftStorageError(f"{bad} (header: {e}). {_REPLACE}") from e
    body = data[start + hlen:]
    if len(body) != size or zlib.crc32(body) != crc:
        raise RaftStorageError(f"{bad} (checksum mismatch). {_REPLACE}")
    return _SnapshotHeader(tuple(last), tuple(prev), cluster, size, crc), body, ident


_STATE_FORMAT = "hsm-shard-state/3"
#: written before the catalog was sliced (its catalog is in the head): still read
_STATE_FORMAT_2 = "hsm-shard-state/2"
#: actions (and catalog files) per pickle call in a snapshot: pickle holds
#: the GIL for a whole call, and one call over a million actions takes
#: seconds (missed Raft heartbeats, elections, lapsed agent leases); between
#: two slices the tick and event-loop threads run
_SNAP_CHUNK = 10_000


def _encode_state(state: ShardState) -> bytes:
    """A shard state as snapshot bytes, pickled in slices (see _SNAP_CHUNK).
    Called on the apply thread, the state's only writer: nothing changes
    while the slices are taken; readers on the loop only read."""
    head, actions = state.export_parts()
    head = dict(head)
    catalog = head.pop("catalog", None)  # sliced too: millions of copies are seconds of pickling
    parts = [pickle.dumps(head, protocol=_PICKLE)]
    for i in range(0, len(actions), _SNAP_CHUNK):
        parts.append(pickle.dumps(actions[i:i + _SNAP_CHUNK], protocol=_PICKLE))
        time.sleep(0)  # let the other threads have the GIL
    n_actions = len(parts) - 1
    files = list(catalog.files.items()) if catalog is not None else []
    for i in range(0, len(files), _SNAP_CHUNK):
        parts.append(pickle.dumps(files[i:i + _SNAP_CHUNK], protocol=_PICKLE))
        time.sleep(0)
    return pickle.dumps((_STATE_FORMAT, parts, n_actions), protocol=_PICKLE)


def _decode_state(blob: bytes) -> ShardState:
    obj = pickle.loads(blob)
    if isinstance(obj, ShardState):
        return obj  # a snapshot written before the sliced format
    if isinstance(obj, tuple) and len(obj) == 2 and obj[0] == _STATE_FORMAT_2:
        parts, n_actions = obj[1], len(obj[1]) - 1  # the catalog is in the head
    elif isinstance(obj, tuple) and len(obj) == 3 and obj[0] == _STATE_FORMAT:
        parts, n_actions = obj[1], obj[2]
    else:
        raise RaftStorageError(f"unknown snapshot format {type(obj).__name__}")

    def chunks(first: int, end: int) -> Iterator[list[Any]]:
        for part in parts[first:end]:
            yield pickle.loads(part)
            time.sleep(0)

    state = ShardState.import_parts(pickle.loads(parts[0]), chunks(1, 1 + n_actions))
    if len(parts) > 1 + n_actions:
        for files in chunks(1 + n_actions, len(parts)):
            state.catalog.add_files(files)
    return state


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pickling or unpickling a large state allocates millions of objects,
    which triggers full garbage collections: each one holds the GIL for
    hundreds of ms over a big heap (measured: 0.25 s per pass with 100k
    actions), starving the Raft tick thread into missed heartbeats. Reference
    counting still frees garbage meanwhile."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class _SnapshotStarted(Exception):
    """Raised by our serializer hook to tell pysyncobj's Serializer that the
    snapshot continues asynchronously (its serializeChecker reports the end)."""
