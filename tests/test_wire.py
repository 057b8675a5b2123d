"""The wire vocabulary is one module's: its words match the proto, and no
other module spells them again."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hsm import wire
from hsm.fid import Fid
from hsm.v1 import types_pb2 as tpb

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [p for d in ("hsm", "coordinator", "agentd", "hsmctl", "bridge")
           for p in (ROOT / d).rglob("*.py") if "v1" not in p.parts and p.name != "wire.py"]


def test_kinds_are_the_protos() -> None:
    assert wire.KIND_NAMES == {v: k for k, v in tpb.ActionKind.items() if v}
    assert wire.kind_name(tpb.RESTORE) == "RESTORE"
    assert (wire.kind_name(0), wire.kind_name(99)) == ("UNSPECIFIED", "KIND_99")


@pytest.mark.parametrize("name, ok", [("lustre", True), ("a", True), ("fs_0-9AB", True), ("", False),
                                      ("toolongfs", False), ("fs.0", False), ("fs 0", False), (None, False)])
def test_fsnames_follow_lustres_rule(name: object, ok: bool) -> None:
    assert wire.valid_fsname(name) is ok


def test_action_ids_end_in_their_shard_and_fids_cross_the_wire_unchanged() -> None:
    assert wire.shard_of_action(42 * wire.SHARD_ID_MODULUS + 7) == 7
    f = Fid(0x200000401, 0x2A, 1)
    assert wire.fid_from_pb(wire.fid_to_pb(f)) == f and wire.fid_to_pb(f) == tpb.Fid(seq=f.seq, oid=f.oid, ver=1)


@pytest.mark.parametrize("pattern", [r'"hsm-leader"', r'"hsm-cluster-id"', r'"hsm-replica"',
                                     re.escape(r"[A-Za-z0-9_-]{1,8}"), r"\bMAX_SHARDS = \d", r"SHARD_ID_MODULUS = \d"])
def test_no_other_module_spells_the_vocabulary_again(pattern: str) -> None:
    found = [f"{p.relative_to(ROOT)}:{n}" for p in SOURCES
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if re.search(pattern, line)]
    assert found == [], f"{pattern} spelled outside hsm/wire.py: {found}"
