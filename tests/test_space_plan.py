"""The space manager's pure part (spaced.plan): LRU order, watermark
hysteresis, archive-first when the candidates run out, the bound on
outstanding archives, retries, the heaps' cost; and, with hypothesis,
random event sequences in which a release is never produced for a dirty,
unarchived, released, never_release, lost or busy file, nor an archive
asked twice while one is outstanding; and a simulated tree that the plan
always brings below the low watermark when its files allow it."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from hsm.hsmflags import HS
from spaced.plan import (
    Archive,
    ArchiveEnded,
    ArchiveRequested,
    FileFacts,
    Gone,
    Release,
    ReleaseDone,
    ReleaseRefused,
    Seen,
    SpacePlan,
    archivable,
    check_watermarks,
    releasable,
)

CLEAN = int(HS.EXISTS | HS.ARCHIVED)  # archived, not dirty: a release candidate
DIRTY = int(HS.EXISTS | HS.ARCHIVED | HS.DIRTY)
RELEASED = int(HS.EXISTS | HS.ARCHIVED | HS.RELEASED)
CAP = 1000  # the capacity of the trees below; files hold 100 bytes


def facts(flags: int, last: float = 0.0, blocks: int = 100, busy: bool = False) -> FileFacts:
    return FileFacts(flags, blocks, blocks, last, last, busy)


def plan_with(files: dict[str, FileFacts], high: float = 0.9, low: float = 0.5, **kw: object) -> SpacePlan:
    plan = SpacePlan(high, low, **kw)  # type: ignore[arg-type]
    for key, f in files.items():
        plan.seen(key, f, 0.0)
    return plan


def keys(items: tuple[Release, ...] | tuple[Archive, ...]) -> list[str]:
    return [i.key for i in items]


# -- plain tests --------------------------------------------------------------


def test_releases_least_recently_used_first_until_below_low() -> None:
    order = [7, 2, 9, 0, 5, 1, 8, 3, 6, 4]  # seen in this order, last used at these times
    plan = plan_with({f"f{t}": facts(CLEAN, last=float(t)) for t in order})
    r = plan.round(100.0, 950, CAP)
    # 950 -> below 500: 5 files of 100 bytes, the 5 least recently used, in that order
    assert keys(r.releases) == ["f0", "f1", "f2", "f3", "f4"]
    assert r.started and r.draining and r.projected == 450 and r.short == 0 and not r.archives
    assert plan.pending_releases == 5 and plan.release_candidates == 5


def test_last_use_is_the_atime_or_the_later_mtime() -> None:
    plan = SpacePlan(0.9, 0.5)
    plan.seen("read-lately", FileFacts(CLEAN, 100, 100, atime=50.0, mtime=1.0), 0.0)
    plan.seen("written-lately", FileFacts(CLEAN, 100, 100, atime=1.0, mtime=40.0), 0.0)  # noatime mount
    plan.seen("old", FileFacts(CLEAN, 100, 100, atime=10.0, mtime=5.0), 0.0)
    r = plan.round(100.0, 950, CAP)
    assert keys(r.releases) == ["old", "written-lately", "read-lately"]


def test_nothing_between_the_watermarks_unless_a_drain_started_above_high() -> None:
    plan = plan_with({"a": facts(CLEAN, 1), "b": facts(CLEAN, 2)})
    r = plan.round(10.0, 800, CAP)  # between low (500) and high (900), no drain: nothing
    assert not r.draining and not r.releases and not plan.draining
    r = plan.round(11.0, 950, CAP)  # above high: a drain, and all it can do
    assert r.started and keys(r.releases) == ["a", "b"] and r.projected == 750 and r.short == 251
    for k in ("a", "b"):
        plan.release_done(k, 12.0)
    plan.seen("c", facts(CLEAN, 3), 13.0)  # a new candidate (say an archive ended)
    r = plan.round(14.0, 750, CAP)  # between the watermarks, but the drain is on: it goes on
    assert not r.started and r.draining and keys(r.releases) == ["c"]
    plan.release_done("c", 15.0)
    plan.seen("d", facts(CLEAN, 4), 15.0)
    r = plan.round(16.0, 450, CAP)  # below low: the drain ends
    assert not r.draining and not r.releases and not plan.draining
    r = plan.round(17.0, 850, CAP)  # between again, no drain: nothing, though "d" is a candidate
    assert not r.releases and not r.draining and plan.release_candidates == 1


def test_below_low_means_strictly_below() -> None:
    plan = plan_with({f"f{i}": facts(CLEAN, i) for i in range(5)})
    r = plan.round(1.0, 1000, CAP)
    assert len(r.releases) == 5 and r.projected == 500 and r.short == 1, "500 of 1000 is not below 50%"


def test_archives_the_least_recently_used_files_when_the_candidates_run_out() -> None:
    plan = plan_with({
        "clean1": facts(CLEAN, 50), "clean2": facts(CLEAN, 60),
        "new1": facts(0, 1), "new2": facts(int(HS.EXISTS), 3), "dirty": facts(DIRTY, 2), "new3": facts(0, 40),
        "noarchive": facts(int(HS.NOARCHIVE), 0), "norelease": facts(int(HS.NORELEASE), 0),
        "norelease-archived": facts(CLEAN | int(HS.NORELEASE), 0), "lost": facts(CLEAN | int(HS.LOST), 0),
        "released": facts(RELEASED, 0, blocks=0), "busy": facts(0, 0, busy=True), "empty": facts(0, 0, blocks=0),
    })
    r = plan.round(100.0, 950, CAP)
    assert keys(r.releases) == ["clean1", "clean2"]
    # 750 left, 251 to cover: the 3 least recently used files an archive would make releasable
    assert keys(r.archives) == ["new1", "dirty", "new2"]
    assert r.short == 0 and plan.outstanding == 3 and plan.outstanding_bytes == 300
    r = plan.round(101.0, 750, CAP)  # the 3 outstanding cover what is missing: nothing more
    assert not r.releases and not r.archives and r.short == 0
    plan.seen("new1", facts(CLEAN, 1), 102.0)  # archived: its archive is done, it is a candidate
    assert plan.outstanding == 2 and not plan.is_outstanding("new1")
    r = plan.round(103.0, 750, CAP)
    assert keys(r.releases) == ["new1"] and not r.archives


def test_never_more_archives_outstanding_than_the_bound_nor_twice_one_file() -> None:
    plan = plan_with({f"u{i}": facts(0, i) for i in range(10)}, max_archives=2)
    asked: list[str] = []
    r = plan.round(1.0, 950, CAP)
    assert keys(r.archives) == ["u0", "u1"] and r.short == 251
    asked += keys(r.archives)
    r = plan.round(2.0, 950, CAP)
    assert not r.archives, "two outstanding: no more, and not those again"
    plan.archive_ended("u0", True, 3.0)
    plan.seen("u0", facts(CLEAN, 0), 3.0)
    r = plan.round(4.0, 950, CAP)
    assert keys(r.releases) == ["u0"] and keys(r.archives) == ["u2"]
    asked += keys(r.archives)
    assert len(asked) == len(set(asked)) and plan.outstanding == 2


def test_a_failed_archive_is_asked_for_again_after_the_retry_time() -> None:
    plan = plan_with({"u": facts(0, 1)}, retry_after=60.0)
    assert keys(plan.round(0.0, 950, CAP).archives) == ["u"]
    plan.archive_ended("u", False, 10.0)
    assert plan.totals.archives_failed == 1 and plan.outstanding == 0
    r = plan.round(11.0, 950, CAP)
    assert not r.archives and r.short > 0
    assert not plan.round(69.9, 950, CAP).archives
    assert keys(plan.round(70.0, 950, CAP).archives) == ["u"]


def test_an_archive_never_heard_of_counts_as_failed_after_its_timeout() -> None:
    plan = plan_with({"u": facts(0, 1)}, archive_timeout=100.0)
    assert keys(plan.round(0.0, 950, CAP).archives) == ["u"]
    assert not plan.round(99.0, 950, CAP).archives
    assert keys(plan.round(100.0, 950, CAP).archives) == ["u"]
    assert plan.totals.archives_failed == 1


def test_a_refused_release_waits_for_the_retry_time_and_a_done_one_frees_its_blocks() -> None:
    plan = plan_with({"a": facts(CLEAN, 1), "b": facts(CLEAN, 2)}, retry_after=30.0)
    assert plan.used_bytes == 200
    r = plan.round(0.0, 950, CAP)
    assert keys(r.releases) == ["a", "b"]
    plan.release_done("a", 1.0)
    plan.release_refused("b", 1.0)
    assert plan.used_bytes == 100 and plan.facts("a") == FileFacts(RELEASED, 0, 100, 1, 1)
    assert plan.totals.releases_done == 1 and plan.totals.releases_refused == 1
    plan.seen("b", facts(CLEAN, 2), 2.0)  # looks releasable again: not before its retry time
    assert not plan.round(5.0, 850, CAP).releases
    assert keys(plan.round(31.0, 850, CAP).releases) == ["b"]


def test_pending_releases_count_as_freed() -> None:
    plan = plan_with({f"f{i}": facts(CLEAN, i) for i in range(10)})
    assert len(plan.round(0.0, 950, CAP).releases) == 5
    # the usage is measured before the releases took effect: they are not asked twice
    r = plan.round(1.0, 950, CAP)
    assert not r.releases and not r.draining and r.projected == 450


def test_a_file_gone_is_forgotten_and_a_busy_or_empty_one_is_never_touched() -> None:
    plan = plan_with({"a": facts(CLEAN, 1), "b": facts(CLEAN, 2, busy=True), "c": facts(CLEAN, 3, blocks=0),
                      "d": facts(0, 4, busy=True), "e": facts(0, 5)})
    plan.gone("a", 1.0)
    plan.gone("nothing", 1.0)
    assert plan.files == 4 and plan.release_candidates == 0 and plan.archive_candidates == 1
    r = plan.round(2.0, 950, CAP)
    assert not r.releases and keys(r.archives) == ["e"]
    plan.gone("e", 3.0)
    assert plan.outstanding == 0


def test_seen_released_or_archived_clean_ends_what_was_pending() -> None:
    plan = plan_with({"a": facts(CLEAN, 1), "u": facts(0, 2)})
    r = plan.round(0.0, 950, CAP)
    assert keys(r.releases) == ["a"] and keys(r.archives) == ["u"]
    plan.seen("a", facts(RELEASED, 1, blocks=0), 1.0)  # released (inotify saw it first)
    assert plan.pending_releases == 0 and plan.used_bytes == 100
    plan.seen("u", facts(DIRTY, 2), 1.0)  # not archived clean: still outstanding
    assert plan.is_outstanding("u")
    plan.seen("u", facts(CLEAN, 2), 2.0)
    assert not plan.is_outstanding("u") and plan.totals.archives_done == 1
    plan.archive_ended("u", True, 3.0)  # the event log says it too: counted once
    assert plan.totals.archives_done == 1


def test_an_archive_someone_else_asked_for_counts_as_outstanding() -> None:
    plan = plan_with({"u": facts(0, 1), "v": facts(0, 2)})
    plan.apply(ArchiveRequested("u"), 0.0)
    r = plan.round(1.0, 950, CAP)
    assert keys(r.archives) == ["v"], "u is outstanding already"


def test_a_round_costs_what_it_uses_not_the_index() -> None:
    plan = SpacePlan(0.50001, 0.5)
    n = 20_000
    for i in range(n):
        plan.seen(f"f{i}", facts(CLEAN, float(i)), 0.0)
    for i in range(0, n, 2):  # changes: stale heap entries
        plan.seen(f"f{i}", facts(CLEAN, float(n + i)), 1.0)
    capacity = 100 * n * 2
    r = plan.round(2.0, int(0.5 * capacity) + 150, capacity)
    assert keys(r.releases) == ["f1", "f3"]
    assert r.examined <= 6, "the stale entries of f0 and f2 and the two it used"
    assert plan.queued_entries <= 2 * plan.release_candidates + 64


def test_would_act_says_whether_a_round_would_do_something() -> None:
    plan = plan_with({"a": facts(CLEAN, 1)}, max_archives=1)
    assert not plan.would_act(800, CAP)  # between, no drain
    assert plan.would_act(950, CAP)
    plan.round(0.0, 950, CAP)
    assert not plan.would_act(850, CAP)  # "a" is pending; nothing else
    plan.seen("u", facts(0, 2), 1.0)
    assert plan.would_act(850, CAP)  # the drain goes on: an archive would be asked
    plan.round(1.0, 850, CAP)
    assert not plan.would_act(850, CAP)  # one outstanding, the bound
    assert not plan.would_act(850, 0)


@pytest.mark.parametrize(("high", "low", "message"), [
    (0.7, 0.9, "must be below"), (0.5, 0.5, "must be below"), (1.5, 0.5, "high watermark must be in"),
    (0.9, 0.0, "low watermark must be in"), (0.9, -0.1, "low watermark"), (float("nan"), 0.5, "high"),
])
def test_bad_watermarks_are_refused(high: float, low: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_watermarks(high, low)
    with pytest.raises(ValueError, match=message):
        SpacePlan(high, low)


def test_bad_rounds_and_settings_are_refused() -> None:
    plan = SpacePlan(0.9, 0.5)
    with pytest.raises(ValueError, match="capacity"):
        plan.round(0.0, 10, 0)
    with pytest.raises(ValueError, match="used"):
        plan.round(0.0, -1, 10)
    with pytest.raises(ValueError, match="max archives"):
        SpacePlan(0.9, 0.5, max_archives=-1)
    with pytest.raises(ValueError, match="negative"):
        FileFacts(0, -1)


def test_the_flag_rules() -> None:
    assert releasable(CLEAN) and not releasable(DIRTY) and not releasable(RELEASED) and not releasable(0)
    assert not releasable(CLEAN | int(HS.NORELEASE)) and not releasable(CLEAN | int(HS.LOST))
    assert archivable(0) and archivable(int(HS.EXISTS)) and archivable(DIRTY) and not archivable(CLEAN)
    assert not archivable(int(HS.NOARCHIVE)) and not archivable(RELEASED) and not archivable(int(HS.NORELEASE))


# -- random event sequences ----------------------------------------------------

KEYS = ("a", "b", "c", "d", "e")
RETRY = 5.0
TIMEOUT = 40.0
MAX_ARCHIVES = 2
# every combination of the 7 flags, sane or not, and often the ones that matter most
any_flags = st.one_of(
    st.sampled_from([CLEAN, CLEAN, 0, int(HS.EXISTS), DIRTY, RELEASED, CLEAN | int(HS.NORELEASE),
                     CLEAN | int(HS.LOST), int(HS.NOARCHIVE)]),
    st.integers(min_value=0, max_value=0x7F))


class PlanMachine(RuleBasedStateMachine):
    """Random events, in any order, with a model of what the plan was told;
    every instruction a round returns is checked against it."""

    def __init__(self) -> None:
        super().__init__()
        self.plan = SpacePlan(0.6, 0.3, max_archives=MAX_ARCHIVES, retry_after=RETRY, archive_timeout=TIMEOUT)
        self.now = 0.0
        self.model: dict[str, FileFacts] = {}  # what the plan was last told of each file
        self.pending: set[str] = set()  # releases returned, not answered
        self.outstanding: dict[str, float] = {}  # archives returned (or requested), until their deadline
        self.release_retry: dict[str, float] = {}
        self.archive_retry: dict[str, float] = {}
        self.released: list[tuple[str, FileFacts]] = []

    def _forget(self, key: str) -> None:
        self.model.pop(key, None)
        self.pending.discard(key)
        self.outstanding.pop(key, None)
        self.release_retry.pop(key, None)
        self.archive_retry.pop(key, None)

    @initialize(data=st.data())
    def a_tree(self, data: st.DataObject) -> None:
        for key in KEYS:
            if data.draw(st.booleans()):
                self.seen(key, data.draw(any_flags), data.draw(st.sampled_from([100, 250])),
                          data.draw(st.integers(0, 20)), False)

    @rule(key=st.sampled_from(KEYS), flags=any_flags, blocks=st.sampled_from([0, 100, 250]),
          last=st.integers(0, 20), busy=st.sampled_from([False, False, False, True]))
    def seen(self, key: str, flags: int, blocks: int, last: int, busy: bool) -> None:
        f = FileFacts(flags, blocks, blocks, float(last), float(last) / 2, busy)
        self.plan.apply(Seen(key, f), self.now)
        self.model[key] = f
        if flags & HS.ARCHIVED and not flags & HS.DIRTY:
            self.outstanding.pop(key, None)
        if flags & HS.RELEASED:
            self.pending.discard(key)

    @rule(key=st.sampled_from(KEYS), last=st.integers(0, 20))
    def archived_clean(self, key: str, last: int) -> None:
        self.seen(key, CLEAN, 100, last, False)

    @rule(key=st.sampled_from(KEYS))
    def gone(self, key: str) -> None:
        self.plan.apply(Gone(key), self.now)
        self._forget(key)

    @rule(key=st.sampled_from(KEYS))
    def archive_requested(self, key: str) -> None:
        self.plan.apply(ArchiveRequested(key), self.now)
        if key in self.model and not self._outstanding(key):
            self.outstanding[key] = self.now + TIMEOUT

    @rule(key=st.sampled_from(KEYS), ok=st.booleans())
    def archive_ended(self, key: str, ok: bool) -> None:
        self.plan.apply(ArchiveEnded(key, ok), self.now)
        if key in self.model:
            self.outstanding.pop(key, None)
            if not ok:
                self.archive_retry[key] = self.now + RETRY

    @rule(key=st.sampled_from(KEYS))
    def release_done(self, key: str) -> None:
        self.plan.apply(ReleaseDone(key), self.now)
        if key in self.model:
            f = self.model[key]
            self.model[key] = dataclasses.replace(f, flags=f.flags | int(HS.RELEASED), blocks_bytes=0)
            self.pending.discard(key)

    @rule(key=st.sampled_from(KEYS))
    def release_refused(self, key: str) -> None:
        self.plan.apply(ReleaseRefused(key), self.now)
        if key in self.model:
            self.pending.discard(key)
            self.release_retry[key] = self.now + RETRY

    @rule(dt=st.sampled_from([0.0, 1.0, 3.0, 10.0, 50.0]))
    def tick(self, dt: float) -> None:
        self.now += dt

    def _outstanding(self, key: str) -> bool:
        return key in self.outstanding and self.now < self.outstanding[key]

    @rule(used=st.one_of(st.integers(601, 1000), st.integers(0, 1000)))
    def round(self, used: int) -> None:
        was_draining = self.plan.draining
        before = sum(1 for k in self.outstanding if self._outstanding(k))
        r = self.plan.round(self.now, used, 1000)
        if not (was_draining or used > 600):
            assert not r.releases and not r.archives, "between the watermarks without a drain: nothing"
        for rel in r.releases:
            f = self.model.get(rel.key)
            assert f is not None, f"release of {rel.key}, which is gone"
            assert releasable(f.flags), f"release of {rel.key} with flags {f.flags:#x}"
            assert not f.flags & (HS.DIRTY | HS.RELEASED | HS.NORELEASE | HS.LOST)
            assert f.flags & HS.ARCHIVED and f.blocks_bytes > 0 and not f.busy
            assert rel.key not in self.pending, f"second release of {rel.key} before the first was answered"
            assert self.now >= self.release_retry.get(rel.key, 0.0), f"{rel.key} refused, retried too early"
            assert rel.bytes == f.blocks_bytes
            self.pending.add(rel.key)
            self.released.append((rel.key, f))
        assert len(r.archives) <= max(0, MAX_ARCHIVES - before)
        for arc in r.archives:
            f = self.model.get(arc.key)
            assert f is not None, f"archive of {arc.key}, which is gone"
            assert archivable(f.flags) and f.blocks_bytes > 0 and not f.busy
            assert not self._outstanding(arc.key), f"archive of {arc.key} asked twice while outstanding"
            assert self.now >= self.archive_retry.get(arc.key, 0.0), f"{arc.key} failed, retried too early"
            assert arc.key not in self.pending
            self.outstanding[arc.key] = self.now + TIMEOUT
        assert len({a.key for a in r.archives}) == len(r.archives)
        assert len({x.key for x in r.releases}) == len(r.releases)

    @invariant()
    def index_matches(self) -> None:
        assert self.plan.files == len(self.model)
        assert self.plan.used_bytes == sum(f.blocks_bytes for f in self.model.values())
        assert self.plan.pending_releases == len(self.pending)
        assert 0 <= self.plan.release_candidates <= len(self.model)
        assert self.plan.release_candidate_bytes >= 0

    @precondition(lambda self: bool(self.pending))
    @rule(data=st.data())
    def answer_a_release(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.pending)))
        if data.draw(st.booleans()):
            self.release_done(key)
        else:
            self.release_refused(key)


TestPlanMachine = PlanMachine.TestCase
TestPlanMachine.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)


# -- a simulated tree: the plan gets it below low whenever its files allow -------


tree_files = st.lists(
    st.tuples(st.sampled_from([0, int(HS.EXISTS), CLEAN, DIRTY, RELEASED, int(HS.NOARCHIVE),
                               CLEAN | int(HS.NORELEASE), CLEAN | int(HS.LOST), int(HS.NORELEASE)]),
              st.integers(0, 300), st.integers(0, 100), st.booleans()),
    min_size=1, max_size=25)


@settings(max_examples=200, deadline=None)
@given(files=tree_files, high=st.sampled_from([0.6, 0.8, 0.9]), low=st.sampled_from([0.2, 0.4, 0.5]),
       max_archives=st.integers(1, 4), fail_every=st.sampled_from([0, 0, 2, 3]))
def test_a_simulated_tree_ends_below_low_when_its_files_allow_it(
        files: list[tuple[int, int, int, bool]], high: float, low: float, max_archives: int, fail_every: int) -> None:
    """The plan's instructions carried out by a faithful tree (releases as
    simfs does them, archives that end one step later, every
    *fail_every*-th one failing): after enough rounds the usage is below
    low iff what can be freed allows it; no file is ever released that
    simfs would refuse, and nothing is released when the tree starts below
    high."""
    tree = {f"f{i}": FileFacts(flags, 0 if flags & HS.RELEASED else blocks, blocks, last, last, busy)
            for i, (flags, blocks, last, busy) in enumerate(files)}
    used0 = sum(f.blocks_bytes for f in tree.values())
    capacity = max(1, int(used0 / (high + 0.05))) if used0 else 1000
    if used0 <= high * capacity:
        capacity = max(1, used0)  # full
    plan = SpacePlan(high, low, max_archives=max_archives, retry_after=1.0)
    for key, f in tree.items():
        plan.seen(key, f, 0.0)
    freeable = sum(f.blocks_bytes for f in tree.values()
                   if f.blocks_bytes and not f.busy and (releasable(f.flags) or archivable(f.flags)))
    now, archiving, n_archives = 0.0, [], 0
    started_above_high = used0 > high * capacity
    for _ in range(200):
        now += 1.0
        for key in archiving:  # the archives asked for last round end now
            n_archives += 1
            ok = not (fail_every and n_archives % fail_every == 0)
            if ok:
                f = tree[key]
                tree[key] = dataclasses.replace(f, flags=(f.flags | int(HS.ARCHIVED | HS.EXISTS)) & ~int(HS.DIRTY))
                plan.seen(key, tree[key], now)
            plan.archive_ended(key, ok, now)
        used = sum(f.blocks_bytes for f in tree.values())
        r = plan.round(now, used, capacity)
        if not started_above_high:
            assert not r.releases and not r.archives
        for rel in r.releases:
            f = tree[rel.key]
            assert releasable(f.flags) and not f.busy and f.blocks_bytes, "simfs would refuse it"
            tree[rel.key] = dataclasses.replace(f, flags=f.flags | int(HS.RELEASED), blocks_bytes=0)
            plan.release_done(rel.key, now)
            plan.seen(rel.key, tree[rel.key], now)
        archiving = [a.key for a in r.archives]
        if not r.draining and not archiving and not plan.outstanding:
            break
    used = sum(f.blocks_bytes for f in tree.values())
    if started_above_high and used0 - freeable < low * capacity:
        assert used < low * capacity, (used, capacity, freeable)
    if started_above_high and used < low * capacity:
        assert not plan.draining


def test_settle_ends_the_drain_once_the_releases_brought_the_usage_below_low() -> None:
    plan = plan_with({f"f{i}": facts(CLEAN, i) for i in range(3)})
    r = plan.round(0.0, 950, CAP)
    assert r.draining and len(r.releases) == 3
    assert plan.settle(950, CAP), "not done yet: the releases are pending"
    for rel in r.releases:
        plan.release_done(rel.key, 1.0)
    assert plan.settle(850, CAP), "still above low"
    assert not plan.settle(499, CAP) and not plan.draining
