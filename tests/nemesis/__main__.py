"""``python -m tests.nemesis --cycles N [--seed S] [--run-dir D] [--report PATH]``:
one nemesis run (see tests/nemesis/__init__.py). Prints the seed first and
one line per cycle; writes RUN/report.json and RUN/report.md, and with
--report copies them to PATH (.md) and PATH with .json. Exit status 0
only when no violation was found; 1 with violations; 2 when the harness
could not run (no namespaces, a process of its own failed)."""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from tests.nemesis.faults import KINDS
from tests.nemesis.rig import RigError
from tests.nemesis.runner import Nemesis, Options, cleanup_success


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.nemesis", description=__doc__)
    p.add_argument("--cycles", type=int, default=10)
    p.add_argument("--seed", type=int, default=None, help="default: a random one, printed")
    p.add_argument("--run-dir", type=Path, default=None, help="default: /tmp/nemesis-<time>-s<seed>")
    p.add_argument("--report", type=Path, default=None,
                   help="also copy the report here (markdown; the JSON beside it, suffix .json)")
    p.add_argument("--clients", type=int, default=1, help="client hosts running a workload")
    p.add_argument("--faults", default="", help=f"comma-separated kinds to draw from (default all: {','.join(KINDS)})")
    p.add_argument("--recovery-bound", type=float, default=20.0)
    p.add_argument("--keep", action="store_true", help="keep the simfs tree and archive after a clean run")
    args = p.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    run_dir = args.run_dir or Path(f"/tmp/nemesis-{time.strftime('%Y%m%d-%H%M%S')}-s{seed}")
    kinds = tuple(k for k in args.faults.split(",") if k) or None
    opts = Options(cycles=args.cycles, seed=seed, run_dir=run_dir.resolve(), clients=args.clients, kinds=kinds,
                   recovery_bound=args.recovery_bound)
    signal.signal(signal.SIGTERM, _interrupt)
    print(f"nemesis seed {seed}", flush=True)
    nemesis = Nemesis(opts, out=lambda s: print(s, flush=True))
    try:
        rep = nemesis.run()
    except RigError as e:
        print(f"nemesis: the harness could not run: {e}\nrun directory kept: {run_dir}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nemesis: interrupted; everything stopped and removed; run directory kept: {run_dir}",
              file=sys.stderr)
        return 130
    md = run_dir / "report.md"
    print(md.read_text())
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(md, args.report)
        shutil.copyfile(run_dir / "report.json", args.report.with_suffix(".json"))
        print(f"report copied to {args.report} and {args.report.with_suffix('.json')}")
    if rep["ok"]:
        if not args.keep:
            cleanup_success(run_dir)
        print(f"nemesis seed {seed}: no violation in {args.cycles} cycles; run directory {run_dir}")
        return 0
    print(f"nemesis seed {seed}: {len(rep['violations'])} violation(s); run directory kept: {run_dir}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
