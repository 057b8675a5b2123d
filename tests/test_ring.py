"""The consistent-hash ring: spread, stability across processes and code
versions, minimal movement when a shard is added, config round trip,
argument validation.

The 1M-FID checks hash each FID once (``fid_key``) and look the keys up in
several rings with ``shard_at``; a sample checks that this is exactly what
``shard_of`` does on ``Fid`` objects."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm.fid import FID_SEQ_NORMAL, Fid
from hsm.ring import (
    DEFAULT_VNODES,
    HASH_NAME,
    MAX_KEY,
    MAX_SHARDS,
    Ring,
    RingError,
    fid_key,
    packed_key,
    vnode_positions,
)

N = 1_000_000
LU_FID = struct.Struct("<QII")
#: Lustre hands each client a sequence of 0x20000 object ids (LUSTRE_DATA_SEQ_MAX_WIDTH)
SEQ_WIDTH = 0x20000

fids_st = st.builds(
    Fid,
    st.integers(0, (1 << 64) - 1),
    st.integers(0, (1 << 32) - 1),
    st.integers(0, (1 << 32) - 1),
)


def _keys(packed: Sequence[bytes]) -> list[int]:
    return [packed_key(p) for p in packed]


@pytest.fixture(scope="module")
def random_keys() -> list[int]:
    """1M random normal FIDs: random sequence among 1M, random object id."""
    rng = random.Random(20240601)
    return _keys([
        LU_FID.pack(FID_SEQ_NORMAL + rng.randrange(1 << 20), rng.randrange(1, SEQ_WIDTH + 1), 0)
        for _ in range(N)
    ])


@pytest.fixture(scope="module")
def sequential_keys() -> list[int]:
    """1M FIDs created one after another in one sequence, as Lustre does:
    [0x200000400:0x1:0x0], [0x200000400:0x2:0x0], ..."""
    return _keys([LU_FID.pack(FID_SEQ_NORMAL, oid, 0) for oid in range(1, N + 1)])


def _assert_spread(ring: Ring, keys: list[int], tolerance: float = 0.10) -> float:
    counts = Counter(map(ring.shard_at, keys))
    assert set(counts) == set(range(ring.shards)), f"some shard got no FID: {sorted(counts)}"
    fair = len(keys) / ring.shards
    worst = max(abs(c - fair) / fair for c in counts.values())
    assert worst <= tolerance, (
        f"{ring.shards} shards: counts {sorted(counts.items())}, fair share {fair:.0f}, "
        f"worst deviation {worst:.1%}"
    )
    return worst


# --------------------------------------------------------------- spread


@pytest.mark.parametrize("shards", [3, 8, 16])
def test_random_fids_spread_within_10_percent(random_keys: list[int], shards: int) -> None:
    _assert_spread(Ring(shards), random_keys)


@pytest.mark.parametrize("shards", [3, 8, 16])
def test_sequential_fids_spread_within_10_percent(sequential_keys: list[int], shards: int) -> None:
    _assert_spread(Ring(shards), sequential_keys)


def test_fids_from_many_sequences_spread_evenly() -> None:
    # 16 clients, each filling its own sequence from oid 1 up.
    keys = _keys([
        LU_FID.pack(FID_SEQ_NORMAL + s, oid, 0) for s in range(16) for oid in range(1, 20_001)
    ])
    _assert_spread(Ring(8), keys)


def test_exact_shares_are_balanced_for_every_small_cluster() -> None:
    # The hash space itself, not a sample: every shard count up to 32 keeps
    # each shard within 5% of its fair share with the default vnodes.
    for shards in range(1, 33):
        shares = Ring(shards).shares()
        assert sum(shares) == pytest.approx(1.0)
        worst = max(abs(s * shards - 1) for s in shares)
        assert worst < 0.05, f"{shards} shards: worst share off by {worst:.1%}: {shares}"


def test_few_vnodes_spread_badly() -> None:
    # Why the default is large: with 4 vnodes a shard's share is far off.
    # (Guards the spread tests against a ring that ignores vnodes.)
    shares = Ring(8, vnodes=4).shares()
    assert max(abs(s * 8 - 1) for s in shares) > 0.2


def test_shard_of_is_shard_at_fid_key() -> None:
    rng = random.Random(7)
    fids = [Fid(FID_SEQ_NORMAL + rng.randrange(1000), rng.randrange(1 << 32), rng.randrange(3))
            for _ in range(20_000)]
    ring = Ring(8)
    expected = [ring.shard_at(fid_key(f)) for f in fids]
    assert [ring.shard_of(f) for f in fids] == expected
    assert ring.shard_of_many(fids) == expected
    assert set(expected) == set(range(8))


# ---------------------------------------------------- ring semantics


def test_key_goes_to_the_next_vnode_clockwise_and_wraps() -> None:
    ring = Ring(2, vnodes=4)
    points = sorted((p, k) for k in range(2) for p in vnode_positions(k, 4))
    # In this ring the lowest and highest vnodes belong to different shards,
    # so a wrong wrap-around is visible.
    assert points[0][1] != points[-1][1]
    for (pos, owner), (_, next_owner) in zip(points, points[1:] + points[:1], strict=True):
        assert ring.shard_at(pos) == owner
        if pos < MAX_KEY:
            assert ring.shard_at(pos + 1) == next_owner
    first_owner = points[0][1]
    assert ring.shard_at(0) == first_owner
    assert ring.shard_at(MAX_KEY) == first_owner
    assert ring.shard_at(points[-1][0] + 1) == first_owner


def test_a_shards_vnodes_do_not_depend_on_the_shard_count() -> None:
    assert vnode_positions(2, 16) == vnode_positions(2, 16)
    assert vnode_positions(2, 64)[:16] == vnode_positions(2, 16)
    for shards in (3, 5, 40):
        ring = Ring(shards, vnodes=16)
        for pos in vnode_positions(2, 16):
            assert ring.shard_at(pos) == 2


def test_mapping_is_pinned_across_code_versions() -> None:
    """A change here re-routes FIDs of a running cluster: bump HASH_NAME
    and write a migration instead of editing these values."""
    assert HASH_NAME == "blake2b64-shake128-v1"
    assert DEFAULT_VNODES == 4096
    # The scheme, written out independently of hsm.ring:
    # FID key = BLAKE2b-64(person "hsm-fid-key") of struct lu_fid, little-endian.
    lu_fid = bytes.fromhex("0004000002000000" "01000000" "00000000")  # [0x200000400:0x1:0x0]
    assert Fid.parse("[0x200000400:0x1:0x0]").pack() == lu_fid
    key = hashlib.blake2b(lu_fid, digest_size=8, person=b"hsm-fid-key").digest()
    assert fid_key(Fid.parse("[0x200000400:0x1:0x0]")) == int.from_bytes(key, "big") == 0x8164E8D58CF77347
    assert fid_key(Fid.parse("[0x200000400:0x2:0x0]")) == 0x6D9D80B890201408
    # vnode i of shard k = 8-byte big-endian word i of SHAKE-128("hsm-ring/shard-<k>").
    stream = hashlib.shake_128(b"hsm-ring/shard-0").digest(24)
    assert vnode_positions(0, 3) == struct.unpack(">3Q", stream)
    assert vnode_positions(0, 3) == (0xB711001A6E454A1A, 0xAAFF520BD7FBDDE3, 0x3703AC2161D87F4B)
    assert vnode_positions(7, 2) == (0x7B43AE7B358B0D70, 0xAB487BF47F8F93B8)
    fids = [
        "[0x200000400:0x1:0x0]",
        "[0x200000400:0x2:0x0]",
        "[0x200000401:0x1f:0x0]",
        "[0x280000bd1:0x2a5:0x1]",
        "[0x1:0x0:0x0]",
    ]
    # the largest FID, built directly: llapi_fid_parse refuses sequence 2^64-1 (ERANGE)
    pinned = [Fid.parse(f) for f in fids] + [Fid(2**64 - 1, 2**32 - 1, 2**32 - 1)]
    assert [Ring(3).shard_of(f) for f in pinned] == [1, 0, 2, 0, 0, 0]
    assert [Ring(8).shard_of(f) for f in pinned] == [5, 0, 2, 6, 4, 0]


CHILD = """
import json, sys
from hsm.ring import Ring
from hsm.fid import Fid
job = json.load(sys.stdin)
ring = Ring.from_config(job["ring"])
json.dump({"probe": hash("probe"), "shards": [ring.shard_of(Fid.parse(f)) for f in job["fids"]]},
          sys.stdout)
