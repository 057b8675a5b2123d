"""``hsmctl``: the command line of the HSM coordinator, modelled on ``lfs hsm_*``.

Every subcommand is a function ``cmd_<name>(args, ctx) -> exit status``;
``main()`` parses, dispatches and turns errors into the documented exit
statuses (see ``EPILOG``).
"""

from __future__ import annotations

import argparse
import errno as _errno
import logging
import os
import re
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from hsm import __version__
from hsm.fid import Fid, FidError
from hsm.hsmflags import HPS, HS, HSMA, HUA, format_hsm_action, format_hsm_state
from hsmctl.lustre import (
    ENV_FS,
    FS_MODES,
    NOT_LUSTRE_ERRNOS,
    LustreFs,
    LustreTarget,
    hua_of,
    max_request_items,
    on_lustre_mount,
)
from hsmctl.output import path_text, plain_text

if TYPE_CHECKING:
    from pathlib import Path

    from hsm.client import CoordinatorClient
    from hsm.simfs import SimFS
    from hsm.v1 import coordinator_pb2 as cpb
    from hsm.v1 import types_pb2 as tpb

log = logging.getLogger(__name__)

PROG = "hsmctl"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_HSM = 4

# When several things went wrong, the status a script sees is the most
# telling one: unreachable > usage > not an HSM path > item failures.
_EXIT_RANK = {EXIT_OK: 0, EXIT_FAILED: 1, EXIT_NOT_HSM: 2, EXIT_USAGE: 3, EXIT_UNREACHABLE: 4}

DEFAULT_COORDINATORS = "127.0.0.1:7600"
DEFAULT_BATCH = 1000
DRAIN_POLL = 1.0  # seconds between checks of agent drain --wait
WATCH_CHUNK = 10000
_U32 = (1 << 32) - 1

EPILOG = """\
commands like lfs:
  archive, restore, remove  queue HSM requests for files (lfs hsm_archive, ...)
  restore --list FILE       pre-stage the files a list names, wait, summarize (docs/prestage.md)
  release                   drop the data of archived files (done locally, by the client)
  cancel                    cancel actions by path, FID, --id ID[,ID] (repeatable), or all
  state, action             lfs hsm_state / lfs hsm_action output
  set, clear                set or clear the user flags (lfs hsm_set/hsm_clear)
cluster:
  status, agents, actions   queue, agents, shards; one line per action
  control                   hsm_control mode: enabled, disabled, shutdown
  policy get|set|check|diff the replicated policy: priorities, fair share, admission
                            rules, rate limits, runtime settings (docs/policy.md)
  agent drain|resume ID     stop giving an agent work (before stopping it)
  catalog ls|stat           the archived copies of files: object key, data version,
                            checksum, when, owner and path as archived
  space [PATH]              what the space manager (hsm-spaced) did: usage, watermarks,
                            releases, archives (docs/space.md)

coordinators: --coordinators HOST:PORT[,HOST:PORT...], else $HSM_COORDINATORS,
else 127.0.0.1:7600. Any replica will do; hsmctl learns the others from it and
follows the shard leaders.

tls: a cluster whose replicas run with mutual TLS needs --tls-ca, --tls-cert
and --tls-key (or $HSM_TLS_CA, $HSM_TLS_CERT, $HSM_TLS_KEY): the cluster CA's
certificate and yours (hsm-coordinator certs issue; its role says what you may
do). Without them hsmctl speaks plain text, which such a replica refuses.

cluster: hsmctl talks only to the cluster whose id --cluster ID (or
$HSM_CLUSTER) names, and to the one a simfs tree records (hsm-coordinator
local writes it); a replica of another cluster is refused (exit 3). Without
either, the first replica that answers names the cluster. `hsmctl status`
prints the id.

files:
  symbolic links: state, action, set and clear follow them, like lfs (a dangling
    link is "No such file or directory"); archive, restore, remove, release and
    cancel refuse them as "not a regular file", like lfs, and -r skips those
    it meets (find -P ... -type f)
  --filelist FILE: one name per line, or with -0 (--null) NUL-separated, for
    names holding newlines (find -print0 | hsmctl restore -0 --filelist -)
  names are printed as given, except bytes that are not UTF-8, control
    characters and backslash, escaped as in bash's $'...': \\xff, \\n, \\t, \\\\
    (in messages, listings and --json alike)

on Lustre (--fs MODE, else $HSM_FS, else auto):
  auto: a path in a simfs tree (.simfs/fsname above it) is simfs, as always;
    else one on a Lustre client mount (statfs(2) f_type LL_SUPER_MAGIC) goes
    through liblustreapi ($HSM_LIBLUSTREAPI, else liblustreapi.so.1), which is
    loaded only then; else exit 4. lustre: every path goes to liblustreapi,
    which decides (ENOTTY, ENODEV: exit 4), a simfs tree included (how the
    tests drive the stand-in library over a simulated MDT). simfs: simfs
    trees only, liblustreapi is never loaded.
  state, action, set, clear: llapi_hsm_state_get, llapi_hsm_current_action,
    llapi_hsm_state_set, printed as lfs does; release: llapi_hsm_request
    with HUA_RELEASE, as lfs hsm_release.
  archive, restore, remove, cancel (PATH, or FIDs with -m MNT): sent to the
    MDT with llapi_hsm_request (FIDs from llapi_path2fid, -a, --data) as
    lfs hsm_* sends them; the MDT stays the authority and hsm-bridge brings
    them to the coordinator. One request per mount and at most 52 files
    (the client refuses more bytes with E2BIG). A file the MDT would skip
    (not needed) is not sent; one it would refuse is named (EPERM), both
    judged from its HSM state. -r/--filelist summary: "sent to the MDT N,
    not needed N, rejected N" (the MDT does not say what joined a queued
    request). cancel --id/--all and FIDs with --fsname go to the coordinator.
  --wait on Lustre: polls llapi_hsm_current_action for each file (after
    0.05 s, doubling up to every 1 s) until the MDT has nothing waiting or
    running for it, then judges from its HSM state: archive = archived and
    not dirty, restore = not released, remove = no archived copy. It cannot
    know which request did the work (any action on the file counts), why
    one failed (no errno reaches the client: see 'hsmctl actions' or the
    MDT's changelog), nor a cancel from a failure; a file written after
    its copy ended reads as failed (dirty). Summary: "succeeded N, failed N".

from lctl get_param/set_param mdt.*.hsm.*: hsmctl policy get / set FILE, one
document for the whole cluster, applied while it runs (settings: in it):
  max_requests            agentd --slots (per agent); and max_running,
                          max_running_per_archive (the cluster)
  active_request_timeout  progress_timeout (600 s without progress: requeued)
                          and agent_grace (60 s)
  grace_delay             max_terminal (ended actions kept)
  policy (NRA, NBR)       max_attempts (1: no retry, like NRA); restores
                          never block unless --wait
  user_request_mask       request_masks (per role)

exit status:
  0  success; a request that is not needed (e.g. archiving an archived file)
     succeeds silently, like lfs
  1  something failed: a path could not be read, the coordinator rejected an
     item (e.g. EPERM: not allowed in the file's HSM state), a release was
     refused, or with --wait an action ended FAILED or CANCELED
  2  usage error: unknown option, bad FID, bad number, unknown kind or state;
     nothing was submitted
  3  coordinator unreachable: no replica answered within --timeout, or the
     replicas that answered belong to another cluster
  4  a path is not on a simfs (or Lustre) file system
On Lustre, 1 is also: liblustreapi cannot be loaded, the MDT refused a
request, or with --wait a file's HSM state shows the work not done.

--json output (stable keys; new keys may be added, none renamed):
  state    [{"path", "fid", "flags", "states": [words], "archive_id",
             "archived_version" (null on Lustre: liblustreapi does not say)}]
  action   [{"path", "fid", "action": NOOP|ARCHIVE|RESTORE|REMOVE,
             "progress": waiting|running|"", "action_id", "state",
             "offset", "length", "bytes_moved", "queue_position" (1 =
             next; null unless waiting in a queue), "queue_length",
             "start_estimate" (seconds; null: no estimate)}]
             (on Lustre: action_id null, state the MDT's WAITING|STARTED,
             length null while an ARCHIVE or RESTORE runs)
  actions  [{"action_id", "fsname", "fid", "kind", "archive_id", "extent",
             "data", "flags", "priority", "requesters": [{"initiator",
             "cookie", "uid", "gid", "projid", "when"}], "state", "agent",
             "attempt", "created", "started", "ended", "bytes_done",
             "bytes_total", "errno", "error", "shard", "queue_position",
             "queue_length", "start_estimate"}]
  agents   [{"agent_id", "host", "archive_ids", "slots": {"archive",
             "restore", "remove"}, "running": {...}, "version",
             "connected_since", "last_seen", "replica", "draining", "tags"}]
  status   {"replica", "cluster_id", "version", "control", "counts": [{"kind", "state",
             "count"}], "agents": [...], "shards": [{"shard", "leader",
             "leader_address", "commit_index", "applied_index", "counts",
             "problem": why the answering replica cannot take its part, or ""}],
             "replicas": [{"id", "address"}], "event_consumers": [{"name",
             "lag", "missed", "since"}]}
  events   one object per line (a stream): {"shard", "recno", "time", "type"
             (16), "flags" (CLF_HSM), "event", "errno", "fsname", "fid",
             "archive_id", "action_id"}
  control  {"control": enabled|disabled|shutdown} (the mode now, after a change)
  agent drain|resume
           {"agent_id", "state": active|draining|drained, "draining",
             "running": {"archive", "restore", "remove"}}
Kinds and states are upper case (ARCHIVE, WAITING); times are unix seconds.
"""


RESTORE_LIST_EPILOG = """

pre-stage lists (restore --list FILE; the language: docs/prestage.md):
  one entry per line, # comments; relative paths start at the list's directory
    /lustre/proj/mesh.h5     a file           inputs/        the files in a directory
    run42/*.nc               a glob           inputs/**      ... at any depth
    data/**/*.h5 --newer 7d --size +1G        filters: --newer/--older WHEN (2024-05-01,
                                              2024-05-01T12:00Z, 90s 30m 12h 7d 2w), --size +N|-N (K M G T)
    set --older 30d          defaults for the lines below (set alone: none)
    include common.list      another list, relative to this one (a cycle is an error)
  symbolic links are not followed; names starting with . only match patterns that start with .
  First every error of the list and its includes is printed (FILE:LINE: message) and
  nothing is submitted (exit 2); entries that match nothing are warnings (FILE:LINE:
  warning: matches nothing). Then a restore is submitted for each file that needs one
  (an online file is skipped) and --list waits for them all (--deadline S: stop waiting,
  --no-wait: do not wait), with a progress bar on a terminal (plain lines otherwise,
  on stderr), and ends with a summary on stdout:
    restored 38 (11.8GiB), already online 2, failed 1, in 4m12s
    failed: data/b.h5: RESTORE action 1207 failed: No data available (errno ENODATA)
  Exit status 1 if any failed or did not end before --deadline."""


class CliError(Exception):
    """An error that ends the command with *code* after printing *message*."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


class PathError(Exception):
    """One path that cannot be used; the command goes on or stops."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Context:
    """Per-run state: output streams, the exit status so far, caches."""

    command: str
    verbose: bool = False
    out: IO[str] = field(default_factory=lambda: sys.stdout)
    err: IO[str] = field(default_factory=lambda: sys.stderr)
    status: int = EXIT_OK
    fs_mode: str = "auto"  # --fs / $HSM_FS: auto, simfs or lustre
    _trees: dict[str, SimFS] = field(default_factory=dict)
    _lustre: LustreFs | None = None
    client: CoordinatorClient | None = None

    def attach(self, client: CoordinatorClient) -> None:
        """Every tree opened, now and later, names its cluster to *client*."""
        self.client = client
        for fs in self._trees.values():
            self._expect(fs)

    def _expect(self, fs: SimFS) -> None:
        if self.client is not None and fs.cluster_id:
            self.client.expect_cluster(fs.cluster_id, f"the simfs tree {path_text(os.fspath(fs.root))}")

    def fail(self, code: int = EXIT_FAILED) -> None:
        if _EXIT_RANK[code] > _EXIT_RANK[self.status]:
            self.status = code

    def error(self, message: str, code: int = EXIT_FAILED) -> None:
        print(plain_text(f"{PROG} {self.command}: {message}"), file=self.err)
        self.fail(code)

    def info(self, message: str) -> None:
        if self.verbose:
            print(plain_text(message), file=self.out)

    # -- simfs trees and Lustre mounts -----------------------------------------

    def lustre(self) -> LustreFs:
        """liblustreapi, loaded on the first Lustre path (not before)."""
        if self._lustre is None:
            from hsm.lustre.api import LustreApiUnavailable

            fs = LustreFs()
            try:
                fs.load()
            except LustreApiUnavailable as e:
                raise CliError(str(e), EXIT_FAILED) from None
            self._lustre = fs
        return self._lustre

    def tree_of(self, path: str) -> SimFS | LustreFs:
        """The simfs tree or the Lustre mount holding *path* (which must
        exist). See hsmctl.lustre: a simfs tree wins (but with --fs lustre);
        else statfs() says whether it is on a Lustre client mount (with
        --fs lustre: liblustreapi alone decides, call by call)."""
        from hsm.simfs import SimFS

        if self.fs_mode == "lustre":
            return self.lustre()
        try:
            root = SimFS.find_root(path)
        except (OSError, ValueError, LookupError) as e:
            log.debug("find_root(%s) failed: %s", path, e)
            root = None
        if root is None:
            if self.fs_mode == "auto" and on_lustre_mount(path):
                return self.lustre()
            where = "a simfs (--fs simfs)" if self.fs_mode == "simfs" else "a simfs or Lustre"
            raise PathError(f"{path_text(path)}: not on {where} file system", EXIT_NOT_HSM)
        key = os.fspath(root)
        fs = self._trees.get(key)
        if fs is None:
            try:
                fs = SimFS.open(key)
            except (OSError, ValueError) as e:
                raise PathError(f"{path_text(path)}: cannot open simfs tree {path_text(key)}: {e}",
                                EXIT_NOT_HSM) from None
            self._trees[key] = fs
            self._expect(fs)
        return fs

    def mounted(self, mntpath: str) -> SimFS | LustreFs:
        """The simfs tree at (or above) *mntpath*, or the Lustre mount there,
        for FID operands."""
        if not os.path.exists(mntpath):
            raise CliError(f"cannot access mount point '{path_text(mntpath)}': No such file or directory")
        try:
            return self.tree_of(mntpath)
        except PathError as e:
            raise CliError(str(e), e.code) from None


