"""The policy language (coordinator/policy.py, pure): every key and its
default, every rule action and match condition, rule order, the glob and
size syntax, every kind of error with its line (all of them at once), the
canonical dump and its round trip, the semantic diff, pickling, and a
property test that the admission cache never changes a decision.

admit() cost, measured with ``python -m tests.test_policy`` (``_bench``
below; no timing assertion here) on the 2-core dev machine, 50 rules (uid,
gid+kind, path, size+archive id, kind+path+uid denial): about 3 us/item when
the items come from a few hundred users (each with its gid and projid),
about 4.5 us/item when every item is a new (kind, archive id, uid, gid,
projid, initiator) combination, against about 9 us/item evaluating every
rule in order (``reference``).
"""

from __future__ import annotations

import copy
import fnmatch
import pickle
import re
import textwrap
from dataclasses import replace
from typing import Any
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from coordinator import policy as policy_mod
from coordinator.policy import (
    KIND_NAMES,
    MAX_POLICY_BYTES,
    MAX_SIZE,
    Decision,
    Policy,
    PolicyError,
    RateLimit,
    Rule,
    Settings,
    compile_globs,
    diff,
    glob_hints,
    parse,
    seeded,
    size_range,
    size_text,
)

ARCHIVE, RESTORE, REMOVE = 20, 21, 22


def doc(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def errors_of(text: str | bytes) -> list[tuple[int, str]]:
    with pytest.raises(PolicyError) as info:
        parse(text)
    return info.value.errors


def one_error(text: str | bytes) -> tuple[int, str]:
    errors = errors_of(text)
    assert len(errors) == 1, errors
    return errors[0]


def admit(p: Policy, kind: int = ARCHIVE, archive_id: int = 1, path: str = "/fs/a/file", size: int | None = 100,
          uid: int = 1000, gid: int = 100, projid: int = 0, initiator: str = "mdt0") -> Decision:
    return p.admit(kind, archive_id, path, size, uid, gid, projid, initiator)


def rules(text: str) -> Policy:
    """A policy of just these rules (YAML list items, dedented)."""
    return parse("rules:\n" + textwrap.indent(doc(text), "  "))


EXAMPLE = doc("""
    settings:
      max_attempts: 5
      progress_timeout: 900
      agent_grace: 30.5
      max_terminal: 5000
      max_running: 64
      max_running_per_archive:
        2: 10
        1: 100
    priorities:
      kinds: {restore: 10, archive: 0}
      starvation_after: 7200
    fair_share:
      by: project
      weights: {7: 4, 8: 1, 9: 2}
    rate_limits:
      per_user:      {rate: 100, burst: 1000}
      per_initiator: {rate: 0.5, burst: 10}
    request_masks:
      user: [restore, cancel]
      bridge: [archive]
    rules:
      - name: scratch-archives-low
        match:
          kind: [archive]
          archive_id: [1, 2]
          path: ["/scratch/**", "*.tmp"]
          size: ">= 1G"
          uid: [1000, 1001]
          gid: 100
          projid: [7]
          initiator: ["oss-*"]
        then:
          deny: "scratch is not archived"
      - name: big
        match: {size: "1M..10G"}
        then: {priority: -5, tag: tape-a, archive_id: 2}
      - name: everyone
        then: {allow: true}
    """)


# -- defaults and every key ----------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n", "# nothing but a comment\n", "~\n", b"", "settings:\nrules:\n",
                                  "settings: {}\npriorities: {}\nfair_share: {}\nrate_limits: {}\n"
                                  "request_masks: {}\nrules: []\n"])
def test_an_empty_document_is_all_defaults(text: str | bytes) -> None:
    p = parse(text)
    assert p == Policy()
    assert p.text == (text.decode() if isinstance(text, bytes) else text)
    s = p.settings
    assert (s.max_attempts, s.progress_timeout, s.agent_grace, s.max_terminal, s.max_running) == (
        3, 600.0, 60.0, 100_000, 0)
    assert s.max_running_per_archive == () and s.running_limit(1) == 0
    assert p.kind_weights == ((ARCHIVE, 1), (RESTORE, 3), (REMOVE, 2))
    assert (p.kind_weight(ARCHIVE), p.kind_weight(RESTORE), p.kind_weight(REMOVE)) == (1, 3, 2)
    assert p.starvation_after == 3600.0
    assert p.share_by == "none" and p.share_key(1, 2, 3) == -1 and p.share_weight(5) == 1
    assert p.per_user is None and p.per_initiator is None
    assert p.mask("user") == {"restore"}
    for role in ("operator", "bridge", "admin"):
        assert p.mask(role) == {"archive", "restore", "remove"}
    assert p.mask("agent") == frozenset() and p.mask("replica") == frozenset()
    assert p.rules == ()
    assert admit(p) == Decision()


def test_the_documented_examples_parse() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "policy.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)
    assert len(blocks) >= 3
    for block in blocks:
        p = parse(block)
        assert parse(p.dump()) == p
    full = parse(blocks[0])
    assert full.settings.running_limit(1) == 100 and full.share_weight(1000) == 4
    assert [r.name for r in full.rules] == ["scratch-is-not-archived", "big-files-to-tape"]


def test_kind_names_are_lustres_hsma_codes() -> None:
    assert KIND_NAMES == {"archive": 20, "restore": 21, "remove": 22}
    assert MAX_POLICY_BYTES == 262144


def test_every_key_of_the_example() -> None:
    p = parse(EXAMPLE)
    assert p.text == EXAMPLE
    assert p.settings == Settings(max_attempts=5, progress_timeout=900.0, agent_grace=30.5, max_terminal=5000,
                                  max_running=64, max_running_per_archive=((1, 100), (2, 10)))
    assert p.settings.running_limit(1) == 100 and p.settings.running_limit(2) == 10
    assert p.settings.running_limit(3) == 0
    assert p.kind_weights == ((ARCHIVE, 0), (RESTORE, 10), (REMOVE, 2))  # remove keeps its default
    assert p.starvation_after == 7200.0
    assert p.share_by == "project"
    assert p.share_weights == ((7, 4), (9, 2))  # weight 1 is the default: not kept
    assert (p.share_weight(7), p.share_weight(8), p.share_weight(9), p.share_weight(10)) == (4, 1, 2, 1)
    assert p.per_user == RateLimit(100.0, 1000)
    assert p.per_initiator == RateLimit(0.5, 10)
    assert p.mask("user") == {"restore", "cancel"}
    assert p.mask("bridge") == {"archive"}
    assert p.mask("operator") == {"archive", "restore", "remove"}  # not given: the default
    assert [r.name for r in p.rules] == ["scratch-archives-low", "big", "everyone"]
    first = p.rules[0]
    assert first == Rule(name="scratch-archives-low", kinds=frozenset({ARCHIVE}), archive_ids=frozenset({1, 2}),
                         paths=("*.tmp", "/scratch/**"), size=(2**30, MAX_SIZE), uids=frozenset({1000, 1001}),
                         gids=frozenset({100}), projids=frozenset({7}), initiators=("oss-*",),
                         deny="scratch is not archived")
    assert first.line == 23
    assert p.rules[1] == Rule(name="big", size=(2**20, 10 * 2**30), priority=-5, tag="tape-a", archive_id=2)
    assert p.rules[2] == Rule(name="everyone", allow=True)


@pytest.mark.parametrize(("by", "key"), [("none", -1), ("user", 1000), ("group", 100), ("project", 7)])
def test_fair_share_keys(by: str, key: int) -> None:
    p = parse(f"fair_share: {{by: {by}}}\n")
    assert p.share_by == by
    assert p.share_key(1000, 100, 7) == key


@pytest.mark.parametrize(("text", "value"), [("0", 0.0), ("1", 1.0), ("1.5", 1.5), ("604800", 604800.0)])
def test_progress_timeout_may_be_zero_or_fractional(text: str, value: float) -> None:
    assert parse(f"settings: {{progress_timeout: {text}}}\n").settings.progress_timeout == value


def test_starvation_after_zero_is_off_and_rate_limits_may_be_null() -> None:
    p = parse("priorities: {starvation_after: 0}\nrate_limits: {per_user: null, per_initiator: ~}\n")
    assert p.starvation_after == 0.0
    assert p.per_user is None and p.per_initiator is None


