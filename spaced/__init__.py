"""hsm-spaced: the space manager of a simfs tree (issue 17, item 3).

Above a high watermark it releases archived, clean files in
least-recently-used order until the usage is below a low watermark; when
those run out it asks the coordinator to archive the oldest unarchived (or
dirty) files, so that a later round can release them. Its index of the
tree is kept current by events (inotify and the coordinator's HSM event
log), not by a scan per round.

- :mod:`spaced.plan`: the pure part (index, candidates, watermarks,
  outstanding archives): events in, time passed in, instructions out.
- :mod:`spaced.daemon`: the shell (scan, inotify, event log, releases
  through simfs, archives through the coordinator, the status file).
- :mod:`spaced.cli`: ``hsm-spaced``. ``hsmctl space`` reads the status file.
"""

from __future__ import annotations

import os
from pathlib import Path

#: where hsm-spaced writes its status, under the tree's root
STATUS_PARTS = (".simfs", "space", "status.json")
#: the status document's layout version (``"version"`` key)
STATUS_VERSION = 1


def status_path(root: str | os.PathLike[str]) -> Path:
    """``ROOT/.simfs/space/status.json``."""
    return Path(root).joinpath(*STATUS_PARTS)