"""


def test_same_fid_same_shard_in_every_process(tmp_path: Path) -> None:
    rng = random.Random(99)
    fids = [Fid(FID_SEQ_NORMAL + rng.randrange(64), rng.randrange(1, SEQ_WIDTH), 0) for _ in range(3000)]
    ring = Ring(8)
    expected = [ring.shard_of(f) for f in fids]
    # Each child rebuilds the ring from its stored config and maps the FIDs
    # given as text, as another replica would, under its own string-hash seed.
    job = json.dumps({"ring": ring.to_config(), "fids": [str(f) for f in fids]})
    probes = set()
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", CHILD], input=job, capture_output=True, text=True,
                             env=dict(os.environ, PYTHONHASHSEED=seed), cwd=tmp_path, timeout=60,
                             check=False)
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        probes.add(result["probe"])
        assert result["shards"] == expected, f"PYTHONHASHSEED={seed} maps FIDs differently"
    # The children really had different Python hashes (a ring built on
    # Python's hash() would have failed above).
    assert len(probes) == 2


# ------------------------------------------------------- adding shards


@pytest.mark.parametrize("shards", [3, 8, 16])
def test_adding_a_shard_moves_about_one_share_all_to_the_new_shard(
    random_keys: list[int], shards: int
) -> None:
    keys = random_keys[:200_000]
    old = Ring(shards)
    new = old.with_shard_added()
    assert (new.shards, new.vnodes, new.version) == (shards + 1, old.vnodes, old.version + 1)
    moved_to = Counter(n for o, n in zip(map(old.shard_at, keys), map(new.shard_at, keys), strict=True)
                       if o != n)
    assert set(moved_to) == {shards}, f"FIDs moved between old shards: {moved_to}"
    expected = len(keys) / (shards + 1)
    assert 0.75 * expected <= moved_to[shards] <= 1.25 * expected, (
        f"{shards}->{shards + 1} shards moved {moved_to[shards]} of {len(keys)} FIDs, expected ~{expected:.0f}"
    )


@settings(max_examples=40, deadline=None)
@given(
    shards=st.integers(1, 40),
    added=st.integers(1, 4),
    vnodes=st.integers(1, 64),
    fids=st.lists(fids_st, min_size=1, max_size=200),
)
def test_growing_the_ring_only_moves_fids_to_new_shards(
    shards: int, added: int, vnodes: int, fids: list[Fid]
) -> None:
    old = Ring(shards, vnodes=vnodes)
    new = old.with_shard_added(added)
    ranges = old.moved_ranges(new)
    for fid in fids:
        before, after = old.shard_of(fid), new.shard_of(fid)
        key = fid_key(fid)
        hit = [r for r in ranges if key in r]
        if before == after:
            assert hit == []
        else:
            assert after >= shards, f"{fid} moved from shard {before} to old shard {after}"
            assert len(hit) == 1 and (hit[0].old_shard, hit[0].new_shard) == (before, after)
    # The moved ranges are exactly what the new shards own.
    moved = sum(r.size for r in ranges) / 2**64
    assert moved == pytest.approx(sum(new.shares()[shards:]), abs=1e-9)
    assert all(r.new_shard >= shards and r.old_shard < shards for r in ranges)
    assert all(a.last < b.first for a, b in zip(ranges, ranges[1:], strict=False))


def test_moved_ranges_of_identical_rings_is_empty() -> None:
    assert Ring(5, vnodes=32).moved_ranges(Ring(5, vnodes=32, version=9)) == ()


def test_adding_shards_in_one_step_moves_each_fid_once(random_keys: list[int]) -> None:
    keys = random_keys[:100_000]
    r8 = Ring(8)
    r16 = r8.with_shard_added(8)
    assert (r16.shards, r16.version) == (16, 2)
    moved = [new for old, new in zip(map(r8.shard_at, keys), map(r16.shard_at, keys), strict=True)
             if old != new]
    assert all(s >= 8 for s in moved)
    assert 0.4 * len(keys) <= len(moved) <= 0.6 * len(keys)
    # Growing one shard at a time ends in the same ring mapping.
    step = r8
    for _ in range(8):
        step = step.with_shard_added()
    assert step == Ring(16, version=9)
    assert [step.shard_at(k) for k in keys[:5000]] == [r16.shard_at(k) for k in keys[:5000]]


# --------------------------------------------------------------- config


@settings(max_examples=60, deadline=None)
@given(shards=st.integers(1, 64), vnodes=st.integers(1, 256), version=st.integers(1, 1 << 40))
def test_config_round_trip_rebuilds_an_identical_ring(shards: int, vnodes: int, version: int) -> None:
    ring = Ring(shards, vnodes=vnodes, version=version)
    config = ring.to_config()
    assert config == {"shards": shards, "vnodes": vnodes, "hash": HASH_NAME, "version": version}
    stored = json.loads(json.dumps(config))  # as kept in the replicated cluster config
    again = Ring.from_config(stored)
    assert again == ring
    assert again._positions == ring._positions and again._owners == ring._owners
    assert again.shares() == ring.shares()


def test_ring_is_immutable() -> None:
    ring = Ring(4, vnodes=8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ring.shards = 5  # type: ignore[misc]
    grown = ring.with_shard_added()
    assert ring.shards == 4 and ring.version == 1 and grown.shards == 5


# ----------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shards": 0}, "shard count must be between 1 and 1000, got 0"),
        ({"shards": -3}, "shard count must be between 1 and 1000"),
        ({"shards": MAX_SHARDS + 1, "vnodes": 1}, "shard count must be between 1 and 1000, got 1001"),
        ({"shards": True}, "shard count must be an integer, got True"),
        ({"shards": 8.0}, "shard count must be an integer, got 8.0"),
        ({"shards": "8"}, "shard count must be an integer, got '8'"),
        ({"shards": 8, "vnodes": 0}, "vnodes per shard must be between 1 and 65536, got 0"),
        ({"shards": 8, "version": 0}, "version must be between 1"),
        ({"shards": 8, "hash": "md5"}, "unknown ring hash scheme 'md5'"),
        ({"shards": 300}, "use at most 3495 vnodes per shard"),
    ],
)
def test_bad_ring_arguments_are_refused_clearly(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(RingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Ring(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"shards": 8, "vnodes": 16, "hash": HASH_NAME}, "ring config lacks version"),
        ({"shards": 8, "vnodes": 16, "hash": HASH_NAME, "version": 1, "seed": 3}, "unknown key.* seed"),
        ({"shards": 8, "vnodes": 16, "hash": "crc32", "version": 1}, "unknown ring hash scheme 'crc32'"),
        ({"shards": 8, "vnodes": 16, "hash": 5, "version": 1}, "ring hash must be a string"),
        ({"shards": "8", "vnodes": 16, "hash": HASH_NAME, "version": 1}, "shard count must be an integer"),
        ({"shards": 8, "vnodes": 16.5, "hash": HASH_NAME, "version": 1}, "vnodes per shard must be an integer"),
        ([8, 16], "ring config must be a mapping"),
    ],
)
def test_bad_stored_config_is_refused_clearly(config: object, message: str) -> None:
    before = json.dumps(config)
    with pytest.raises(RingError, match=message):
        Ring.from_config(config)  # type: ignore[arg-type]
    assert json.dumps(config) == before


def test_bad_lookups_are_refused_clearly() -> None:
    ring = Ring(3, vnodes=8)
    with pytest.raises(TypeError, match=r"shard_of needs a Fid, got str .*Fid.parse"):
        ring.shard_of("[0x200000400:0x1:0x0]")  # type: ignore[arg-type]
    with pytest.raises(RingError, match="ring position must be between 0 and 2\\*\\*64-1"):
        ring.shard_at(-1)
    with pytest.raises(RingError, match="ring position"):
        ring.shard_at(1 << 64)
    with pytest.raises(RingError, match="a packed FID is 16 bytes"):
        packed_key(b"\x00" * 15)
    with pytest.raises(RingError, match="cannot add 1 shard"):
        Ring(MAX_SHARDS, vnodes=1).with_shard_added()
    with pytest.raises(RingError, match="number of shards to add must be between 1"):
        ring.with_shard_added(0)
    with pytest.raises(TypeError, match="moved_ranges needs a Ring"):
        ring.moved_ranges({"shards": 4})  # type: ignore[arg-type]
