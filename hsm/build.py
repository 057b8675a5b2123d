"""``python -m hsm.build``: which build of the hot modules runs, compiled
(mypyc) or pure, and the file each of them is imported from (see
hsm/compiled.py). Exits 1 when the build is mixed (a bug)."""

from __future__ import annotations

import importlib
import sys

from hsm import compiled


def main() -> int:
    what = compiled.build()
    print(what)
    for m in compiled.MODULES:
        print(f"  {m}: {importlib.import_module(m).__file__}")
    return 1 if what.startswith("mixed") else 0


if __name__ == "__main__":
    sys.exit(main())
