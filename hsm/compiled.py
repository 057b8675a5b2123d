"""Which build of the hot modules runs: compiled (mypyc) or pure Python.

The modules of ``MODULES`` are plain, strictly typed Python. When a C
compiler works at install time, ``setup.py`` also compiles them with mypyc
(it ships with mypy) into extension modules that sit beside their sources
(``coordinator/state.cpython-311-x86_64-linux-gnu.so`` and so on, plus the
shared ``hsm/_native__mypyc...so``), and Python imports those instead of
the ``.py`` files. Nothing else changes: same names, same behaviour, same
pickles (snapshots and Raft entries written by one build load in the other).

* ``HSM_NO_MYPYC=1`` at install time: build no extension (pure Python).
* ``HSM_PURE_PYTHON=1`` at run time: import the ``.py`` sources even where
  the extensions are installed (``make test-pure``); every process that
  imports ``hsm``, ``coordinator`` or ``agentd`` reads it, subprocesses too.
* A source edited after the build (its hash differs from the one the build
  recorded in ``hsm/_native_build.json``) makes the whole set pure until the
  next build (``make venv`` or ``make test`` rebuilds): the extensions would
  run the old code, and a mix of compiled and pure modules of one build is
  not allowed.

``python -m hsm.build`` prints which build runs (``build()``);
``tests/test_compiled.py`` fails when a compiled build was expected (a C
compiler works, ``HSM_NO_MYPYC`` unset) but the pure modules are imported.

This module is imported by ``hsm/__init__.py`` before anything else of the
project (``coordinator`` and ``agentd`` import ``hsm`` first), and also
read by ``setup.py`` (run as a file: no import of the package there). It
must not be compiled itself.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

#: the modules compiled with mypyc (all in pyproject's strict mypy list)
MODULES: tuple[str, ...] = (
    "hsm.fid",
    "hsm.hsmflags",
    "hsm.wire",
    "coordinator.state",
    "coordinator.scheduler",
    "coordinator.agents",
    "agentd.lease",
    "agentd.core",
)
#: mypyc's shared library of the group: ``hsm/_native__mypyc.<suffix>``
GROUP = "hsm._native"
#: install time: set (not "" or "0") to build no extension
NO_BUILD_ENV = "HSM_NO_MYPYC"
#: run time: set (not "" or "0") to import the pure sources
PURE_ENV = "HSM_PURE_PYTHON"
#: written by setup.py beside the extensions: the sha256 of each source compiled
MANIFEST = "_native_build.json"

COMPILED = "compiled (mypyc)"
PURE = "pure"

ROOT = Path(__file__).resolve().parent.parent

#: why the pure sources are imported although extensions are installed
#: (None: nothing forces it); set once, at the first import of ``hsm``
forced_pure: str | None = None


def _set(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def compiler_problem() -> str | None:
    """None when a C compiler builds against this Python's headers (what
    setup.py needs to compile ``MODULES``); else why not."""
    import sysconfig
    import tempfile

    try:
        from distutils import ccompiler  # setuptools' copy from Python 3.12 on
        from distutils import sysconfig as dsysconfig
    except ImportError as e:
        return f"no distutils ({e})"
    with tempfile.TemporaryDirectory(prefix="hsm-cc-") as tmp:
        src = Path(tmp, "probe.c")
        src.write_text("#include <Python.h>\nint hsm_probe(void) { return Py_IsInitialized(); }\n")
        try:
            cc = ccompiler.new_compiler()
            dsysconfig.customize_compiler(cc)
            cc.compile([str(src)], output_dir=tmp, include_dirs=[sysconfig.get_paths()["include"]])
        except Exception as e:  # noqa: BLE001 - CompileError, no compiler executable, ...
            last = str(e).strip().splitlines()[-1:] or [""]
            return f"no working C compiler ({type(e).__name__}: {last[0]})"
    return None


def source_path(module: str, root: Path = ROOT) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def extension_path(module: str, root: Path = ROOT) -> Path | None:
    """The extension of *module* beside its source, if one is there."""
    base = root.joinpath(*module.split("."))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        p = base.with_name(base.name + suffix)
        if p.exists():
            return p
    return None


def source_hashes(root: Path = ROOT) -> dict[str, str]:
    import hashlib

    return {m: hashlib.sha256(source_path(m, root).read_bytes()).hexdigest() for m in MODULES}


def manifest(root: Path = ROOT) -> dict[str, object]:
    """What the build recorded (``mypy``: its version, ``sources``: the hash
    of each source compiled); {} when it recorded nothing."""
    import json

    try:
        data = json.loads((root / "hsm" / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def stale(root: Path = ROOT) -> list[str]:
    """The compiled modules whose source changed since the extensions were
    built ([] when they match, or when the build left no manifest)."""
    try:  # setup.py dates the manifest when it read the sources: none newer, nothing to hash
        built_at = (root / "hsm" / MANIFEST).stat().st_mtime_ns
        if all(source_path(m, root).stat().st_mtime_ns <= built_at for m in MODULES):
            return []
    except OSError:
        return []
    built = manifest(root).get("sources")
    if not isinstance(built, dict):
        return []
    try:
        now = source_hashes(root)
    except OSError:
        return []
    return [m for m in MODULES if built.get(m) != now[m]]


def needs_build(root: Path = ROOT) -> bool:
    """The extensions should be built (again): they are stale, or missing
    where a C compiler works and ``HSM_NO_MYPYC`` is not set (``make``)."""
    if stale(root):
        return True
    if extension_path(MODULES[0], root) is not None or _set(NO_BUILD_ENV):
        return False
    return compiler_problem() is None


class _PureFinder:  # a MetaPathFinder
    """Finds the ``.py`` source of a compiled module (never its extension)."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MODULES or not path:
            return None
        loader = (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES)
        for entry in path:
            spec = importlib.machinery.FileFinder(entry, loader).find_spec(fullname)
            if spec is not None:
                return spec
        return None


