"""The container image recipe, checked without a Docker engine: its stages
and user, and its build stage replayed here (the files .dockerignore lets
into the build context, copied as the Dockerfile's COPY lines say, built
into a wheel) to show the image gets every package and console script.
tests/containers/ builds and runs the real image where Docker runs."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.deploy import deploylib as dl

DOCKERFILE = dl.REPO / "Dockerfile"
DOCKERIGNORE = dl.REPO / ".dockerignore"


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages and their instructions (continuation lines joined)."""
    stages: list[Stage] = []
    logical = re.sub(r"\\\n", " ", text)
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, words[0]))
        elif stages:
            stages[-1].instructions.append((op, rest.strip()))
    return stages


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    pattern = pattern.strip().strip("/")
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def dockerignore_filter(root: Path, ignore_text: str) -> list[Path]:
    """Files of *root* that go into the build context: the last matching
    pattern wins, ``!`` re-includes, and a pattern matching a directory
    applies to everything under it (as Docker does)."""
    rules = []
    for line in ignore_text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        rules.append((negate, _pattern_regex(pattern), re.split(r"[*?\[]", pattern, maxsplit=1)[0]))

    def included(rel: str) -> bool:
        parts = rel.split("/")
        candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        keep = True
        for negate, rx, _ in rules:
            if any(rx.fullmatch(c) for c in candidates):
                keep = negate
        return keep

    def may_reinclude(rel_dir: str) -> bool:
        return any(negate and (prefix == "" or prefix.startswith(rel_dir + "/") or prefix == rel_dir)
                   for negate, _, prefix in rules)

    kept = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if base == "." else base + "/"
        # do not descend into excluded trees nothing can bring back (.venv, .git)
        dirnames[:] = sorted(d for d in dirnames if included(prefix + d) or may_reinclude(prefix + d))
        kept += [Path(prefix + f) for f in sorted(filenames) if included(prefix + f)]
    return sorted(kept)


def _stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


def test_multi_stage_and_non_root() -> None:
    stages = _stages()
    assert len(stages) >= 2, "a build stage and a runtime stage"
    final = stages[-1]
    users = [arg for op, arg in final.instructions if op == "USER"]
    assert users, "the runtime stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid not in ("0", "root"), users
    copies = [arg for op, arg in final.instructions if op == "COPY"]
    assert copies and all(arg.startswith("--from=") for arg in copies), (
        f"the runtime stage takes only the build stage's result, no sources: {copies}")
    assert not [arg for op, arg in final.instructions if op == "RUN" and "pip install" in arg]
    exposed = " ".join(arg for op, arg in final.instructions if op == "EXPOSE").split()
    assert "7600" in exposed


def test_image_user_is_the_charts_coordinator_user() -> None:
    uid = [arg for op, arg in _stages()[-1].instructions if op == "USER"][-1].split(":")[0]
    values = dl.read_values(dl.CHART / "values.yaml")
    assert int(uid) == values["coordinator"]["runAsUser"]


def test_chart_default_image_is_this_recipe() -> None:
    """``docker build -t hsm-coordinator:<version> .`` (the Dockerfile's own
    instruction) is the image the chart runs by default."""
    version = tomllib.loads((dl.REPO / "pyproject.toml").read_text())["project"]["version"]
    chart = dl.read_values(dl.CHART / "Chart.yaml")
    values = dl.read_values(dl.CHART / "values.yaml")
    assert chart["appVersion"] == version
    assert values["image"]["tag"] == ""
    assert f"docker build -t {values['image']['repository']}:{version} ." in DOCKERFILE.read_text()


def test_dockerignore_keeps_the_context_small() -> None:
    kept = dockerignore_filter(dl.REPO, DOCKERIGNORE.read_text())
    tops = {p.parts[0] for p in kept}
    assert tops <= {"pyproject.toml", "README.md", "hsm", "coordinator", "agentd", "hsmctl", "bridge"}, tops
    assert not [p for p in kept if "__pycache__" in p.parts or p.suffix == ".pyc"]


def test_dockerignore_matching(tmp_path: Path) -> None:
    for rel in ("keep/a.py", "keep/__pycache__/a.pyc", "keep/sub/b.py", "drop/c.py", "top.md", "x.md"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    kept = dockerignore_filter(tmp_path, "# comment\n**\n!keep/\n!top.md\n**/__pycache__\n")
    assert [p.as_posix() for p in kept] == ["keep/a.py", "keep/sub/b.py", "top.md"]


def test_build_stage_installs_every_package_and_script(tmp_path: Path) -> None:
    stages = _stages()
    build = stages[0]
    workdir = Path("/")
    context = tmp_path / "context"
    image = tmp_path / "image"
    for path in dockerignore_filter(dl.REPO, DOCKERIGNORE.read_text()):
        (context / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dl.REPO / path, context / path)
    install_dir = None
    for op, arg in build.instructions:
        if op == "WORKDIR":
            workdir = workdir / arg
        elif op == "COPY":
            *srcs, dest = shlex.split(arg)
            assert not any(s.startswith("--") for s in srcs), f"unexpected COPY flags: {arg}"
            target = image / (workdir / dest).relative_to("/")
            into_dir = dest.endswith("/") or len(srcs) > 1
            for src in srcs:
                source = context / src
                assert source.exists(), f"COPY {src}: not in the build context (see .dockerignore)"
                if source.is_dir():  # Docker copies a directory's contents
                    shutil.copytree(source, target, dirs_exist_ok=True)
                else:
                    dst = target / source.name if into_dir else target
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source, dst)
        elif op == "RUN" and "pip install ." in arg:
            install_dir = image / workdir.relative_to("/")
    assert install_dir is not None, "the build stage pip-installs the project from its WORKDIR"
    out = tmp_path / "wheel"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(out), str(install_dir)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    for script in ("hsm-coordinator", "agentd", "hsmctl"):
        assert re.search(rf"^{script} = ", entry_points, re.M), entry_points
    sources = {p.relative_to(dl.REPO).as_posix() for pkg in ("hsm", "coordinator", "agentd", "hsmctl")
               for p in (dl.REPO / pkg).rglob("*.py") if "__pycache__" not in p.parts}
    assert sources - names == set(), "modules missing from the image"


@pytest.mark.parametrize("broken, message", [
    ("COPY hsmctl ./hsmctl\n", "modules missing from the image"),
])
def test_build_replay_catches_a_missing_copy(broken: str, message: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    dockerfile = tmp_path / "Dockerfile"
    text = DOCKERFILE.read_text()
    assert broken in text
    dockerfile.write_text(text.replace(broken, "", 1))
    monkeypatch.setattr(sys.modules[__name__], "DOCKERFILE", dockerfile)
    with pytest.raises(AssertionError, match=message):
        test_build_stage_installs_every_package_and_script(tmp_path)
