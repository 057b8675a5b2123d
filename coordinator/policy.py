"""The policy language: one YAML document, replicated, that tells the
coordinator how to schedule and admit requests (docs/policy.md).

Pure: text in, objects out, no I/O. ``parse(text)`` checks the whole
document and reports every problem with its line (``PolicyError``), or
returns a ``Policy``: frozen, picklable (it travels in Raft snapshots),
equal to any other policy of the same meaning. ``Policy.admit`` is the
admission decision for one submitted item (run on every replica, so it is
deterministic and fast: the rules whose kind, archive id, ids and initiator
hold are cached per such combination, and only their path and size
conditions are tested per item). ``Policy.dump`` is the canonical YAML;
``diff`` says what changes from one policy to another, one line a change.

The document, in short (every key optional, unknown keys are errors)::

    settings: {max_attempts: 3, progress_timeout: 600, agent_grace: 60, max_terminal: 100000,
               max_running: 0, max_running_per_archive: {1: 100}}
    priorities: {kinds: {restore: 3, remove: 2, archive: 1}, starvation_after: 3600}
    fair_share: {by: none, weights: {1000: 4}}
    rate_limits: {per_user: {rate: 100, burst: 1000}, per_initiator: {rate: 1000, burst: 10000}}
    request_masks: {user: [restore], operator: [archive, restore, remove], ...}
    rules:
      - name: scratch-archives-low
        match: {kind: archive, path: "/scratch/**", size: ">= 1G", uid: [1000, 1001], initiator: "oss-*"}
        then: {priority: -5, tag: tape-a}

Kinds are Lustre's HSMA_* codes (archive 20, restore 21, remove 22); this
module does not import ``coordinator.state`` (which imports it).
"""

from __future__ import annotations

import bisect
import difflib
import json
import math
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import MISSING, dataclass, field, fields, replace
from fractions import Fraction
from typing import Any, Final, cast

import yaml
from yaml.constructor import SafeConstructor
from yaml.error import MarkedYAMLError, YAMLError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.reader import ReaderError

from coordinator.roles import ADMIN, BRIDGE, KINDS, MASK_NAMES, OPERATOR, USER
from hsm.wire import MAX_POLICY_BYTES  # it is replicated in the Raft log; the client checks it too

#: kind names in the policy -> ActionKind values (Lustre's HSMA_*)
KIND_NAMES: Final[dict[str, int]] = dict(KINDS)
_KIND_BY_VALUE: Final = {v: k for k, v in KIND_NAMES.items()}

MAX_RULES: Final = 1000
#: the largest file size a size condition may name (bytes)
MAX_SIZE: Final = 2**64 - 1
MAX_ID: Final = 2**32 - 1
#: (kind, archive id, uid, gid, projid, initiator) combinations whose candidate rules are cached
ADMIT_CACHE_SIZE: Final = 4096
#: a YAML document whose aliases expand to more values than this is refused
_MAX_NODES: Final = 200_000
_WEEK: Final = 604_800

#: the roles a request mask is given for, and their defaults
MASK_ROLES: Final = (USER, OPERATOR, BRIDGE, ADMIN)
_ALL_KINDS: Final = frozenset(KIND_NAMES)
DEFAULT_MASKS: Final[dict[str, frozenset[str]]] = {
    USER: frozenset({"restore"}), OPERATOR: _ALL_KINDS, BRIDGE: _ALL_KINDS, ADMIN: _ALL_KINDS,
}
DEFAULT_KIND_WEIGHTS: Final[dict[str, int]] = {"archive": 1, "restore": 3, "remove": 2}
SHARE_BY: Final = ("none", "user", "group", "project")
DEFAULT_STARVATION_AFTER: Final = 3600.0

_NAME_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
_NAME_RULE: Final = "1..64 characters of A-Z a-z 0-9 . _ -"


class PolicyError(ValueError):
    """Everything wrong with a policy document, worded for the admin who
    has to fix it: ``errors`` holds ``(line, message)`` pairs, line 1-based
    (0: about the whole document, such as its size), in line order;
    ``str()`` gives them all, one per line (``line 12: rules[2].match.size:
    "> 1X": unknown unit "X" (K, M, G, T, P)``)."""

    def __init__(self, errors: list[tuple[int, str]]) -> None:
        self.errors = errors
        super().__init__("\n".join(f"line {line}: {msg}" if line else msg for line, msg in errors))


