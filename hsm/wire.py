"""The words both ends of the wire use, in one place: the client library,
the coordinator's request checks and agentd all take them from here.

- file system names: Lustre's rule, 1 to 8 characters of ``A-Z a-z 0-9 _ -``;
- action kinds: the proto ``ActionKind`` values (Lustre's ``HSMA_*``) and
  their names;
- action ids end in their shard: ``shard = action_id % SHARD_ID_MODULUS``;
- the gRPC metadata keys: the leader's address on a redirect, the cluster's
  and the answering replica's ids on every answer;
- a FID to and from its proto message;
- the scheduling hints of a request's data (``tag=``, ``volume=``,
  ``position=``): the coordinator routes by them, agentd's packer groups by
  the tag.

No protobuf import at module level: the pure modules (the shard state)
take their constants from here too.
"""

from __future__ import annotations

import re
import unicodedata
from typing import TYPE_CHECKING

from hsm.fid import Fid
from hsm.hsmflags import HSMA

if TYPE_CHECKING:
    from hsm.v1 import types_pb2 as tpb

#: Lustre's file system names (``lustre/utils/mount_utils.c``: at most 8)
FSNAME_RE = re.compile(r"[A-Za-z0-9_-]{1,8}")
FSNAME_RULE = "1 to 8 characters from A-Z a-z 0-9 _ -"

#: ActionKind value (Lustre's HSMA_* code) -> name
KIND_NAMES: dict[int, str] = {int(HSMA.ARCHIVE): "ARCHIVE", int(HSMA.RESTORE): "RESTORE",
                              int(HSMA.REMOVE): "REMOVE"}
#: name -> ActionKind value
KIND_VALUES: dict[str, int] = {v: k for k, v in KIND_NAMES.items()}

#: An action id is ``seq * SHARD_ID_MODULUS + shard``: unique in the
#: cluster, and its shard is ``action_id % SHARD_ID_MODULUS``.
SHARD_ID_MODULUS = 1000

#: Trailing metadata of FAILED_PRECONDITION: the shard leader's API address.
LEADER_METADATA_KEY = "hsm-leader"
#: Initial metadata of every answer (health checks too): the cluster's id
#: and the id of the replica that answered.
CLUSTER_METADATA_KEY = "hsm-cluster-id"
REPLICA_METADATA_KEY = "hsm-replica"
#: Trailing metadata of RESOURCE_EXHAUSTED from a rate limit: milliseconds
#: until the same request may pass (hsm.client waits that long to retry).
RETRY_AFTER_KEY = "hsm-retry-after-ms"
#: The largest policy document (coordinator.policy; SetPolicy), in bytes.
MAX_POLICY_BYTES = 256 * 1024


#: the longest id or name a client may send (agent ids, initiators, hosts,
#: lease names and holders, idempotency keys): they end up in the replicated
#: state, in listings and in log lines
MAX_NAME = 256


def name_problem(value: str, what: str, max_len: int = MAX_NAME, empty_ok: bool = False) -> str | None:
    """Why *value* cannot be an id or name a client sends, or None. At most
    *max_len* characters, and no control or format characters (a newline
    or NUL in an agent id forged log lines and left unlistable agents)."""
    if not value:
        return None if empty_ok else f"{what} is empty"
    if len(value) > max_len:
        return f"{what} is {len(value)} characters long, at most {max_len} allowed"
    if value.isprintable() and value.isascii():
        return None
    for ch in value:
        if unicodedata.category(ch)[0] in "CZ" and ch != " ":  # controls, formats, separators but the space
            return f"{what} {value[:40]!r} contains the character U+{ord(ch):04X}, not allowed in an id or name"
    return None


def valid_fsname(fsname: object) -> bool:
    return isinstance(fsname, str) and FSNAME_RE.fullmatch(fsname) is not None


def kind_name(kind: int) -> str:
    """``"ARCHIVE"``, ``"RESTORE"``, ``"REMOVE"`` (``"UNSPECIFIED"`` for 0,
    ``"KIND_<n>"`` for a value no version of the proto knows)."""
    return KIND_NAMES.get(kind, "UNSPECIFIED" if kind == 0 else f"KIND_{kind}")


def shard_of_action(action_id: int) -> int:
    return action_id % SHARD_ID_MODULUS


def fid_to_pb(fid: Fid) -> tpb.Fid:
    from hsm.v1.types_pb2 import Fid as PbFid  # imported once; then a dict lookup

    return PbFid(seq=fid.seq, oid=fid.oid, ver=fid.ver)


def fid_from_pb(pb: tpb.Fid) -> Fid:
    return Fid(pb.seq, pb.oid, pb.ver)


#: the longest tag or volume name a request's data may give (longer: ignored)
MAX_HINT = 64


def hints(data: bytes) -> tuple[str, str, int]:
    """(tag, volume, position) from request data (``key=value,...``, like
    Lustre's hai_data): ``tag=`` sends the action to the agents that serve
    that tag (one of them, by consistent hashing), ``volume=`` and
    ``position=`` place a restore on its tape (restores of a volume go to
    one agent, in position order). What is missing or malformed is ""/0:
    the data is the mover's, and a hint the coordinator cannot read only
    loses its scheduling effect."""
    if b"=" not in data:
        return "", "", 0
    tag = volume = ""
    position = 0
    for part in data.split(b","):
        key, eq, value = part.partition(b"=")
        if not eq or not value or len(value) > MAX_HINT:
            continue
        if key == b"tag":
            tag = _hint_text(value)
        elif key == b"volume":
            volume = _hint_text(value)
        elif key == b"position" and value.isdigit():
            position = min(int(value), (1 << 63) - 1)
    return tag, volume, position


def _hint_text(value: bytes) -> str:
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return ""
    return text if text.isprintable() and " " not in text else ""