def test_request_masks_may_be_empty_or_a_single_name() -> None:
    p = parse("request_masks: {user: [], operator: restore, admin: [remove, remove]}\n")
    assert p.mask("user") == frozenset()
    assert p.mask("operator") == {"restore"}
    assert p.mask("admin") == {"remove"}
    assert p.request_masks == (("user", frozenset()), ("operator", frozenset({"restore"})),
                               ("bridge", frozenset({"archive", "restore", "remove"})),
                               ("admin", frozenset({"remove"})))


# -- rules ----------------------------------------------------------------------------------------


def test_no_rule_matching_accepts_with_nothing_set() -> None:
    p = rules("""
        - name: only-restores
          match: {kind: restore}
          then: {deny: no restores here}
        """)
    assert admit(p, kind=ARCHIVE) == Decision()
    assert admit(p, kind=RESTORE) == Decision(deny="no restores here", rule="only-restores")


def test_sets_accumulate_and_a_later_match_overrides_the_same_field() -> None:
    p = rules("""
        - name: a
          then: {priority: 1, tag: t1}
        - name: b
          match: {uid: 1000}
          then: {priority: 2}
        - name: c
          match: {uid: 2000}
          then: {archive_id: 9}
        """)
    assert admit(p, uid=1000) == Decision(priority=2, tag="t1", rule="b")
    assert admit(p, uid=2000) == Decision(priority=1, tag="t1", archive_id=9, rule="c")
    assert admit(p, uid=3000) == Decision(priority=1, tag="t1", rule="a")


def test_priority_zero_is_set_not_unset() -> None:
    p = rules("""
        - name: zero
          then: {priority: 0}
        """)
    assert admit(p) == Decision(priority=0, rule="zero")


def test_deny_stops_and_discards_the_sets_so_far() -> None:
    p = rules("""
        - name: set
          then: {priority: 5, tag: x}
        - name: no
          match: {kind: remove}
          then: {deny: removes are off}
        - name: later
          then: {priority: 7}
        """)
    assert admit(p, kind=REMOVE) == Decision(deny="removes are off", rule="no")
    assert admit(p, kind=ARCHIVE) == Decision(priority=7, tag="x", rule="later")


def test_allow_stops_with_the_sets_so_far_and_its_own() -> None:
    p = rules("""
        - name: base
          then: {priority: 1, tag: base}
        - name: vip
          match: {uid: 0}
          then: {allow: true, priority: 9}
        - name: no-root-archive
          match: {uid: 0}
          then: {deny: never reached}
        - name: plain-allow
          match: {uid: 5}
          then: {allow: true}
        - name: everyone-else
          then: {deny: closed}
        """)
    assert admit(p, uid=0) == Decision(priority=9, tag="base", rule="vip")
    assert admit(p, uid=5) == Decision(priority=1, tag="base", rule="plain-allow")
    assert admit(p, uid=6) == Decision(deny="closed", rule="everyone-else")


@pytest.mark.parametrize(("cond", "hit", "miss"), [
    ("kind: archive", {"kind": ARCHIVE}, {"kind": RESTORE}),
    ("kind: [restore, remove]", {"kind": REMOVE}, {"kind": ARCHIVE}),
    ("archive_id: 2", {"archive_id": 2}, {"archive_id": 1}),
    ("archive_id: [2, 3]", {"archive_id": 3}, {"archive_id": 4}),
    ("uid: 0", {"uid": 0}, {"uid": 1}),
    ("uid: [1000, 1001]", {"uid": 1001}, {"uid": 1002}),
    ("gid: 100", {"gid": 100}, {"gid": 101}),
    ("projid: [7, 4294967295]", {"projid": 4294967295}, {"projid": 8}),
    ("initiator: oss-*", {"initiator": "oss-12"}, {"initiator": "mdt0"}),
    ("initiator: ['mdt?', 'client-[ab]']", {"initiator": "client-b"}, {"initiator": "client-c"}),
    ("path: /scratch/**", {"path": "/scratch/u/f"}, {"path": "/home/u/f"}),
    ("path: ['*.tmp', /x]", {"path": "/a/b.tmp"}, {"path": "/a/b.tmpx"}),
    ("size: '>= 1G'", {"size": 2**30}, {"size": 2**30 - 1}),
    ("size: '< 4K'", {"size": 4095}, {"size": 4096}),
    ("size: 1M..10G", {"size": 10 * 2**30}, {"size": 10 * 2**30 + 1}),
    ("size: 4096", {"size": 4096}, {"size": 4097}),
])
def test_each_match_condition(cond: str, hit: dict[str, Any], miss: dict[str, Any]) -> None:
    p = rules(f"""
        - name: r
          match: {{{cond}}}
          then: {{tag: hit}}
        """)
    assert admit(p, **hit) == Decision(tag="hit", rule="r")
    assert admit(p, **miss) == Decision()


def test_all_conditions_must_hold() -> None:
    p = rules("""
        - name: r
          match: {kind: archive, uid: 1000, path: "/a/**", size: "> 0"}
          then: {tag: hit}
        """)
    assert admit(p, kind=ARCHIVE, uid=1000, path="/a/b", size=1).tag == "hit"
    assert admit(p, kind=ARCHIVE, uid=1000, path="/a/b", size=0).tag == ""
    assert admit(p, kind=ARCHIVE, uid=1001, path="/a/b", size=1).tag == ""
    assert admit(p, kind=RESTORE, uid=1000, path="/a/b", size=1).tag == ""
    assert admit(p, kind=ARCHIVE, uid=1000, path="/b/a", size=1).tag == ""


def test_an_unknown_path_or_size_never_matches_a_condition_on_it() -> None:
    p = rules("""
        - name: any-path
          match: {path: "/**"}
          then: {deny: path}
        - name: any-size
          match: {size: ">= 0"}
          then: {deny: size}
        """)
    assert admit(p, path="/x", size=None) == Decision(deny="path", rule="any-path")
    assert admit(p, path="", size=0) == Decision(deny="size", rule="any-size")
    assert admit(p, path="", size=None) == Decision()


def test_an_empty_or_missing_match_matches_everything() -> None:
    p = rules("""
        - name: a
          match: {}
          then: {priority: 1}
        - name: b
          match:
          then: {tag: b}
        - name: c
          then: {archive_id: 3}
        """)
    assert admit(p, kind=REMOVE, path="", size=None, uid=5) == Decision(priority=1, tag="b", archive_id=3, rule="c")


# -- globs ----------------------------------------------------------------------------------------

GLOB_CASES = [
    ("/scratch/**", ["/scratch", "/scratch/a", "/scratch/a/b/c", "/scratch/"], ["/scratchy", "/x/scratch/a", "/"]),
    ("*.tmp", ["/a/b/x.tmp", "/x.tmp", "x.tmp", "/a/.tmp"], ["/a/x.tmp/y", "/a/x.tmpl", "/a/xtmp"]),
    ("/a/*/c", ["/a/b/c", "/a//c", "/a/xyz/c"], ["/a/b/d/c", "/a/c", "/a/b/c/d"]),
    ("/a/**/b", ["/a/b", "/a/x/b", "/a/x/y/b"], ["/a/xb", "/a/x/b/c", "/ab"]),
    ("/**/core", ["/core", "/a/core", "/a/b/core"], ["/a/core.1", "/acore"]),
    ("**/core", ["/core", "/a/b/core", "core"], ["/a/xcore"]),
    ("cache/*.o", ["/x/cache/y.o", "/cache/y.o"], ["/x/cachey/y.o", "/x/cache/a/y.o", "/x/mycache/y.o"]),
    ("cache/**", ["/x/cache", "/x/cache/a/b"], ["/x/cached", "/x/my-cache/a"]),
    ("/f?le", ["/file", "/fole"], ["/f/le", "/fiile", "/fle"]),
    ("/d[0-9]/x", ["/d0/x", "/d9/x"], ["/da/x", "/d10/x"]),
    ("/d[!0-9]/x", ["/da/x", "/d-/x"], ["/d0/x", "/d//x"]),
    ("/d[.a]x", ["/dax", "/d.x"], ["/d/x", "/dbx"]),
    ("/a\\*b", ["/a*b"], ["/axb"]),
    ("/[]]x", ["/]x"], ["/x"]),
    ("/exact/path", ["/exact/path"], ["/exact/path/", "/exact/pat", "/x/exact/path"]),
    ("/**", ["/", "/a", "/a/b"], []),
    ("**", ["/", "/a/b", "x"], []),
    ("/a/**/**/b", ["/a/b", "/a/x/y/b"], ["/a/x"]),
]


