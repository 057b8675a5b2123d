"""Who may call what (pure: the peer, the method and the request in, a
refusal or None out). ``coordinator.edge`` asks it on every call when the
replica runs with TLS; with ``insecure: true`` nobody is checked.

The roles (a certificate's OU, ``coordinator.certs``):

* ``admin``: everything: the control mode, Raft membership, draining
  agents, cancelling everything (``Cancel all``), and what an operator does;
* ``operator``: requests and cancels for any file, HSM event consumers
  (register, read, acknowledge: events name every file, so not users),
  and every read;
* ``bridge``: an MDT bridge: submits on behalf of the MDT's initiators (any
  kind), relays the cancels the MDT sends (``lfs hsm_cancel``: Lustre
  checked who may; any action named, never ``Cancel all``), its lease, and
  every read;
* ``user``: requests whose kind the user request mask allows (by default
  RESTORE only, like a file system user who may read a released file but
  not archive or remove), and every read; with ``cancel`` in the mask, the
  cancel of their own actions only (by action id, file or cookie: every
  requester of each live action named must be theirs, checked against the
  shard state by the servicer and again when the cancel is applied,
  ``coordinator.state.ShardState.cancel_refusal``), never ``Cancel all``;
* ``agent``: only the agent ``Work`` stream, with its own id (checked when
  the stream says hello);
* ``replica``: what replicas forward to each other (cancels, control,
  drains, membership, listings, agents' reports), and every read.

Health checks are open to every certified peer.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

ADMIN, OPERATOR, AGENT, BRIDGE, USER, REPLICA = "admin", "operator", "agent", "bridge", "user", "replica"
ROLES = (ADMIN, OPERATOR, AGENT, BRIDGE, USER, REPLICA)
#: ActionKind values (Lustre's HSMA_*) and their names in masks
KINDS = {"archive": 20, "restore": 21, "remove": 22}
#: names a user request mask may hold (Lustre's hsm user_request_mask
#: names, lower case): the kinds, and ``cancel`` (of the user's own actions)
MASK_NAMES = (*KINDS, "cancel")
DEFAULT_USER_MASK = frozenset({"restore"})

#: gRPC metadata a replica adds to the part of a user's cancel it forwards
#: to another shard's leader: the user it cancels for (that user's
#: certificate name). Read only from a caller of role replica; anyone
#: else's is ignored.
ON_BEHALF_KEY = "hsm-on-behalf-of"

_C = "/hsm.v1.Coordinator/"
_A = "/hsm.v1.AgentService/"
_READERS = frozenset({ADMIN, OPERATOR, BRIDGE, USER, REPLICA})
#: method -> roles that may call it at all (request-level rules below)
METHODS: Mapping[str, frozenset[str]] = {
    _C + "Submit": frozenset({ADMIN, OPERATOR, BRIDGE, USER}),
    _C + "Cancel": frozenset({ADMIN, BRIDGE, OPERATOR, REPLICA, USER}),
    _C + "GetAction": _READERS,
    _C + "ListActions": _READERS,
    _C + "Watch": _READERS,
    _C + "Status": _READERS,
    _C + "ClusterInfo": _READERS,
    _C + "ChangeMembership": frozenset({ADMIN, REPLICA}),
    _C + "Control": frozenset({ADMIN, REPLICA}),
    _C + "DrainAgent": frozenset({ADMIN, REPLICA}),
    _C + "Lease": frozenset({ADMIN, BRIDGE}),
    # HSM events name every file: not for users
    _C + "EventConsumer": frozenset({ADMIN, OPERATOR, REPLICA}),
    _C + "ReadEvents": frozenset({ADMIN, OPERATOR, REPLICA}),
    _C + "AckEvents": frozenset({ADMIN, OPERATOR, REPLICA}),
    # the policy's rules name paths, uids and limits: not for users
    _C + "GetPolicy": frozenset({ADMIN, OPERATOR, REPLICA}),
    # the catalog names every archived file, its owner and path: not for users
    _C + "ListCopies": frozenset({ADMIN, OPERATOR, REPLICA}),
    _C + "MoveCopies": frozenset({ADMIN, OPERATOR, REPLICA}),
    _C + "EditCatalog": frozenset({REPLICA}),
    _C + "RelocateCopies": frozenset({ADMIN, OPERATOR, REPLICA}),
    _C + "SetPolicy": frozenset({ADMIN, REPLICA}),
    _C + "MoveShard": frozenset({ADMIN, REPLICA}),
    _C + "Rebalance": frozenset({ADMIN, REPLICA}),
    # a replica opens or closes its member of a group when a move's driver asks
    _C + "JoinShard": frozenset({REPLICA}),
    _C + "LeaveShard": frozenset({REPLICA}),
    # a split (docs/resharding.md): asked by an admin, carried out between replicas
    _C + "Reshard": frozenset({ADMIN, REPLICA}),
    _C + "Split": frozenset({REPLICA}),
    _A + "Work": frozenset({AGENT}),
    _A + "Report": frozenset({REPLICA}),
}
_HEALTH = "/grpc.health.v1.Health/"
#: methods that change something: written to the audit log
AUDITED = frozenset(_C + m for m in ("Submit", "Cancel", "ChangeMembership", "Control", "DrainAgent", "Lease",
                                     "EventConsumer", "SetPolicy", "MoveCopies", "EditCatalog",
                                     "RelocateCopies", "MoveShard", "JoinShard", "LeaveShard", "Rebalance",
                                     "Reshard", "Split"))


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call is refused: ``unauthenticated`` (no identity) or not
    (PERMISSION_DENIED), and a sentence naming what is missing."""

    unauthenticated: bool
    message: str


