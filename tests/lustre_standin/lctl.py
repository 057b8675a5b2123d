"""``lctl get_param`` of the stand-in MDT, as run on an MDS::

    python -m tests.lustre_standin.lctl --root SIMFS_ROOT get_param [-n] mdt.*.hsm.active_requests

Prints what ``lctl`` prints for the MDT's ``hsm.active_requests``: with
``-n`` the value only, else ``mdt.<fsname>-MDT0000.hsm.active_requests=``
on a line of its own and then the value (lctl's layout for a value of
several lines). Exit 2 for a parameter it does not know, 1 if the MDT does
not answer.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys

from hsm.simfs import SimFS
from tests.lustre_standin.protocol import MdtClient, MdtError

PARAMS = ("active_requests",)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.lustre_standin.lctl")
    ap.add_argument("--root", required=True, help="the simfs tree whose MDT to ask")
    sub = ap.add_subparsers(dest="command", required=True)
    get = sub.add_parser("get_param")
    get.add_argument("-n", action="store_true", help="print the values only")
    get.add_argument("pattern", nargs="+")
    args = ap.parse_args(argv)
    fsname = SimFS.open(args.root).fsname
    client = MdtClient(args.root)
    found = False
    for pattern in args.pattern:
        for param in PARAMS:
            name = f"mdt.{fsname}-MDT0000.hsm.{param}"
            if not fnmatch.fnmatchcase(name, pattern):
                continue
            found = True
            try:
                value = client.get_param(param)
            except (OSError, MdtError) as exc:
                print(f"error: get_param: {name}: {exc}", file=sys.stderr)
                return 1
            sys.stdout.write(value if args.n else f"{name}=\n{value}")
    if not found:
        print(f"error: get_param: param_path '{args.pattern[0]}': No such file or directory", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