@pytest.mark.parametrize(("glob", "matches", "misses"), GLOB_CASES)
def test_path_globs(glob: str, matches: list[str], misses: list[str]) -> None:
    rx = compile_globs([glob])
    for path in matches:
        assert rx.fullmatch(path), (glob, path)
    for path in misses:
        assert not rx.fullmatch(path), (glob, path)
    rule = Rule(name="r", paths=(glob,))
    for path in matches:
        assert rule.path_matches(path), (glob, path)
    for path in misses:
        assert not rule.path_matches(path), (glob, path)
    assert not rule.path_matches("")


def test_a_slash_in_a_class_splits_it() -> None:
    with pytest.raises(ValueError, match=re.escape('unclosed "["')):
        compile_globs(["/d[/a]x"])


def test_initiator_globs_have_no_components() -> None:
    rx = compile_globs(["*"], path=False)
    assert rx.fullmatch("a/b") and rx.fullmatch("")
    rx = compile_globs(["lustre-MDT000?", "oss-[0-9]*"], path=False)
    assert rx.fullmatch("lustre-MDT0003") and rx.fullmatch("oss-12")
    assert not rx.fullmatch("oss-x") and not rx.fullmatch("lustre-MDT00003")


_GLOB_CHARS = st.sampled_from(["a", "b", ".", "*", "?", "[ab]", "[!a]"])
_NAME_CHARS = st.text(alphabet="ab.", max_size=6)


@given(st.lists(_GLOB_CHARS, min_size=1, max_size=6).map("".join),
       st.lists(_NAME_CHARS, min_size=1, max_size=4))
def test_a_one_component_glob_matches_the_last_component_like_fnmatch(glob: str, parts: list[str]) -> None:
    assume("**" not in glob)  # an error here ("**" is a whole component), "*" in fnmatch
    path = "/" + "/".join(parts)
    assert bool(compile_globs([glob]).fullmatch(path)) == fnmatch.fnmatchcase(parts[-1], glob)


@given(st.lists(st.lists(_GLOB_CHARS, min_size=1, max_size=4).map("".join), min_size=1, max_size=3),
       st.lists(_NAME_CHARS, min_size=1, max_size=4))
def test_an_absolute_glob_without_doublestar_matches_component_by_component(globs: list[str],
                                                                           parts: list[str]) -> None:
    assume(not any("**" in g for g in globs))
    glob = "/" + "/".join(globs)
    path = "/" + "/".join(parts)
    expected = len(globs) == len(parts) and all(fnmatch.fnmatchcase(p, g) for p, g in zip(parts, globs, strict=True))
    assert bool(compile_globs([glob]).fullmatch(path)) == expected


_PATH_GLOB_PARTS = st.sampled_from(["a", "b", "*", "**", "?", "a*", "*.t", "[ab]", "\\*", ""])


@given(st.booleans(), st.lists(_PATH_GLOB_PARTS, min_size=1, max_size=5),
       st.lists(st.sampled_from(["a", "b", "ab", "x.t", "*", ""]), min_size=0, max_size=5), st.booleans())
def test_the_hints_tested_before_the_regex_never_refuse_a_match(absolute: bool, parts: list[str],
                                                               names: list[str], abs_path: bool) -> None:
    glob = ("/" if absolute else "") + "/".join(parts)
    try:
        rx = compile_globs([glob])
    except ValueError:
        return
    path = ("/" if abs_path else "") + "/".join(names)
    if rx.fullmatch(path):
        prefix, suffix = glob_hints(glob)
        assert path.startswith(prefix) and path.endswith(suffix), (glob, path, prefix, suffix)


# -- sizes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "lo", "hi"), [
    (">= 1G", 2**30, MAX_SIZE), ("> 1G", 2**30 + 1, MAX_SIZE), ("<= 4K", 0, 4096), ("< 4K", 0, 4095),
    ("1M..10G", 2**20, 10 * 2**30), ("= 1M", 2**20, 2**20), ("== 7", 7, 7), ("1M", 2**20, 2**20),
    ("4096", 4096, 4096), ("1.5K", 1536, 1536), ("1KiB..2kb", 1024, 2048), ("..1T", 0, 2**40),
    ("1P..", 2**50, MAX_SIZE), ("  >=  3 m ", 3 * 2**20, MAX_SIZE), (">= 0", 0, MAX_SIZE), ("5B", 5, 5),
])
def test_size_conditions(text: str, lo: int, hi: int) -> None:
    assert size_range(text) == (lo, hi)


