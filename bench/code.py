"""Which code a benchmark cluster runs (``python -m bench compare``).

A :class:`CodeTree` is a directory holding the product packages
(``coordinator``, ``agentd``, ``hsm``, ...) of one version: a commit
extracted with ``git archive`` (the baseline) or a copy of the working
tree taken when the run starts (the new code; a copy, so that edits made
while the run goes on do not reach half of its processes). The repository
itself is never changed.

A cluster given a tree starts every process (replicas, agentd, clients)
with ``python -P`` (the current directory is not put on ``sys.path``) and
``PYTHONPATH=<tree>:<repo>``: the tree's packages come first, ``bench``
(the harness, the agent shim, the launcher :mod:`bench.codeprobe`) from the
repository, since a tree holds no ``bench``. The editable install's finder
is appended to ``sys.meta_path``, after the path finder, so it only answers
for what the path does not hold. That is checked, not assumed: every
process records the file of each product module it imported
(:mod:`bench.codeprobe`, the clients likewise) and :func:`check_records`
reports any module that came from outside the tree.

:func:`capabilities` asks a tree (in a subprocess) what it understands, so
the harness sends it only that: the HSM state's ctime in requests, the
late-duplicate memory, agent leases, the cluster id in the configuration.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
#: the product's top-level packages (pyproject: [tool.setuptools.packages.find])
PACKAGES = ("coordinator", "agentd", "hsm", "hsmctl", "bridge")
#: written into each tree: what it is (read back by bench.codeprobe)
MARKER = ".bench-code.json"


@dataclass(frozen=True)
class CodeTree:
    label: str  # "baseline" or "new"
    rev: str  # as asked: "66e78be", or "working tree"
    commit: str  # the full commit (+dirty for a working tree with changes)
    root: Path
    packages: tuple[str, ...] = PACKAGES
    #: what this code understands (see capabilities); filled by with_capabilities
    caps: Mapping[str, Any] = field(default_factory=dict)

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a process that runs this tree's code."""
        env = dict(os.environ if base is None else base)
        env["PYTHONPATH"] = os.pathsep.join([str(self.root), str(REPO)])
        env["HSM_BENCH_CODE_ROOT"] = str(self.root)
        env["HSM_BENCH_CODE_LABEL"] = self.label
        env.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
        return env

    def python(self) -> list[str]:
        """The interpreter command line: -P keeps the current directory
        (which may be the repository) off sys.path."""
        return [sys.executable, "-P"]

    def describe(self) -> dict[str, Any]:
        return {"label": self.label, "rev": self.rev, "commit": self.commit, "root": str(self.root),
                "packages": list(self.packages), "capabilities": dict(self.caps)}

    def short(self) -> str:
        return f"{self.label} {self.commit[:12]}"


def git(*args: str, cwd: Path = REPO, check: bool = True) -> str:
    r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {r.stderr.strip()}")
    return r.stdout.strip()


def resolve(rev: str) -> str:
    """The full commit of *rev* (RuntimeError if it names none)."""
    return git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")


def _write_marker(tree: CodeTree) -> None:
    (tree.root / MARKER).write_text(json.dumps({"label": tree.label, "rev": tree.rev, "commit": tree.commit}) + "\n")