def _who(name: str, role: str) -> str:
    return f"{name or '(no name)'} (role {role or 'none'})"


def _needs(roles: Collection[str]) -> str:
    ordered = [r for r in ROLES if r in roles]
    return ordered[0] if len(ordered) == 1 else ", ".join(ordered[:-1]) + " or " + ordered[-1]


def check(name: str | None, role: str, method: str, request: object = None,
          user_mask: Collection[str] = DEFAULT_USER_MASK,
          masks: Mapping[str, Collection[str]] | None = None) -> Refusal | None:
    """None if the peer *name* with *role* may make this call; else why not.
    *name* None: the connection has no client certificate. *request* is
    the decoded request for the request-level rules (None for a stream).
    *masks*: the request mask of each role the policy masks (what kinds it
    may submit; for user, also cancel); without it, *user_mask* for users
    and nothing masked for the other roles."""
    if masks is not None:
        user_mask = masks.get(USER, DEFAULT_USER_MASK)
    if name is None:
        return Refusal(True, f"{method}: no client certificate; every call needs one signed by the cluster CA")
    if method.startswith(_HEALTH):
        return None
    allowed = METHODS.get(method)
    if allowed is None:
        return Refusal(False, f"{method}: not a method of this service")
    if role not in allowed:
        return Refusal(False, f"{method.rsplit('/', 1)[1]} needs role {_needs(allowed)}; "
                              f"the certificate of {_who(name, role)} does not give it")
    if method == _C + "Cancel" and getattr(request, "all", False) and role not in (ADMIN, REPLICA):
        return Refusal(False, f"Cancel all needs role admin; {_who(name, role)} may cancel given actions, "
                              "files or cookies")
    if method == _C + "Cancel" and role == USER and "cancel" not in user_mask:
        return Refusal(False, f"Cancel is not in the user request mask ({', '.join(sorted(user_mask)) or 'empty'}); "
                              f"{_who(name, role)} needs role admin, operator or replica for it")
    if method == _C + "Submit" and (role == USER or (masks is not None and role in masks and role != REPLICA)):
        mask = user_mask if role == USER else masks.get(role, ()) if masks is not None else ()
        allowed_kinds = {KINDS[k] for k in mask if k in KINDS}
        for i, item in enumerate(getattr(request, "items", ())):
            if item.kind not in allowed_kinds and (role == USER or item.kind in KINDS.values()):
                # an unknown kind from another role: the servicer says it is unknown
                names = {v: k for k, v in KINDS.items()}
                shown = ", ".join(sorted(k for k in mask if k in KINDS)) or "empty"
                return Refusal(False, f"item {i}: {names.get(item.kind, f'kind {item.kind}').upper()} is not in "
                                      f"the {role} request mask ({shown}, set by the policy's request_masks); "
                                      f"{_who(name, role)} "
                                      + ("needs role operator for it" if role == USER else "may not request it"))
    return None


def check_mask(mask: object, what: str = "user_request_mask") -> frozenset[str]:
    """A request mask from a config file: a list of kind names."""
    if not isinstance(mask, list | tuple) or not all(isinstance(k, str) and k in MASK_NAMES for k in mask):
        raise ValueError(f"{what}: expected a list of {', '.join(MASK_NAMES)}, got {mask!r}")
    return frozenset(mask)
