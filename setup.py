"""Build: the hot pure modules (``MODULES`` in hsm/compiled.py) compiled with
mypyc when a C compiler works; pure Python when none does or when
``HSM_NO_MYPYC=1`` is set. Everything else is in pyproject.toml.

``pip install -e .`` puts the extensions beside their sources
(``coordinator/state.cpython-311-x86_64-linux-gnu.so``, ...) and writes
``hsm/_native_build.json`` (the hash of each source compiled: an edited
source makes the build fall back to pure until it is rebuilt, see
hsm/compiled.py); ``python setup.py build_ext --inplace`` rebuilds them
alone (``make`` does that when a compiled source changed). mypyc runs only
when extensions are built, not for metadata."""

from __future__ import annotations

import json
import os
import runpy
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
_info: dict[str, Any] = runpy.run_path(str(ROOT / "hsm" / "compiled.py"))
MODULES: tuple[str, ...] = _info["MODULES"]
GROUP: str = _info["GROUP"]
NO_BUILD_ENV: str = _info["NO_BUILD_ENV"]
MANIFEST: str = _info["MANIFEST"]


def _say(msg: str) -> None:
    print(f"hsm-coordinator build: {msg}", file=sys.stderr, flush=True)


def _mypyc_problem() -> str | None:
    try:
        import mypyc.build  # noqa: F401
    except ImportError as e:
        return f"mypyc is not installed ({e})"
    return None


def _decide() -> str | None:
    """None: compile; else the reason for a pure build."""
    if os.environ.get(NO_BUILD_ENV, "") not in ("", "0"):
        return f"{NO_BUILD_ENV} is set"
    return _mypyc_problem() or _info["compiler_problem"]()


def _in_tree_outputs() -> list[Path]:
    """What an earlier in-place build left in the source tree."""
    suffixes = [s for s in (sysconfig.get_config_var("EXT_SUFFIX"),) if s]
    out = [ROOT / "hsm" / MANIFEST]
    for name in (*MODULES, f"{GROUP}__mypyc"):
        base = ROOT.joinpath(*name.split("."))
        out += [base.with_name(base.name + s) for s in suffixes]
    return [p for p in out if p.exists()]


def _sources() -> list[str]:
    return [str(ROOT.joinpath(*m.split(".")).with_suffix(".py")) for m in MODULES]


#: setup.py commands (PEP 517 hooks) that only read the extensions' sources: mypyc does not run for them
METADATA_COMMANDS = {"egg_info", "dist_info", "sdist"}


class BuildMypyc(build_ext):
    """build_ext whose extensions mypyc makes (at finalize time: metadata
    commands never run mypyc), and which records what it compiled."""

    def finalize_options(self) -> None:
        metadata_only = set(self.distribution.commands) <= METADATA_COMMANDS  # they list sources, build nothing
        if not metadata_only and any(getattr(e, "hsm_placeholder", False) for e in self.distribution.ext_modules or ()):
            from mypyc.build import mypycify

            _say(f"compiling {len(MODULES)} modules with mypyc ({NO_BUILD_ENV}=1 builds pure Python)")
            self._read_at = time.time_ns()  # the manifest's date (hsm.compiled.stale)
            self._hashes = _info["source_hashes"](ROOT)
            self.distribution.ext_modules = mypycify(
                [f"--config-file={ROOT / 'pyproject.toml'}", f"--cache-dir={ROOT / 'build' / 'mypyc-cache'}",
                 *_sources()],
                target_dir=str(ROOT / "build" / "mypyc"),
                group_name=GROUP,
                opt_level="3",
            )
        super().finalize_options()

    def run(self) -> None:
        super().run()
        hashes = getattr(self, "_hashes", None)
        if hashes is None:
            return
        import mypy.version

        text = json.dumps({"mypy": mypy.version.__version__, "sources": hashes}, indent=1) + "\n"
        targets = [Path(self.build_lib) / "hsm" / MANIFEST]
        if self.inplace:  # also in editable mode
            targets.append(ROOT / "hsm" / MANIFEST)
        for t in targets:
            t.parent.mkdir(parents=True, exist_ok=True)
            t.write_text(text)
            os.utime(t, ns=(self._read_at, self._read_at))


why_pure = _decide()
if why_pure is None:
    # stand-ins until build_ext runs mypyc; they make the wheel platform specific
    ext_modules = [Extension(m, sources=[]) for m in MODULES]
    for e in ext_modules:
        e.hsm_placeholder = True  # type: ignore[attr-defined]
else:
    ext_modules = []
    leftovers = _in_tree_outputs()
    for p in leftovers:  # an earlier compiled in-place build: it would shadow the sources
        p.unlink()
    _say(f"pure Python ({why_pure})" + (f"; removed {len(leftovers)} files of an earlier compiled build"
                                         if leftovers else ""))

setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildMypyc})
