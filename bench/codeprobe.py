"""Run a module as ``python -m`` would, recording which product code the
process imported (``python -m bench compare``).

Usage: ``python -P -m bench.codeprobe [--also PKG,...] RECORD MODULE [ARGS...]``

Before it runs *MODULE* (``runpy``, as ``__main__``, ``sys.argv`` set to
``[MODULE, *ARGS]``), it imports the module's top-level package, ``hsm``
and the generated stubs (and the packages given with ``--also``), and writes *RECORD* (JSON): the pid, the tree
the environment names (``HSM_BENCH_CODE_ROOT``, its commit from the tree's
marker file), ``sys.path``'s head and the file of every product module
loaded. It writes the record again 10 s later and at exit (every product
module loaded by then) and prints one line to stderr (the process's log).
The harness then checks every module came from the tree (bench.code).
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
import threading
from pathlib import Path
from typing import Any

PACKAGES = ("coordinator", "agentd", "hsm", "hsmctl", "bridge")


def product_modules() -> dict[str, str]:
    """Module name -> file of every product module loaded now."""
    out = {}
    for name, mod in list(sys.modules.items()):
        if name.split(".", 1)[0] in PACKAGES:
            f = getattr(mod, "__file__", None)
            if f:
                out[name] = f
    return out


def record(path: str, module: str, args: list[str], stage: str) -> dict[str, Any]:
    root = os.environ.get("HSM_BENCH_CODE_ROOT", "")
    commit = ""
    if root:
        try:
            commit = json.loads((Path(root) / ".bench-code.json").read_text()).get("commit", "")
        except (OSError, ValueError):
            commit = "?"
    rec = {"pid": os.getpid(), "module": module, "args": args, "stage": stage, "root": root, "commit": commit,
           "label": os.environ.get("HSM_BENCH_CODE_LABEL", ""), "executable": sys.executable,
           "sys_path_head": sys.path[:3], "modules": product_modules()}
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(rec, f, indent=1)
    os.replace(tmp, path)
    return rec


def later_at_exit(path: str, module: str, args: list[str], stage: str = "exit") -> None:
    try:
        record(path, module, args, stage)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    also: list[str] = []
    if args[:1] == ["--also"] and len(args) > 1:
        also = [a for a in args[1].split(",") if a]
        args = args[2:]
    if len(args) < 2:
        print("usage: python -P -m bench.codeprobe [--also PKG,...] RECORD MODULE [ARGS...]", file=sys.stderr)
        sys.exit(2)
    path, module, rest = args[0], args[1], args[2:]
    import importlib

    for name in (module.split(".", 1)[0], *also, "hsm", "hsm.v1.coordinator_pb2", "hsm.v1.agent_pb2"):
        importlib.import_module(name)
    rec = record(path, module, rest, "start")
    mods = rec["modules"]
    main_pkg = next((p for p in (module.split(".", 1)[0], *also) if p in PACKAGES), "hsm")
    print(f"bench.codeprobe: pid {rec['pid']} runs {module} from {rec['root'] or 'the default path'} "
          f"(commit {rec['commit'] or '?'}): {main_pkg} from {mods.get(main_pkg)}, "
          f"stubs from {mods.get('hsm.v1.coordinator_pb2')}", file=sys.stderr, flush=True)

    timer = threading.Timer(10.0, later_at_exit, (path, module, rest, "running"))
    timer.daemon = True
    timer.start()
    atexit.register(later_at_exit, path, module, rest)
    sys.argv = [module, *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