def extract(rev: str, dest: Path, label: str = "baseline") -> CodeTree:
    """The product packages of commit *rev*, extracted into *dest* with
    ``git archive`` (the repository is only read)."""
    commit = resolve(rev)
    present = set(git("ls-tree", "--name-only", commit).split())
    pkgs = tuple(p for p in PACKAGES if p in present)
    if "coordinator" not in pkgs or "agentd" not in pkgs or "hsm" not in pkgs:
        raise RuntimeError(f"{rev} ({commit[:12]}) has no coordinator/agentd/hsm packages at its top level")
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(["git", "archive", "--format=tar", commit, *pkgs], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        tar.extractall(dest, filter="data")
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.wait() != 0:
        raise RuntimeError(f"git archive {rev} failed: {err.strip()}")
    tree = CodeTree(label, rev, commit, dest, pkgs)
    _write_marker(tree)
    return tree


def _digest(root: Path, pkgs: Iterable[str]) -> str:
    h = hashlib.sha256()
    for pkg in pkgs:
        for p in sorted((root / pkg).rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def snapshot(dest: Path, label: str = "new") -> CodeTree:
    """A copy of the working tree's product packages (what is on disk now,
    committed or not; caches left out), taken once for the whole run."""
    head = git("rev-parse", "HEAD")
    pkgs = tuple(p for p in PACKAGES if (REPO / p).is_dir())
    dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", *pkgs, check=False))
    dest.mkdir(parents=True, exist_ok=True)
    for pkg in pkgs:
        shutil.copytree(REPO / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    commit = head + ("+dirty" if dirty else "")
    tree = CodeTree(label, "working tree", commit, dest, pkgs,
                    {"tree_digest": _digest(dest, pkgs)[:16]})
    _write_marker(tree)
    return tree


# What a tree understands, asked of the tree itself (run with its own code).
_CAPS_SCRIPT = r"""
import dataclasses, importlib.util, json, sys
out = {}
from hsm.v1 import types_pb2, agent_pb2, coordinator_pb2
import coordinator, agentd, hsm
out["hsm_ctime"] = "ctime_ns" in types_pb2.HsmState.DESCRIPTOR.fields_by_name
out["agent_lease"] = hasattr(agent_pb2, "LeaseGrant")
from coordinator import config
from coordinator.node import NodeConfig
names = {f.name for f in dataclasses.fields(NodeConfig)}
out["remember"] = "remember_ends" in names
out["cluster_id"] = "id" in getattr(config, "_CLUSTER", ())
from coordinator.raft import RaftTuning
out["raft_tuning"] = sorted(f.name for f in dataclasses.fields(RaftTuning))
from agentd.movers.null import NullMover
out["null_delay"] = "delay" in NullMover.__init__.__code__.co_varnames
out["files"] = {m.__name__: m.__file__ for m in (coordinator, agentd, hsm, types_pb2, coordinator_pb2)}
print(json.dumps(out))
"""


def capabilities(tree: CodeTree, timeout: float = 120.0) -> dict[str, Any]:
    """What *tree* understands, from a Python process that runs its code;
    RuntimeError if that process imported the product from elsewhere."""
    r = subprocess.run([*tree.python(), "-c", _CAPS_SCRIPT], env=tree.env(), cwd=tree.root.parent,
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{tree.short()}: capability probe failed: {r.stderr.strip()[-2000:]}")
    caps: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    wrong = outside(caps.pop("files"), tree.root, tree.packages)
    if wrong:
        raise RuntimeError(f"{tree.short()}: the probe imported {wrong} from outside {tree.root}")
    return caps


def with_capabilities(tree: CodeTree) -> CodeTree:
    return CodeTree(tree.label, tree.rev, tree.commit, tree.root, tree.packages,
                    {**tree.caps, **capabilities(tree)})


def write_config(tree: CodeTree, out: Path, name: str, shards: int, replicas: list[tuple[str, str, str]],
                 data_dir: str, extra: dict[str, Any]) -> None:
    """``coordinator.config.init_cluster`` of *tree* itself (so each
    version writes the configuration it reads: the baseline knows no
    cluster id, for one)."""
    args = json.dumps({"out": str(out), "name": name, "shards": shards, "replicas": replicas,
                       "data_dir": data_dir, "extra": extra})
    script = ("import json, sys\nfrom pathlib import Path\nfrom coordinator import config\n"
              "from coordinator.cluster import ReplicaSpec\na = json.loads(sys.argv[1])\n"
              "config.init_cluster(Path(a['out']), a['name'], a['shards'], "
              "[ReplicaSpec(*r) for r in a['replicas']], data_dir=a['data_dir'], extra=a['extra'])\n")
    r = subprocess.run([*tree.python(), "-c", script, args], env=tree.env(), capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"{tree.short()}: init_cluster failed: {r.stderr.strip()[-2000:]}")


# ------------------------------------------------------------------ checks


def outside(files: Mapping[str, str | None], root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, str]:
    """The product modules among *files* (module -> file) whose file is
    not under *root* (a module of the product loaded from the wrong tree)."""
    pkgs = set(packages)
    root = root.resolve()
    bad = {}
    for mod, f in files.items():
        if mod.split(".", 1)[0] not in pkgs or not f:
            continue
        try:
            Path(f).resolve().relative_to(root)
        except ValueError:
            bad[mod] = f
    return bad


def read_records(directory: Path) -> dict[str, dict[str, Any]]:
    """Every process record in *directory* (name -> record)."""
    out = {}
    for p in sorted(directory.glob("*.json")):
        try:
            out[p.stem] = json.loads(p.read_text())
        except (OSError, ValueError):
            out[p.stem] = {"unreadable": str(p)}
    return out


def check_records(records: Mapping[str, Mapping[str, Any]], tree: CodeTree,
                  expect: Iterable[str] = ()) -> list[str]:
    """Problems with the code the processes of a cluster ran: a process
    that recorded nothing (of those in *expect*), an unreadable record, a
    product module imported from outside *tree*."""
    problems = [f"{name}: no code record" for name in expect if name not in records]
    for name, rec in records.items():
        if "unreadable" in rec:
            problems.append(f"{name}: unreadable code record {rec['unreadable']}")
            continue
        bad = outside(rec.get("modules", {}), tree.root, tree.packages)
        if bad:
            mod, f = next(iter(bad.items()))
            problems.append(f"{name}: {len(bad)} product module(s) not from {tree.root}, e.g. {mod} from {f}")
        if not rec.get("modules"):
            problems.append(f"{name}: recorded no product module")
    return problems


def summarize_records(records: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """What the processes ran, in short: per process the files of the main
    packages and of the generated stubs (enough to see which tree)."""
    keys = ("coordinator", "agentd", "hsm", "hsm.client", "hsm.v1.coordinator_pb2")
    out = {}
    for name, rec in records.items():
        mods = rec.get("modules", {})
        out[name] = {"pid": rec.get("pid"), "commit": rec.get("commit"), "modules_checked": len(mods),
                     # extension modules (a compiled build, e.g. mypyc) among them
                     "compiled_modules": sorted(m for m, f in mods.items() if f and not f.endswith(".py")),
                     **{k: mods[k] for k in keys if k in mods}}
    return out
