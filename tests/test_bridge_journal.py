"""The bridge's journal: what it read from the MDT is on disk before it acts,
survives a crash mid-write, and compacts atomically to what is still live."""

from __future__ import annotations

import os
from pathlib import Path

from bridge.core import BridgeConfig, BridgeCore
from bridge.journal import Journal
from hsm.fid import Fid
from hsm.hsmflags import HSMA
from hsm.lustre.hal import ActionItem, ActionList, build_hal, parse_hal
from tests.test_bridge_core import Res


def hal(*cookies: int, action: int = HSMA.ARCHIVE) -> bytes:
    items = tuple(ActionItem(action, Fid(0x200000400, c, 0), Fid(0x200000400, c, 0), 0, (1 << 64) - 1, c)
                  for c in cookies)
    return build_hal(ActionList("lustre", 1, items))


def test_lists_come_back_in_order_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "j"
    with Journal(path) as j:
        j.append(hal(1, 2))
        j.append(hal(3))
    assert list(Journal(path).replay()) == [hal(1, 2), hal(3)]
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_a_torn_last_record_and_a_bad_checksum_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "j"
    with Journal(path) as j:
        j.append(hal(1))
        j.append(hal(2))
        j.append(hal(3))
    data = bytearray(path.read_bytes())
    rec = len(data) // 3
    data[rec + 8 + 40] ^= 0xFF  # inside the second list's body
    path.write_bytes(bytes(data[:-10]))  # and the third torn by a crash
    assert list(Journal(path).replay()) == [hal(1)]


def test_compaction_keeps_only_live_items_and_replays_the_same(tmp_path: Path) -> None:
    path = tmp_path / "j"
    core = BridgeCore(BridgeConfig(fsnames=frozenset({"lustre"})))
    with Journal(path) as j:
        for raw in (hal(1, 2, 3), hal(4)):
            j.append(raw)
            core.on_list(0.0, raw)
        # everything goes in one batch; the coordinator refuses item 2
        core.on_tick(1.0)
        (batch,) = core._batches
        core.on_submitted(1.0, batch, [Res("CREATED", 11), Res("REJECTED", 0, 1, "no"), Res("CREATED", 31),
                                       Res("CREATED", 41)])
        core.on_action_ended(2.0, 41, "SUCCEEDED", 0)
        j.compact(core.live_lists())
        j.append(hal(5))
    cookies = [i.cookie for raw in Journal(path).replay() for i in parse_hal(raw).items]
    assert cookies == [1, 3, 5]
    assert not os.path.exists(str(path) + ".tmp")