# ---------------------------------------------------------------------------
# Argument types: every bad value is a usage error, found before anything is sent.


def _cluster_id(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", text):
        raise argparse.ArgumentTypeError(f"invalid cluster id {text!r}: 1 to 64 of A-Z a-z 0-9 . _ -")
    return text


def _archive_id(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = -1
    if not 0 <= value <= _U32:
        raise argparse.ArgumentTypeError(f"invalid archive id '{text}': a number from 0 to {_U32}")
    return value


def _fid(text: str) -> Fid:
    try:
        fid = Fid.parse(text)
    except FidError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if fid.seq == 0:
        raise argparse.ArgumentTypeError(f"invalid FID '{text}': sequence 0 is not a file's FID")
    return fid


def _action_id(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = 0
    if not 0 < value < (1 << 64):
        raise argparse.ArgumentTypeError(f"invalid action id '{path_text(text)}': a positive integer")
    return value


def _action_ids(text: str) -> list[int]:
    """``--id ID[,ID...]``: one value per ``--id`` (repeatable), so that in
    ``cancel --id 2004 PATH`` the PATH is a path. A file named where an id
    was expected is said to be one."""
    try:
        return [_action_id(part.strip()) for part in text.split(",")]
    except argparse.ArgumentTypeError:
        if text and os.path.lexists(text):
            raise argparse.ArgumentTypeError(
                f"invalid action id '{path_text(text)}': that is a file, not an action id; "
                "give files after the options (cancel --id ID PATH...)") from None
        raise


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"invalid number of seconds '{text}': must be > 0")
    return value


def _batch_size(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = 0
    if not 1 <= value <= 10000:
        raise argparse.ArgumentTypeError(f"invalid batch size '{text}': from 1 to 10000")
    return value


def _data(text: str) -> bytes:
    """``--data K=V[,K=V...]``: mover hints, checked, at most 4096 bytes."""
    raw = text.encode()
    if len(raw) > 4096:
        raise argparse.ArgumentTypeError(f"--data is {len(raw)} bytes; at most 4096 allowed")
    for part in text.split(","):
        key, sep, _value = part.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(
                f"invalid --data '{text}': expected KEY=VALUE[,KEY=VALUE...]"
            )
    return raw


def _fsname(text: str) -> str:
    from hsm.client import InvalidArgument, check_fsname

    try:
        return check_fsname(text)
    except InvalidArgument as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _list_of(parse: Callable[[str], Any], what: str) -> Callable[[str], list[Any]]:
    """``--state waiting,started`` (repeatable) -> list of parsed values."""

    def convert(text: str) -> list[Any]:
        from hsm.client import InvalidArgument

        values = []
        for part in text.split(","):
            if not part.strip():
                continue
            try:
                values.append(parse(part))
            except InvalidArgument as e:
                raise argparse.ArgumentTypeError(str(e)) from None
        if not values:
            raise argparse.ArgumentTypeError(f"empty {what} list")
        return values

    return convert


def _state_list(text: str) -> list[int]:
    from hsm.client import state_from

    return _list_of(state_from, "state")(text)


def _kind_list(text: str) -> list[int]:
    from hsm.client import kind_from

    return _list_of(kind_from, "kind")(text)


# ---------------------------------------------------------------------------
# Coordinator access


def _client(args: argparse.Namespace, ctx: Context) -> CoordinatorClient:
    """A client of the cluster that --cluster / $HSM_CLUSTER and the simfs
    trees of this command name (none named: the first replica that answers)."""
    from hsm.client import CoordinatorClient, InvalidArgument
    from hsm.tls import TlsError, TlsFiles

    try:
        tls = TlsFiles.from_args(args.tls_ca, args.tls_cert, args.tls_key)
    except TlsError as e:
        raise CliError(str(e), EXIT_USAGE) from None
    try:
        client = CoordinatorClient(
            args.coordinators,
            timeout=args.timeout,
            initiator=f"{PROG}@{socket.gethostname()}",
            retry_unavailable=min(5.0, args.timeout),
            tls=tls,
        )
        if args.cluster:
            client.expect_cluster(args.cluster, "--cluster" if args.cluster_flag else "$HSM_CLUSTER")
    except InvalidArgument as e:
        raise CliError(str(e), EXIT_USAGE) from None
    ctx.attach(client)
    return client


def _requester() -> tpb.Requester:
    from hsm.v1 import types_pb2 as tpb

    return tpb.Requester(
        initiator=f"{PROG}@{socket.gethostname()}", uid=os.getuid(), gid=os.getgid()
    )


# ---------------------------------------------------------------------------
# archive / restore / remove


@dataclass(frozen=True, slots=True)
class Target:
    """One file a request is about: what the user named it, and what we know."""

    label: str
    fsname: str
    fid: Fid
    hsm: tuple[int, int, int, int] | None  # (flags, archive_id, data_version, ctime_ns) read from the file
    #: the file's path from its file system's root and its size, for the
    #: policy's admission rules ("" and None: unknown)
    path: str = ""
    size: int | None = None


def _policy_facts(fs: SimFS, path: str) -> tuple[str, int | None]:
    """(path from the tree's root, size) of a file a request names."""
    try:
        real = os.path.realpath(path)
        rel = os.path.relpath(real, fs.root)
        return ("/" if rel == "." else "/" + rel), os.stat(real).st_size
    except (OSError, ValueError):
        return "", None


def _request_state(fs: SimFS, path: str) -> tuple[int, int, int, int]:
    """(flags, archive id, data version, ctime) of a file a request names:
    the coordinator decides with the flags whether the request is needed,
    the mover checks the data version (a FID alone may name another file
    system's file), and the ctime, of the same state as the flags
    (``SimFS.request_state``), names the state seen (a duplicate that
    arrives after an action finished with that state is answered by it)."""
    version, attrs, st = fs.request_state(path)
    return int(attrs.flags), int(attrs.archive_id), version, st.st_ctime_ns


def _hsm_state(fs: SimFS, path: str) -> tuple[int, int, int]:
    """(flags, archive id, archived data version) of a file of *fs*."""
    attrs = fs.hsm_state(path)
    return int(attrs.flags), int(attrs.archive_id), int(attrs.archived_version)


# Symbolic links, as lfs treats them (lustre/utils/lfs.c, liblustreapi_hsm.c):
# lfs hsm_state, hsm_action, hsm_set and hsm_clear open() the path
# (llapi_hsm_state_get, llapi_hsm_current_action, llapi_hsm_state_set: no
# O_NOFOLLOW), so they follow a link to its file; a dangling link is ENOENT,
# a link off the file system is not a Lustre file. lfs hsm_archive, restore,
# release, remove and cancel lstat() the path first (lfs_hsm_prepare_file,
# LU-5141) and refuse anything that is not a regular file, a link included,
# before sending anything. _query_file and _request_file are those two rules;
# every command, operand, --filelist entry and -r walk goes through one.


_NUL_IN_NAME = "a file name cannot hold a NUL byte (for a NUL-separated --filelist, give -0)"


def _is_fid_entry(path: str) -> bool:
    """``MNT/.lustre/fid/FID``: a symlink on simfs, the file itself on Lustre."""
    parent = os.path.dirname(os.path.abspath(path))
    return os.path.basename(parent) == "fid" and os.path.basename(os.path.dirname(parent)) == ".lustre"


def _request_file(ctx: Context, path: str) -> SimFS | LustreFs:
    """The tree of *path*, a file named in an HSM request (archive, restore,
    remove, release, cancel): like lfs, lstat() it and refuse anything but a
    regular file; a symbolic link is not followed."""
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode) and _is_fid_entry(path):
            st = os.stat(path)
    except OSError as e:
        raise PathError(f"cannot stat '{path_text(path)}': {e.strerror}") from None
    except ValueError:  # a NUL byte, from a --filelist read by lines
        raise PathError(f"cannot stat '{path_text(path)}': {_NUL_IN_NAME}") from None
    if stat.S_ISLNK(st.st_mode):
        raise PathError(f"'{path_text(path)}' is not a regular file (a symbolic link; HSM requests "
                        "do not follow links, like lfs: name the file it points to)")
    if not stat.S_ISREG(st.st_mode):
        raise PathError(f"'{path_text(path)}' is not a regular file")
    return ctx.tree_of(path)


def _query_file(ctx: Context, path: str, failed: str) -> SimFS | LustreFs:
    """The tree of *path* for state, action, set and clear: like lfs, which
    open()s it, a symbolic link is followed (dangling: no such file; to a
    file off the tree: not on simfs). *failed* starts the error message."""
    try:
        os.stat(path)
    except OSError as e:
        raise PathError(f"{failed} {path_text(path)}: {e.strerror}") from None
    except ValueError:
        raise PathError(f"{failed} {path_text(path)}: {_NUL_IN_NAME}") from None
    return ctx.tree_of(path)


def _lustre_error(e: OSError, path: str, failed: str) -> PathError:
    """A liblustreapi error about *path*: ENOTTY/ENODEV say it is not on
    Lustre (exit 4), as lfs reports them; others start with *failed*."""
    if e.errno in NOT_LUSTRE_ERRNOS:
        return PathError(f"{path_text(path)}: not on a Lustre file system (liblustreapi: "
                         f"{e.strerror})", EXIT_NOT_HSM)
    return PathError(f"{failed}: {e.strerror or e}")


def _target_from_path(ctx: Context, path: str) -> Target | LustreTarget:
    fs = _request_file(ctx, path)
    if isinstance(fs, LustreFs):
        # lfs_hsm_prepare_file: llapi_path2fid; and the state, to say per
        # file what the MDT would skip or refuse
        try:
            fid = fs.request_fid(path)
            flags, archive_id = fs.state(path)
            dev = os.stat(path).st_dev
        except OSError as e:
            raise _lustre_error(e, path, f"cannot read FID and HSM state of '{path_text(path)}'") from None
        return LustreTarget(path_text(path), path, dev, fid, (flags, archive_id))
    try:
        fid = fs.fid_of(path)
        hsm = _request_state(fs, path)
    except (OSError, ValueError) as e:
        raise PathError(
            f"cannot read FID and HSM state of '{path_text(path)}': "
            f"{getattr(e, 'strerror', None) or e}"
        ) from None
    return Target(path_text(path), fs.fsname, fid, hsm, *_policy_facts(fs, path))


def _fid_entry(mnt: str, fid: Fid) -> str:
    """``MNT/.lustre/fid/SEQ:OID:VER``: the file itself on Lustre (lhsmtool_posix
    opens files so), a symbolic link to it on simfs."""
    return os.path.join(mnt, ".lustre", "fid", fid.bare)


def _target_from_fid(fid: Fid, fsname: str, fs: SimFS | LustreFs | None, label: str | None = None,
                     mnt: str = "") -> Target | LustreTarget:
    label = path_text(label) if label else str(fid)
    if fs is None:
        return Target(label, fsname, fid, None)
    if isinstance(fs, LustreFs):
        entry = _fid_entry(mnt, fid)
        try:
            state = fs.state(entry)
            dev = os.stat(mnt).st_dev
        except OSError as e:
            if e.errno in NOT_LUSTRE_ERRNOS:
                raise _lustre_error(e, mnt, "") from None
            raise PathError(f"FID {fid}: {e.strerror or e} on {path_text(mnt)}") from None
        return LustreTarget(label, entry, dev, fid, state)
    try:
        path = fs.path_of(fid)
        hsm = _request_state(fs, os.fspath(path))
    except (OSError, ValueError, LookupError) as e:
        reason = getattr(e, "strerror", None) or "no such file"
        raise PathError(f"FID {fid}: {reason} on {fs.fsname}") from None
    return Target(label, fsname, fid, hsm, *_policy_facts(fs, os.fspath(path)))


class Submitter:
    """Submits targets in batches as they come, tallies and reports outcomes."""

    def __init__(self, ctx: Context, client: CoordinatorClient, kind: str, archive_id: int,
                 data: bytes, batch_size: int) -> None:
        self.ctx = ctx
        self.client = client
        self.kind = kind
        self.archive_id = archive_id
        self.data = data
        self.batch_size = batch_size
        self.requester = _requester()
        self.pending: list[tuple[Target, cpb.SubmitItem]] = []
        self.counts = {"CREATED": 0, "JOINED": 0, "NOT_NEEDED": 0, "REJECTED": 0}
        self.labels: dict[int, list[str]] = {}
        self.refused: list[str] = []  # the messages of the items refused, for restore --list

    def add(self, target: Target) -> None:
        item = self.client.submit_item(
            target.fsname,
            target.fid,
            self.kind,
            self.archive_id,
            requester=self.requester,
            hsm=target.hsm,
            data=self.data,
            path=getattr(target, "path", ""),
            size=getattr(target, "size", None),
        )
        self.pending.append((target, item))
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        results = self.client.submit([item for _t, item in batch], batch_size=len(batch))
        from hsm.client import outcome_name

        kind = self.kind.upper()
        for (target, _item), result in zip(batch, results, strict=True):
            outcome = outcome_name(result.outcome)
            self.counts[outcome] = self.counts.get(outcome, 0) + 1
            if outcome in ("CREATED", "JOINED"):
                self.labels.setdefault(result.action_id, []).append(target.label)
                verb = "queued as" if outcome == "CREATED" else "joined"
                self.ctx.info(f"{target.label}: {kind} {verb} action {result.action_id}")
            elif outcome == "NOT_NEEDED":
                self.ctx.info(f"{target.label}: {kind} not needed")
            else:
                from hsmctl.output import error_text

                why = error_text(result.reason, result.errno) or "rejected"
                self.refused.append(f"{target.label}: {kind} refused: {why}")
                self.ctx.error(self.refused[-1])

    def summary(self) -> str:
        c = self.counts
        return (
            f"queued {c['CREATED']}, joined {c['JOINED']}, "
            f"not needed {c['NOT_NEEDED']}, rejected {c['REJECTED']}"
        )


class LustreSubmitter:
    """Sends targets on Lustre to the MDT as ``lfs hsm_*`` does: one
    ``llapi_hsm_request`` (a ``hal.UserRequest`` of FIDs, the archive id,
    ``--data``) per batch of files on one mount, at most as many items as
    the client lets through (E2BIG beyond ``MDS_MAXREQSIZE / 3`` bytes).
    Before sending, each file's HSM state (``llapi_hsm_state_get``) says what
    the MDT would skip (not needed: nothing sent, as it would do nothing) or
    refuse (EPERM, named per file instead of failing a whole batch); the MDT
    decides the rest. It does not say whether an item joined a request
    already queued: ``sent`` counts what it accepted."""

    def __init__(self, ctx: Context, fs: LustreFs, kind: str, archive_id: int, data: bytes,
                 batch_size: int) -> None:
        limit = max_request_items(len(data))
        if limit < 1:
            from hsmctl.lustre import max_request_data

            raise CliError(f"--data of {len(data)} bytes does not fit in a Lustre HSM request "
                           f"(at most {max_request_data()} bytes)", EXIT_USAGE)
        self.ctx = ctx
        self.fs = fs
        self.kind = kind
        self.action = hua_of(kind)
        self.archive_id = archive_id
        self.data = data
        self.limit = min(batch_size, limit)
        self.pending: list[LustreTarget] = []
        self.sent: list[LustreTarget] = []
        self.counts = {"sent": 0, "not_needed": 0, "rejected": 0}
        self.refused: list[str] = []  # the messages of the files refused, for restore --list

    def add(self, target: LustreTarget) -> None:
        kind = self.kind.upper()
        if target.hsm is not None and self.kind != "cancel":
            from hsmctl.lustre import refusal

            why = refusal(self.kind, target.hsm[0], target.hsm[1], self.archive_id)
            if why == "":
                self.counts["not_needed"] += 1
                self.ctx.info(f"{target.label}: {kind} not needed")
                return
            if why is not None:
                self.counts["rejected"] += 1
                self.refused.append(f"{target.label}: {kind} refused: {why} (Operation not permitted)")
                self.ctx.error(self.refused[-1])
                return
        if self.pending and self.pending[0].dev != target.dev:
            self.flush()  # one request per mount, as lfs wants
        self.pending.append(target)
        if len(self.pending) >= self.limit:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        kind = self.kind.upper()
        try:
            self.fs.request(batch[0].path, self.action, self.archive_id, [t.fid for t in batch], self.data)
        except OSError as e:
            self.counts["rejected"] += len(batch)
            more = f" and {len(batch) - 1} more file(s)" if len(batch) > 1 else ""
            code = EXIT_NOT_HSM if e.errno in NOT_LUSTRE_ERRNOS else EXIT_FAILED
            self.ctx.error(f"cannot send the {kind} request of {batch[0].label}{more} to the MDT: "
                           f"{e.strerror or e}", code)
            self.refused.extend(f"{t.label}: cannot send the {kind} request to the MDT: {e.strerror or e}"
                                for t in batch)
            return
        self.counts["sent"] += len(batch)
        self.sent.extend(batch)
        for t in batch:
            self.ctx.info(f"{t.label}: {kind} sent to the MDT")

    def summary(self) -> str:
        c = self.counts
        return f"sent to the MDT {c['sent']}, not needed {c['not_needed']}, rejected {c['rejected']}"


class Requests:
    """Where the targets of one archive/restore/remove go: simfs ones to the
    coordinator (connected on the first one), Lustre ones to the MDT."""

    def __init__(self, args: argparse.Namespace, ctx: Context, kind: str, archive_id: int) -> None:
        self.args = args
        self.ctx = ctx
        self.kind = kind
        self.archive_id = archive_id
        self.client: CoordinatorClient | None = None
        self.simfs: Submitter | None = None
        self.lustre: LustreSubmitter | None = None
        self.local_errors = 0

    def _simfs(self) -> Submitter:
        if self.simfs is None:
            self.client = _client(self.args, self.ctx)
            self.client.__enter__()
            self.simfs = Submitter(self.ctx, self.client, self.kind, self.archive_id, self.args.data,
                                   self.args.batch_size)
        return self.simfs

    def _lustre(self) -> LustreSubmitter:
        if self.lustre is None:
            self.lustre = LustreSubmitter(self.ctx, self.ctx.lustre(), self.kind, self.archive_id,
                                          self.args.data, self.args.batch_size)
        return self.lustre

    def add(self, target: Target | LustreTarget) -> None:
        if isinstance(target, LustreTarget):
            self._lustre().add(target)
        else:
            self._simfs().add(target)

    def local_error(self, message: str, code: int = EXIT_FAILED) -> None:
        self.local_errors += 1
        self.ctx.error(message, code)

    def flush(self) -> None:
        if self.simfs is not None:
            self.simfs.flush()
        if self.lustre is not None:
            self.lustre.flush()

    def summaries(self) -> list[str]:
        """The summary lines: the coordinator's (also when nothing was
        sent anywhere), the MDT's; the local errors on the first."""
        lines = []
        if self.simfs is not None:
            lines.append(self.simfs.summary())
        elif self.lustre is None:
            lines.append("queued 0, joined 0, not needed 0, rejected 0")
        if self.lustre is not None:
            lines.append(self.lustre.summary())
        if self.local_errors:
            lines[0] += f", errors {self.local_errors}"
        return lines

    def wait(self, summary: bool) -> None:
        if self.simfs is not None and self.client is not None:
            _wait(self.ctx, self.client, self.kind, self.simfs.labels, summary=summary,
                  deadline=self.args.deadline)
        if self.lustre is not None:
            _wait_lustre(self.ctx, self.lustre.fs, self.kind, self.lustre.sent, summary=summary,
                         deadline=self.args.deadline)
        elif self.simfs is None and summary:
            print("succeeded 0, failed 0, canceled 0", file=self.ctx.out)

    def close(self) -> None:
        if self.client is not None:
            self.client.__exit__(None, None, None)


def _entries(stream: IO[bytes], null: bool) -> Iterator[bytes]:
    """The entries of a file list as they arrive (a pipe is not read to
    its end first): lines, or with *null* NUL-terminated names (``find
    -print0``), which may hold any byte but NUL, newlines included."""
    if not null:
        yield from stream
        return
    read = getattr(stream, "read1", stream.read)
    rest = b""
    while chunk := read(65536):
        *names, rest = (rest + chunk).split(b"\0")
        yield from names
    if rest:
        yield rest


def _operands(args: argparse.Namespace, ctx: Context) -> Iterator[str]:
    """Positional operands, then the entries of --filelist (``-`` = stdin):
    one per line, or NUL-separated with -0. Names are bytes, decoded like
    argv (os.fsdecode), so any name the file system holds can be given."""
    yield from args.operands
    if args.filelist:
        if args.filelist == "-":
            stream: IO[bytes] = sys.stdin.buffer
            close = False
        else:
            try:
                stream = open(args.filelist, "rb")  # noqa: SIM115
            except OSError as e:
                raise CliError(f"cannot read the file list '{path_text(args.filelist)}': "
                               f"{e.strerror}") from None
            close = True
        try:
            for entry in _entries(stream, args.null):
                if args.null:
                    if entry:
                        yield os.fsdecode(entry)
                else:
                    line = entry[:-1] if entry.endswith(b"\n") else entry
                    if line.strip():
                        yield os.fsdecode(line)
        finally:
            if close:
                stream.close()


def _fid_mode(args: argparse.Namespace, ctx: Context) -> tuple[bool, str, SimFS | LustreFs | None]:
    """(operands are FIDs, fsname, tree or Lustre mount to read HSM state from)."""
    if args.mntpath:
        fs = ctx.mounted(args.mntpath)
        if isinstance(fs, LustreFs):
            if args.fsname:
                raise CliError(f"--fsname cannot be checked against the Lustre mount "
                               f"{path_text(args.mntpath)}; give --mntpath alone", EXIT_USAGE)
            return True, "", fs
        if args.fsname and args.fsname != fs.fsname:
            raise CliError(
                f"--fsname {args.fsname} does not match {path_text(args.mntpath)} (file system {fs.fsname})",
                EXIT_USAGE,
            )
        return True, fs.fsname, fs
    if args.fsname:
        if ctx.fs_mode == "lustre":
            raise CliError("on Lustre, FIDs go to the MDT: give --mntpath MNT (not --fsname)", EXIT_USAGE)
        return True, args.fsname, None
    if args.fid:
        raise CliError("--fid needs --fsname NAME or --mntpath DIR", EXIT_USAGE)
    return False, "", None


def _parse_fid_operand(text: str) -> Fid:
    try:
        return _fid(text)
    except argparse.ArgumentTypeError as e:
        raise PathError(str(e), EXIT_USAGE) from None


def _walk(ctx: Context, top: str) -> Iterator[str]:
    """Regular files under *top* (or *top* itself), in the tree's own order.
    Like ``find -P TOP -type f``: no symbolic link is followed, and those
    met under *top* are skipped (one given as *top* is refused later, as
    any link named in a request)."""
    try:
        st = os.lstat(top)
    except OSError as e:
        raise PathError(f"cannot stat '{path_text(top)}': {e.strerror}") from None
    except ValueError:
        raise PathError(f"cannot stat '{path_text(top)}': {_NUL_IN_NAME}") from None
    if not stat.S_ISDIR(st.st_mode):
        yield top
        return
    fs = ctx.tree_of(top)
    real_top = os.path.realpath(top)
    try:
        for entry in fs.walk(top):
            # Print paths the way the user named the directory.
            rel = os.path.relpath(os.fspath(entry), real_top)
            yield top if rel == "." else os.path.join(top, rel)
    except (OSError, ValueError) as e:
        raise PathError(f"cannot walk '{path_text(top)}': {getattr(e, 'strerror', None) or e}") from None


def cmd_request(args: argparse.Namespace, ctx: Context) -> int:
    """archive / restore / remove."""
    kind = args.command
    if kind == "restore":
        if args.prestage is not None:
            return _restore_list(args, ctx)
        if args.dry_run or args.no_wait:
            raise CliError(f"{'--dry-run' if args.dry_run else '--no-wait'} goes with --list FILE", EXIT_USAGE)
    archive_id = getattr(args, "archive_id", 0) or 0
    fid_mode, fsname, fs = _fid_mode(args, ctx)
    streaming = bool(args.recursive or args.filelist)
    if not (args.operands or args.fid or args.filelist):
        raise CliError(f"{kind}: give at least one PATH (or --fid, --filelist)", EXIT_USAGE)
    if args.recursive and fid_mode:
        raise CliError("-r walks directories; it cannot be used with FIDs", EXIT_USAGE)
    if args.null and not args.filelist:
        raise CliError("-0 (--null) reads --filelist NUL-separated; give --filelist FILE too",
                       EXIT_USAGE)

    mnt = args.mntpath or ""

    def targets() -> Iterator[Target | LustreTarget | PathError]:
        for fid in args.fid:
            try:
                yield _target_from_fid(fid, fsname, fs, mnt=mnt)
            except PathError as e:
                yield e
        for operand in _operands(args, ctx):
            try:
                if fid_mode:
                    yield _target_from_fid(_parse_fid_operand(operand), fsname, fs, operand, mnt=mnt)
                elif args.recursive:
                    for path in _walk(ctx, operand):
                        try:
                            yield _target_from_path(ctx, path)
                        except PathError as e:
                            yield e
                else:
                    yield _target_from_path(ctx, operand)
            except PathError as e:
                yield e

    requests = Requests(args, ctx, kind, archive_id)
    try:
        if not streaming:
            # Like lfs: every operand must be good, or nothing is sent.
            good: list[Target | LustreTarget] = []
            bad = False
            for t in targets():
                if isinstance(t, PathError):
                    ctx.error(str(t), t.code)
                    bad = True
                else:
                    good.append(t)
            if bad:
                ctx.error("nothing submitted", EXIT_FAILED)
                return ctx.status
            for t in good:
                requests.add(t)
            requests.flush()
            if args.wait:
                requests.wait(summary=False)
            return ctx.status

        for t in targets():
            if isinstance(t, PathError):
                requests.local_error(str(t), t.code if t.code != EXIT_USAGE else EXIT_FAILED)
            else:
                requests.add(t)
        requests.flush()
        for line in requests.summaries():
            print(line, file=ctx.out)
        ctx.out.flush()
        if args.wait:
            requests.wait(summary=True)
        return ctx.status
    finally:
        requests.close()


def _label(labels: dict[int, list[str]], action_id: int) -> str:
    names = labels.get(action_id) or [f"action {action_id}"]
    return names[0] if len(names) == 1 else f"{names[0]} (and {len(names) - 1} more)"


def wait_label(kind: str, waiting: int, running: int, done: int, failed: int = 0) -> str:
    """The --wait progress bar's label: ``archive: 12 waiting, 4 running,
    184 done`` (done: ended, whatever the outcome; ``, 2 failed`` counts
    those that failed or were canceled, when there are some)."""
    text = f"{kind}: {waiting} waiting, {running} running, {done} done"
    return text + (f", {failed} failed" if failed else "")


def _wait(ctx: Context, client: CoordinatorClient, kind: str,
          labels: dict[int, list[str]], summary: bool = False, deadline: float | None = None) -> None:
    """Block until every action ended (or *deadline* seconds passed), with a
    progress bar on a terminal. A coordinator failover is ridden through:
    the watch resumes on the new leader, nothing is submitted again."""
    from hsm.client import DeadlineExceeded
    from hsm.v1 import types_pb2 as tpb
    from hsmctl.output import format_bytes

    ids = list(labels)
    if not ids:
        if summary:
            print("succeeded 0, failed 0, canceled 0", file=ctx.out)
        return
    final: dict[int, tpb.Action] = {}
    running: dict[int, tpb.Action] = {}
    progress, task = _progress_bar(ctx, wait_label(kind, len(ids), 0, 0), len(ids), "")
    end = None if deadline is None else time.monotonic() + deadline
    failed = 0
    try:
        for start in range(0, len(ids), WATCH_CHUNK):
            left = None if end is None else max(0.0, end - time.monotonic())
            for action in client.watch(ids[start:start + WATCH_CHUNK], left):
                if action.state in (tpb.SUCCEEDED, tpb.FAILED, tpb.CANCELED):
                    running.pop(action.action_id, None)
                    if action.action_id not in final:
                        final[action.action_id] = action
                        if action.state == tpb.SUCCEEDED:
                            ctx.info(f"{_label(labels, action.action_id)}: "
                                     f"{kind.upper()} succeeded (action {action.action_id})")
                        else:
                            failed += 1
                elif action.state in (tpb.STARTED, tpb.CANCELING):
                    running[action.action_id] = action
                else:  # WAITING: not started yet, or given back to the queue
                    running.pop(action.action_id, None)
                if progress is not None and task is not None:
                    moved = sum(a.bytes_done for a in running.values())
                    total = sum(a.bytes_total for a in running.values())
                    label = wait_label(kind, len(ids) - len(final) - len(running), len(running),
                                       len(final), failed)
                    detail = f"{format_bytes(moved)}/{format_bytes(total)}" if total else ""
                    progress.update(task, completed=len(final), description=label, detail=detail)
    except DeadlineExceeded:
        pass
    finally:
        if progress is not None:
            progress.stop()
    counts = {tpb.SUCCEEDED: 0, tpb.FAILED: 0, tpb.CANCELED: 0}
    unfinished = [i for i in ids if i not in final]
    if unfinished:
        ctx.error(_gave_up(deadline, kind, unfinished))
    for action_id in ids:
        if action_id not in final:
            continue
        action = final[action_id]
        counts[action.state] += 1
        if action.state == tpb.SUCCEEDED:
            continue
        ctx.error(_ended_badly(_label(labels, action_id), kind, action))
    if summary:
        print(
            f"succeeded {counts[tpb.SUCCEEDED]}, failed {counts[tpb.FAILED]}, "
            f"canceled {counts[tpb.CANCELED]}",
            file=ctx.out,
        )


WAIT_POLL_FIRST = 0.05  # seconds: first re-poll of llapi_hsm_current_action under --wait
WAIT_POLL_MAX = 1.0  # ... doubling up to this


def _progress_bar(ctx: Context, description: str, total: int, detail: str | None = None) -> tuple[Any, Any]:
    """A live progress bar on stderr, started, and its task: (None, None)
    when stderr is not a terminal. *detail*: the first text of a column
    after the count (None: no such column)."""
    if not ctx.err.isatty():
        return None, None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    if detail is not None:
        columns.append(TextColumn("{task.fields[detail]}"))
    progress = Progress(*columns, TimeElapsedColumn(), console=Console(file=ctx.err), transient=False)
    task = (progress.add_task(description, total=total) if detail is None
            else progress.add_task(description, total=total, detail=detail))
    progress.start()
    return progress, task


def _ended_badly(label: str, kind: str, action: tpb.Action) -> str:
    """``LABEL: KIND action ID failed: why`` (or ``was canceled``)."""
    from hsm.client import state_name
    from hsm.v1 import types_pb2 as pb
    from hsmctl.output import error_text

    verb = "failed" if action.state == pb.FAILED else "was canceled"
    why = error_text(action.error, action.errno)
    return (f"{label}: {kind.upper()} action {action.action_id} {verb}"
            + (f": {why}" if why else f" ({state_name(action.state)})"))


def _gave_up(deadline: float | None, kind: str, unfinished: list[int]) -> str:
    shown = ", ".join(map(str, unfinished[:10])) + (" ..." if len(unfinished) > 10 else "")
    return (f"gave up waiting after {deadline:g} s: {len(unfinished)} {kind} action(s) not ended yet "
            f"(they go on; 'hsmctl actions' shows them): {shown}")


def _wait_lustre(ctx: Context, fs: LustreFs, kind: str, targets: list[LustreTarget],
                 summary: bool = False, deadline: float | None = None,
                 outcomes: Outcomes | None = None) -> None:
    """--wait on Lustre: poll ``llapi_hsm_current_action`` for each file
    until the MDT has nothing waiting or running for it (or *deadline*
    seconds passed), then judge from its HSM state (``hsmctl.lustre.outcome``).
    The MDT tells no errno and no action id through these calls, so a
    failure is said in terms of the file's state, and a cancel is a failure.
    *outcomes*, when given, records each file's end (restore --list)."""
    from hsmctl.lustre import outcome

    def fail(message: str) -> None:
        ctx.error(message)
        if outcomes is not None:
            outcomes.failed.append(message)

    if not targets:
        if summary:
            print("succeeded 0, failed 0", file=ctx.out)
        return
    upper = kind.upper()
    pending = list(dict.fromkeys(targets))
    succeeded = failed = 0
    progress, task = _progress_bar(ctx, wait_label(kind, len(pending), 0, 0), len(pending))

    def judge(t: LustreTarget) -> bool:
        try:
            flags, _archive_id = fs.state(t.path)
        except OSError as e:
            if e.errno == _errno.ENOENT and kind == "remove":
                return True  # the file went away: nothing left to remove it from
            fail(f"{t.label}: {upper} ended, but its HSM state cannot be read: {e.strerror or e}")
            return False
        why = outcome(kind, flags)
        if why is None:
            ctx.info(f"{t.label}: {upper} succeeded")
            if outcomes is not None:
                outcomes.done.append(t.label)
            return True
        from hsmctl.output import flag_words

        words = " ".join(flag_words(flags)) or "no flags"
        fail(f"{t.label}: {upper} failed or was canceled: {why} ({words})")
        return False

    end = None if deadline is None else time.monotonic() + deadline
    interval = WAIT_POLL_FIRST
    try:
        while pending:
            still: list[LustreTarget] = []
            waiting = running = 0
            for t in pending:
                try:
                    hca = fs.current_action(t.path)
                except OSError as e:
                    if e.errno != _errno.ENOENT:
                        fail(f"{t.label}: cannot get its HSM action: {e.strerror or e}")
                        failed += 1
                        continue
                    hca = None  # gone: judged below
                if hca is not None and hca.action != HUA.NONE and hca.state in (HPS.WAITING, HPS.RUNNING):
                    still.append(t)
                    if hca.state == HPS.RUNNING:
                        running += 1
                    else:
                        waiting += 1
                    continue
                if judge(t):
                    succeeded += 1
                else:
                    failed += 1
            pending = still
            if progress is not None and task is not None:
                done = succeeded + failed
                progress.update(task, completed=done,
                                description=wait_label(kind, waiting, running, done, failed))
            if not pending:
                break
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                break
            time.sleep(interval if left is None else min(interval, left))
            interval = min(interval * 2, WAIT_POLL_MAX)
    finally:
        if progress is not None:
            progress.stop()
    if pending:
        shown = ", ".join(t.label for t in pending[:10]) + (" ..." if len(pending) > 10 else "")
        ctx.error(f"gave up waiting after {deadline:g} s: the MDT still has {len(pending)} {kind} "
                  f"request(s) waiting or running (they go on; 'hsmctl action' shows them): {shown}")
        if outcomes is not None:
            outcomes.unfinished += len(pending)
    if summary:
        print(f"succeeded {succeeded}, failed {failed}", file=ctx.out)


# ---------------------------------------------------------------------------
# restore --list: pre-stage lists (hsmctl/prestage.py, docs/prestage.md)

#: without a terminal, restore --list prints a progress line each time
#: another quarter of the files ended, and at least this often while
#: actions change (seconds)
LIST_PROGRESS_EVERY = 30.0


@dataclass
class Outcomes:
    """How each file of a restore --list ended, for its summary."""

    done: list[str] = field(default_factory=list)  # labels of the files restored
    failed: list[str] = field(default_factory=list)  # one message per file, naming it
    unfinished: int = 0  # still waiting or running when --deadline passed


def _took(seconds: float) -> str:
    """``"2.4s"``, then as format_age: ``"5m07s"``, ``"3h02m"``."""
    from hsmctl.output import format_age

    return f"{seconds:.1f}s" if seconds < 60 else format_age(seconds)


class ListProgress:
    """restore --list's progress while it waits: on a terminal (stderr) a
    live bar (``restore: 3 waiting, 1 running, 6 done, 1 failed``, files
    ended of all, bytes restored of all, time); otherwise a plain line of
    the same words at the start, each time another quarter of the files
    ended, and at most every ``LIST_PROGRESS_EVERY`` seconds in between."""

    def __init__(self, ctx: Context, files: int, total_bytes: int, clock: Callable[[], float] = time.monotonic,
                 every: float = LIST_PROGRESS_EVERY) -> None:
        self.ctx = ctx
        self.files = files
        self.total_bytes = total_bytes
        self.clock = clock
        self.every = every
        self.start = clock()
        self.last_line = self.start
        self.quarter = 0
        self.live, self.task = _progress_bar(ctx, wait_label("restore", files, 0, 0), files, self._bytes(0))
        if self.live is None:
            self._line(wait_label("restore", files, 0, 0), 0, self.start)

    def _bytes(self, moved: int) -> str:
        from hsmctl.output import format_bytes

        return f"{format_bytes(moved)}/{format_bytes(self.total_bytes)}"

    def _line(self, label: str, moved: int, now: float) -> None:
        print(f"{label}; {self._bytes(moved)}, {_took(now - self.start)}", file=self.ctx.err)
        self.ctx.err.flush()
        self.last_line = now

    def update(self, waiting: int, running: int, done: int, failed: int, moved: int) -> None:
        label = wait_label("restore", waiting, running, done, failed)
        if self.live is not None:
            self.live.update(self.task, completed=done, description=label, detail=self._bytes(moved))
            return
        now = self.clock()
        quarter = done * 4 // self.files if self.files else 4
        if quarter > self.quarter or now - self.last_line >= self.every:
            self.quarter = max(quarter, self.quarter)
            self._line(label, moved, now)

    def error(self, message: str) -> None:
        """A file that failed, said at once (above the bar on a terminal)."""
        if self.live is not None:
            from rich.text import Text

            self.live.console.print(Text(plain_text(f"{PROG} restore: {message}")))
            self.ctx.fail(EXIT_FAILED)
        else:
            self.ctx.error(message)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()


def _wait_list(ctx: Context, client: CoordinatorClient, labels: dict[int, list[str]], sizes: dict[str, int],
               deadline: float | None, outcomes: Outcomes) -> None:
    """Watch the restores of a --list until all ended (or *deadline*
    seconds passed), showing ``ListProgress``; record each file's end in
    *outcomes*. A coordinator failover is ridden through, as by --wait."""
    from hsm.client import DeadlineExceeded
    from hsm.v1 import types_pb2 as tpb

    ids = list(labels)
    files = sum(len(v) for v in labels.values())

    def size(aid: int) -> int:
        return sum(sizes.get(label, 0) for label in labels[aid])

    progress = ListProgress(ctx, files, sum(size(aid) for aid in ids))
    final: set[int] = set()
    running: dict[int, int] = {}  # action id -> bytes done
    restored_bytes = 0
    end = None if deadline is None else time.monotonic() + deadline
    try:
        for start in range(0, len(ids), WATCH_CHUNK):
            left = None if end is None else max(0.0, end - time.monotonic())
            for action in client.watch(ids[start:start + WATCH_CHUNK], left):
                aid = action.action_id
                names = labels.get(aid, [f"action {aid}"])
                if action.state in (tpb.SUCCEEDED, tpb.FAILED, tpb.CANCELED):
                    running.pop(aid, None)
                    if aid in final:
                        continue
                    final.add(aid)
                    if action.state == tpb.SUCCEEDED:
                        outcomes.done.extend(names)
                        restored_bytes += size(aid)
                        for name in names:
                            ctx.info(f"{name}: RESTORE succeeded (action {aid})")
                    else:
                        for name in names:
                            message = _ended_badly(name, "restore", action)
                            outcomes.failed.append(message)
                            progress.error(message)
                elif action.state in (tpb.STARTED, tpb.CANCELING):
                    running[aid] = action.bytes_done
                else:  # WAITING: not started yet, or given back to the queue
                    running.pop(aid, None)
                ended = len(outcomes.done) + len(outcomes.failed)
                started = sum(len(labels.get(a, ())) for a in running)
                progress.update(files - ended - started, started, ended, len(outcomes.failed),
                                restored_bytes + sum(running.values()))
    except DeadlineExceeded:
        pass
    finally:
        progress.stop()
    unfinished = [aid for aid in ids if aid not in final]
    if unfinished:
        outcomes.unfinished += sum(len(labels[aid]) for aid in unfinished)
        ctx.error(_gave_up(deadline, "restore", unfinished))


def _restore_list(args: argparse.Namespace, ctx: Context) -> int:
    """``restore --list FILE``: check the list (any error: all of them on
    stderr, exit 2, nothing submitted), expand it, submit a restore for
    each file that needs one, wait with progress (unless --no-wait), and
    print the summary."""
    from hsmctl import prestage
    from hsmctl.output import format_bytes

    started = time.monotonic()
    given = [name for name, value in (("PATH operands", args.operands), ("--filelist", args.filelist),
                                      ("-r", args.recursive), ("-0", args.null), ("--fid", args.fid),
                                      ("--mntpath", args.mntpath), ("--fsname", args.fsname)) if value]
    if given:
        raise CliError(f"--list names the files itself: it takes no {', '.join(given)}", EXIT_USAGE)
    if args.no_wait and (args.wait or args.deadline is not None):
        raise CliError("--no-wait with --wait or --deadline: choose one", EXIT_USAGE)
    name = args.prestage
    shown = path_text(prestage.STDIN_NAME if name == prestage.STDIN else name)
    text = os.fsdecode(sys.stdin.buffer.read()) if name == prestage.STDIN else None
    plist = prestage.load(name, text)
    if plist.errors:
        for problem in plist.errors:
            print(plain_text(str(problem)), file=ctx.err)
        ctx.error(f"{shown}: {len(plist.errors)} error(s) in the pre-stage list; nothing was restored",
                  EXIT_USAGE)
        return ctx.status
    expansion = prestage.expand(plist.entries, time.time())
    for warning in expansion.warnings:
        print(plain_text(str(warning)), file=ctx.err)
    files = expansion.files
    if args.dry_run:
        for match in files:
            print(path_text(match.path), file=ctx.out)
        print(f"{PROG} restore: {shown} names {len(files)} file(s), {format_bytes(expansion.bytes)}; "
              "nothing submitted (--dry-run)", file=ctx.err)
        return ctx.status
    print(f"{PROG} restore: {shown} names {len(files)} file(s), {format_bytes(expansion.bytes)}",
          file=ctx.err)
    ctx.err.flush()

    outcomes = Outcomes()
    sizes: dict[str, int] = {}
    requests = Requests(args, ctx, "restore", 0)
    try:
        for match in files:
            try:
                target = _target_from_path(ctx, match.path)
            except PathError as e:
                requests.local_error(str(e), e.code if e.code != EXIT_USAGE else EXIT_FAILED)
                outcomes.failed.append(str(e))
                continue
            sizes[target.label] = match.size
            requests.add(target)
        requests.flush()
        for sub in (requests.simfs, requests.lustre):
            if sub is not None:
                outcomes.failed.extend(sub.refused)
        if args.no_wait:
            for line in requests.summaries():
                print(line, file=ctx.out)
            return ctx.status
        if requests.simfs is not None and requests.client is not None:
            _wait_list(ctx, requests.client, requests.simfs.labels, sizes, args.deadline, outcomes)
        if requests.lustre is not None:
            _wait_lustre(ctx, requests.lustre.fs, "restore", requests.lustre.sent, deadline=args.deadline,
                         outcomes=outcomes)
    finally:
        requests.close()
    online = (requests.simfs.counts["NOT_NEEDED"] if requests.simfs is not None else 0) + (
        requests.lustre.counts["not_needed"] if requests.lustre is not None else 0)
    restored_bytes = sum(sizes.get(label, 0) for label in outcomes.done)
    line = (f"restored {len(outcomes.done)} ({format_bytes(restored_bytes)}), already online {online}, "
            f"failed {len(outcomes.failed)}")
    if outcomes.unfinished:
        line += f", not done yet {outcomes.unfinished} (past --deadline; they go on)"
    print(f"{line}, in {_took(time.monotonic() - started)}", file=ctx.out)
    for message in outcomes.failed:
        print(plain_text(f"failed: {message}"), file=ctx.out)
    return ctx.status


# ---------------------------------------------------------------------------
# release, set, clear: local operations on the tree


def _release_refusal(fs: SimFS, path: str) -> str:
    """Why Lustre would refuse to release *path*, in words: what the HSM
    flags say (``hsmctl.lustre.release_flag_refusal``), else the data version."""
    from hsmctl.lustre import release_flag_refusal

    try:
        flags, _archive_id, archived_version = _hsm_state(fs, path)
        version = fs.data_version(path)
    except (OSError, ValueError):
        return "not allowed"
    why = release_flag_refusal(flags)
    if why is not None:
        return why
    if version != archived_version:
        return "the file changed since it was archived (data version differs)"
    return "not allowed in its HSM state"


def _release_lustre(fs: LustreFs, path: str) -> None:
    """lfs hsm_release: ``llapi_hsm_request`` with HUA_RELEASE for one file
    (the client releases it; a refusal is explained from its HSM flags)."""
    from hsmctl.lustre import release_refusal

    shown = path_text(path)
    try:
        fid = fs.request_fid(path)
        fs.release(path, fid)
    except OSError as e:
        if e.errno == _errno.EPERM:
            try:
                why = release_refusal(fs.state(path)[0])
            except OSError:
                why = "not allowed"
            raise PathError(f"cannot release '{shown}': {why} (Operation not permitted)") from None
        raise _lustre_error(e, path, f"cannot release '{shown}'") from None


def cmd_release(args: argparse.Namespace, ctx: Context) -> int:
    for path in args.paths:
        shown = path_text(path)
        try:
            fs = _request_file(ctx, path)
            if isinstance(fs, LustreFs):
                _release_lustre(fs, path)
                ctx.info(f"{shown}: released")
                continue
        except PathError as e:
            ctx.error(str(e), e.code)
            continue
        try:
            fs.release(path)
        except ValueError as e:
            ctx.error(f"cannot release '{shown}': {e}")
            continue
        except OSError as e:
            if e.errno == _errno.EPERM:
                ctx.error(f"cannot release '{shown}': {_release_refusal(fs, path)} "
                          "(Operation not permitted)")
            else:
                ctx.error(f"cannot release '{shown}': {e.strerror or e}")
            continue
        ctx.info(f"{shown}: released")
    return ctx.status


def cmd_flags(args: argparse.Namespace, ctx: Context) -> int:
    mask = 0
    if args.norelease:
        mask |= HS.NORELEASE
    if args.noarchive:
        mask |= HS.NOARCHIVE
    if args.dirty:
        mask |= HS.DIRTY
    if not mask:
        raise CliError("give at least one flag: --norelease, --noarchive or --dirty", EXIT_USAGE)
    for path in args.paths:
        try:
            fs = _query_file(ctx, path, "can't change hsm flags for")
            if isinstance(fs, LustreFs):
                try:
                    if args.command == "set":
                        fs.set_flags(path, int(mask), 0)
                    else:
                        fs.set_flags(path, 0, int(mask))
                except OSError as e:
                    raise _lustre_error(e, path, f"can't change hsm flags for {path_text(path)}") from None
                continue
            if args.command == "set":
                fs.set_flags(path, int(mask), 0)
            else:
                fs.set_flags(path, 0, int(mask))
        except PathError as e:
            ctx.error(str(e), e.code)
        except (OSError, ValueError) as e:
            ctx.error(f"can't change hsm flags for {path_text(path)}: "
                      f"{getattr(e, 'strerror', None) or e}")
    return ctx.status


# ---------------------------------------------------------------------------
# state, action


def cmd_state(args: argparse.Namespace, ctx: Context) -> int:
    rows = []
    for path in args.paths:
        archived_version: int | None
        try:
            fs = _query_file(ctx, path, "can't get hsm state for")
            if isinstance(fs, LustreFs):
                # llapi_hsm_state_get; liblustreapi does not give the
                # archived data version
                try:
                    flags, archive_id = fs.state(path)
                    fid = fs.fid_of(path) if args.json else None
                except OSError as e:
                    raise _lustre_error(e, path, f"can't get hsm state for {path_text(path)}") from None
                archived_version = None
            else:
                flags, archive_id, archived_version = _hsm_state(fs, path)
                fid = fs.fid_of(path)
        except PathError as e:
            ctx.error(str(e), e.code)
            continue
        except (OSError, ValueError) as e:
            ctx.error(f"can't get hsm state for {path_text(path)}: {getattr(e, 'strerror', None) or e}")
            continue
        if args.json:
            from hsmctl.output import flag_words

            rows.append({
                "path": path_text(path),
                "fid": str(fid),
                "flags": flags,
                "states": flag_words(flags),
                "archive_id": archive_id,
                "archived_version": archived_version,
            })
        else:
            print(format_hsm_state(path_text(path), flags, archive_id), file=ctx.out)
    if args.json:
        from hsmctl.output import write_json

        write_json(ctx.out, rows)
    return ctx.status


def _current_action(actions: Iterable[tpb.Action]) -> tpb.Action | None:
    """The action ``lfs hsm_action`` shows: the running one, else the oldest
    waiting. A CANCELING action is skipped: the MDT marks a request CANCELED
    as soon as its cancel is sent to the copytool (mdt_coordinator.c:
    mdt_hsm_add_hsr) and mdt_hsm_get_action shows only WAITING and STARTED
    requests, never a CANCEL one; so lfs prints the file's next action, or
    NOOP, never CANCEL."""
    from hsm.v1 import types_pb2 as tpb

    waiting = None
    for a in actions:
        if a.state == tpb.STARTED:
            return a
        if a.state == tpb.WAITING and (waiting is None or a.created < waiting.created):
            waiting = a
    return waiting


def action_view(action: tpb.Action | None) -> tuple[int | None, str, int, int, int]:
    """(HSMA kind, progress word, offset, length, bytes moved) for one action."""
    from hsm.v1 import types_pb2 as tpb

    if action is None:
        return None, "", 0, -1, 0
    offset, length = 0, -1
    if action.HasField("extent"):
        offset, length = action.extent.offset, action.extent.length
    if action.state in (tpb.STARTED, tpb.CANCELING):
        return int(action.kind), "running", offset, length, action.bytes_done
    return int(action.kind), "waiting", offset, length, 0


_HUA_TO_HSMA = {HUA.ARCHIVE: HSMA.ARCHIVE, HUA.RESTORE: HSMA.RESTORE, HUA.REMOVE: HSMA.REMOVE,
                HUA.CANCEL: HSMA.CANCEL}
_HUA_NAMES = {HUA.NONE: "NOOP", HUA.ARCHIVE: "ARCHIVE", HUA.RESTORE: "RESTORE",
              HUA.RELEASE: "RELEASE", HUA.REMOVE: "REMOVE", HUA.CANCEL: "CANCEL"}


def lustre_action_line(path: str, hca: Any) -> str:
    """``lfs hsm_action`` of one ``struct hsm_current_action`` (lfs.c:
    hsm_user_action2name, hsm_progress_state2name, the extent or, for a
    running ARCHIVE or RESTORE, the bytes moved the MDT puts in its length)."""
    if hca.action == HUA.NONE:
        return f"{path}: NOOP"
    kind = _HUA_TO_HSMA.get(hca.action)
    if kind is not None:
        return format_hsm_action(path, kind, hca.state, hca.offset, hca.length, hca.length)
    # RELEASE or unknown: printed like REMOVE (never a byte count), by name
    line = format_hsm_action(path, HSMA.REMOVE, hca.state, hca.offset, hca.length)
    rest = line[len(path) + len(": REMOVE"):]
    return f"{path}: {_HUA_NAMES.get(hca.action, 'UNKNOWN')}{rest}"


def _lustre_action_row(path: str, fid: Fid, hca: Any) -> dict[str, Any]:
    """--json of ``llapi_hsm_current_action``: no action id (the MDT's
    cookie is not shown to clients); state WAITING or STARTED, the MDT's
    record status; a running ARCHIVE/RESTORE reports its bytes moved where
    the extent's length would be, so length is null then."""
    name = _HUA_NAMES.get(hca.action, "UNKNOWN")
    if hca.action == HUA.NONE:
        return {"path": path, "fid": str(fid), "action": "NOOP", "progress": "", "action_id": None,
                "state": None, "offset": 0, "length": -1, "bytes_moved": 0}
    running = hca.state == HPS.RUNNING
    moving = running and hca.action in (HUA.ARCHIVE, HUA.RESTORE)
    length = None if moving else hca.length
    return {
        "path": path,
        "fid": str(fid),
        "action": name,
        "progress": "running" if running else "waiting" if hca.state == HPS.WAITING else "",
        "action_id": None,
        "state": "STARTED" if running else "WAITING" if hca.state == HPS.WAITING else None,
        "offset": hca.offset,
        "length": length,
        "bytes_moved": hca.length if moving else 0,
    }


def cmd_action(args: argparse.Namespace, ctx: Context) -> int:
    from hsm.client import state_name

    # (path, simfs tree and FID) to ask the coordinator, or (path, None,
    # line or JSON row) already answered by liblustreapi; in operand order
    resolved: list[tuple[str, SimFS | None, Any]] = []
    for path in args.paths:
        try:
            fs = _query_file(ctx, path, "can't get hsm action for")
            if isinstance(fs, LustreFs):
                try:
                    hca = fs.current_action(path)
                    row: Any = (_lustre_action_row(path_text(path), fs.fid_of(path), hca) if args.json
                                else lustre_action_line(path_text(path), hca))
                except OSError as e:
                    raise _lustre_error(e, path, f"can't get hsm action for {path_text(path)}") from None
                resolved.append((path_text(path), None, row))
            else:
                resolved.append((path_text(path), fs, fs.fid_of(path)))
        except PathError as e:
            ctx.error(str(e), e.code)
        except (OSError, ValueError) as e:
            ctx.error(f"can't get hsm action for {path_text(path)}: {getattr(e, 'strerror', None) or e}")
    rows: list[Any] = []
    if resolved:
        import contextlib

        asks = any(fs is not None for _p, fs, _x in resolved)  # the coordinator, for simfs
        with _client(args, ctx) if asks else contextlib.nullcontext() as client:
            for path, sfs, answer in resolved:
                if sfs is None:
                    if args.json:
                        rows.append(answer)
                    else:
                        print(answer, file=ctx.out)
                    continue
                assert client is not None
                fid = answer
                action = _current_action(client.list_actions(fid=fid, fsname=sfs.fsname))
                kind, word, offset, length, moved = action_view(action)
                if args.json:
                    names: dict[int, str] = {HSMA.ARCHIVE: "ARCHIVE", HSMA.RESTORE: "RESTORE",
                                             HSMA.REMOVE: "REMOVE"}
                    rows.append({
                        "path": path,
                        "fid": str(fid),
                        "action": names.get(kind, "NOOP") if kind is not None else "NOOP",
                        "progress": word,
                        "action_id": action.action_id if action is not None else None,
                        "state": state_name(action.state) if action is not None else None,
                        "offset": offset,
                        "length": length,
                        "bytes_moved": moved,
                        "queue_position": (action.queue_position or None) if action is not None else None,
                        "queue_length": (action.queue_length or None) if action is not None else None,
                        "start_estimate": (action.start_estimate or None) if action is not None else None,
                    })
                else:
                    from hsmctl.output import queue_words

                    line = format_hsm_action(path, kind, word, offset, length, moved)
                    if args.queue and action is not None and action.queue_position:
                        line += queue_words(action)
                    print(line, file=ctx.out)
    if args.json:
        from hsmctl.output import write_json

        write_json(ctx.out, rows)
    return ctx.status


# ---------------------------------------------------------------------------
# cancel


def cmd_cancel(args: argparse.Namespace, ctx: Context) -> int:
    from hsm.client import cancel_outcome_name, fid_to_proto
    from hsm.v1 import coordinator_pb2 as cpb

    selectors: list[cpb.FidSelector] = []
    # on Lustre, lfs hsm_cancel: HUA_CANCEL of the FIDs to the MDT, which
    # sends the cancel on (hsm-bridge turns it into the coordinator's cancel)
    at_mdt: list[LustreTarget] = []
    fsname = args.fsname or ""
    if args.mntpath:
        mfs = ctx.mounted(args.mntpath)
        if isinstance(mfs, LustreFs):
            if args.fsname:
                raise CliError(f"--fsname cannot be checked against the Lustre mount "
                               f"{path_text(args.mntpath)}; give --mntpath alone", EXIT_USAGE)
            dev = os.stat(args.mntpath).st_dev
            at_mdt.extend(LustreTarget(str(fid), args.mntpath, dev, fid, None) for fid in args.fid)
        else:
            fsname = mfs.fsname
    if not at_mdt:
        for fid in args.fid:
            selectors.append(cpb.FidSelector(fsname=fsname, fid=fid_to_proto(fid)))
    bad = False
    for path in args.paths:
        try:
            fs = _request_file(ctx, path)
            if isinstance(fs, LustreFs):
                try:
                    fid = fs.request_fid(path)
                    dev = os.stat(path).st_dev
                except OSError as e:
                    raise _lustre_error(e, path, f"cannot read FID of '{path_text(path)}'") from None
                at_mdt.append(LustreTarget(path_text(path), path, dev, fid, None))
                continue
            selectors.append(cpb.FidSelector(fsname=fs.fsname, fid=fid_to_proto(fs.fid_of(path))))
        except PathError as e:
            message = str(e)
            if path.isdigit() and not os.path.lexists(path):
                message += f" (an action id? give it with --id {path})"
            ctx.error(message, e.code)
            bad = True
        except (OSError, ValueError) as e:
            ctx.error(f"cannot read FID of '{path_text(path)}': {getattr(e, 'strerror', None) or e}")
            bad = True
    if bad:
        ctx.error("nothing canceled")
        return ctx.status
    ids = list(dict.fromkeys(i for group in args.ids for i in group))
    if not (selectors or ids or args.all or at_mdt):
        raise CliError("cancel what? give PATH..., --fid FID, --id ACTION_ID or --all", EXIT_USAGE)
    if at_mdt:
        mdt = LustreSubmitter(ctx, ctx.lustre(), "cancel", 0, b"", DEFAULT_BATCH)
        for t in at_mdt:
            mdt.add(t)
        mdt.flush()
        if not (selectors or ids or args.all):
            return ctx.status
    with _client(args, ctx) as client:
        results = client.cancel(action_ids=ids, fids=selectors, all=args.all,
                                reason=args.reason or f"canceled by {PROG} (uid {os.getuid()})")
    for r in results:
        outcome = cancel_outcome_name(r.outcome)
        if outcome == "NOT_FOUND":
            ctx.error(f"action {r.action_id}: no such action")
        elif outcome == "CANCEL_DONE":
            ctx.info(f"action {r.action_id}: canceled")
        elif outcome == "CANCEL_SENT":
            ctx.info(f"action {r.action_id}: canceling (the agent was told to stop)")
        else:
            ctx.info(f"action {r.action_id}: already ended, nothing to cancel")
    if not results:
        ctx.info("nothing to cancel")
    return ctx.status


# ---------------------------------------------------------------------------
# status, agents, actions


def cmd_control(args: argparse.Namespace, ctx: Context) -> int:
    """Like hsm_control: show the mode, or set it on every shard."""
    with _client(args, ctx) as client:
        mode = client.status().control if args.mode is None else client.control(args.mode)
    if args.json:
        from hsmctl.output import write_json

        write_json(ctx.out, {"control": mode})
    else:
        ctx.out.write(f"{mode}\n")
    return ctx.status


def cmd_agent(args: argparse.Namespace, ctx: Context) -> int:
    """Drain an agent (no new work; its running actions finish) or give it
    work again."""
    from hsmctl.output import held
    drain = args.op == "drain"
    with _client(args, ctx) as client:
        reply = client.drain_agent(args.agent_id, drain, force=args.force)
        end = None if args.deadline is None else time.monotonic() + args.deadline
        while drain and args.wait and held(reply.running):
            if end is not None and time.monotonic() >= end:
                ctx.error(f"agent {args.agent_id}: still running {_running_text(reply.running)} after "
                          f"{args.deadline:g} s; it is drained (no new work), not idle yet")
                break
            time.sleep(DRAIN_POLL)
            reply = client.drain_agent(args.agent_id, drain, force=True)
    if args.json:
        from hsmctl.output import drain_to_dict, write_json

        write_json(ctx.out, drain_to_dict(args.agent_id, drain, reply))
    elif ctx.status != EXIT_OK:
        pass  # gave up waiting: said on stderr
    elif not drain:
        ctx.out.write(f"agent {args.agent_id}: active, given work again\n")
    elif held(reply.running):
        ctx.out.write(f"agent {args.agent_id}: draining, no new work; still running "
                      f"{_running_text(reply.running)}\n")
    else:
        ctx.out.write(f"agent {args.agent_id}: drained, nothing running; it can be stopped safely\n")
    return ctx.status


def _running_text(slots: Any) -> str:
    from hsmctl.output import held

    parts = [f"{n} {name}" for name, n in (("archive", slots.archive), ("restore", slots.restore),
                                            ("remove", slots.remove)) if n]
    return f"{held(slots)} action(s) ({', '.join(parts)})"


def cmd_status(args: argparse.Namespace, ctx: Context) -> int:
    from hsm.client import CoordinatorError
    from hsmctl.output import make_console, render_status, status_to_dict, write_json

    with _client(args, ctx) as client:
        status = client.status()
        try:
            info = client.cluster_info()
        except CoordinatorError as e:
            log.debug("cluster info failed: %s", e)
            info = None
    if args.json:
        write_json(ctx.out, status_to_dict(status, info))
    else:
        render_status(make_console(ctx.out), status, info)
    return ctx.status


def cmd_events(args: argparse.Namespace, ctx: Context) -> int:
    from hsmctl import events

    with _client(args, ctx) as client:
        return events.run(client, args, ctx.out, ctx.err)


def cmd_policy(args: argparse.Namespace, ctx: Context) -> int:
    from hsmctl import policy

    try:
        if args.op == "check" and getattr(args, "local", False):
            return policy.run(args, None, ctx.out, ctx.err)
        with _client(args, ctx) as client:
            return policy.run(args, client, ctx.out, ctx.err)
    except ValueError as e:
        from hsm.client import CoordinatorError
        if isinstance(e, CoordinatorError):
            raise
        raise CliError(str(e), EXIT_USAGE) from None


def cmd_catalog(args: argparse.Namespace, ctx: Context) -> int:
    from hsmctl import catalog

    if args.op == "ls":
        with _client(args, ctx) as client:
            return catalog.ls(client, args, ctx.out)
    if args.op == "rm":
        return _catalog_rm(args, ctx)
    if args.op == "restore":
        return _catalog_restore(args, ctx)
    if args.op == "orphans":
        return _catalog_orphans(args, ctx)
    if args.op == "compact":
        return _catalog_compact(args, ctx)
    files: list[tuple[str, str, Fid]] = []  # (label, fsname, FID)
    for operand in args.files:
        if not os.path.lexists(operand) and not os.path.isabs(operand):
            try:
                files.append((operand, args.fsname, _parse_fid_operand(operand)))
                continue
            except PathError:
                pass  # neither a file nor a FID: said below as a path
        try:
            target = _target_from_path(ctx, operand)
        except PathError as e:
            ctx.error(str(e), e.code)
            continue
        files.append((target.label, getattr(target, "fsname", "") or args.fsname, target.fid))
    if not files:
        return ctx.status
    blocks: list[dict[str, Any]] = []
    with _client(args, ctx) as client:
        for label, fsname, fid in files:
            entries = client.copies_of(fid, fsname)
            if not entries:
                ctx.fail(EXIT_FAILED)
            if args.json:
                blocks.append({"file": label, "fsname": fsname, "fid": str(fid),
                               "copies": [catalog.entry_to_dict(e) for e in entries]})
            else:
                for line in catalog.stat_lines(fsname, f"{label} {fid}" if label != str(fid) else label, entries):
                    print(plain_text(line), file=ctx.out)
    if args.json:
        from hsmctl.output import write_json

        write_json(ctx.out, blocks)
    return ctx.status


def _archive_root(args: argparse.Namespace) -> Path:
    """``--archive-root`` as a Path, checked to be a directory."""
    from pathlib import Path as _Path

    root = _Path(args.archive_root)
    if not root.is_dir():
        raise CliError(f"{path_text(str(root))} is not a directory (--archive-root)")
    return root


def _catalog_compact(args: argparse.Namespace, ctx: Context) -> int:
    """``catalog compact``: packed containers rewritten once their dead share passed --dead."""
    from hsmctl import catalog

    root = _archive_root(args)
    with _client(args, ctx) as client:
        entries = list(client.list_copies(archive_id=args.archive_id))
        records = catalog.compact(root, entries, args.archive_id, client.relocate_copies, time.time(),
                                  args.min_age, args.dead, args.dry_run)
    if args.json:
        from hsmctl.output import write_json

        write_json(ctx.out, records)
        return ctx.status
    tally: dict[str, int] = {}
    for r in records:
        tally[r["outcome"]] = tally.get(r["outcome"], 0) + 1
        if r["outcome"] in ("young", "kept"):
            continue
        line = f"{r['outcome']} {r['container']}"
        if "dead" in r:
            line += f" ({r['dead']:.0%} dead, {r['files']} live files)"
        if r.get("to"):
            line += f" -> {r['to']}"
        if r.get("reason"):
            line += f": {r['reason']}"
        print(plain_text(line), file=ctx.out)
        if r["outcome"] in ("skipped", "partly moved", "unreadable"):
            ctx.fail(EXIT_FAILED)
    print(f"{len(records)} containers: " + ", ".join(f"{n} {k}" for k, n in sorted(tally.items())), file=ctx.out)
    return ctx.status


def _catalog_orphans(args: argparse.Namespace, ctx: Context) -> int:
    """``catalog orphans``: the objects of a posix archive no catalog copy
    names and whose file is gone; deleted with ``--remove --yes``."""
    from hsmctl import catalog

    if args.remove != args.yes:
        raise CliError("--remove and --yes go together (without them: a report, nothing deleted)", EXIT_USAGE)
    root = _archive_root(args)
    fs = ctx.mounted(args.mntpath)

    def exists(fid: Fid) -> bool:
        try:
            _target_from_fid(fid, "", fs, mnt=args.mntpath)
        except PathError:
            return False
        return True

    with _client(args, ctx) as client:
        named: set[str] = set()
        for e in client.list_copies(archive_id=args.archive_id):
            named.add(e.copy.key)
            if e.copy.container:
                named.add(e.copy.container)
    found = catalog.find_orphans(root, named, exists, time.time(), args.min_age)
    removed = 0
    if args.remove:
        for key in found["orphans"]:
            try:
                os.unlink(root / key)
                removed += 1
            except FileNotFoundError:
                continue
            except OSError as e:
                ctx.error(f"cannot delete {path_text(str(root / key))}: {e.strerror or e}", EXIT_FAILED)
    if args.json:
        from hsmctl.output import write_json

        write_json(ctx.out, {**found, "removed": removed})
        return ctx.status
    verb = "removed" if args.remove else "orphan"
    for key in found["orphans"]:
        print(plain_text(f"{verb} {key}"), file=ctx.out)
    for key in found["kept_file_exists"]:
        print(plain_text(f"kept {key}: no catalog copy names it, but its file exists"), file=ctx.out)
    print(f"{len(found['orphans'])} orphans ({removed} removed), kept {len(found['kept_file_exists'])} "
          f"(file exists), {len(found['kept_young'])} (younger than {args.min_age:g} s)", file=ctx.out)
    return ctx.status


def _catalog_restore(args: argparse.Namespace, ctx: Context) -> int:
    """``catalog restore --to PATH FID``: a released file at PATH with
    the copy's size, owner and mode, given the deleted file's copies, then
    restored from them (the restore reads the object the catalog names).
    On Lustre the file is made by ``llapi_hsm_import`` and restored through
    the MDT, in the file system the copy was made from."""
    import stat as _stat

    from hsm.simfs import SimFS as _SimFS
    from hsm.v1 import types_pb2 as tpb

    try:
        old = Fid.parse(args.fid)
    except FidError as e:
        raise CliError(f"invalid FID '{plain_text(args.fid)}': {e}", EXIT_USAGE) from None
    dest = os.path.abspath(args.to)
    label = path_text(dest)
    if os.path.lexists(dest):
        raise CliError(f"{label} exists: catalog restore creates a new file and never replaces one")
    fs = ctx.mounted(os.path.dirname(dest))
    lustre = not isinstance(fs, _SimFS)
    with _client(args, ctx) as client:
        if lustre:
            # the file system the copy was made from: the new file is made there
            entries = client.copies_of(old, args.fsname or "")
            fsnames = sorted({e.fsname for e in entries})
            if len(fsnames) > 1:
                raise CliError(f"the catalog has copies of {old} in several file systems ({', '.join(fsnames)}): "
                               "say which with --fsname", EXIT_USAGE)
            fsname = args.fsname or (fsnames[0] if fsnames else "")
        else:
            fsname = args.fsname or fs.fsname
            entries = client.copies_of(old, fsname)
        chosen = [e for e in entries if not args.archive_id or e.copy.archive_id == args.archive_id]
        if not chosen:
            where = f" in archive id {args.archive_id}" if args.archive_id else ""
            raise CliError(f"the catalog has no copy of {old}{where}" + (f" in file system {fsname}" if fsname else ""))
        c = chosen[0].copy
        still = _still_named(fs, old, dest) if lustre or fsname == fs.fsname else None
        if still is not None:
            raise CliError(f"{old} still names {path_text(still)}: catalog restore recreates deleted "
                           "files only (restore that one with hsmctl restore)")
        perms = c.mode & 0o7777 if c.mode else 0o644
        try:
            if lustre:
                new = fs.import_released(dest, c.archive_id, c.size, c.uid, c.gid, _stat.S_IFREG | perms,
                                         time.time_ns())
            else:
                new = fs.import_released(dest, c.size, c.archive_id, c.uid, c.gid, perms)
        except OSError as e:
            raise CliError(f"cannot create {label}: {e.strerror or e}") from None
        new_fsname = fsname if lustre else fs.fsname
        try:
            client.move_copies(fsname, old, new_fsname, new)
        except Exception:
            os.unlink(dest)  # no copy is its: the stub would be a file without data
            raise
        print(plain_text(f"recreated {label} as {new} (released, {c.size} bytes, {c.uid}:{c.gid}, mode {perms:04o}) "
                         f"from the copy of {old} in archive {c.archive_id}"), file=ctx.out)
        if lustre:
            return _catalog_restore_lustre(args, ctx, fs, dest, label, new, c.archive_id)
        (res,) = client.submit([client.submit_item(fs.fsname, new, "restore", c.archive_id)])
        if not res.action_id:
            raise CliError(f"the restore of {label} was refused: {res.reason}")
        if args.no_wait:
            print(plain_text(f"restoring {label} (action {res.action_id})"), file=ctx.out)
            return ctx.status
        from hsm.client import DeadlineExceeded

        try:
            done = client.wait([res.action_id], deadline=args.timeout)[res.action_id]
        except DeadlineExceeded:
            raise CliError(f"gave up waiting for the restore of {label} (action {res.action_id}) after "
                           f"{args.timeout:g} s; it goes on") from None
        if done.state != tpb.SUCCEEDED:
            raise CliError(f"the restore of {label} (action {res.action_id}) ended {tpb.ActionState.Name(done.state)}"
                           f": {done.error or done.errno}")
        print(plain_text(f"restored {label} (action {res.action_id})"), file=ctx.out)
    return ctx.status


def _still_named(fs: SimFS | LustreFs, fid: Fid, dest: str) -> str | None:
    """The path *fid* still names in *fs* (on Lustre: the file system that
    holds *dest*'s directory), or None when it names no file."""
    from hsm.simfs import SimFS as _SimFS

    if isinstance(fs, _SimFS):
        try:
            return str(fs.path_of(fid))
        except (FileNotFoundError, ValueError):
            return None
    try:
        return fs.api.fid2path(os.path.dirname(dest), fid)
    except OSError as e:
        if e.errno == _errno.ENOENT:
            return None
        raise CliError(f"cannot tell whether {fid} still names a file: {e.strerror or e}") from None


def _catalog_restore_lustre(args: argparse.Namespace, ctx: Context, fs: LustreFs, dest: str, label: str,
                            new: Fid, archive_id: int) -> int:
    """The restore of a file ``catalog restore`` imported on Lustre: a
    RESTORE request to the MDT (which the bridge hands to the coordinator,
    whose catalog names the object), waited for unless --no-wait."""
    target = LustreTarget(label, dest, os.stat(dest).st_dev, new, fs.state(dest))
    try:
        fs.request(dest, HUA.RESTORE, archive_id, [new])
    except OSError as e:
        raise CliError(f"cannot send the RESTORE request of {label} to the MDT: {e.strerror or e}") from None
    if args.no_wait:
        print(plain_text(f"restoring {label} (RESTORE sent to the MDT)"), file=ctx.out)
        return ctx.status
    _wait_lustre(ctx, fs, "restore", [target], deadline=args.timeout)
    if ctx.status == 0:
        print(plain_text(f"restored {label}"), file=ctx.out)
    return ctx.status


def _catalog_rm(args: argparse.Namespace, ctx: Context) -> int:
    """``catalog rm``: remove actions for the copies the filters keep,
    but never for a released file (its copy holds its only data) nor for
    one that cannot be found (its HSM state is unknown)."""
    from hsm.simfs import SimFS as _SimFS
    from hsmctl import catalog

    fs = ctx.mounted(args.mntpath)
    fsname = fs.fsname if isinstance(fs, _SimFS) else ""
    with _client(args, ctx) as client:
        entries = list(catalog.matching(client, args))  # all first: the removes change the catalog
    kept = gone = elsewhere = 0
    by_archive: dict[int, list[Target | LustreTarget]] = {}
    for e in entries:
        fid = Fid(e.fid.seq, e.fid.oid, e.fid.ver)
        label = path_text(e.copy.path) if e.copy.path else str(fid)
        if fsname and e.fsname != fsname:
            elsewhere += 1
            continue
        try:
            target = _target_from_fid(fid, e.fsname, fs, label, mnt=args.mntpath)
        except PathError as err:
            if not args.gone:
                gone += 1
                print(plain_text(f"skipped {label} {fid} (archive {e.copy.archive_id}): {err}"), file=ctx.out)
                continue
            # deleted: its copy is removed all the same (no HSM state to check or change)
            target = Target(label, e.fsname, fid, None)
            if args.dry_run:
                print(plain_text(f"would remove {label} {fid} (archive {e.copy.archive_id}): the file is gone"),
                      file=ctx.out)
                by_archive.setdefault(e.copy.archive_id, []).append(target)
                continue
        if target.hsm is not None and target.hsm[0] & HS.RELEASED:
            kept += 1
            print(plain_text(f"kept {label} {fid} (archive {e.copy.archive_id}): released, its copy is its "
                             "only data"), file=ctx.out)
            continue
        if args.dry_run:
            print(plain_text(f"would remove {label} {fid} (archive {e.copy.archive_id})"), file=ctx.out)
        by_archive.setdefault(e.copy.archive_id, []).append(target)
    chosen = sum(len(v) for v in by_archive.values())
    tail = f"kept {kept} (released), skipped {gone} (gone), {elsewhere} (other file system)"
    if args.dry_run:
        print(f"would remove {chosen} copies; {tail}; nothing changed (--dry-run)", file=ctx.out)
        return ctx.status
    args.data, args.batch_size = b"", 1000
    lines: list[str] = []
    for archive_id, targets in sorted(by_archive.items()):
        requests = Requests(args, ctx, "remove", archive_id)
        try:
            for target in targets:
                requests.add(target)
            requests.flush()
            lines += requests.summaries()
        finally:
            requests.close()
    print(f"removing {chosen} copies: {'; '.join(lines) or 'nothing to do'}; {tail}", file=ctx.out)
    return ctx.status


def cmd_space(args: argparse.Namespace, ctx: Context) -> int:
    from hsmctl import space

    return space.run(args, ctx.out, ctx.err)


def cmd_agents(args: argparse.Namespace, ctx: Context) -> int:
    from hsmctl.output import agent_to_dict, agents_table, emit, make_console, write_json

    with _client(args, ctx) as client:
        agents = list(client.status().agents)
    if args.json:
        write_json(ctx.out, [agent_to_dict(a) for a in sorted(agents, key=lambda a: a.agent_id)])
    else:
        emit(make_console(ctx.out), agents_table(agents))
    return ctx.status


def cmd_actions(args: argparse.Namespace, ctx: Context) -> int:
    from hsmctl.output import action_header, action_line, action_to_dict, write_json_array

    states = [s for group in args.state for s in group]
    kinds = [k for group in args.kind for k in group]
    if args.fsname and not args.fid:
        raise CliError("--fsname filters --fid; give --fid too", EXIT_USAGE)
    with _client(args, ctx) as client:
        actions = client.list_actions(
            states=states,
            kinds=kinds,
            fid=args.fid,
            fsname=args.fsname or "",
            agent=args.agent or "",
            include_terminal=args.all,
        )
        if args.json:
            write_json_array(ctx.out, (action_to_dict(a) for a in actions))
        else:
            now = time.time()
            header = False
            for a in actions:
                if not header:
                    print(action_header(), file=ctx.out)
                    header = True
                print(action_line(a, now), file=ctx.out)
    return ctx.status


def cmd_top(args: argparse.Namespace, ctx: Context) -> int:
    """A live view on a terminal (until q or Ctrl-C), else one snapshot."""
    from hsmctl import top

    with _client(args, ctx) as client:
        return top.run(client, ctx.out, interval=args.interval, transfers=args.transfers)


# ---------------------------------------------------------------------------
# The parser


def _globals(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Options accepted before and after the subcommand."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--coordinators", metavar="ADDR[,ADDR]",
        default=default(os.environ.get("HSM_COORDINATORS") or DEFAULT_COORDINATORS),
        help="coordinator replicas, HOST:PORT,... (env HSM_COORDINATORS, "
             f"default {DEFAULT_COORDINATORS})",
    )
    parser.add_argument(
        "--cluster", metavar="ID", type=_cluster_id, default=default(None),
        help="talk only to the cluster with this id (env HSM_CLUSTER; hsmctl status prints it)",
    )
    parser.add_argument("--tls-ca", metavar="PEM", default=default(None),
                        help="mutual TLS: the cluster CA's certificate (env HSM_TLS_CA)")
    parser.add_argument("--tls-cert", metavar="PEM", default=default(None),
                        help="mutual TLS: your certificate (env HSM_TLS_CERT; hsm-coordinator certs issue)")
    parser.add_argument("--tls-key", metavar="PEM", default=default(None),
                        help="mutual TLS: its key (env HSM_TLS_KEY)")
    parser.add_argument(
        "--timeout", type=_positive_float, metavar="SECONDS", default=default(30.0),
        help="give up on the coordinator after this long (default 30)",
    )
    parser.add_argument(
        "--fs", choices=FS_MODES, default=default(None),
        help="which paths are Lustre: auto (simfs trees are simfs, a Lustre client mount is "
             "Lustre), lustre (every path through liblustreapi), simfs (never load liblustreapi); "
             f"env {ENV_FS}, default auto (see 'on Lustre' in hsmctl --help)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", default=default(False),
                        help="say what was done for each file")
    parser.add_argument("--debug", action="store_true", default=default(False),
                        help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Queue and inspect HSM actions of the hsm-coordinator cluster "
                    "(like lfs hsm_*).",
        epilog=EPILOG,
        formatter_class=fmt,
    )
    _globals(parser, suppress=False)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    _globals(common, suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str, func: Callable[[argparse.Namespace, Context], int],
            **kwargs: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common],
                           formatter_class=fmt, **kwargs)
        p.set_defaults(func=func, _parser=p)
        return p

    for name, text in (
        ("archive", "copy files to the archive (lfs hsm_archive)"),
        ("restore", "bring released files back (lfs hsm_restore); -r pre-stages a tree"),
        ("remove", "delete the archived copies of files (lfs hsm_remove)"),
    ):
        p = add(name, text, cmd_request, epilog=(
            "Files are given by path; with --mntpath or --fsname the operands are FIDs "
            "instead.\nWith -r or --filelist, requests are sent in batches while "
            "reading, bad entries are\nreported and skipped, and a summary line is "
            "printed; otherwise a bad path stops\nthe command before anything is sent. "
            "A symbolic link is refused, not followed (like lfs)."
        ))
        if name != "restore":
            p.add_argument("-a", "--archive-id", type=_archive_id, default=0, metavar="N",
                           help="archive to use (default: the file's own, else 1)")
        else:
            p.epilog = (p.epilog or "") + RESTORE_LIST_EPILOG
            p.add_argument("--list", dest="prestage", metavar="FILE",
                           help="pre-stage list FILE (- for stdin): paths, globs (* ? [...] **), "
                                "directories, filters (--newer/--older WHEN, --size +N/-N), set, "
                                "include; see below and docs/prestage.md. Not -l (that is --filelist). "
                                "Waits for the restores unless --no-wait")
            p.add_argument("--dry-run", action="store_true",
                           help="with --list: check and expand the list, print the files it names "
                                "(one per line), submit nothing")
            p.add_argument("--no-wait", action="store_true",
                           help="with --list: submit the restores and return (summary: queued, "
                                "joined, not needed, rejected)")
        p.add_argument("-D", "--data", type=_data, default=b"", metavar="K=V,...",
                       help="hints for the mover, e.g. tag=project1")
        p.add_argument("-l", "--filelist", metavar="FILE",
                       help="read paths (or FIDs) from FILE, one per line; - for stdin")
        p.add_argument("-0", "--null", action="store_true",
                       help="--filelist entries end with NUL, not newline (find -print0, xargs -0): "
                            "names may hold newlines")
        # An option named like a negative number (-0) makes argparse read
        # every "-3" as an option: "-a -3" would say "expected one argument"
        # instead of "invalid archive id '-3'". "-0" itself is still matched
        # by name; values like "-3" go back to being values.
        p._has_negative_number_optionals.clear()
        p.add_argument("-r", "--recursive", action="store_true",
                       help="operands are directories: every regular file under them "
                            "(symbolic links are not followed)")
        p.add_argument("-m", "--mntpath", metavar="DIR",
                       help="operands are FIDs on the simfs tree or Lustre mount at DIR")
        p.add_argument("--fsname", type=_fsname, metavar="NAME",
                       help="operands are FIDs of file system NAME (HSM state not checked)")
        p.add_argument("--fid", type=_fid, action="append", default=[], metavar="FID",
                       help="a file by FID (repeatable); needs --fsname or --mntpath")
        p.add_argument("--wait", action="store_true",
                       help="block until every action ended; fail if any failed (on Lustre: "
                            "polls the MDT, then judges by the file's HSM state; see hsmctl --help)")
        p.add_argument("--deadline", type=_positive_float, metavar="SECONDS",
                       help=f"with --wait{' or --list' if name == 'restore' else ''}: stop waiting "
                            "after SECONDS (exit 1; the actions go on)")
        p.add_argument("--batch-size", type=_batch_size, default=DEFAULT_BATCH, metavar="N",
                       help=f"items per request (default {DEFAULT_BATCH})")
        p.add_argument("operands", nargs="*", metavar="PATH")

    p = add("release", "drop the data of archived files, keeping size and metadata "
            "(lfs hsm_release; done by this client, not by the coordinator)", cmd_release)
    p.add_argument("paths", nargs="+", metavar="PATH")

    p = add("cancel", "cancel the actions of files, by FID, by id, or all (lfs hsm_cancel)",
            cmd_cancel)
    p.add_argument("--fid", type=_fid, action="append", default=[], metavar="FID",
                   help="cancel every action of this FID (repeatable)")
    p.add_argument("--fsname", type=_fsname, metavar="NAME", help="file system of --fid")
    p.add_argument("-m", "--mntpath", metavar="DIR",
                   help="simfs tree of --fid, or Lustre mount (then the cancel goes to its MDT)")
    p.add_argument("--id", dest="ids", type=_action_ids, action="append", default=[],
                   metavar="ID[,ID...]",
                   help="cancel these actions (repeatable: --id 1 --id 2, or --id 1,2)")
    p.add_argument("--all", action="store_true", help="cancel every non-terminal action")
    p.add_argument("--reason", metavar="TEXT", help="recorded in the actions' error text")
    p.add_argument("paths", nargs="*", metavar="PATH")

    p = add("state", "HSM flags of files, exactly as lfs hsm_state prints them", cmd_state)
    p.add_argument("--json", action="store_true", help="JSON output (see hsmctl --help)")
    p.add_argument("paths", nargs="+", metavar="PATH")

    p = add("action", "current HSM action of files, exactly as lfs hsm_action prints it",
            cmd_action)
    p.add_argument("--json", action="store_true", help="JSON output (see hsmctl --help)")
    p.add_argument("--queue", action="store_true",
                   help="a waiting action also says where it stands, after lfs hsm_action's line: ', queue "
                        "position 3 of 120, starts in about 40s' (its place in the queue it starts from; the "
                        "estimate from that queue's dispatch rate over the last minute). --json always has it")
    p.add_argument("paths", nargs="+", metavar="PATH")

    for name, text in (("set", "set HSM user flags (lfs hsm_set)"),
                       ("clear", "clear HSM user flags (lfs hsm_clear)")):
        p = add(name, text, cmd_flags)
        p.add_argument("--norelease", action="store_true", help="never release the file")
        p.add_argument("--noarchive", action="store_true", help="never archive the file")
        p.add_argument("--dirty", action="store_true", help="the file differs from its copy")
        p.add_argument("paths", nargs="+", metavar="PATH")

    p = add("control", "show or set the hsm_control mode (enabled, disabled, shutdown)", cmd_control)
    p.add_argument("mode", nargs="?", choices=("enabled", "disabled", "shutdown"),
                   help="enabled: dispatch; disabled: accept and queue, dispatch nothing; shutdown: running "
                        "actions finish, new requests are refused (omit to print the mode)")
    p.add_argument("--json", action="store_true", help="JSON output (see hsmctl --help)")

    p = add("agent", "drain a mover agent before stopping it, or give it work again", cmd_agent, epilog=(
        "drain: the agent is given no new work; what it runs finishes. Kept across restarts of\n"
        "the agent until 'resume'. With --wait, returns once it runs nothing: then stop it.\n"
        "prints: 'agent ID: draining, no new work; still running N action(s) (...)',\n"
        "        'agent ID: drained, nothing running; it can be stopped safely', or\n"
        "        'agent ID: active, given work again'"))
    p.add_argument("op", choices=("drain", "resume"), help="drain: no new work; resume: work again")
    p.add_argument("agent_id", metavar="AGENT_ID", help="as 'hsmctl agents' lists it")
    p.add_argument("--wait", action="store_true", help="drain: block until the agent runs nothing")
    p.add_argument("--deadline", type=_positive_float, metavar="SECONDS",
                   help="with --wait: give up after SECONDS (exit 1; the drain stays)")
    p.add_argument("--force", action="store_true",
                   help="drain an agent id that is not connected (yet)")
    p.add_argument("--json", action="store_true", help="JSON output (see hsmctl --help)")

    from hsmctl import policy as _policy

    p = add("policy", _policy.HELP, cmd_policy, epilog=_policy.EPILOG)
    _policy.add_arguments(p, common)

    p = add("status", "queue counts, agents, shards and leaders, control mode", cmd_status)
    p.add_argument("--json", action="store_true", help="JSON output (see hsmctl --help)")

    from hsmctl import events as _events

    p = add("events", "read the HSM event log (ended actions, as Lustre's changelog) as a named consumer",
            cmd_events)
    p.description = _events.EVENTS_HELP
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    _events.add_arguments(p)

    from hsmctl import catalog as _catalog

    p = add("catalog", _catalog.HELP, cmd_catalog, epilog=_catalog.EPILOG)
    _catalog.add_arguments(p)

    from hsmctl import space as _space

    p = add("space", _space.HELP, cmd_space, epilog=_space.EPILOG)
    _space.add_arguments(p)

    p = add("agents", "connected mover agents", cmd_agents)
    p.add_argument("--json", action="store_true", help="JSON output (see hsmctl --help)")

    p = add("actions", "list actions, one per line (non-terminal ones unless --all)",
            cmd_actions)
    p.add_argument("--state", type=_state_list, action="append", default=[],
                   metavar="STATE[,STATE]",
                   help="waiting, started, canceling, succeeded, failed, canceled")
    p.add_argument("--kind", type=_kind_list, action="append", default=[],
                   metavar="KIND[,KIND]", help="archive, restore, remove")
    p.add_argument("--fid", type=_fid, metavar="FID", help="actions of this file only")
    p.add_argument("--fsname", type=_fsname, metavar="NAME", help="file system of --fid")
    p.add_argument("--agent", metavar="AGENT_ID", help="actions held by this agent")
    p.add_argument("--all", action="store_true", help="also ended actions still kept")
    p.add_argument("--json", action="store_true", help="JSON output (see hsmctl --help)")

    from hsmctl import top

    p = add("top", top.HELP, cmd_top, epilog=top.EPILOG)
    p.add_argument("--interval", type=top.interval_type, default=top.DEFAULT_INTERVAL, metavar="SECONDS",
                   help=f"seconds between polls, > 0 (default {top.DEFAULT_INTERVAL:g})")
    p.add_argument("--transfers", type=top.transfers_type, default=top.DEFAULT_TRANSFERS, metavar="N",
                   help=f"running actions to list, 0 to {top.MAX_TRANSFERS} (default {top.DEFAULT_TRANSFERS}; "
                        "0: do not list them)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from hsm.client import (
        CoordinatorError,
        DeadlineExceeded,
        InvalidArgument,
        Unavailable,
        WrongCluster,
    )

    parser = build_parser()
    args = parser.parse_args(argv)
    args.cluster_flag = args.cluster is not None
    env_cluster = os.environ.get("HSM_CLUSTER", "").strip()
    if args.cluster is None and env_cluster:
        try:
            args.cluster = _cluster_id(env_cluster)
        except argparse.ArgumentTypeError as e:
            args._parser.error(f"$HSM_CLUSTER: {e}")
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format=f"{PROG}: %(levelname)s %(name)s: %(message)s",
    )
    if args.fs is None:
        env_fs = os.environ.get(ENV_FS, "").strip().lower()
        if env_fs and env_fs not in FS_MODES:
            args._parser.error(f"${ENV_FS}: invalid value {env_fs!r} (choose from {', '.join(FS_MODES)})")
        args.fs = env_fs or "auto"
    ctx = Context(command=args.command, verbose=args.verbose, fs_mode=args.fs)
    try:
        status = args.func(args, ctx)
    except CliError as e:
        if e.code == EXIT_USAGE:
            args._parser.print_usage(sys.stderr)
        ctx.error(str(e), e.code)
        status = ctx.status
    except (Unavailable, DeadlineExceeded, WrongCluster) as e:
        ctx.error(str(e), EXIT_UNREACHABLE)
        status = ctx.status
    except InvalidArgument as e:
        ctx.error(str(e), EXIT_USAGE)
        status = ctx.status
    except CoordinatorError as e:
        ctx.error(str(e), EXIT_FAILED)
        status = ctx.status
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (queued actions go on)", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `hsmctl actions | head`: the reader left; not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return status


if __name__ == "__main__":
    sys.exit(main())
