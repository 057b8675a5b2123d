"""The compiled build of the hot modules (mypyc, issue 12) and the pure one:
the expected one runs (a silent fallback to pure fails here), either can be
chosen, a stale build is never used, and both read and write the same
snapshots and Raft entries, including an old snapshot of the pure build."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hsm import compiled

ROOT = Path(__file__).resolve().parent.parent
OLD_SNAPSHOT = Path(__file__).parent / "data" / "snapshot-pure-35ae02f.json"


def _run(*args: str, pure: bool, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if k != compiled.PURE_ENV}
    e.update(env or {})
    if pure:
        e[compiled.PURE_ENV] = "1"
    return subprocess.run([sys.executable, *args], cwd=cwd, env=e, capture_output=True, text=True, timeout=120)


def _installed() -> bool:
    """The compiled build is installed and up to date (what runs without HSM_PURE_PYTHON)."""
    return compiled.extension_path(compiled.MODULES[0]) is not None and not compiled.stale()


def test_the_expected_build_runs() -> None:
    """Compiled wherever it can be: a C compiler works and HSM_NO_MYPYC is
    not set. A silent fallback to the pure modules (a build that failed or
    was skipped, extensions that imports do not find, stale ones) fails."""
    build = compiled.build()
    assert not build.startswith("mixed"), build
    if os.environ.get(compiled.PURE_ENV, "") not in ("", "0"):
        assert build.startswith(compiled.PURE), build
        return
    if os.environ.get(compiled.NO_BUILD_ENV, "") not in ("", "0"):
        pytest.skip(f"{compiled.NO_BUILD_ENV} is set: no compiled build expected")
    problem = compiled.compiler_problem()
    if problem is not None:
        pytest.skip(f"no compiled build expected: {problem}")
    assert build == compiled.COMPILED, (
        f"a C compiler works and {compiled.NO_BUILD_ENV} is not set, so installing compiles "
        f"{', '.join(compiled.MODULES)} (setup.py), but the build that runs is: {build}. "
        "`make venv` (or `pip install -e .`) builds it again.")


def test_pure_python_can_be_chosen_at_run_time() -> None:
    r = _run("-m", "hsm.build", pure=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"{compiled.PURE} ({compiled.PURE_ENV} is set)"
    assert len(lines) == 1 + len(compiled.MODULES)
    assert all(line.endswith(".py") for line in lines[1:]), r.stdout


def test_the_build_in_use_is_shown() -> None:
    r = _run("-m", "hsm.build", pure=False)
    assert r.returncode == 0, r.stdout + r.stderr
    first = r.stdout.splitlines()[0]
    if _installed():
        assert first == compiled.COMPILED
        assert all(".so" in line for line in r.stdout.splitlines()[1:]), r.stdout
    else:
        assert first.startswith(compiled.PURE)


def test_the_makefile_rebuilds_when_a_compiled_source_changes() -> None:
    text = (ROOT / "Makefile").read_text()
    m = re.search(r"^NATIVE_SRC :=((?:.*\\\n)*.*)$", text, re.M)
    assert m is not None
    listed = m.group(1).replace("\\\n", " ").split()
    assert listed == [str(compiled.source_path(mod, Path("."))) for mod in compiled.MODULES]


@pytest.mark.skipif(not _installed(), reason="the compiled build is not installed")
def test_a_stale_build_falls_back_to_pure(tmp_path: Path) -> None:
    """A compiled module's source edited after the build: the extensions
    would run the old code, so all the modules run pure until it is rebuilt."""
    for pkg in ("hsm", "coordinator", "agentd"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    env = {"PYTHONPATH": str(tmp_path)}
    r = _run("-m", "hsm.build", pure=False, cwd=tmp_path, env=env)
    assert r.stdout.splitlines()[0] == compiled.COMPILED and str(tmp_path) in r.stdout, r.stdout + r.stderr
    with open(tmp_path / "coordinator" / "scheduler.py", "a") as f:
        f.write("# edited\n")
    r = _run("-m", "hsm.build", pure=False, cwd=tmp_path, env=env)
    assert r.stdout.splitlines()[0] == (f"{compiled.PURE} (the extensions are stale: coordinator.scheduler changed "
                                        "since they were built (make venv rebuilds them))"), r.stdout + r.stderr
    assert all(line.endswith(".py") for line in r.stdout.splitlines()[1:]), r.stdout


def _scenario(what: str, path: Path, pure: bool) -> subprocess.CompletedProcess[str]:
    return _run("-m", "tests.compiled_scenario", what, str(path), pure=pure)


def test_snapshots_and_entries_load_in_either_build(tmp_path: Path) -> None:
    """Each build writes a snapshot and the commands of a shard's history
    (every command kind); the other build loads both, finds the same state
    and the same commands, replays the commands to the same state, and
    goes on from there like the writer would. (Not byte for byte: pickle
    memoizes equal strings when they are one object, and the builds share
    different ones.)"""
    written = {}
    for pure in (True, False):
        p = tmp_path / f"{'pure' if pure else 'default'}.json"
        r = _scenario("write", p, pure)
        assert r.returncode == 0, r.stderr
        assert ("build: pure" in r.stderr) == (pure or not _installed()), r.stderr
        written[pure] = p
    for writer, path in written.items():
        for reader in (True, False):
            r = _scenario("check", path, reader)
            assert (r.returncode, r.stdout) == (0, ""), f"written {'pure' if writer else 'compiled'}, " \
                f"read {'pure' if reader else 'compiled'}:\n{r.stdout}{r.stderr}"
    pure, other = (json.loads(written[b].read_text()) for b in (True, False))
    assert (pure["state"], pure["command_values"]) == (other["state"], other["command_values"])


@pytest.mark.parametrize("pure", [True, False], ids=["pure", "default"])
def test_an_old_snapshot_of_the_pure_build_loads(pure: bool) -> None:
    """Written by the pure build before the compiled one existed (commit
    35ae02f): its state, its commands, and their replay."""
    r = _scenario("check", OLD_SNAPSHOT, pure)
    assert (r.returncode, r.stdout) == (0, ""), r.stdout + r.stderr


# ---------------------------------------------------------------------------
# what compiling changes, kept from changing behaviour


def test_an_action_made_by_python_code_is_initialized() -> None:
    """Compiled, Action is ``serializable`` (made without ``__init__`` when a
    snapshot loads); with that alone mypyc 2.4 would skip ``__init__`` for
    ``Action(...)`` called from Python code too."""
    from coordinator.state import Action, Item, Kind, Requester, State
    from hsm.fid import Fid

    a = Action(1003, Item("fs1", Fid(0x200000400, 1, 0), Kind.ARCHIVE, requester=Requester("t"), data_version=4),
               1, 5.0)
    assert (a.id, a.state, a.data_version, a.created, a.requesters) == (1003, State.WAITING, 4, 5.0, [Requester("t")])


def test_a_pick_looks_at_what_it_picks_not_at_the_whole_queue() -> None:
    """Compiled, a generator expression is made a list (mypyc): the one
    that skips the actions another agent took this round became the whole
    queue at every pick. It is a generator function now."""
    from coordinator import scheduler
    from coordinator.state import Item, Kind, Requester, ShardConfig, ShardState, Submit
    from hsm.fid import Fid

    st = ShardState(ShardConfig(archive_ids=frozenset({1, 2})))
    st.apply(Submit(1.0, tuple(Item("fs1", Fid(0x200000400, n, 0), Kind.ARCHIVE, archive_id=1 + n % 2,
                                    requester=Requester("t", cookie=n)) for n in range(1, 5001))))

    class Counted(set[int]):
        looked = 0

        def __contains__(self, x: object) -> bool:
            Counted.looked += 1
            return super().__contains__(x)

    taken = Counted(scheduler.pick(st, (), {Kind.ARCHIVE: 3}))
    ids = scheduler.pick(st, (), {Kind.ARCHIVE: 10}, taken=taken)
    assert len(ids) == 10 and not set(ids) & taken
    assert Counted.looked <= 20, f"{Counted.looked} lookups for 10 actions picked out of 5,000"