def select() -> None:
    """Import the pure sources from now on when ``HSM_PURE_PYTHON`` asks for
    it or the extensions are stale; else leave Python's import alone (the
    extensions win where they are installed). Called by ``hsm/__init__``."""
    global forced_pure
    if any(isinstance(f, _PureFinder) for f in sys.meta_path):
        return
    if _set(PURE_ENV):
        forced_pure = f"{PURE_ENV} is set"
    elif extension_path(MODULES[0]) is not None:
        changed = stale()
        if changed:
            forced_pure = (f"the extensions are stale: {', '.join(changed)} changed since they were built "
                           "(make venv rebuilds them)")
    if forced_pure is not None:
        loaded = [m for m in MODULES if m in sys.modules]
        if loaded:  # too late to choose: imported before hsm (cannot happen through the packages)
            raise ImportError(f"hsm.compiled: {', '.join(loaded)} imported before the build was chosen")
        sys.meta_path.insert(0, _PureFinder())


def is_compiled(module: ModuleType) -> bool:
    return any((module.__file__ or "").endswith(s) for s in importlib.machinery.EXTENSION_SUFFIXES)


def build() -> str:
    """``compiled (mypyc)`` when every module of ``MODULES`` runs compiled,
    ``pure`` (with the reason) when none does; anything else is a bug."""
    mods = [importlib.import_module(m) for m in MODULES]
    done = [m.__name__ for m in mods if is_compiled(m)]
    if len(done) == len(mods):
        return COMPILED
    if not done:
        if forced_pure:
            why = forced_pure
        elif _set(NO_BUILD_ENV):
            why = f"{NO_BUILD_ENV} is set"
        else:
            why = "no extension installed"
        return f"{PURE} ({why})"
    return f"mixed: {', '.join(done)} compiled, the others pure"
