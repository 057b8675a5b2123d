"""``python -m bench catalog``: what the catalog (issue 18) costs each replica.

Every replica holds the catalog of the shards it serves (leader or
follower: the same state machine), so the figures are per copy per
replica. The copies are the posix mover's: the v1 layout's object key, a
sha256 checksum, a path of 40-70 bytes, owner and mode; they are recorded
through the shard state machine's own command (``Complete`` ending an
archive with the mover's facts, after its ``Submit`` and ``AssignRound``),
as a replica applies them from the log.

Measured, in one process: the catalog's bytes in memory per copy
(tracemalloc, the catalog alone: what the state holds beyond its actions),
its bytes per copy in a shard snapshot (the snapshot with the catalog less
the snapshot without it), and the time a listing takes: a full ``catalog
ls`` in pages of 1000 and one whose path filter keeps 2 % of the files
(each page looks at a bounded number of files, so the shard is held for a
bounded time whatever the filter).

Results: ``catalog-latest.json`` / ``.md`` and ``runs/<time>-catalog.json``.
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from agentd.movers.posix import object_path
from coordinator.catalog import SCAN_FILES, Query
from coordinator.raft.serializer import _encode_state
from coordinator.state import (
    AssignRound,
    Complete,
    Completion,
    Item,
    Kind,
    Requester,
    ShardConfig,
    ShardState,
    Submit,
)
from hsm.fid import Fid

CATALOG_HELP = __doc__.split("\n\n", 1)[1] if __doc__ else ""
COPIES = {"quick": 100_000, "full": 1_000_000}
BATCH = 1000


def facts(n: int) -> tuple[Any, ...]:
    """The mover's facts for the copy of FID n (COPY_FACTS order)."""
    fid = Fid(0x200000400, n, 0)
    path = f"/project/p{n % 50:02d}/u{1000 + n % 37}/run{n % 8}/file{n:08d}.{('nc', 'h5', 'dat')[n % 3]}"
    return (str(object_path("", fid)).lstrip("/"), 1 + n % 5, 4096 + n % 100_000, "sha256:" + f"{n:064x}",
            1000 + n % 37, 100 + n % 5, 0o100644, path)


def build(copies: int) -> tuple[ShardState, float]:
    """A shard state whose catalog holds *copies* copies, made by the state
    machine's commands; and the seconds the Completes took to apply."""
    state = ShardState(ShardConfig(archive_ids=frozenset({1}), max_terminal=BATCH))
    applying = 0.0
    for start in range(1, copies + 1, BATCH):
        ns = range(start, min(copies + 1, start + BATCH))
        items = tuple(Item("fs1", Fid(0x200000400, n, 0), Kind.ARCHIVE, requester=Requester("bench", cookie=n))
                      for n in ns)
        ids = [r.action_id for r in state.apply(Submit(1.0, items)).replies]  # type: ignore[attr-defined]
        state.apply(AssignRound(2.0, (("a1", tuple(ids)),)))
        done = tuple(Completion(i, 1, 0, "", False, 0, False, facts(n)) for i, n in zip(ids, ns, strict=True))
        t0 = time.perf_counter()
        state.apply(Complete(3.0, done, "a1"))
        applying += time.perf_counter() - t0
    return state, applying


def catalog_bytes(copies: int) -> float:
    """Bytes in memory per copy: tracemalloc around recording *copies*
    copies into a fresh catalog through the state machine (its actions are
    kept apart: max_terminal bounds them and they are traced before)."""
    gc.collect()
    tracemalloc.start()
    state, _ = build(copies)
    with_all = tracemalloc.get_traced_memory()[0]
    state.catalog = type(state.catalog)()  # the only reference to the full one goes
    gc.collect()
    without = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (with_all - without) / copies


def listing(state: ShardState, q: Query) -> dict[str, float]:
    t0 = time.perf_counter()
    after = None
    pages = found = 0
    slowest = 0.0
    while True:
        p0 = time.perf_counter()
        page, after = state.catalog.query(q, after, 1000)
        slowest = max(slowest, time.perf_counter() - p0)
        pages += 1
        found += len(page)
        if after is None:
            break
    took = time.perf_counter() - t0
    return {"copies_listed": found, "pages": pages, "seconds": took, "slowest_page_ms": slowest * 1000}


def catalog(args: argparse.Namespace, say: Callable[[str], None]) -> int:
    copies = args.copies or COPIES[args.mode or "quick"]
    say(f"== catalog: {copies:,} copies of the posix mover's shape, through the shard state machine")
    per_copy = catalog_bytes(copies)
    say(f"   memory: {per_copy:,.0f} bytes per copy per replica")
    state, applying = build(copies)
    say(f"   applying the Completes that end the archives: {applying / copies * 1e6:.2f} µs per copy")
    catalog_ = state.catalog
    with_catalog = len(_encode_state(state))
    state.catalog = type(catalog_)()
    without = len(_encode_state(state))
    state.catalog = catalog_
    snap = (with_catalog - without) / copies
    say(f"   snapshot: {snap:,.0f} bytes per copy")
    full = listing(state, Query())
    narrow = listing(state, Query(path_prefix="/project/p07"))
    say(f"   ls, every copy: {full['seconds']:.2f} s in {full['pages']} pages (slowest {full['slowest_page_ms']:.1f} ms)")
    say(f"   ls --path keeping {narrow['copies_listed']:,}: {narrow['seconds']:.2f} s in {narrow['pages']} pages "
        f"(slowest {narrow['slowest_page_ms']:.1f} ms; a page looks at {SCAN_FILES:,} files at most)")
    out = {"kind": "catalog", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "copies": copies,
           "bytes_per_copy_memory": round(per_copy, 1), "bytes_per_copy_snapshot": round(snap, 1),
           "apply_us_per_copy": round(applying / copies * 1e6, 3), "ls_all": full, "ls_path": narrow,
           "scan_files_per_page": SCAN_FILES}
    if not args.no_save:
        from bench.compare import save

        paths = save(out, markdown(out), args.results, name="catalog")
        say(f"   written: {', '.join(str(p) for p in paths)}")
    return 0


def markdown(out: dict[str, Any]) -> str:
    a, p = out["ls_all"], out["ls_path"]
    return (f"# hsm-coordinator benchmark: the catalog\n\n{out['when']}; {out['copies']:,} copies of the posix "
            "mover's shape (v1 object key, sha256, a 40-70 byte path, owner and mode), recorded by the shard "
            "state machine's Complete commands (`python -m bench catalog`).\n\n"
            "| figure | value |\n|---|---|\n"
            f"| memory per copy per replica (bytes) | {out['bytes_per_copy_memory']:,.0f} |\n"
            f"| snapshot bytes per copy | {out['bytes_per_copy_snapshot']:,.0f} |\n"
            f"| applying a Complete, per copy (µs) | {out['apply_us_per_copy']:.2f} |\n"
            f"| `ls` of every copy: seconds, pages, slowest page (ms) | {a['seconds']:.2f}, {a['pages']}, "
            f"{a['slowest_page_ms']:.1f} |\n"
            f"| `ls --path` keeping {p['copies_listed']:,}: seconds, pages, slowest page (ms) | {p['seconds']:.2f}, "
            f"{p['pages']}, {p['slowest_page_ms']:.1f} |\n\n"
            f"A page looks at {out['scan_files_per_page']:,} files at most: a listing holds a shard for the "
            "slowest page's time, whatever its filters.\n")