@pytest.mark.parametrize(("text", "message"), [
    ("> 1X", 'unknown unit "X" (K, M, G, T, P)'),
    ("1Q..2G", 'unknown unit "Q" (K, M, G, T, P)'),
    ("1G..1M", "matches no size (the low end is above the high end)"),
    ("< 0", "matches no size (the low end is above the high end)"),
    ("1.3", "1.3 is not a whole number of bytes"),
    ("1.0000001K..2K", "1.0000001K is not a whole number of bytes"),
    ("big", 'expected ">= 1G", "< 4K", "1M..10G" (inclusive) or a number of bytes'),
    ("-5", 'expected ">= 1G", "< 4K", "1M..10G" (inclusive) or a number of bytes'),
    ("20000P", f"{20000 * 2**50} bytes is more than the largest size, {MAX_SIZE}"),
])
def test_bad_size_conditions(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        size_range(text)


@given(st.integers(0, MAX_SIZE), st.integers(0, MAX_SIZE))
def test_size_text_reads_back(a: int, b: int) -> None:
    lo, hi = min(a, b), max(a, b)
    assert size_range(size_text(lo, hi)) == (lo, hi)


def test_size_text_uses_the_largest_unit() -> None:
    assert size_text(2**30, MAX_SIZE) == ">= 1G"
    assert size_text(0, 4095) == "<= 4095"
    assert size_text(1536, 1536) == "= 1536"
    assert size_text(2**20, 10 * 2**30) == "1M..10G"


# -- errors ---------------------------------------------------------------------------------------


def test_the_spec_example_error() -> None:
    text = doc("""
        rules:
          - name: a
            then: {allow: true}
          - name: b
            then: {allow: true}
          - name: c
            match:
              size: "> 1X"
            then: {allow: true}
        """)
    errors = errors_of(text)
    assert errors == [(8, 'rules[2].match.size: "> 1X": unknown unit "X" (K, M, G, T, P)')]
    with pytest.raises(PolicyError) as info:
        parse(text)
    assert str(info.value) == 'line 8: rules[2].match.size: "> 1X": unknown unit "X" (K, M, G, T, P)'
    assert isinstance(info.value, ValueError)


def test_every_error_is_reported_with_its_line() -> None:
    text = doc("""
        settings:
          max_attempts: 0
          max_attempt: 3
          progress_timeout: true
          agent_grace: 0.005
          max_terminal: 2.0
          max_running_per_archive: {0: 1, 1: 0, 2: 5, 2: 6}
        priorities:
          kinds: {restore: 3, resore: 2, remove: 1001}
          starvation_after: 0.5
        fair_share: {by: users, weights: {-1: 2, 5: 1001, x: 1}}
        rate_limits:
          per_user: {rate: 0}
          per_initiator: {rate: 10, burst: 0, extra: 1}
        request_masks:
          user: [restore, cancel, fly]
          operator: [cancel]
          agent: []
        rules:
          - name: a
            match: {kind: [archive, copy], size: "> 1X", path: ["/a/[bc", "/x**y"], uid: [], gid: -1}
            then: {deny: x, priority: 1}
          - name: a
            then: {deny: y, allow: true}
          - match: {}
            then: {}
          - name: "bad name!"
            then: {allow: false, tag: "t t", priority: 1001, archive_id: 0}
          - name: dup
            then: {priority: 1}
            then: {priority: 2}
          - name: no-then
          - just a string
        settings: {}
        """)
    assert errors_of(text) == [
        (2, "settings.max_attempts: 0 is out of range 1..100"),
        (3, 'settings: unknown key "max_attempt" (did you mean max_attempts?)'),
        (4, "settings.progress_timeout: expected a number, 0 (never) or 0.01..604800, got true"),
        (5, "settings.agent_grace: 0.005 is out of range 0.01..86400"),
        (6, "settings.max_terminal: expected an integer 0..10000000, got 2.0"),
        (7, "settings.max_running_per_archive: key 0 is out of range 1..4294967295 (an archive id)"),
        (7, "settings.max_running_per_archive.1: 0 is out of range 1..1000000"),
        (7, "settings.max_running_per_archive.2: given twice (first on line 7)"),
        (9, 'priorities.kinds: unknown key "resore" (did you mean restore?)'),
        (9, "priorities.kinds.remove: 1001 is out of range 0..1000"),
        (10, "priorities.starvation_after: 0.5 is out of range: 0 (off) or 1..604800"),
        (11, 'fair_share.by: "users": expected one of none, user, group, project'),
        (11, "fair_share.weights: key -1 is out of range 0..4294967295 (a uid, gid or projid)"),
        (11, "fair_share.weights.5: 1001 is out of range 1..1000"),
        (11, 'fair_share.weights: expected a uid, gid or projid (0..4294967295) as the key, got "x"'),
        (13, "rate_limits.per_user.rate: 0 is out of range: more than 0, at most 1000000 (requests a second)"),
        (13, "rate_limits.per_user: needs burst (requests accepted at once)"),
        (14, 'rate_limits.per_initiator: unknown key "extra" (known: rate, burst)'),
        (14, "rate_limits.per_initiator.burst: 0 is out of range 1..10000000"),
        (16, 'request_masks.user: "fly" is not one of archive, restore, remove, cancel'),
        (17, 'request_masks.operator: "cancel" is not one of archive, restore, remove; cancel is for user only'),
        (18, 'request_masks: unknown key "agent" (known: user, operator, bridge, admin)'),
        (21, 'rules[0].match.kind: "copy" is not a kind (archive, restore, remove)'),
        (21, 'rules[0].match.size: "> 1X": unknown unit "X" (K, M, G, T, P)'),
        (21, 'rules[0].match.path: "/a/[bc": unclosed "[" (a class is [abc], [a-z] or [!abc])'),
        (21, 'rules[0].match.path: "/x**y": "**" must be a whole path component, as in /a/**/b or /a/**'),
        (21, "rules[0].match.uid: an empty list matches nothing; leave the condition out to match all"),
        (21, "rules[0].match.gid: -1 is out of range 0..4294967295"),
        (22, "rules[0].then: deny with priority: a refused request gets nothing set (put them in another rule)"),
        (23, 'rules[1].name: "a" is the name of rules[0] (line 20) already; names are unique'),
        (24, "rules[1].then: deny and allow together: a rule either refuses or accepts"),
        (25, "rules[2]: needs a name (1..64 characters of A-Z a-z 0-9 . _ -, unique)"),
        (26, "rules[2].then: expected deny, allow, or any of priority, tag, archive_id, copies"),
        (27, 'rules[3].name: "bad name!": expected 1..64 characters of A-Z a-z 0-9 . _ -'),
        (28, "rules[3].then.allow: false means nothing: leave allow out (only allow: true stops the rules)"),
        (28, 'rules[3].then.tag: "t t": expected 1..64 characters of A-Z a-z 0-9 . _ -'),
        (28, "rules[3].then.priority: 1001 is out of range -1000..1000"),
        (28, "rules[3].then.archive_id: 0 is out of range 1..4294967295"),
        (31, "rules[4].then: given twice (first on line 30)"),
        (32, "rules[5]: needs then (deny, allow, or any of priority, tag, archive_id, copies)"),
        (33, 'rules[6]: expected a mapping (name, match, then), got "just a string"'),
        (34, "settings: given twice (first on line 1)"),
    ]


def test_three_errors_are_three_errors() -> None:
    text = doc("""
        settings:
          max_attempts: 101
        priorities:
          kinds: {archive: -1}
        rules:
          - name: x
            then: {deny: ""}
        """)
    errors = errors_of(text)
    assert [line for line, _ in errors] == [2, 4, 7]
    assert errors[2] == (7, 'rules[0].then.deny: "": expected the reason the requester is told, '
                            "1..200 printable characters on one line")
    with pytest.raises(PolicyError) as info:
        parse(text)
    assert str(info.value).splitlines() == [f"line {line}: {msg}" for line, msg in errors]


@pytest.mark.parametrize(("text", "error"), [
    ("settings:\n  max_attempts: 3\n  max_attempts: 4\n", (3, "settings.max_attempts: given twice (first on line 2)")),
    ("rules: []\nrules: []\n", (2, "rules: given twice (first on line 1)")),
    ("priorities:\n  kinds: {archive: 1, archive: 2}\n",
     (2, "priorities.kinds.archive: given twice (first on line 2)")),
    ("fair_share:\n  weights:\n    5: 2\n    0x5: 3\n", (4, "fair_share.weights.5: given twice (first on line 3)")),
    ("rules:\n- name: a\n  then: {allow: true}\n- name: a\n  then: {allow: true}\n",
     (4, 'rules[1].name: "a" is the name of rules[0] (line 2) already; names are unique')),
    ("rules:\n- name: a\n  match: {uid: 1, uid: 2}\n  then: {allow: true}\n",
     (3, "rules[0].match.uid: given twice (first on line 3)")),
])
def test_duplicate_keys_are_errors(text: str, error: tuple[int, str]) -> None:
    assert one_error(text) == error


@pytest.mark.parametrize(("text", "error"), [
    ("settings: {max_attempts: true}\n", "settings.max_attempts: expected an integer 1..100, got true"),
    ("settings: {max_running: yes}\n", "settings.max_running: expected an integer 0..1000000, got yes"),
    ("settings: {max_attempts: 3.0}\n", "settings.max_attempts: expected an integer 1..100, got 3.0"),
    ("settings: {max_attempts: '3'}\n", 'settings.max_attempts: expected an integer 1..100, got "3"'),
    ("settings: {agent_grace: .inf}\n", "settings.agent_grace: expected a number, 0.01..86400, got .inf"),
    ("settings: {agent_grace: .nan}\n", "settings.agent_grace: expected a number, 0.01..86400, got .nan"),
    ("settings: {max_running_per_archive: {true: 1}}\n",
     "settings.max_running_per_archive: expected an archive id (1..4294967295) as the key, got true"),
    ("settings: {max_running_per_archive: {1: 1.0}}\n",
     "settings.max_running_per_archive.1: expected an integer 1..1000000, got 1.0"),
    ("settings: {max_running_per_archive: [1]}\n",
     "settings.max_running_per_archive: expected a mapping {archive id: most running}, got a list"),
    ("rules:\n- name: a\n  match: {uid: false}\n  then: {allow: true}\n",
     "rules[0].match.uid: expected an integer 0..4294967295, got false"),
    ("rules:\n- name: a\n  then: {priority: 1.5}\n", "rules[0].then.priority: expected an integer -1000..1000, got 1.5"),
    ("rules:\n- name: a\n  then: {allow: 1}\n", "rules[0].then.allow: expected true, got 1"),
    ("rules:\n- name: a\n  then: {deny: ~}\n", "rules[0].then.deny: expected the reason the requester is told "
     "(1..200 characters), got nothing"),
    ("rules:\n- name: a\n  match: {size: 1.5}\n  then: {allow: true}\n",
     'rules[0].match.size: "1.5": 1.5 is not a whole number of bytes'),
    ("rules:\n- name: a\n  match: {size: [1]}\n  then: {allow: true}\n",
     'rules[0].match.size: expected a size condition: ">= 1G", "< 4K", "1M..10G" (inclusive) or a number of '
     "bytes, got a list"),
    ("rate_limits: {per_user: {rate: true, burst: 1}}\n",
     "rate_limits.per_user.rate: expected a number, more than 0, at most 1000000 (requests a second), got true"),
    ("fair_share: {by: no}\n", 'fair_share.by: "no": expected one of none, user, group, project'),
    ("fair_share: {by: [user]}\n", "fair_share.by: expected none | user | group | project, got a list"),
])
def test_bools_floats_and_strings_are_not_integers(text: str, error: str) -> None:
    """(and where a string is wanted, any scalar is its text as written)"""
    line, message = one_error(text)
    assert message == error


@pytest.mark.parametrize(("text", "error"), [
    ("- a\n", (1, "expected a mapping (the sections settings, priorities, fair_share, rate_limits, "
                  "request_masks, batching, tape, striping, rules), got a list")),
    ("hello\n", (1, 'expected a mapping (the sections settings, priorities, fair_share, rate_limits, '
                    'request_masks, batching, tape, striping, rules), got "hello"')),
    ("setings: {}\n", (1, 'unknown key "setings" (did you mean settings?)')),
    ("settings: 5\n", (1, "settings: expected a mapping (max_attempts, progress_timeout, agent_grace, "
                          "max_terminal, max_running, max_running_per_archive), got 5")),
    ("rules: {a: 1}\n", (1, "rules: expected a list of rules ({name, match, then}), got a mapping")),
    ("rules:\n- name: a\n  then: allow\n", (3, 'rules[0].then: expected a mapping (deny, allow, priority, tag, '
                                             'archive_id, copies), got "allow"')),
    ("rules:\n- name: a\n  match: {kind: []}\n  then: {allow: true}\n",
     (3, "rules[0].match.kind: an empty list matches nothing; leave the condition out to match all")),
    ("rules:\n- name: a\n  match: {color: red}\n  then: {allow: true}\n",
     (3, 'rules[0].match: unknown key "color" (known: kind, archive_id, path, size, uid, gid, projid, initiator)')),
    ("rules:\n- name: a\n  match: {path: ''}\n  then: {allow: true}\n",
     (3, 'rules[0].match.path: "": an empty glob matches nothing')),
    ("rules:\n- name: a\n  match: {path: 'a\\'}\n  then: {allow: true}\n",
     (3, 'rules[0].match.path: "a\\\\": ends with a lone \\ (it quotes the next character)')),
    ("rules:\n- name: a\n  match: {initiator: '[z-a]'}\n  then: {allow: true}\n",
     (3, 'rules[0].match.initiator: "[z-a]": not a valid glob (bad character range z-a)')),
    ("rules:\n- name: a\n  match: {archive_id: 0}\n  then: {allow: true}\n",
     (3, "rules[0].match.archive_id: 0 is out of range 1..4294967295")),
    ("rules:\n- name: a\n  then: {deny: \"two\\nlines\"}\n",
     (3, 'rules[0].then.deny: "two\\nlines": expected the reason the requester is told, 1..200 printable '
         "characters on one line")),
    ("rules:\n- name: a\n  then: {tag: " + "t" * 65 + "}\n",
     (3, f'rules[0].then.tag: "{"t" * 57}...": expected 1..64 characters of A-Z a-z 0-9 . _ -')),
    ("rules:\n- name: a\n  then: {allow: true}\n  <<: {x: 1}\n",
     (4, "rules[0]: merge keys (<<) are not supported: write the keys out")),
    ("rate_limits: {per_user: {burst: 5}}\n", (1, "rate_limits.per_user: needs rate (requests a second)")),
    ("rate_limits: {per_user: 5}\n", (1, "rate_limits.per_user: expected a mapping (rate, burst), got 5")),
    ("request_masks: {user: {a: 1}}\n",
     (1, "request_masks.user: expected a list of archive, restore, remove, cancel ([] for none), got a mapping")),
])
def test_error_messages(text: str, error: tuple[int, str]) -> None:
    assert one_error(text) == error


def test_a_long_deny_reason_is_refused() -> None:
    assert parse("rules:\n- name: a\n  then: {deny: " + "x" * 200 + "}\n").rules[0].deny == "x" * 200
    line, message = one_error("rules:\n- name: a\n  then: {deny: " + "x" * 201 + "}\n")
    assert line == 3 and "1..200 printable characters" in message


def test_at_most_1000_rules() -> None:
    many = "".join(f"- {{name: r{i}, then: {{tag: t}}}}\n" for i in range(1000))
    assert len(parse("rules:\n" + many).rules) == 1000
    assert one_error("rules:\n" + many + "- {name: last, then: {tag: t}}\n") == (
        2, "rules: 1001 rules, at most 1000")


@pytest.mark.parametrize(("text", "line", "start"), [
    ("settings:\n  max_attempts: 3\n bad: [\n", 3, "not valid YAML: expected <block end>, but found"),
    ("settings: {max_attempts: 3\n", 2, "not valid YAML: expected ',' or '}'"),
    ("x: 1\n---\ny: 2\n", 2, "not valid YAML: expected a single document in the stream, but found another"),
    ("settings:\n\tmax_attempts: 3\n", 2, "not valid YAML: found character '\\t' that cannot start any token"),
    ("rules:\n- name: a\n  match: {path: *.tmp}\n", 3, "not valid YAML: expected alphabetic or numeric"),
    ("rules:\n- name: a\n  match:\n    size: >= 1G\n", 4, "not valid YAML: expected chomping"),
    ("settings: {}\nrules: [\x07]\n", 2, "not valid YAML: character U+0007 is not allowed"),
    ("rules:\n- *nowhere\n", 2, "not valid YAML: found undefined alias 'nowhere'"),
])
def test_a_yaml_syntax_error_is_one_error_with_its_line(text: str, line: int, start: str) -> None:
    got_line, message = one_error(text)
    assert got_line == line and message.startswith(start), message


def test_unquoted_globs_and_sizes_get_a_hint() -> None:
    assert one_error("rules:\n- name: a\n  match: {path: *.tmp}\n")[1].endswith(
        'A glob that starts with * must be quoted: "*.tmp"')
    assert one_error("rules:\n- name: a\n  match:\n    size: >= 1G\n")[1].endswith(
        'A size condition that starts with > must be quoted: ">= 1G"')


def test_the_size_cap() -> None:
    filler = "# " + "x" * 97 + "\n"  # 100 bytes a line
    text = filler * (MAX_POLICY_BYTES // 100) + "#" * (MAX_POLICY_BYTES % 100 - 1) + "\n"
    assert len(text.encode()) == MAX_POLICY_BYTES
    assert parse(text) == Policy()
    assert parse(text.encode()) == Policy()
    assert errors_of(text + "\n") == [(0, f"policy is {MAX_POLICY_BYTES + 1} bytes, at most {MAX_POLICY_BYTES}")]
    assert errors_of((text + "\n").encode()) == [(0, "policy is 262145 bytes, at most 262144")]
    wide = "# " + "é" * (MAX_POLICY_BYTES // 2) + "\n"  # fewer characters than the cap, more bytes
    assert len(wide) < MAX_POLICY_BYTES
    with pytest.raises(PolicyError, match=r"^policy is 262147 bytes, at most 262144$"):
        parse(wide)


def test_text_that_is_not_utf8_is_refused_with_its_line() -> None:
    assert errors_of(b"settings: {}\n# caf\xe9\n") == [
        (2, "policy is not UTF-8 text (byte 0xe9 at offset 18)")]
    assert errors_of("settings: {}\n\n# \udcff\n") == [
        (3, "policy is not UTF-8 text (character '\\udcff' at offset 16)")]
    assert parse("rules:\n- {name: a, then: {deny: \"caf\u00e9 ferm\u00e9\"}}\n".encode()).rules[0].deny == (
        "caf\u00e9 ferm\u00e9")


def test_yaml_aliases_that_expand_too_far_are_refused() -> None:
    lines = ["a0: &a0 [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 7)]
    text = "settings:\n" + "\n".join("  " + line for line in lines) + "\n"
    assert one_error(text) == (0, "the policy expands to more than 200000 values (through YAML aliases?)")
    assert one_error("rules: &r [*r]\n")[0] == 0  # a list that holds itself


def test_aliases_within_reason_are_read() -> None:
    p = parse(doc("""
        rules:
          - name: a
            match: {uid: &staff [1, 2, 3]}
            then: {tag: a}
          - name: b
            match: {gid: *staff}
            then: {tag: b}
        """))
    assert p.rules[1].gids == {1, 2, 3}


# -- canonical dump, round trip, equality -----------------------------------------------------------


def test_dump_of_the_example_is_canonical_and_reads_back() -> None:
    p = parse(EXAMPLE)
    text = p.dump()
    again = parse(text)
    assert again == p and again.text == text and p.text == EXAMPLE
    assert again.dump() == text
    assert [r.line for r in again.rules] != [r.line for r in p.rules]  # lines are not the meaning
    d = p.to_dict()
    assert d["settings"] == {"max_attempts": 5, "progress_timeout": 900, "agent_grace": 30.5, "max_terminal": 5000,
                             "max_running": 64, "max_running_per_archive": {1: 100, 2: 10}}
    assert d["priorities"] == {"kinds": {"archive": 0, "restore": 10, "remove": 2}, "starvation_after": 7200}
    assert d["fair_share"] == {"by": "project", "weights": {7: 4, 9: 2}}
    assert d["rate_limits"] == {"per_user": {"rate": 100, "burst": 1000}, "per_initiator": {"rate": 0.5, "burst": 10}}
    assert d["request_masks"] == {"user": ["restore", "cancel"], "operator": ["archive", "restore", "remove"],
                                  "bridge": ["archive"], "admin": ["archive", "restore", "remove"]}
    assert d["rules"][0] == {
        "name": "scratch-archives-low",
        "match": {"kind": ["archive"], "archive_id": [1, 2], "path": ["*.tmp", "/scratch/**"], "size": ">= 1G",
                  "uid": [1000, 1001], "gid": [100], "projid": [7], "initiator": ["oss-*"]},
        "then": {"deny": "scratch is not archived"},
    }
    assert d["rules"][1] == {"name": "big", "match": {"size": "1M..10G"},
                             "then": {"priority": -5, "tag": "tape-a", "archive_id": 2}}
    assert d["rules"][2] == {"name": "everyone", "then": {"allow": True}}
    assert yaml.safe_load(text) == d


def test_to_dict_of_the_defaults_has_every_key() -> None:
    assert Policy().to_dict() == {
        "settings": {"max_attempts": 3, "progress_timeout": 600, "agent_grace": 60, "max_terminal": 100000,
                     "max_running": 0, "max_running_per_archive": {}},
        "priorities": {"kinds": {"archive": 1, "restore": 3, "remove": 2}, "starvation_after": 3600},
        "fair_share": {"by": "none", "weights": {}},
        "rate_limits": {"per_user": None, "per_initiator": None},
        "request_masks": {"user": ["restore"], "operator": ["archive", "restore", "remove"],
                          "bridge": ["archive", "restore", "remove"], "admin": ["archive", "restore", "remove"]},
        "batching": {"size": 0, "idle": 30, "max_wait": 600},
        "tape": {"max_mount": 600},
        "striping": {"above": 0, "part_size": "1G", "max_parts": 64},
        "rules": [],
    }
    assert parse(Policy().dump()) == Policy()


def test_equality_is_the_meaning() -> None:
    a = parse(doc("""
        settings: {max_attempts: 3}
        fair_share: {weights: {5: 1}}
        rules:
          - name: r
            match: {kind: [remove, archive, archive], uid: [2, 1], path: ["b*", "a*"], size: "<= 4K"}
            then: {priority: 1}
        """))
    b = parse(doc("""
        # the same, written otherwise
        rules:
        - match:
            size: "0..4096"
            path: ["a*", "b*", "a*"]
            uid: [1, 2]
            kind: [archive, remove]
          then:
            priority: 1
          name: r
        """))
    assert a == b and hash(a) == hash(b) and a.text != b.text
    assert diff(a, b) == []
    assert parse(a.text) == a and parse(a.text).text == a.text
    assert a != parse(b.text.replace("priority: 1", "priority: 2"))


def test_seeded_is_the_defaults_with_the_replicas_settings() -> None:
    p = seeded(5, 300.0, 30.0, 1000, frozenset({"restore", "cancel"}))
    assert p.settings == Settings(max_attempts=5, progress_timeout=300.0, agent_grace=30.0, max_terminal=1000)
    assert p.mask("user") == {"restore", "cancel"}
    assert p.mask("operator") == {"archive", "restore", "remove"}
    assert p.text == p.dump()
    assert parse(p.text) == p
    assert replace(p, settings=Settings(), request_masks=Policy().request_masks) == Policy()


def test_seeded_brings_values_into_the_languages_ranges() -> None:
    p = seeded(500, 0.005, 0.001, 10**9, frozenset({"restore", "bogus"}))
    assert p.settings == Settings(max_attempts=100, progress_timeout=0.01, agent_grace=0.01, max_terminal=10_000_000)
    assert p.mask("user") == {"restore"}
    assert parse(p.text) == p
    assert seeded(0, 0.0, 10**7, -1, frozenset()).settings == Settings(
        max_attempts=1, progress_timeout=0.0, agent_grace=86_400.0, max_terminal=0)


_NAMES = st.from_regex(r"[a-z][a-z0-9._-]{0,8}", fullmatch=True)
_IDS = st.integers(0, 2**32 - 1)
_ONE_OR_MANY = lambda s: st.one_of(s, st.lists(s, min_size=1, max_size=3))  # noqa: E731
_TEXT = st.text(st.characters(codec="utf-8", categories=["L", "N", "P", "S"], include_characters=" "),
                min_size=1, max_size=30).filter(lambda s: s.isprintable())
_MATCH = st.fixed_dictionaries({}, optional={
    "kind": _ONE_OR_MANY(st.sampled_from(["archive", "restore", "remove"])),
    "archive_id": _ONE_OR_MANY(st.integers(1, 2**32 - 1)),
    "path": _ONE_OR_MANY(st.sampled_from(["/scratch/**", "*.tmp", "/a/*/c", "/**/core", "cache/*.o", "/p[0-9]/x?",
                                          "/a/b", "/x/[!a-c]*"])),
    "size": st.one_of(st.sampled_from([">= 1G", "< 4K", "1M..10G", "= 512", "<= 1.5M", "1K..", "..2T"]),
                      st.integers(0, 2**64 - 1)),
    "uid": _ONE_OR_MANY(_IDS), "gid": _ONE_OR_MANY(_IDS), "projid": _ONE_OR_MANY(_IDS),
    "initiator": _ONE_OR_MANY(st.sampled_from(["oss-*", "mdt?", "*", "client-[ab]", "exact"])),
})
_SETS = {"priority": st.integers(-1000, 1000), "tag": _NAMES, "archive_id": st.integers(1, 2**32 - 1),
         "copies": st.integers(1, 8)}
_THEN = st.one_of(
    st.fixed_dictionaries({"deny": _TEXT}),
    st.fixed_dictionaries({"allow": st.just(True)}, optional=_SETS),
    st.fixed_dictionaries({}, optional=_SETS).filter(bool),
)
_RULES = st.lists(st.fixed_dictionaries({"name": _NAMES, "then": _THEN}, optional={"match": _MATCH}),
                  max_size=6, unique_by=lambda r: r["name"])
_SECONDS = st.one_of(st.just(0), st.integers(1, 604800), st.floats(1, 604800))
_DOCS = st.fixed_dictionaries({}, optional={
    "settings": st.fixed_dictionaries({}, optional={
        "max_attempts": st.integers(1, 100), "progress_timeout": _SECONDS, "agent_grace": st.floats(1, 86400),
        "max_terminal": st.integers(0, 10**7), "max_running": st.integers(0, 10**6),
        "max_running_per_archive": st.dictionaries(st.integers(1, 2**32 - 1), st.integers(1, 10**6), max_size=3)}),
    "priorities": st.fixed_dictionaries({}, optional={
        "kinds": st.fixed_dictionaries({}, optional={k: st.integers(0, 1000) for k in KIND_NAMES}),
        "starvation_after": _SECONDS}),
    "fair_share": st.fixed_dictionaries({}, optional={
        "by": st.sampled_from(["none", "user", "group", "project"]),
        "weights": st.dictionaries(_IDS, st.integers(1, 1000), max_size=3)}),
    "rate_limits": st.fixed_dictionaries({}, optional={
        key: st.one_of(st.none(), st.fixed_dictionaries({"rate": st.floats(1e-3, 1e6), "burst": st.integers(1, 10**7)}))
        for key in ("per_user", "per_initiator")}),
    "request_masks": st.fixed_dictionaries({}, optional={
        "user": st.lists(st.sampled_from(["archive", "restore", "remove", "cancel"]), max_size=4),
        **{role: st.lists(st.sampled_from(["archive", "restore", "remove"]), max_size=3)
           for role in ("operator", "bridge", "admin")}}),
    "rules": _RULES,
})


@settings(max_examples=150, deadline=None)
@given(_DOCS, st.booleans())
def test_generated_documents_round_trip(document: dict[str, Any], flow: bool) -> None:
    text = yaml.safe_dump(document, default_flow_style=flow, allow_unicode=True)
    p = parse(text)
    canonical = p.dump()
    again = parse(canonical)
    assert again == p
    assert again.dump() == canonical
    assert diff(p, again) == [] and diff(again, p) == []
    assert pickle.loads(pickle.dumps(p)) == p
    for key, value in document.get("settings", {}).items():
        if key != "max_running_per_archive":
            assert getattr(p.settings, key) == value
    assert [r.name for r in p.rules] == [r["name"] for r in document.get("rules", [])]


# -- diff -------------------------------------------------------------------------------------------


def test_diff_says_what_changes() -> None:
    old = parse(doc("""
        settings: {max_attempts: 3, max_running_per_archive: {1: 100, 2: 5}}
        fair_share: {weights: {1000: 4}}
        rules:
          - name: old-rule
            then: {tag: a}
          - name: big
            match: {size: ">= 1G"}
            then: {priority: 1}
          - name: small
            match: {size: "< 1M"}
            then: {priority: 2}
          - name: same
            then: {tag: s}
        """))
    new = parse(doc("""
        settings: {max_attempts: 5, max_running_per_archive: {1: 200, 3: 7}}
        fair_share: {weights: {2000: 2}}
        rate_limits: {per_user: {rate: 100, burst: 1000}}
        request_masks: {user: [restore, cancel]}
        priorities: {kinds: {archive: 2}}
        rules:
          - name: small
            match: {size: "< 2M"}
            then: {priority: 3}
          - name: big
            match: {size: ">= 2G"}
            then: {priority: 1}
          - name: same
            then: {tag: s}
          - name: scratch-archives-low
            match: {path: "/scratch/**"}
            then: {priority: -5}
        """))
    assert diff(old, new) == [
        "settings.max_attempts: 3 -> 5",
        "settings.max_running_per_archive.1: 100 -> 200",
        "settings.max_running_per_archive.2: 5 -> unset (no limit)",
        "settings.max_running_per_archive.3: unset (no limit) -> 7",
        "priorities.kinds.archive: 1 -> 2",
        "fair_share.weights.1000: 4 -> 1 (default)",
        "fair_share.weights.2000: 1 (default) -> 2",
        "rate_limits.per_user: none -> {rate: 100, burst: 1000}",
        "request_masks.user: [restore] -> [restore, cancel]",
        "rules: - old-rule",
        "rules: + scratch-archives-low (line 15)",
        "rules: ~ small (match and then changed)",
        "rules: ~ big (match changed)",
        "rules: order changed",
    ]
    assert diff(new, new) == [] and diff(old, parse(old.dump())) == []


def test_diff_of_then_only_and_of_rate_fields() -> None:
    a = parse("rate_limits: {per_user: {rate: 1, burst: 2}}\nrules:\n- {name: r, then: {deny: x}}\n")
    b = parse("rate_limits: {per_user: {rate: 1.5, burst: 2}}\nrules:\n- {name: r, then: {deny: y}}\n")
    assert diff(a, b) == ["rate_limits.per_user.rate: 1 -> 1.5", "rules: ~ r (then changed)"]
    assert diff(b, Policy()) == ["rate_limits.per_user: {rate: 1.5, burst: 2} -> none", "rules: - r"]
    c = replace(b, rules=(Rule(name="n", allow=True),))  # built, not parsed: no line to show
    assert diff(b, c) == ["rules: - r", "rules: + n"]


def test_moving_a_rule_is_an_order_change_adding_one_is_not() -> None:
    a = parse("rules:\n- {name: x, then: {tag: x}}\n- {name: y, then: {tag: y}}\n")
    b = parse("rules:\n- {name: new, then: {tag: n}}\n- {name: x, then: {tag: x}}\n- {name: y, then: {tag: y}}\n")
    assert diff(a, b) == ["rules: + new (line 2)"]
    c = parse("rules:\n- {name: y, then: {tag: y}}\n- {name: x, then: {tag: x}}\n")
    assert diff(a, c) == ["rules: order changed"]


# -- pickling and the admission cache --------------------------------------------------------------------


def test_pickle_round_trip_without_the_cache() -> None:
    p = parse(EXAMPLE)
    before = len(pickle.dumps(p))
    for uid in range(100):
        admit(p, uid=uid, path=f"/scratch/{uid}", size=2**31)
    assert p._index is not None and p._index.cands and p._index.folds
    data = pickle.dumps(p)
    assert len(data) == before  # the index and its caches are not pickled
    q = pickle.loads(data)
    assert q == p and q.text == p.text and q._index is not None and not q._index.cands
    assert [r.line for r in q.rules] == [r.line for r in p.rules]
    assert q.mask("user") == p.mask("user") and q.share_weight(7) == 4 and q.kind_weight(RESTORE) == 10
    req = dict(kind=ARCHIVE, uid=1000, gid=100, projid=7, initiator="oss-3", path="/scratch/x", size=2**31)
    assert admit(q, **req) == admit(p, **req) == Decision(deny="scratch is not archived",
                                                          rule="scratch-archives-low")
    assert copy.deepcopy(p) == p and copy.copy(p) == p
    r = p.rules[0]
    assert pickle.loads(pickle.dumps(r)) == r and pickle.loads(pickle.dumps(r)).path_matches("/scratch/a")


def reference(p: Policy, kind: int, archive_id: int, path: str, size: int | None, uid: int, gid: int,
              projid: int, initiator: str) -> Decision:
    """The rule semantics, written out: every rule in order, no cache."""
    got: dict[str, Any] = {}
    last = ""
    for r in p.rules:
        if not r.matches(kind, archive_id, path, size, uid, gid, projid, initiator):
            continue
        if r.deny:
            return Decision(deny=r.deny, rule=r.name)
        for name, value in (("priority", r.priority), ("tag", r.tag or None), ("archive_id", r.archive_id or None),
                            ("copies", r.copies or None)):
            if value is not None:
                got[name] = value
                last = r.name
        if r.allow:
            return Decision(rule=r.name, **got)
    return Decision(rule=last, **got)


_REQUESTS = st.tuples(
    st.sampled_from([ARCHIVE, RESTORE, REMOVE]), st.integers(1, 3),
    st.sampled_from(["", "/scratch/a/b", "/scratch", "/x/y.tmp", "/a/b/c", "/p3/xy", "/x/cache/z.o", "/a/core"]),
    st.sampled_from([None, 0, 512, 4095, 2**20, 2**30, 2**41]), st.integers(0, 3), st.integers(0, 3),
    st.integers(0, 3), st.sampled_from(["oss-1", "mdt0", "client-a", "exact", ""]),
)
_SMALL_MATCH = st.fixed_dictionaries({}, optional={
    "kind": _ONE_OR_MANY(st.sampled_from(["archive", "restore", "remove"])),
    "archive_id": _ONE_OR_MANY(st.integers(1, 3)),
    "path": _ONE_OR_MANY(st.sampled_from(["/scratch/**", "*.tmp", "/a/*/c", "/**/core", "cache/*.o", "/p[0-9]/x?"])),
    "size": st.sampled_from([">= 1G", "< 4K", "1M..10G", "= 512", "1K.."]),
    "uid": _ONE_OR_MANY(st.integers(0, 3)), "gid": _ONE_OR_MANY(st.integers(0, 3)),
    "projid": _ONE_OR_MANY(st.integers(0, 3)),
    "initiator": _ONE_OR_MANY(st.sampled_from(["oss-*", "mdt?", "client-[ab]", "exact"])),
})
_SMALL_RULES = st.lists(st.fixed_dictionaries({"name": _NAMES, "then": _THEN}, optional={"match": _SMALL_MATCH}),
                        max_size=12, unique_by=lambda r: r["name"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_SMALL_RULES, st.lists(_REQUESTS, min_size=1, max_size=40), st.sampled_from([4096, 3, 1]))
def test_the_cache_never_changes_a_decision(rule_docs: list[dict[str, Any]],
                                            requests: list[tuple[Any, ...]], cache_size: int) -> None:
    p = parse(yaml.safe_dump({"rules": rule_docs}))
    with mock.patch.object(policy_mod, "ADMIT_CACHE_SIZE", cache_size):
        for _ in range(2):  # the second time from the cache (when it kept it)
            for req in requests:
                assert p.admit(*req) == reference(p, *req), req
        ix = p._index
        assert ix is None or max(len(ix.cands), len(ix.matchers), len(ix.folds)) <= cache_size
    # the leader's half and the replicas' half give the same decision, from
    # a copy of the policy that never saw these requests (a follower's)
    q = parse(p.text)
    for req in requests:
        assert q.decided(p.holding(*req)) == reference(p, *req), req


def test_decided_refuses_what_cannot_be_a_mask_of_the_policy() -> None:
    p = rules("""
        - name: a
          match: {path: "/x/**"}
          then: {tag: a}
        - name: b
          match: {size: ">= 1G"}
          then: {deny: too big}
        """)
    assert p.holding(ARCHIVE, 1, "/x/y", 5, 0, 0, 0, "c") == 0b01
    assert p.decided(0b01) == Decision(tag="a", rule="a")
    assert p.decided(0b11) == Decision(deny="too big", rule="b")  # a deny ends it, whatever came first
    assert p.decided(0) == Decision()
    assert p.decided(0b100) is None and p.decided(-1) is None
    empty = Policy()
    assert empty.holding(ARCHIVE, 1, "/x/y", 5, 0, 0, 0, "c") == 0
    assert empty.decided(0) == Decision() and empty.decided(1) is None


def test_many_combinations_keep_the_cache_bounded() -> None:
    p = rules("""
        - name: a
          match: {uid: 5, path: "/x/**"}
          then: {tag: a}
        """)
    for uid in range(3 * policy_mod.ADMIT_CACHE_SIZE):
        assert admit(p, uid=uid, path="/x/y").tag == ("a" if uid == 5 else "")
    assert p._index is not None and len(p._index.cands) <= policy_mod.ADMIT_CACHE_SIZE


# -- admit() cost: python -m tests.test_policy (not a test: no timing assertion) -------------------------


def _bench_policy() -> Policy:
    """50 rules: uid; gid + kind; path; size + archive id; kind + path + uid denial."""
    out = []
    for i in range(50):
        out.append([
            f"- {{name: uid{i}, match: {{uid: [{1000 + i}, {2000 + i}]}}, then: {{priority: {i}}}}}",
            f"- {{name: gid{i}, match: {{gid: {100 + i}, kind: archive}}, then: {{tag: t{i}}}}}",
            f"- {{name: path{i}, match: {{path: ['/proj{i}/**', '*.tmp{i}']}}, then: {{priority: -{i}}}}}",
            f"- {{name: size{i}, match: {{size: '>= {i}M', archive_id: [1, 2]}}, then: {{tag: big{i}}}}}",
            f"- {{name: deny{i}, match: {{kind: remove, path: '/keep{i}/**', uid: [{i}]}}, then: {{deny: kept}}}}",
        ][i % 5])
    return parse("rules:\n" + "\n".join(out) + "\n")


def _bench(n: int = 20_000) -> None:
    import functools
    import random
    import time

    for label, correlated in (("a few hundred users", True), ("every item a new combination", False)):
        p = _bench_policy()
        rng = random.Random(1)
        users = [(1000 + u, 100 + u % 50, u % 10) for u in range(200)]
        items = []
        for _ in range(n):
            uid, gid, projid = (rng.choice(users) if correlated else
                                (rng.randrange(1000, 1200), rng.randrange(100, 150), rng.randrange(10)))
            items.append((rng.choice((ARCHIVE, RESTORE, REMOVE)), rng.choice((1, 2)),
                          f"/proj{rng.randrange(60)}/u{rng.randrange(100)}/f{rng.randrange(10**6)}.dat",
                          rng.choice((None, rng.randrange(1 << 34))), uid, gid, projid,
                          rng.choice(("mdt0", "mdt1", "oss-1"))))
        empty = _seconds(lambda *a: None, items)
        cached = _seconds(p.admit, items) - empty
        uncached = _seconds(functools.partial(reference, p), items) - empty
        print(f"50 rules, {label}: admit {cached / n * 1e6:.2f} us/item; "
              f"every rule evaluated {uncached / n * 1e6:.2f} us/item")
    # the cost bench's site rules over its flood's items, each shard with its own policy (python -m bench policy)
    from bench import policy as bench_policy
    from bench.clients import item_facts

    shards = [parse(bench_policy.rules_yaml()) for _ in range(8)]
    flood = [(ARCHIVE, 1, *item_facts(oid), 0, bench_policy.flood_initiator(oid, 60_000, 4)) for oid in range(1, 60_001)]
    t = time.perf_counter()  # once: a second pass would find every combination cached
    for oid, (kind, archive_id, path, size, uid, gid, projid, initiator) in enumerate(flood):
        shards[oid % 8].admit(kind, archive_id, path, size, uid, gid, projid, initiator)
    took = time.perf_counter() - t
    print(f"the cost bench's 50 site rules, 60,000 flood items over 8 shards: admit {took / 6e4 * 1e6:.2f} us/item")


def _seconds(f: Any, items: list[tuple[Any, ...]]) -> float:
    """The best of 5 runs of *f* over *items*."""
    import timeit

    def run() -> None:
        for item in items:
            f(*item)

    return min(timeit.repeat(run, number=1, repeat=5))


if __name__ == "__main__":
    _bench()


def test_batching_and_tape() -> None:
    p = parse("batching: {size: 64, idle: 2.5, max_wait: 120}\ntape: {max_mount: 90}\n")
    assert (p.batch_size, p.batch_idle, p.batch_max_wait, p.max_mount) == (64, 2.5, 120.0, 90.0)
    assert parse(p.dump()) == p
    assert Policy().batch_size == 0  # off unless asked
    assert diff(Policy(), p)[:2] == ["batching.size: 0 -> 64", "batching.idle: 30 -> 2.5"]
    assert errors_of("batching: {size: -1, idle: 0, sizes: 3}\ntape: {max_mount: 0}\n") == [
        (1, 'batching: unknown key "sizes" (did you mean size?)'),
        (1, "batching.size: -1 is out of range 0..100000"),
        (1, "batching.idle: 0 is out of range 0.01..86400"),
        (2, "tape.max_mount: 0 is out of range 0.01..604800"),
    ]


def test_striping_section_sizes_and_errors() -> None:
    p = parse("striping: {above: 64G, part_size: 4G, max_parts: 16}\n")
    assert (p.stripe_above, p.stripe_part, p.stripe_max_parts) == (64 << 30, 4 << 30, 16)
    assert parse(p.dump()) == p
    assert diff(parse(""), p) == ["striping.above: 0 -> 64G", "striping.part_size: 1G -> 4G",
                                  "striping.max_parts: 64 -> 16"]
    assert parse("striping: {above: 0, part_size: 1048576}\n").stripe_part == 1 << 20
    for text, message in (
            ("striping: {above: 1K}\n", "striping.above: 1024 bytes: a striped file is at least 1M (0: off)"),
            ("striping: {part_size: 4K}\n", "striping.part_size: 4096 bytes: a part is at least 1M"),
            ("striping: {part_size: lots}\n", "striping.part_size: expected a size such as 4G or a number of bytes"),
            ("striping: {above: true}\n", "striping.above: expected a size such as 4G or a number of bytes"),
            ("striping: {max_parts: 65}\n", "striping.max_parts: 65 is out of range 2..64"),
            ("striping: {parts: 4}\n", 'striping: unknown key "parts"')):
        with pytest.raises(PolicyError) as e:
            parse(text)
        assert message in str(e.value), (text, str(e.value))


def test_the_striping_doc_example_parses() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "striping.md").read_text()
    (block,) = re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)
    p = parse(block)
    assert (p.stripe_above, p.stripe_part, p.stripe_max_parts) == (64 << 30, 4 << 30, 64)
