"""The garbage collector settings of the replicas and agentd (hsm/gctune.py)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from hsm import gctune


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    hooked = gctune.PAUSE_CLOCK.hook in gc.callbacks
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
        if not hooked and gctune.PAUSE_CLOCK.hook in gc.callbacks:
            gc.callbacks.remove(gctune.PAUSE_CLOCK.hook)


def test_unset_or_blank_gives_the_service_thresholds() -> None:
    assert gctune.thresholds(None) == gctune.thresholds("") == gctune.thresholds("  ") == (50_000, 50, 200)


def test_thresholds_from_the_environment() -> None:
    assert gctune.thresholds("700,10,10") == (700, 10, 10)
    assert gctune.thresholds("0,0,0") == (0, 0, 0)


@pytest.mark.parametrize("text", ["700,10", "1,2,3,4", "a,b,c", "-1,10,10", "700,,10", "7e2,10,10", "2000000000,1,1"])
def test_malformed_thresholds_are_refused_saying_what_is_wanted(text: str) -> None:
    with pytest.raises(ValueError, match="three whole numbers from 0 to 10\\*\\*9"):
        gctune.thresholds(text)


def test_tune_sets_the_thresholds_and_freezes_what_exists(restored_gc: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(gctune.ENV, raising=False)
    assert gctune.tune_for_service() == gctune.SERVICE_THRESHOLDS
    assert gc.get_threshold() == gctune.SERVICE_THRESHOLDS
    assert gc.get_freeze_count() > 1000  # the modules, classes and functions imported so far


def test_a_malformed_setting_warns_and_keeps_the_service_thresholds(
        restored_gc: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(gctune.ENV, "lots")
    assert gctune.tune_for_service() == gctune.SERVICE_THRESHOLDS
    assert "HSM_GC_THRESHOLDS='lots': three whole numbers" in caplog.text


def test_cyclic_garbage_is_still_collected(restored_gc: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the collector is for: cycles made after tuning go with the next
    young collection (forced here: a real one comes after 50,000 objects)."""
    monkeypatch.delenv(gctune.ENV, raising=False)
    gctune.tune_for_service()

    class Node:
        def __init__(self) -> None:
            self.other: Node | None = None

    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    assert gone() is not None  # a cycle: reference counting alone keeps it
    gc.collect(0)
    assert gone() is None


def test_the_pauses_are_recorded_and_exported(restored_gc: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """What an admin graphs: hsm_gc_pause_seconds, per generation, on the
    replicas' and agentd's exporters (their Exporter base)."""
    from prometheus_client import generate_latest

    from hsm.metrics import GC_PAUSES, Exporter

    monkeypatch.delenv(gctune.ENV, raising=False)
    gctune.tune_for_service()
    before = sum(GC_PAUSES.buckets[2])
    gc.collect()
    gc.collect()
    assert sum(GC_PAUSES.buckets[2]) == before + 2
    gctune.watch_pauses()  # twice: still one hook
    assert gc.callbacks.count(gctune.PAUSE_CLOCK.hook) == 1
    text = generate_latest(Exporter().registry).decode()
    count = next(line for line in text.splitlines() if line.startswith('hsm_gc_pause_seconds_count{generation="2"}'))
    assert float(count.split()[-1]) == sum(GC_PAUSES.buckets[2]) >= 2
    assert 'hsm_gc_pause_seconds_bucket{generation="0",le="0.001"}' in text