# -- the compiled policy -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    """How actions run and how many are kept (``settings:``)."""

    max_attempts: int = 3  # attempts before an action fails
    progress_timeout: float = 600.0  # no progress this long: stopped and requeued (0: never)
    agent_grace: float = 60.0  # a silent agent keeps its actions this long
    max_terminal: int = 100_000  # ended actions kept per shard
    max_running: int = 0  # running actions in the whole cluster (0: no limit)
    #: (archive id, most running actions of that archive), sorted by archive id
    max_running_per_archive: tuple[tuple[int, int], ...] = ()

    def running_limit(self, archive_id: int) -> int:
        """The most actions of *archive_id* that may run at once (0: no limit)."""
        for aid, limit in self.max_running_per_archive:
            if aid == archive_id:
                return limit
        return 0


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket: *rate* requests a second on average, *burst* at once."""

    rate: float
    burst: int


@dataclass(frozen=True, slots=True)
class Decision:
    """What the admission rules say about one request: refused (*deny*, the
    reason the requester sees) or accepted with the fields the matching
    rules set (*priority* None: the request's own; *tag* "": none;
    *archive_id* 0: the request's). *rule* names the rule that refused or
    accepted it or last set something ("" when none matched)."""

    deny: str = ""
    priority: int | None = None
    tag: str = ""
    archive_id: int = 0
    rule: str = ""
    copies: int = 0  # an archive's copies, one per archive id (0: the request's)


@dataclass(frozen=True, slots=True)
class Rule:
    """One admission rule (``rules:``). A condition left empty (an empty
    set, no globs, ``size`` None) is not given: it holds for every
    request. ``size`` is an inclusive (low, high) byte range. Globs are
    kept as text (``parse`` sorts them, for equality); ``__post_init__``
    compiles them. Only ``parse`` checks a rule (one action, names, ranges)."""

    name: str
    kinds: frozenset[int] = frozenset()
    archive_ids: frozenset[int] = frozenset()
    paths: tuple[str, ...] = ()
    size: tuple[int, int] | None = None
    uids: frozenset[int] = frozenset()
    gids: frozenset[int] = frozenset()
    projids: frozenset[int] = frozenset()
    initiators: tuple[str, ...] = ()
    deny: str = ""
    allow: bool = False
    priority: int | None = None
    tag: str = ""
    archive_id: int = 0
    copies: int = 0  # archives: at least this many copies (copies=N), one per archive id
    #: where the rule starts in the document it was parsed from (0: not parsed)
    line: int = field(default=0, compare=False)
    path_re: re.Pattern[str] | None = field(default=None, init=False, compare=False, repr=False)
    #: (prefix, suffix) a path must have to match each glob: cheap tests before the regex
    path_hints: tuple[tuple[str, str], ...] = field(default=(), init=False, compare=False, repr=False)
    initiator_re: re.Pattern[str] | None = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path_re", compile_globs(self.paths, path=True) if self.paths else None)
        object.__setattr__(self, "path_hints", tuple(sorted({glob_hints(g) for g in self.paths})))
        object.__setattr__(self, "initiator_re",
                           compile_globs(self.initiators, path=False) if self.initiators else None)

    def base_match(self, kind: int, archive_id: int, initiator: str) -> bool:
        """Whether the kind, archive id and initiator conditions hold."""
        return ((not self.kinds or kind in self.kinds)
                and (not self.archive_ids or archive_id in self.archive_ids)
                and (self.initiator_re is None or self.initiator_re.fullmatch(initiator) is not None))

    def ids_match(self, uid: int, gid: int, projid: int) -> bool:
        """Whether the uid, gid and projid conditions hold."""
        return ((not self.uids or uid in self.uids)
                and (not self.gids or gid in self.gids)
                and (not self.projids or projid in self.projids))

    def prematch(self, kind: int, archive_id: int, uid: int, gid: int, projid: int, initiator: str) -> bool:
        """Whether every condition but path and size holds."""
        return self.base_match(kind, archive_id, initiator) and self.ids_match(uid, gid, projid)

    def matches(self, kind: int, archive_id: int, path: str, size: int | None, uid: int, gid: int,
                projid: int, initiator: str) -> bool:
        """Whether every condition holds. A path condition never holds for
        an unknown path (""), a size condition never for an unknown size."""
        if self.size is not None and (size is None or not self.size[0] <= size <= self.size[1]):
            return False
        if self.path_re is not None and not self.path_matches(path):
            return False
        return self.prematch(kind, archive_id, uid, gid, projid, initiator)

    def path_matches(self, path: str) -> bool:
        """Whether the path condition holds for *path* (False when there is
        none or the path is unknown)."""
        if not path or self.path_re is None:
            return False
        for prefix, suffix in self.path_hints:
            if path.startswith(prefix) and path.endswith(suffix):
                return self.path_re.fullmatch(path) is not None
        return False

    def match_dict(self) -> dict[str, Any]:
        """The ``match:`` mapping, canonical (lists sorted, size as text)."""
        out: dict[str, Any] = {}
        if self.kinds:
            out["kind"] = [_KIND_BY_VALUE.get(k, str(k)) for k in sorted(self.kinds)]
        if self.archive_ids:
            out["archive_id"] = sorted(self.archive_ids)
        if self.paths:
            out["path"] = list(self.paths)
        if self.size is not None:
            out["size"] = size_text(*self.size)
        for key, ids in (("uid", self.uids), ("gid", self.gids), ("projid", self.projids)):
            if ids:
                out[key] = sorted(ids)
        if self.initiators:
            out["initiator"] = list(self.initiators)
        return out

    def then_dict(self) -> dict[str, Any]:
        """The ``then:`` mapping."""
        if self.deny:
            return {"deny": self.deny}
        out: dict[str, Any] = {}
        if self.priority is not None:
            out["priority"] = self.priority
        if self.tag:
            out["tag"] = self.tag
        if self.archive_id:
            out["archive_id"] = self.archive_id
        if self.copies:
            out["copies"] = self.copies
        if self.allow:
            out["allow"] = True
        return out

    def to_dict(self) -> dict[str, Any]:
        """The rule as the policy document writes it (canonical)."""
        out: dict[str, Any] = {"name": self.name}
        match = self.match_dict()
        if match:
            out["match"] = match
        out["then"] = self.then_dict()
        return out


_NO_DECISION: Final = Decision()


#: a regex of some path rules, their bits in order, the masks of the group patterns met
_PathMatcher = tuple[re.Pattern[str], list[int], dict[tuple[str | None, ...], int]]


class _RuleIndex:
    """The rules of a policy as bit masks (bit i: rule i, in order), so that
    a request is decided by a few integer operations instead of a Python
    loop over the rules:

    * the rules whose kind, archive id, initiator and id conditions hold,
      per (kind, archive id, uid, gid, projid, initiator): few of those in
      any flood, kept;
    * the path rules that hold for a path: one regex per set of candidate
      path rules tries their globs at once (a lookahead per rule; its group
      is empty when the rule holds, None when not), each groups pattern
      kept as a mask;
    * the size rules that hold for a size: a mask per interval between the
      size bounds of all rules, found by bisection;
    * the decision of a set of rules that hold: the first deny or allow
      ends it, and each field comes from the last rule up to that end that
      sets it (the rules' semantics, docs/policy.md), kept by mask.

    Every cache is bounded and derived from the rules alone: a decision
    does not depend on what was asked before."""

    __slots__ = ("rules", "pathed", "unpathed", "sized", "unsized", "ends", "prio", "tag", "archive", "copies",
                 "effect", "edges", "size_masks", "folds", "cands", "bases", "by_uid", "by_gid", "by_projid",
                 "any_uid", "any_gid", "any_projid", "matchers")

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        self.rules = rules
        everyone = (1 << len(rules)) - 1

        def mask(pred: Callable[[Rule], object]) -> int:
            return sum(1 << i for i, r in enumerate(rules) if pred(r))

        self.pathed = mask(lambda r: r.path_re is not None)
        self.unpathed = everyone & ~self.pathed
        self.sized = mask(lambda r: r.size is not None)
        self.unsized = everyone & ~self.sized
        self.ends = mask(lambda r: r.deny or r.allow)
        self.prio = mask(lambda r: r.priority is not None)
        self.tag = mask(lambda r: r.tag)
        self.archive = mask(lambda r: r.archive_id)
        self.copies = mask(lambda r: r.copies)
        self.effect = self.prio | self.tag | self.archive | self.copies
        # the id conditions: per id, the rules that name it; and the rules that name none
        self.by_uid: dict[int, int] = {}
        self.by_gid: dict[int, int] = {}
        self.by_projid: dict[int, int] = {}
        for i, r in enumerate(rules):
            for ids, table in ((r.uids, self.by_uid), (r.gids, self.by_gid), (r.projids, self.by_projid)):
                for x in ids:
                    table[x] = table.get(x, 0) | 1 << i
        self.any_uid = mask(lambda r: not r.uids)
        self.any_gid = mask(lambda r: not r.gids)
        self.any_projid = mask(lambda r: not r.projids)
        self.bases: dict[tuple[int, int, str], int] = {}
        #: per mask of candidate path rules: one regex trying their globs at
        #: once (a lookahead each), their bits in order, and the masks of the
        #: group patterns met
        self.matchers: dict[int, _PathMatcher] = {}
        edges: set[int] = set()
        for r in rules:
            if r.size is not None:
                edges.update((r.size[0], r.size[1] + 1))
        self.edges = sorted(edges)
        # interval k: the sizes from edges[k - 1] (0 for k = 0) up to edges[k] - 1;
        # every rule holds for all sizes of an interval or for none
        self.size_masks = [self.unsized | sum(1 << i for i, r in enumerate(rules)
                                              if r.size is not None and r.size[0] <= lo <= r.size[1])
                           for lo in (0, *self.edges)]
        self.folds: dict[int, Decision] = {}
        #: per (kind, archive id, uid, gid, projid, initiator): the rules whose
        #: other conditions hold, and the matcher of their path rules
        self.cands: dict[tuple[int, int, int, int, int, str], tuple[int, _PathMatcher | None]] = {}

    def admit(self, kind: int, archive_id: int, path: str, size: int | None, uid: int, gid: int,
              projid: int, initiator: str) -> Decision:
        return self.decide(self.holding(kind, archive_id, path, size, uid, gid, projid, initiator))

    def holding(self, kind: int, archive_id: int, path: str, size: int | None, uid: int, gid: int,
                projid: int, initiator: str) -> int:
        """The mask of the rules every condition of which holds for this request."""
        key = (kind, archive_id, uid, gid, projid, initiator)
        got = self.cands.get(key)
        if got is None:
            m = self._candidates(kind, archive_id, uid, gid, projid, initiator)
            pm = m & self.pathed
            got = (m, self.matchers.get(pm) or self._matcher(pm) if pm else None)
            if len(self.cands) >= ADMIT_CACHE_SIZE:
                self.cands.clear()
            self.cands[key] = got
        m, matcher = got
        if matcher is not None:
            held = 0
            if path:
                regex, bits, seen = matcher
                groups = regex.match(path).groups()  # type: ignore[union-attr]  # every group is optional
                held = seen.get(groups, -1)
                if held < 0:
                    held = sum(bit for bit, g in zip(bits, groups, strict=True) if g is not None)
                    if len(seen) >= ADMIT_CACHE_SIZE:
                        seen.clear()
                    seen[groups] = held
            m &= self.unpathed | held
        if m & self.sized:
            m &= self.unsized if size is None else self.size_masks[bisect.bisect_right(self.edges, size)]
        return m

    def decide(self, m: int) -> Decision:
        """The decision of the rules of mask *m* (``holding``'s)."""
        d = self.folds.get(m)
        if d is None:
            d = self._fold(m)
            if len(self.folds) >= ADMIT_CACHE_SIZE:
                self.folds.clear()
            self.folds[m] = d
        return d

    def _candidates(self, kind: int, archive_id: int, uid: int, gid: int, projid: int, initiator: str) -> int:
        """The mask of the rules whose conditions other than path and size hold."""
        bkey = (kind, archive_id, initiator)
        base = self.bases.get(bkey)
        if base is None:
            base = sum(1 << i for i, r in enumerate(self.rules) if r.base_match(kind, archive_id, initiator))
            if len(self.bases) >= ADMIT_CACHE_SIZE:
                self.bases.clear()
            self.bases[bkey] = base
        return (base & (self.any_uid | self.by_uid.get(uid, 0)) & (self.any_gid | self.by_gid.get(gid, 0))
                & (self.any_projid | self.by_projid.get(projid, 0)))

    def _matcher(self, pm: int) -> _PathMatcher:
        """The regex of the path rules of mask *pm* (one lookahead per rule,
        its group empty when the rule's globs match the whole path)."""
        bits = [1 << i for i, r in enumerate(self.rules) if pm >> i & 1]
        pats = [cast(re.Pattern[str], self.rules[b.bit_length() - 1].path_re).pattern for b in bits]
        regex = re.compile("".join(f"(?:(?=(?:{p})\\Z)()|)" for p in pats), re.DOTALL)
        if len(self.matchers) >= ADMIT_CACHE_SIZE:
            self.matchers.clear()
        got = self.matchers[pm] = (regex, bits, {})
        return got

    def _fold(self, m: int) -> Decision:
        """The decision of the rules of mask *m*, every condition of which holds."""
        rules = self.rules
        end = m & self.ends
        if end:
            first = (end & -end).bit_length() - 1
            r = rules[first]
            if r.deny:
                return Decision(deny=r.deny, rule=r.name)
            m &= (2 << first) - 1  # the rules up to the allow
            name = r.name
        elif m & self.effect:
            name = rules[(m & self.effect).bit_length() - 1].name
        else:
            return _NO_DECISION
        got = m & self.prio
        priority = rules[got.bit_length() - 1].priority if got else None
        got = m & self.tag
        tag = rules[got.bit_length() - 1].tag if got else ""
        got = m & self.archive
        archive = rules[got.bit_length() - 1].archive_id if got else 0
        got = m & self.copies
        copies = rules[got.bit_length() - 1].copies if got else 0
        return _decision(priority, tag, archive, name, copies)


#: batching's and tape's defaults (seconds)
DEFAULT_BATCH_IDLE: Final = 30.0
DEFAULT_BATCH_MAX_WAIT: Final = 600.0
DEFAULT_MAX_MOUNT: Final = 600.0
#: striping (``striping:``): the default part size, and the most parts a file is cut into
DEFAULT_STRIPE_PART: Final = 1 << 30
DEFAULT_STRIPE_MAX_PARTS: Final = 64
#: the smallest part (parts are cut at multiples of it: coordinator.stripes.ALIGN)
MIN_STRIPE_PART: Final = 1 << 20


@dataclass(frozen=True)
class Policy:
    """A parsed policy document (``parse``), or the defaults (``Policy()``).

    Equality is the meaning: two policies parsed from texts that differ only
    in layout, comments, the order of list items or explicit defaults are
    equal (``text``, rule lines and the admission cache are left out)."""

    settings: Settings = Settings()
    #: (kind, weight) for all three kinds, by kind
    kind_weights: tuple[tuple[int, int], ...] = tuple(
        sorted((KIND_NAMES[k], w) for k, w in DEFAULT_KIND_WEIGHTS.items()))
    starvation_after: float = DEFAULT_STARVATION_AFTER  # 0: off
    share_by: str = "none"  # none, user, group, project
    #: (id, weight) for ids whose weight is not 1, by id
    share_weights: tuple[tuple[int, int], ...] = ()
    per_user: RateLimit | None = None
    per_initiator: RateLimit | None = None
    #: (role, allowed names) for user, operator, bridge, admin
    request_masks: tuple[tuple[str, frozenset[str]], ...] = tuple(
        (role, DEFAULT_MASKS[role]) for role in MASK_ROLES)
    rules: tuple[Rule, ...] = ()
    #: archive batching by tag (``batching:``): hand a tag's ready archives
    #: over once *size* are ready, none arrived for *idle* seconds, or the
    #: oldest waited *max_wait*; size 0: off
    batch_size: int = 0
    batch_idle: float = DEFAULT_BATCH_IDLE
    batch_max_wait: float = DEFAULT_BATCH_MAX_WAIT
    #: tape (``tape:``): seconds an agent stays on one volume while
    #: restores of other volumes wait for it
    max_mount: float = DEFAULT_MAX_MOUNT
    #: striped archives (``striping:``): a file of at least *stripe_above*
    #: bytes (0: off) is cut into parts of about *stripe_part* bytes, at most
    #: *stripe_max_parts*, copied by several agents at once (coordinator.stripes)
    stripe_above: int = 0
    stripe_part: int = DEFAULT_STRIPE_PART
    stripe_max_parts: int = DEFAULT_STRIPE_MAX_PARTS
    #: the source this policy was parsed from ("" when built otherwise)
    text: str = field(default="", compare=False, repr=False)
    # derived: rebuilt by __post_init__, never compared or pickled
    _kinds: dict[int, int] = field(default_factory=dict, init=False, compare=False, repr=False)
    _shares: dict[int, int] = field(default_factory=dict, init=False, compare=False, repr=False)
    _masks: dict[str, frozenset[str]] = field(default_factory=dict, init=False, compare=False, repr=False)
    #: the rules as bit masks, for ``admit`` (built by __post_init__)
    _index: _RuleIndex | None = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._kinds.clear()
        self._kinds.update({KIND_NAMES[k]: w for k, w in DEFAULT_KIND_WEIGHTS.items()})
        self._kinds.update(self.kind_weights)
        self._shares.clear()
        self._shares.update(self.share_weights)
        self._masks.clear()
        self._masks.update(DEFAULT_MASKS)
        self._masks.update(self.request_masks)
        object.__setattr__(self, "_index", _RuleIndex(self.rules) if self.rules else None)

    def __getstate__(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for f in fields(self):
            if not f.init:
                value: Any = {} if f.name != "_index" else None
            elif f.name in state:
                value = state[f.name]
            else:  # a snapshot written before the field existed: its default
                value = f.default_factory() if f.default_factory is not MISSING else f.default
            object.__setattr__(self, f.name, value)
        self.__post_init__()

    # -- what the scheduler and the servicers ask ------------------------------------------------

    def kind_weight(self, kind: int) -> int:
        """The dispatch weight of *kind* (higher goes first when kinds compete)."""
        return self._kinds.get(kind, 0)

    def share_weight(self, key: int) -> int:
        """The fair-share weight of *key* (a uid, gid or projid; default 1)."""
        return self._shares.get(key, 1)

    def share_key(self, uid: int, gid: int, projid: int) -> int:
        """The fair-share key of a request's first requester: -1 when the
        policy does not share (``by: none``), else its uid, gid or projid."""
        by = self.share_by
        if by == "user":
            return uid
        if by == "group":
            return gid
        if by == "project":
            return projid
        return -1

    def mask(self, role: str) -> frozenset[str]:
        """What a caller of *role* may request (kind names, and ``cancel``
        for user); empty for roles that submit nothing."""
        return self._masks.get(role, frozenset())

    def admit(self, kind: int, archive_id: int, path: str, size: int | None, uid: int, gid: int,
              projid: int, initiator: str) -> Decision:
        """The admission rules' decision on one request: *path* "" and
        *size* None are unknown (a path or size condition does not hold)."""
        index = self._index
        if index is None:
            return _NO_DECISION
        return index.admit(kind, archive_id, path, size, uid, gid, projid, initiator)

    def holding(self, kind: int, archive_id: int, path: str, size: int | None, uid: int, gid: int,
                projid: int, initiator: str) -> int:
        """``admit`` in two halves, for a leader that decides once for every
        replica: the mask of the rules that hold (bit i: rule i; all of the
        evaluation's cost), and ``decided``, the decision of such a mask."""
        index = self._index
        if index is None:
            return 0
        return index.holding(kind, archive_id, path, size, uid, gid, projid, initiator)

    def decided(self, mask: int) -> Decision | None:
        """The decision of a ``holding`` mask of this policy; None for a
        mask that cannot be one (a bit past its last rule, a negative)."""
        index = self._index
        if index is None:
            return _NO_DECISION if mask == 0 else None
        if mask < 0 or mask >> len(index.rules):
            return None
        return index.decide(mask)

    # -- canonical form ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The policy as plain YAML values, every default filled in, in the
        canonical order; ``parse`` of its YAML gives this policy back."""
        s = self.settings
        return {
            "settings": {
                "max_attempts": s.max_attempts,
                "progress_timeout": _plain(s.progress_timeout),
                "agent_grace": _plain(s.agent_grace),
                "max_terminal": s.max_terminal,
                "max_running": s.max_running,
                "max_running_per_archive": dict(s.max_running_per_archive),
            },
            "priorities": {
                "kinds": {name: self.kind_weight(value) for name, value in KIND_NAMES.items()},
                "starvation_after": _plain(self.starvation_after),
            },
            "fair_share": {"by": self.share_by, "weights": dict(self.share_weights)},
            "rate_limits": {"per_user": _rate_dict(self.per_user), "per_initiator": _rate_dict(self.per_initiator)},
            "request_masks": {role: _mask_list(self.mask(role)) for role in MASK_ROLES},
            "batching": {"size": self.batch_size, "idle": _plain(self.batch_idle),
                         "max_wait": _plain(self.batch_max_wait)},
            "tape": {"max_mount": _plain(self.max_mount)},
            "striping": {"above": _size_unit(self.stripe_above) if self.stripe_above else 0,
                         "part_size": _size_unit(self.stripe_part), "max_parts": self.stripe_max_parts},
            "rules": [r.to_dict() for r in self.rules],
        }

    def dump(self) -> str:
        """The canonical YAML of ``to_dict()`` (``parse(p.dump()) == p``)."""
        body: str = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, allow_unicode=True,
                                   width=100)
        return "# hsm-coordinator policy (docs/policy.md)\n" + body


#: the accepting decisions made so far: a flood's items share a few (a
#: frozen dataclass costs about a microsecond to build; a lookup a tenth)
_DECISIONS: dict[tuple[int | None, str, int, str, int], Decision] = {}


def _decision(priority: int | None, tag: str, archive_id: int, name: str, copies: int = 0) -> Decision:
    key = (priority, tag, archive_id, name, copies)
    d = _DECISIONS.get(key)
    if d is None:
        if len(_DECISIONS) >= ADMIT_CACHE_SIZE:
            _DECISIONS.clear()
        d = _DECISIONS[key] = Decision("", priority, tag, archive_id, name, copies)
    return d


def _plain(value: float) -> int | float:
    """A whole float as an int (``600`` rather than ``600.0`` in the YAML)."""
    return int(value) if float(value).is_integer() else value


def _rate_dict(limit: RateLimit | None) -> dict[str, Any] | None:
    return None if limit is None else {"rate": _plain(limit.rate), "burst": limit.burst}


def _mask_list(mask: Collection[str]) -> list[str]:
    return [name for name in MASK_NAMES if name in mask]


# -- globs and sizes ----------------------------------------------------------------------------


def glob_regex(glob: str, path: bool = True) -> str:
    """The regular expression (for ``fullmatch``) of one glob; ValueError
    says what is wrong with it.

    With *path*: ``*`` matches within a path component (not ``/``), ``?``
    one character but ``/``, ``[abc]``, ``[a-z]``, ``[!abc]`` one character
    of (not of) a class, ``\\`` quotes the next character, ``**`` (a whole
    component) any number of components, none included (``/scratch/**``
    matches ``/scratch`` and ``/scratch/a/b``). A glob that starts with
    ``/`` matches the whole path; any other matches its last components
    (``*.tmp`` the last one, ``cache/*.tmp`` the last two). Without *path*
    (initiator ids) there are no components: ``*`` matches anything."""
    if not glob:
        raise ValueError("an empty glob matches nothing")
    if not path:
        return _component(glob, path=False)
    absolute = glob.startswith("/")
    parts = glob.split("/")
    if absolute:
        parts = parts[1:]
    else:
        while parts and parts[0] == "**":  # matching the end of the path already allows anything before
            parts = parts[1:]
        if not parts:
            return "(?:.+)"
    out = [] if absolute else ["(?:.*/)?"]
    first = not absolute
    for i, part in enumerate(parts):
        if part == "**":
            if i > 0 and parts[i - 1] == "**":
                continue
            out.append("(?:/.*)?" if i == len(parts) - 1 else "(?:/[^/]*)*")
            continue
        if "**" in part:
            raise ValueError('"**" must be a whole path component, as in /a/**/b or /a/**')
        out.append(("" if first else "/") + _component(part, path=True))
        first = False
    return "".join(out)


def _component(text: str, path: bool) -> str:
    """One path component (or a whole initiator glob) as a regex."""
    star, one = ("[^/]*", "[^/]") if path else (".*", ".")
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "*":
            while i < n and text[i] == "*":
                i += 1
            out.append(star)
            continue
        if ch == "?":
            out.append(one)
        elif ch == "[":
            j = i + 1
            negate = j < n and text[j] in "!^"
            if negate:
                j += 1
            start = j
            if j < n and text[j] == "]":  # a leading ] is a member
                j += 1
            end = text.find("]", j)
            if end < 0:
                raise ValueError('unclosed "[" (a class is [abc], [a-z] or [!abc])')
            body = "".join("\\" + c if c in "\\[]^&~|" else c for c in text[start:end])
            if negate:
                out.append("[^" + ("/" if path else "") + body + "]")
            else:
                out.append(("(?!/)" if path else "") + "[" + body + "]")
            i = end + 1
            continue
        elif ch == "\\":
            if i + 1 == n:
                raise ValueError("ends with a lone \\ (it quotes the next character)")
            i += 1
            out.append(re.escape(text[i]))
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out)


_GLOB_SPECIAL: Final = frozenset("*?[]\\")


def glob_hints(glob: str) -> tuple[str, str]:
    """What a path must start and end with to match the path glob *glob*
    (its literal head, for a glob from /, and its literal tail): tested
    before the regex, which most paths then never reach."""
    if not glob.startswith("/"):
        while glob == "**" or glob.startswith("**/"):  # as glob_regex: these match anything before
            glob = glob[3:]
    i = 0
    while i < len(glob) and glob[i] not in _GLOB_SPECIAL:
        i += 1
    head = glob[:i] if glob.startswith("/") else ""
    if head.endswith("/") and glob.startswith("**", i):  # /a/** matches /a too
        head = head[:-1]
    j = len(glob)
    while j > 0 and glob[j - 1] not in _GLOB_SPECIAL:
        j -= 1
    return head, glob[j:]


def compile_globs(globs: Iterable[str], path: bool = True) -> re.Pattern[str]:
    """One regex (for ``fullmatch``) matching what any of *globs* matches."""
    parts = [glob_regex(g, path) for g in globs]
    pattern = parts[0] if len(parts) == 1 else "|".join(f"(?:{p})" for p in parts)
    try:
        return re.compile(pattern, re.DOTALL)
    except re.error as exc:
        raise ValueError(f"not a valid glob ({exc.msg})") from None


_UNITS: Final = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5}
_SIZE_NUMBER: Final = re.compile(r"\s*([0-9]{1,40}(?:\.[0-9]{1,40})?)\s*([A-Za-z]{0,3})\s*\Z")
_SIZE_FORMS: Final = '">= 1G", "< 4K", "1M..10G" (inclusive) or a number of bytes'


def size_bytes(text: str) -> int:
    """``1G``, ``512K``, ``1.5M``, ``4096`` (units: powers of 1024; ``KB``,
    ``KiB`` and lower case are the same) as bytes."""
    m = _SIZE_NUMBER.match(text)
    if m is None:
        raise ValueError(f"expected {_SIZE_FORMS}")
    unit = m.group(2).upper()
    if unit == "B":
        unit = ""
    elif len(unit) == 3 and unit.endswith("IB") or len(unit) == 2 and unit.endswith("B"):
        unit = unit[0]
    if unit not in _UNITS:
        raise ValueError(f'unknown unit "{m.group(2)}" (K, M, G, T, P)')
    value = Fraction(m.group(1)) * 1024 ** _UNITS[unit]
    if value.denominator != 1:
        raise ValueError(f"{m.group(1)}{m.group(2)} is not a whole number of bytes")
    if value > MAX_SIZE:
        raise ValueError(f"{_number(int(value))} bytes is more than the largest size, {MAX_SIZE}")
    return int(value)


def size_range(text: str) -> tuple[int, int]:
    """A size condition as an inclusive (low, high) byte range:
    ``>= 1G``, ``> 1G``, ``<= 4K``, ``< 4K``, ``= 1M`` (or a bare size),
    ``1M..10G`` (either end may be left out)."""
    s = text.strip()
    for op in (">=", "<=", "==", ">", "<", "="):
        if s.startswith(op):
            n = size_bytes(s[len(op):])
            lo, hi = {">=": (n, MAX_SIZE), "<=": (0, n), ">": (n + 1, MAX_SIZE), "<": (0, n - 1)}.get(op, (n, n))
            break
    else:
        if ".." in s:
            a, _, b = s.partition("..")
            lo = size_bytes(a) if a.strip() else 0
            hi = size_bytes(b) if b.strip() else MAX_SIZE
        else:
            lo = hi = size_bytes(s)
    if lo > hi or hi < 0:
        raise ValueError("matches no size (the low end is above the high end)")
    return lo, hi


def _size_unit(n: int) -> str:
    """*n* bytes in the largest unit that divides it (``1G``, ``1536K``)."""
    for unit, power in (("P", 5), ("T", 4), ("G", 3), ("M", 2), ("K", 1)):
        if n and n % 1024**power == 0:
            return f"{n // 1024**power}{unit}"
    return str(n)


def size_text(lo: int, hi: int) -> str:
    """The canonical text of an inclusive byte range (``size_range`` reads it)."""
    if hi == MAX_SIZE:
        return f">= {_size_unit(lo)}"
    if lo == hi:
        return f"= {_size_unit(lo)}"
    if lo == 0:
        return f"<= {_size_unit(hi)}"
    return f"{_size_unit(lo)}..{_size_unit(hi)}"


# -- parsing -------------------------------------------------------------------------------------

_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_STR = "tag:yaml.org,2002:str"

_SECTIONS: Final = ("settings", "priorities", "fair_share", "rate_limits", "request_masks", "batching", "tape",
                    "striping", "rules")
#: the shortest progress_timeout and agent_grace (seconds): what the
#: replicas' configuration allows (> 0), short enough for tests
MIN_SECONDS: Final = 0.01

_SETTINGS: Final = ("max_attempts", "progress_timeout", "agent_grace", "max_terminal", "max_running",
                    "max_running_per_archive")
_MATCH: Final = ("kind", "archive_id", "path", "size", "uid", "gid", "projid", "initiator")
_THEN: Final = ("deny", "allow", "priority", "tag", "archive_id", "copies")
_SETS: Final = ("priority", "tag", "archive_id", "copies")
#: the most copies of a file an archive may make (``copies``, one per archive id)
MAX_COPIES: Final = 8


def _quote(text: str, most: int = 60) -> str:
    shown = text if len(text) <= most else text[: most - 3] + "..."
    return json.dumps(shown, ensure_ascii=False)


def _number(value: float) -> str:
    """A number in a message: whole floats without ".0", at most 40 characters."""
    text = str(_plain(value)) if math.isfinite(value) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _got(node: Node) -> str:
    """*node* as a message shows it: what was written."""
    if isinstance(node, ScalarNode):
        if node.tag == _NULL:
            return "nothing"
        if node.tag == _STR:
            return _quote(str(node.value))
        return str(node.value)[:60]
    return "a list" if isinstance(node, SequenceNode) else "a mapping"


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


class _Reader:
    """Walks the composed YAML nodes, collecting every error with its line."""

    def __init__(self) -> None:
        self.errors: list[tuple[int, str]] = []
        self._constructor = SafeConstructor()

    def error(self, node: Node, where: str, message: str) -> None:
        self.errors.append((_line(node), f"{where}: {message}" if where else message))

    # -- scalars -----------------------------------------------------------------------------

    def value(self, node: Node) -> Any:
        """A scalar's value, as YAML reads it."""
        return self._constructor.construct_object(node)

    def _int(self, node: Node) -> int | None:
        """An integer scalar's value (None: not one, or beyond what Python reads)."""
        if not isinstance(node, ScalarNode) or node.tag != _INT:
            return None
        try:
            value = self.value(node)
        except (ValueError, YAMLError):  # more digits than int() takes
            return None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def integer(self, node: Node, where: str, lo: int, hi: int, what: str = "") -> int | None:
        value = self._int(node)
        if value is None:
            self.error(node, where, f"expected {what or f'an integer {lo}..{hi}'}, got {_got(node)}")
            return None
        if not lo <= value <= hi:
            self.error(node, where, f"{_number(value)} is out of range {lo}..{hi}")
            return None
        return value

    def real(self, node: Node, where: str, wanted: str) -> float | None:
        """A finite number, integer or not."""
        if isinstance(node, ScalarNode) and node.tag in (_INT, _FLOAT):
            try:
                value = float(self.value(node))
            except (ValueError, OverflowError, YAMLError):
                value = math.nan
            if math.isfinite(value):
                return value
        self.error(node, where, f"expected a number, {wanted}, got {_got(node)}")
        return None

    def number(self, node: Node, where: str, lo: float, hi: float, zero: str = "") -> float | None:
        """A number in lo..hi, or 0 when *zero* says what 0 means."""
        wanted = (f"0 ({zero}) or " if zero else "") + f"{_number(lo)}..{_number(hi)}"
        value = self.real(node, where, wanted)
        if value is not None and not (lo <= value <= hi or (zero and value == 0)):
            self.error(node, where, f"{_number(value)} is out of range{':' if zero else ''} {wanted}")
            return None
        return value

    def string(self, node: Node, where: str, wanted: str) -> str | None:
        """A string: any scalar but an empty one, as written (``name: no``
        is the name "no", not false; ``tag: 7`` the tag "7")."""
        if isinstance(node, ScalarNode) and node.tag != _NULL:
            return str(node.value)
        self.error(node, where, f"expected {wanted}, got {_got(node)}")
        return None

    def name(self, node: Node, where: str) -> str | None:
        text = self.string(node, where, f"a name ({_NAME_RULE})")
        if text is not None and not _NAME_RE.match(text):
            self.error(node, where, f"{_quote(text)}: expected {_NAME_RULE}")
            return None
        return text

    # -- collections ---------------------------------------------------------------------------

    def mapping(self, node: Node, where: str, known: Collection[str], null_ok: bool = True,
                wanted: str = "") -> dict[str, tuple[Node, Node]] | None:
        """A mapping whose keys are among *known*: {key: (key node, value node)}.
        Unknown and repeated keys are errors (the others are still read)."""
        if null_ok and isinstance(node, ScalarNode) and node.tag == _NULL:
            return {}
        if not isinstance(node, MappingNode):
            self.error(node, where, f"expected a mapping ({wanted or ', '.join(known)}), got {_got(node)}")
            return None
        out: dict[str, tuple[Node, Node]] = {}
        prefix = f"{where}." if where else ""
        for knode, vnode in node.value:
            if isinstance(knode, ScalarNode) and knode.value == "<<":
                self.error(knode, where, "merge keys (<<) are not supported: write the keys out")
                continue
            if not isinstance(knode, ScalarNode) or knode.tag not in (_STR, _INT, _FLOAT, _BOOL, _NULL):
                self.error(knode, where, f"expected a key ({', '.join(known)}), got {_got(knode)}")
                continue
            key = str(knode.value)
            if key not in known:
                hint = difflib.get_close_matches(key, list(known), n=1)
                self.error(knode, where, f"unknown key {_quote(key)}"
                           + (f" (did you mean {hint[0]}?)" if hint else f" (known: {', '.join(known)})"))
                continue
            if key in out:
                self.error(knode, prefix + key, f"given twice (first on line {_line(out[key][0])})")
                continue
            out[key] = (knode, vnode)
        return out

    def id_mapping(self, node: Node, where: str, what: str, shape: str, key_lo: int,
                   value: Callable[[Node, str], int | None]) -> dict[int, int] | None:
        """A mapping of integer ids (*what*, *key_lo*..2**32-1) to integers,
        written as *shape*."""
        if isinstance(node, ScalarNode) and node.tag == _NULL:
            return {}
        if not isinstance(node, MappingNode):
            self.error(node, where, f"expected a mapping {shape}, got {_got(node)}")
            return None
        out: dict[int, int] = {}
        lines: dict[int, int] = {}
        ok = True
        for knode, vnode in node.value:
            key = self._int(knode)
            if key is None:
                self.error(knode, where, f"expected {what} ({key_lo}..{MAX_ID}) as the key, got {_got(knode)}")
                ok = False
                continue
            if not key_lo <= key <= MAX_ID:
                self.error(knode, where, f"key {_number(key)} is out of range {key_lo}..{MAX_ID} ({what})")
                ok = False
                continue
            if key in lines:
                self.error(knode, f"{where}.{key}", f"given twice (first on line {lines[key]})")
                ok = False
                continue
            lines[key] = _line(knode)
            v = value(vnode, f"{where}.{key}")
            if v is None:
                ok = False
                continue
            out[key] = v
        return out if ok else None

    def items(self, node: Node) -> list[Node]:
        """A list's items, or a lone scalar as a list of one."""
        return list(node.value) if isinstance(node, SequenceNode) else [node]

    def nonempty(self, node: Node, where: str, what: str) -> list[Node] | None:
        if isinstance(node, MappingNode) or isinstance(node, ScalarNode) and node.tag == _NULL:
            self.error(node, where, f"expected {what} or a list of them, got {_got(node)}")
            return None
        items = self.items(node)
        if not items:
            self.error(node, where, "an empty list matches nothing; leave the condition out to match all")
            return None
        return items


def _count_nodes(root: Node) -> int:
    """How many values *root* expands to (aliases counted each time), up to _MAX_NODES + 1."""
    count = 0
    stack = [root]
    while stack and count <= _MAX_NODES:
        node = stack.pop()
        count += 1
        if isinstance(node, SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, MappingNode):
            for k, v in node.value:
                stack.append(k)
                stack.append(v)
    return count


def _compose(text: str) -> Node | None:
    """The YAML node tree of *text* (the pure-Python loader: every replica
    reads the same text the same way, with or without libyaml)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = int(mark.line) + 1 if mark is not None else 0
        problem, context = str(exc.problem or ""), str(exc.context or "")
        if problem.startswith("but"):
            what = f"{context}, {problem}"
        else:
            what = f"{problem} ({context})" if problem and context else problem or context
        if "scanning an alias" in context:
            what += '. A glob that starts with * must be quoted: "*.tmp"'
        elif "scanning a block scalar" in context:
            what += '. A size condition that starts with > must be quoted: ">= 1G"'
        raise PolicyError([(line, f"not valid YAML: {what}")]) from None
    except ReaderError as exc:
        line = text.count("\n", 0, int(exc.position)) + 1
        char = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "\0")
        raise PolicyError([(line, f"not valid YAML: character U+{char:04X} is not allowed "
                                  "(control characters cannot appear in YAML)")]) from None
    except YAMLError as exc:
        raise PolicyError([(0, f"not valid YAML: {str(exc)[:200]}")]) from None
    except RecursionError:
        raise PolicyError([(0, "not valid YAML: nested too deeply")]) from None
    return node if isinstance(node, Node) else None


def _decode(text: str | bytes) -> str:
    if isinstance(text, bytes):
        if len(text) > MAX_POLICY_BYTES:
            raise PolicyError([(0, f"policy is {len(text)} bytes, at most {MAX_POLICY_BYTES}")])
        try:
            return text.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = text.count(b"\n", 0, exc.start) + 1
            raise PolicyError([(line, f"policy is not UTF-8 text (byte 0x{text[exc.start]:02x} at offset "
                                      f"{exc.start})")]) from None
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        line = text.count("\n", 0, exc.start) + 1
        raise PolicyError([(line, f"policy is not UTF-8 text (character {exc.object[exc.start]!r} at "
                                  f"offset {exc.start})")]) from None
    if size > MAX_POLICY_BYTES:
        raise PolicyError([(0, f"policy is {size} bytes, at most {MAX_POLICY_BYTES}")])
    return text


def parse(text: str | bytes) -> Policy:
    """The policy in *text* (YAML, UTF-8, at most MAX_POLICY_BYTES); an
    empty document is the defaults. Raises PolicyError with every problem
    in the document, each with its line."""
    source = _decode(text)
    root = _compose(source)
    if root is None or isinstance(root, ScalarNode) and root.tag == _NULL:
        return Policy(text=source)
    if _count_nodes(root) > _MAX_NODES:
        raise PolicyError([(0, f"the policy expands to more than {_MAX_NODES} values (through YAML aliases?)")])
    r = _Reader()
    top = r.mapping(root, "", _SECTIONS, wanted="the sections " + ", ".join(_SECTIONS))
    values: dict[str, Any] = {}
    if top is not None:
        for key, (_, node) in top.items():
            _SECTION_READERS[key](r, node, values)
    if r.errors:
        raise PolicyError(sorted(r.errors, key=lambda e: e[0]))
    return Policy(text=source, **values)


def _settings(r: _Reader, node: Node, out: dict[str, Any]) -> None:
    m = r.mapping(node, "settings", _SETTINGS)
    if m is None:
        return
    d = Settings()
    got: dict[str, Any] = {}
    checks: dict[str, Callable[[Node, str], Any]] = {
        "max_attempts": lambda n, w: r.integer(n, w, 1, 100),
        "progress_timeout": lambda n, w: r.number(n, w, MIN_SECONDS, _WEEK, zero="never"),
        "agent_grace": lambda n, w: r.number(n, w, MIN_SECONDS, 86_400),
        "max_terminal": lambda n, w: r.integer(n, w, 0, 10_000_000),
        "max_running": lambda n, w: r.integer(n, w, 0, 1_000_000),
        "max_running_per_archive": lambda n, w: r.id_mapping(
            n, w, "an archive id", "{archive id: most running}", 1, lambda v, w2: r.integer(v, w2, 1, 1_000_000)),
    }
    for key, (_, vnode) in m.items():
        value = checks[key](vnode, f"settings.{key}")
        if value is not None:
            got[key] = value
    per_archive = got.pop("max_running_per_archive", {})
    out["settings"] = replace(d, **got, max_running_per_archive=tuple(sorted(per_archive.items())))


def _priorities(r: _Reader, node: Node, out: dict[str, Any]) -> None:
    m = r.mapping(node, "priorities", ("kinds", "starvation_after"))
    if m is None:
        return
    if "kinds" in m:
        kinds = r.mapping(m["kinds"][1], "priorities.kinds", tuple(KIND_NAMES))
        weights = {KIND_NAMES[k]: w for k, w in DEFAULT_KIND_WEIGHTS.items()}
        for name, (_, vnode) in (kinds or {}).items():
            w = r.integer(vnode, f"priorities.kinds.{name}", 0, 1000)
            if w is not None:
                weights[KIND_NAMES[name]] = w
        out["kind_weights"] = tuple(sorted(weights.items()))
    if "starvation_after" in m:
        value = r.number(m["starvation_after"][1], "priorities.starvation_after", 1, _WEEK, zero="off")
        if value is not None:
            out["starvation_after"] = value


def _fair_share(r: _Reader, node: Node, out: dict[str, Any]) -> None:
    m = r.mapping(node, "fair_share", ("by", "weights"))
    if m is None:
        return
    if "by" in m:
        vnode = m["by"][1]
        by = r.string(vnode, "fair_share.by", " | ".join(SHARE_BY))
        if by is not None and by not in SHARE_BY:
            r.error(vnode, "fair_share.by", f"{_quote(by)}: expected one of {', '.join(SHARE_BY)}")
        elif by is not None:
            out["share_by"] = by
    if "weights" in m:
        weights = r.id_mapping(m["weights"][1], "fair_share.weights", "a uid, gid or projid", "{id: weight}", 0,
                               lambda v, w: r.integer(v, w, 1, 1000))
        if weights is not None:
            out["share_weights"] = tuple(sorted((k, w) for k, w in weights.items() if w != 1))


def _rate_limits(r: _Reader, node: Node, out: dict[str, Any]) -> None:
    m = r.mapping(node, "rate_limits", ("per_user", "per_initiator"))
    if m is None:
        return
    for key, (_, vnode) in m.items():
        where = f"rate_limits.{key}"
        if isinstance(vnode, ScalarNode) and vnode.tag == _NULL:
            out[key] = None
            continue
        limit = r.mapping(vnode, where, ("rate", "burst"), null_ok=False)
        if limit is None:
            continue
        rate: float | None = None
        burst: int | None = None
        if "rate" in limit:
            rnode = limit["rate"][1]
            wanted = "more than 0, at most 1000000 (requests a second)"
            rate = r.real(rnode, f"{where}.rate", wanted)
            if rate is not None and not 0 < rate <= 1e6:
                r.error(rnode, f"{where}.rate", f"{_number(rate)} is out of range: {wanted}")
                rate = None
        else:
            r.error(vnode, where, "needs rate (requests a second)")
        if "burst" in limit:
            burst = r.integer(limit["burst"][1], f"{where}.burst", 1, 10_000_000)
        else:
            r.error(vnode, where, "needs burst (requests accepted at once)")
        if rate is not None and burst is not None:
            out[key] = RateLimit(rate, burst)


def _request_masks(r: _Reader, node: Node, out: dict[str, Any]) -> None:
    m = r.mapping(node, "request_masks", MASK_ROLES)
    if m is None:
        return
    masks = dict(DEFAULT_MASKS)
    for role, (_, vnode) in m.items():
        where = f"request_masks.{role}"
        allowed = MASK_NAMES if role == USER else tuple(KIND_NAMES)
        if isinstance(vnode, MappingNode) or isinstance(vnode, ScalarNode) and vnode.tag == _NULL:
            r.error(vnode, where, f"expected a list of {', '.join(allowed)} ([] for none), got {_got(vnode)}")
            continue
        names: set[str] = set()
        for item in r.items(vnode):
            name = r.string(item, where, f"one of {', '.join(allowed)}")
            if name is None:
                continue
            if name not in allowed:
                hint = "; cancel is for user only" if name == "cancel" else ""
                r.error(item, where, f"{_quote(name)} is not one of {', '.join(allowed)}{hint}")
                continue
            names.add(name)
        masks[role] = frozenset(names)
    out["request_masks"] = tuple((role, masks[role]) for role in MASK_ROLES)


def _rules(r: _Reader, node: Node, out: dict[str, Any]) -> None:
    if isinstance(node, ScalarNode) and node.tag == _NULL:
        return
    if not isinstance(node, SequenceNode):
        r.error(node, "rules", f"expected a list of rules ({{name, match, then}}), got {_got(node)}")
        return
    if len(node.value) > MAX_RULES:
        r.error(node, "rules", f"{len(node.value)} rules, at most {MAX_RULES}")
        return
    rules: list[Rule] = []
    names: dict[str, tuple[int, int]] = {}  # name -> (index, line)
    for i, rnode in enumerate(node.value):
        rule = _rule(r, rnode, f"rules[{i}]", i, names)
        if rule is not None:
            rules.append(rule)
    out["rules"] = tuple(rules)


def _batching(r: _Reader, node: Node, out: dict[str, Any]) -> None:
    m = r.mapping(node, "batching", ("size", "idle", "max_wait"))
    if m is None:
        return
    for key, attr, check in (
            ("size", "batch_size", lambda n, w: r.integer(n, w, 0, 100_000)),
            ("idle", "batch_idle", lambda n, w: r.number(n, w, MIN_SECONDS, 86_400)),
            ("max_wait", "batch_max_wait", lambda n, w: r.number(n, w, MIN_SECONDS, _WEEK))):
        if key in m:
            value = check(m[key][1], f"batching.{key}")
            if value is not None:
                out[attr] = value


def _tape(r: _Reader, node: Node, out: dict[str, Any]) -> None:
    m = r.mapping(node, "tape", ("max_mount",))
    if m is None:
        return
    if "max_mount" in m:
        value = r.number(m["max_mount"][1], "tape.max_mount", MIN_SECONDS, _WEEK)
        if value is not None:
            out["max_mount"] = value


def _striping(r: _Reader, node: Node, out: dict[str, Any]) -> None:
    m = r.mapping(node, "striping", ("above", "part_size", "max_parts"))
    if m is None:
        return
    for key, attr in (("above", "stripe_above"), ("part_size", "stripe_part")):
        if key in m:
            vnode = m[key][1]
            raw = r.value(vnode)
            where = f"striping.{key}"
            try:
                if isinstance(raw, bool) or not isinstance(raw, int | str):
                    raise ValueError("expected a size such as 4G or a number of bytes")
                n = raw if isinstance(raw, int) else size_bytes(raw)
            except ValueError as exc:
                forms = str(exc) == f"expected {_SIZE_FORMS}"  # size_bytes speaks of rules' conditions
                r.error(vnode, where, "expected a size such as 4G or a number of bytes" if forms else str(exc))
                continue
            if key == "above" and n == 0:
                out[attr] = 0  # off
            elif n < MIN_STRIPE_PART or n > MAX_SIZE:
                r.error(vnode, where, f"{n} bytes: a {'part' if key == 'part_size' else 'striped file'} is at "
                                      f"least {_size_unit(MIN_STRIPE_PART)}" + (" (0: off)" if key == "above" else ""))
            else:
                out[attr] = n
    if "max_parts" in m:
        value = r.integer(m["max_parts"][1], "striping.max_parts", 2, 64)
        if value is not None:
            out["stripe_max_parts"] = value


_SECTION_READERS: Final[dict[str, Callable[[_Reader, Node, dict[str, Any]], None]]] = {
    "settings": _settings, "priorities": _priorities, "fair_share": _fair_share, "rate_limits": _rate_limits,
    "request_masks": _request_masks, "batching": _batching, "tape": _tape, "striping": _striping, "rules": _rules,
}


def _rule(r: _Reader, node: Node, where: str, index: int, names: dict[str, tuple[int, int]]) -> Rule | None:
    before = len(r.errors)
    m = r.mapping(node, where, ("name", "match", "then"), null_ok=False)
    if m is None:
        return None
    values: dict[str, Any] = {"line": _line(node)}
    if "name" in m:
        vnode = m["name"][1]
        name = r.name(vnode, f"{where}.name")
        if name is not None and name in names:
            other, line = names[name]
            r.error(vnode, f"{where}.name", f"{_quote(name)} is the name of rules[{other}] (line {line}) "
                                            "already; names are unique")
        elif name is not None:
            names[name] = (index, _line(vnode))
            values["name"] = name
    else:
        r.error(node, where, f"needs a name ({_NAME_RULE}, unique)")
    if "match" in m:
        _match(r, m["match"][1], f"{where}.match", values)
    if "then" in m:
        _then(r, m["then"][1], f"{where}.then", values)
    else:
        r.error(node, where, "needs then (deny, allow, or any of priority, tag, archive_id, copies)")
    if len(r.errors) > before:
        return None
    try:
        return Rule(**values)
    except ValueError as exc:  # checked above; a glob regex the re module still refuses
        r.error(node, where, str(exc))
        return None


def _match(r: _Reader, node: Node, where: str, values: dict[str, Any]) -> None:
    m = r.mapping(node, where, _MATCH)
    if m is None:
        return
    for key, (_, vnode) in m.items():
        w = f"{where}.{key}"
        if key == "kind":
            items = r.nonempty(vnode, w, "a kind (archive, restore, remove)")
            kinds: set[int] = set()
            for item in items or ():
                name = r.string(item, w, "a kind (archive, restore, remove)")
                if name is not None and name not in KIND_NAMES:
                    r.error(item, w, f"{_quote(name)} is not a kind (archive, restore, remove)")
                elif name is not None:
                    kinds.add(KIND_NAMES[name])
            values["kinds"] = frozenset(kinds)
        elif key in ("archive_id", "uid", "gid", "projid"):
            lo = 1 if key == "archive_id" else 0
            items = r.nonempty(vnode, w, f"an integer {lo}..{MAX_ID}")
            ids = {r.integer(item, w, lo, MAX_ID) for item in items or ()}
            values[{"archive_id": "archive_ids", "uid": "uids", "gid": "gids", "projid": "projids"}[key]] = \
                frozenset(i for i in ids if i is not None)
        elif key in ("path", "initiator"):
            is_path = key == "path"
            items = r.nonempty(vnode, w, "a glob")
            globs: set[str] = set()
            for item in items or ():
                glob = r.string(item, w, "a glob")
                if glob is None:
                    continue
                try:
                    compile_globs([glob], path=is_path)
                except ValueError as exc:
                    r.error(item, w, f"{_quote(glob)}: {exc}")
                    continue
                globs.add(glob)
            values["paths" if is_path else "initiators"] = tuple(sorted(globs))
        else:  # size
            if isinstance(vnode, ScalarNode) and vnode.tag == _INT:
                n = r.integer(vnode, w, 0, MAX_SIZE, f"a size ({_SIZE_FORMS})")
                if n is not None:
                    values["size"] = (n, n)
                continue
            text = r.string(vnode, w, f"a size condition: {_SIZE_FORMS}")
            if text is None:
                continue
            try:
                values["size"] = size_range(text)
            except ValueError as exc:
                r.error(vnode, w, f"{_quote(text)}: {exc}")


def _then(r: _Reader, node: Node, where: str, values: dict[str, Any]) -> None:
    m = r.mapping(node, where, _THEN, null_ok=False)
    if m is None:
        return
    if not m:
        r.error(node, where, "expected deny, allow, or any of priority, tag, archive_id, copies")
        return
    sets = [k for k in _SETS if k in m]
    if "deny" in m and "allow" in m:
        r.error(node, where, "deny and allow together: a rule either refuses or accepts")
    elif "deny" in m and sets:
        r.error(node, where, f"deny with {', '.join(sets)}: a refused request gets nothing set "
                             "(put them in another rule)")
    for key, (_, vnode) in m.items():
        w = f"{where}.{key}"
        if key == "deny":
            reason = r.string(vnode, w, "the reason the requester is told (1..200 characters)")
            if reason is not None and not (1 <= len(reason) <= 200 and reason.isprintable()):
                r.error(vnode, w, f"{_quote(reason)}: expected the reason the requester is told, "
                                  "1..200 printable characters on one line")
            elif reason is not None:
                values["deny"] = reason
        elif key == "allow":
            if not isinstance(vnode, ScalarNode) or vnode.tag != _BOOL:
                r.error(vnode, w, f"expected true, got {_got(vnode)}")
            elif not r.value(vnode):
                r.error(vnode, w, "false means nothing: leave allow out (only allow: true stops the rules)")
            else:
                values["allow"] = True
        elif key == "priority":
            values["priority"] = r.integer(vnode, w, -1000, 1000)
        elif key == "tag":
            values["tag"] = r.name(vnode, w)
        elif key == "copies":
            values["copies"] = r.integer(vnode, w, 1, MAX_COPIES)
        else:
            values["archive_id"] = r.integer(vnode, w, 1, MAX_ID)


# -- the first version, and what changes ---------------------------------------------------------


def _clamp(value: float, lo: float, hi: float, default: float) -> float:
    if not math.isfinite(value):
        return default
    return min(max(value, lo), hi)


def seeded(max_attempts: int, progress_timeout: float, agent_grace: float, max_terminal: int,
           user_request_mask: frozenset[str]) -> Policy:
    """The first policy version, from a replica's configuration
    (coordinator.yaml): the defaults, with these settings and the user
    request mask. Values outside the language's ranges are brought to the
    nearest end (a ``progress_timeout`` of 0.001 s is 0.01 s; 0 stays "never")
    so that its ``text`` (its dump) parses back to it."""
    timeout = 0.0 if progress_timeout == 0 else _clamp(progress_timeout, MIN_SECONDS, _WEEK, 600.0)
    settings = Settings(
        max_attempts=int(_clamp(max_attempts, 1, 100, 3)),
        progress_timeout=float(timeout),
        agent_grace=float(_clamp(agent_grace, MIN_SECONDS, 86_400, 60.0)),
        max_terminal=int(_clamp(max_terminal, 0, 10_000_000, 100_000)),
    )
    masks = dict(DEFAULT_MASKS)
    masks[USER] = frozenset(n for n in user_request_mask if n in MASK_NAMES)
    policy = Policy(settings=settings, request_masks=tuple((role, masks[role]) for role in MASK_ROLES))
    return replace(policy, text=policy.dump())


def _fmt(value: Any) -> str:
    """A to_dict value in a diff line, YAML-like and on one line."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)


#: what an absent key of these mappings means, in a diff line
_ABSENT: Final = {"settings.max_running_per_archive": "unset (no limit)", "fair_share.weights": "1 (default)"}


def _diff_values(where: str, old: Any, new: Any, out: list[str], absent: str = "unset") -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        absent = _ABSENT.get(where, absent)
        for key in list(old) + [k for k in new if k not in old]:
            w = f"{where}.{key}"
            if key not in new:
                out.append(f"{w}: {_fmt(old[key])} -> {absent}")
            elif key not in old:
                out.append(f"{w}: {absent} -> {_fmt(new[key])}")
            else:
                _diff_values(w, old[key], new[key], out)
    elif old != new:
        out.append(f"{where}: {_fmt(old)} -> {_fmt(new)}")


def diff(old: Policy, new: Policy) -> list[str]:
    """What changes from *old* to *new*, one line a change, in document
    order ([] when they mean the same)::

        settings.max_attempts: 3 -> 5
        fair_share.weights.1000: 1 (default) -> 4
        rules: - old-rule
        rules: + scratch-archives-low (line 14)
        rules: ~ big (match changed)
        rules: order changed
    """
    out: list[str] = []
    a, b = old.to_dict(), new.to_dict()
    for section in _SECTIONS[:-1]:
        _diff_values(section, a[section], b[section], out)
    old_rules = {r.name: r for r in old.rules}
    new_rules = {r.name: r for r in new.rules}
    for rule in old.rules:
        if rule.name not in new_rules:
            out.append(f"rules: - {rule.name}")
    for rule in new.rules:
        if rule.name not in old_rules:
            out.append(f"rules: + {rule.name}" + (f" (line {rule.line})" if rule.line else ""))
    for rule in new.rules:
        before = old_rules.get(rule.name)
        if before is None:
            continue
        changed = [part for part, same in (("match", before.match_dict() == rule.match_dict()),
                                           ("then", before.then_dict() == rule.then_dict())) if not same]
        if changed:
            out.append(f"rules: ~ {rule.name} ({' and '.join(changed)} changed)")
    kept_old = [r.name for r in old.rules if r.name in new_rules]
    kept_new = [r.name for r in new.rules if r.name in old_rules]
    if kept_old != kept_new:
        out.append("rules: order changed")
    return out
