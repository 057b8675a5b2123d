"""Pre-stage lists (hsmctl/prestage.py, docs/prestage.md) and ``hsmctl
restore --list``: the parser (pure), includes and cycles, the expansion on
real files with an injected "now", the progress lines, and end to end on a
simfs tree with a real coordinator and a real agentd."""

from __future__ import annotations

import errno
import io
import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm.hsmflags import HS
from hsm.simfs import SimFS
from hsmctl import cli
from hsmctl.prestage import (
    Entry,
    Include,
    Part,
    Problem,
    SizeFilter,
    TimeFilter,
    When,
    expand,
    load,
    parse,
    parse_size,
    parse_when,
    quote,
)
from tests.test_hsmctl import (  # noqa: F401  (fixtures: tree, pki, addr, agentd)
    AGENTD,
    actions_of,
    addr,
    agentd,
    archive_now,
    hsmctl,
    pki,
    run,
    tree,
)
from tests.test_hsmctl_lustre import mount, mover, standin_lib  # noqa: F401  (fixtures)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC).timestamp()
DAY = 86400.0


def entries(text: str, base: str = "") -> list[Entry]:
    parsed = parse(text, "t.list", base)
    assert parsed.errors == (), parsed.errors
    assert all(isinstance(i, Entry) for i in parsed.items)
    return [i for i in parsed.items if isinstance(i, Entry)]


def errors(text: str) -> list[str]:
    return [str(p) for p in parse(text, "t.list").errors]


# ---------------------------------------------------------------------------
# parse: every construct


def test_parse_every_construct_with_its_line() -> None:
    text = "\n".join([
        "# inputs of run 42",                       # 1
        "",                                         # 2
        "/lustre/proj/mesh.h5",                     # 3
        "params/base.yaml   # trailing comment",    # 4
        "run42/*.nc --newer 7d",                    # 5
        "archive/**/*.h5 --size +1G",               # 6
        "forcing/",                                 # 7
        "climatology/**",                           # 8
        "'name with spaces.dat'",                   # 9
        'odd\\ name\\*.dat "x#y" ',                 # 10: one path? no: two words -> see below
    ])
    parsed = parse(text, "t.list", "jobs")
    # line 10 holds two words: an error, nothing from it
    assert [str(e) for e in parsed.errors] == [
        't.list:10: one path per line, not 2: quote a name with blanks ("a b") or put each path on '
        "its own line"]
    items = parsed.items
    assert [(i.line, i.text) for i in items] == [
        (3, "/lustre/proj/mesh.h5"), (4, "params/base.yaml"), (5, "run42/*.nc"),
        (6, "archive/**/*.h5"), (7, "forcing/"), (8, "climatology/**"), (9, "name with spaces.dat")]
    e = {i.line: i for i in items if isinstance(i, Entry)}
    assert (e[3].prefix, e[3].parts, e[3].literal) == ("/", (Part("lustre"), Part("proj"), Part("mesh.h5")), True)
    assert e[3].path == "/lustre/proj/mesh.h5"
    assert (e[4].prefix, e[4].path) == ("jobs", "jobs/params/base.yaml")  # relative to the list's directory
    assert e[5].parts == (Part("run42"), Part("*.nc", glob=True)) and not e[5].literal
    assert e[5].filters == (TimeFilter(True, When("7d", 7 * DAY, True)),)
    assert e[6].parts[1].globstar and e[6].filters == (SizeFilter(True, 1 << 30, "+1G"),)
    assert e[7].dir_only and e[7].parts == (Part("forcing"),)
    assert e[8].parts == (Part("climatology"), Part("**", glob=True))
    assert e[9].parts == (Part("name with spaces.dat"),)


def test_quotes_and_backslashes_make_wildcards_and_keywords_literal() -> None:
    got = entries('"a*b"\na\\*b*\n\'[x]\'/y?\n"include"\n./set\n"-dash"\n"x#y"\nq\\ r')
    assert [e.parts for e in got] == [
        (Part("a*b"),),                        # quoted: a literal name
        (Part("a[*]b*", glob=True),),          # the escaped * is bracketed, the other is a wildcard
        (Part("[x]"), Part("y?", glob=True)),
        (Part("include"),), (Part("set"),), (Part("-dash"),), (Part("x#y"),), (Part("q r"),)]


def test_options_take_the_next_word_or_an_equals_sign_and_may_come_first() -> None:
    [a, b, c] = entries("--size=-100M data\n--older 2024-05-01T00:00Z x --size +1.5k\n"
                        "y --newer 90s --newer 2w")
    assert a.filters == (SizeFilter(False, 100 << 20, "-100M"),) and a.text == "data"
    assert b.filters == (TimeFilter(False, When("2024-05-01T00:00Z", datetime(2024, 5, 1, tzinfo=UTC)
                                                .timestamp(), False)), SizeFilter(True, 1536, "+1.5k"))
    assert [str(f) for f in c.filters] == ["--newer 90s", "--newer 2w"]


def test_set_gives_defaults_to_the_lines_below_only_and_set_alone_clears() -> None:
    a, b, c, d = entries("a\nset --newer 30d --size +1M\nb\nc --size -1G\nset\nd")
    assert a.filters == ()
    assert [str(f) for f in b.filters] == ["--newer 30d", "--size +1M"]
    assert [str(f) for f in c.filters] == ["--newer 30d", "--size +1M", "--size -1G"]  # all must hold
    assert d.filters == ()


def test_include_lines_carry_the_defaults_and_their_own_filters() -> None:
    parsed = parse("set --older 1d\ninclude sub/other.list --size +1K", "lists/main.list", "lists")
    [inc] = parsed.items
    assert isinstance(inc, Include)
    assert (inc.line, inc.path) == (2, "lists/sub/other.list")
    assert [str(f) for f in inc.filters] == ["--older 1d", "--size +1K"]


def test_crlf_lines_and_blank_lines() -> None:
    assert [e.text for e in entries("a\r\n\r\n   \t\r\nb\r\n")] == ["a", "b"]


@pytest.mark.parametrize("line, message", [
    ("a --bogus", "unknown option '--bogus' (options: --newer WHEN, --older WHEN, --size +N|-N; a path that "
                  "starts with - is written ./--bogus or quoted)"),
    ("-x", "unknown option '-x'"),
    ("a --newer", "--newer needs a value: --newer 7d"),
    ("a --size --newer 7d", "--size needs a value: --size +1G"),
    ("a --newer soon", "'soon' is not a time: give an age (90s, 30m, 12h, 7d, 2w) or an ISO date"),
    ("a --older 2024-13-45", "'2024-13-45' is not a time"),
    ("a --older 7y", "'7y' is not a time"),
    ("a --size 1G", "--size 1G: say +1G (larger than) or -1G (smaller than)"),
    ("a --size +1X", "--size '+1X' is not a size: +N (larger than N) or -N (smaller than N)"),
    ("a b", "one path per line, not 2"),
    ('""', "an empty path"),
    ("'open", "unterminated quote ('): close it on the same line"),
    ('a "b', 'unterminated quote (")'),
    ("a\\", "a backslash at the end of the line escapes nothing (no line continuation)"),
    ("a\0b", "a NUL byte: a list is text, one path per line"),
    ("--newer 7d", "filters without a path: put them after a path, or 'set' them for the lines below"),
    ("set a --newer 7d", "set takes filters only (--newer WHEN, --older WHEN, --size +N|-N), not 'a'"),
    ("include", "include needs the path of a list: include other.list"),
    ("include a b", "one path per line, not 2"),
    ("include lists/*.list", "include names one list, not a pattern: 'lists/*.list'"),
])
def test_each_error_with_its_line(line: str, message: str) -> None:
    got = errors(f"ok\n# fine\n{line}\nok2")
    assert len(got) == 1 and got[0].startswith(f"t.list:3: {message}"), got
    assert [i.text for i in parse(f"ok\n{line}", "t.list").items] == ["ok"]  # the bad line names nothing


def test_every_error_of_the_file_is_reported_in_line_order() -> None:
    got = errors("a --size 5\ngood\n'x\n\nb c --bogus\nset --older\n")
    assert [g.split(":")[1] for g in got] == ["1", "3", "5", "5", "6"]
    assert "unknown option '--bogus'" in got[2] and "one path per line" in got[3]


def test_when_and_size_values() -> None:
    assert parse_when("30m") == When("30m", 1800, True) and parse_when("1.5h").seconds == 5400
    assert parse_when("2w").at(NOW) == NOW - 14 * DAY
    assert parse_when("2024-05-01T12:00+02:00").at(NOW) == datetime(2024, 5, 1, 10, tzinfo=UTC).timestamp()
    local = parse_when("2024-05-01")
    assert not local.relative and local.seconds == datetime(2024, 5, 1).timestamp()  # local time
    for bad in ("", "7", "d", "-7d", "7 d", "tomorrow", "2024-02-30"):
        with pytest.raises(ValueError):
            parse_when(bad)
    assert parse_size("+1G") == SizeFilter(True, 1 << 30, "+1G")
    assert parse_size("-100m").limit == 100 << 20 and not parse_size("-100m").larger
    assert parse_size("+2T").limit == 2 << 40 and parse_size("+512").limit == 512
    assert parse_size("+1KiB").limit == 1024 and parse_size("+.5K").limit == 512
    for bad in ("1G", "+", "+G", "+1Q", "++1", "+1 G"):
        with pytest.raises(ValueError):
            parse_size(bad)


# ---------------------------------------------------------------------------
# parse: properties

LIST_ALPHABET = st.sampled_from(list("ab*?[]/.\\'\"# \t-=+1dGK\r\n\0é") + ["--newer", "--size", "include ",
                                                                        "set ", "**", "7d", "\udcff"])


@settings(max_examples=400, deadline=None)
@given(st.lists(LIST_ALPHABET, max_size=60).map("".join))
def test_parse_never_crashes_and_errors_have_valid_lines(text: str) -> None:
    parsed = parse(text, "h.list")
    lines = text.split("\n")
    for problem in parsed.errors:
        assert 1 <= problem.line <= len(lines) and problem.source == "h.list" and problem.message
    bad = {p.line for p in parsed.errors}
    for item in parsed.items:
        assert 1 <= item.line <= len(lines) and item.line not in bad
        assert item.text  # never an empty path


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0\n\r/"), min_size=1))
def test_quote_names_exactly_that_file(name: str) -> None:
    [entry] = entries(f"{quote(name)} --size +1")
    if name == ".":
        assert entry.parts == ()
    else:
        assert entry.parts == (Part(name),) and entry.literal


# ---------------------------------------------------------------------------
# load: files and includes


def test_includes_are_relative_to_the_including_list_and_merge_filters(tmp_path: Path) -> None:
    (tmp_path / "lists" / "sub").mkdir(parents=True)
    (tmp_path / "lists" / "main.list").write_text("a\nset --newer 7d\ninclude sub/more.list --size +1K\nz\n")
    (tmp_path / "lists" / "sub" / "more.list").write_text("m --size -1G\n../../n\n")
    plist = load(str(tmp_path / "lists" / "main.list"))
    assert plist.errors == []
    base = str(tmp_path / "lists")
    assert [(e.source.removeprefix(base), e.line, e.path.removeprefix(base)) for e in plist.entries] == [
        ("/main.list", 1, "/a"), ("/sub/more.list", 1, "/sub/m"), ("/sub/more.list", 2, "/sub/../../n"),
        ("/main.list", 4, "/z")]
    m = plist.entries[1]
    assert [str(f) for f in m.filters] == ["--newer 7d", "--size +1K", "--size -1G"]


def test_include_cycles_are_errors_naming_every_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("a.list").write_text("x\ninclude b.list\ninclude a.list\n")
    Path("b.list").write_text("include c.list\n")
    Path("c.list").write_text("y\ninclude a.list\n")
    plist = load("a.list")
    assert [str(p) for p in plist.errors] == [
        "a.list:3: include cycle: a.list:3 includes a.list",
        "c.list:2: include cycle: a.list:2 includes b.list, b.list:1 includes c.list, c.list:2 includes a.list",
    ]
    assert [e.text for e in plist.entries] == ["x", "y"]
    # Included twice without a cycle (a diamond) is fine.
    Path("d.list").write_text("include e.list\ninclude f.list\n")
    Path("e.list").write_text("include g.list\n")
    Path("f.list").write_text("include g.list\n")
    Path("g.list").write_text("g\n")
    plist = load("d.list")
    assert plist.errors == [] and [e.text for e in plist.entries] == ["g", "g"]


def test_all_errors_of_all_files_and_unreadable_includes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("inc").mkdir()
    Path("main.list").write_text("--bogus\ninclude inc/x.list\ninclude nope.list\ninclude inc\nfine\n'q\n")
    Path("inc/x.list").write_text("ok\na --size 9\n")
    plist = load("main.list")
    assert [str(p) for p in plist.errors] == [
        "main.list:1: unknown option '--bogus' (options: --newer WHEN, --older WHEN, --size +N|-N; a path "
        "that starts with - is written ./--bogus or quoted)",
        "main.list:3: cannot include 'nope.list': No such file or directory",
        "main.list:4: cannot include 'inc': Is a directory",
        "main.list:6: unterminated quote ('): close it on the same line",
        "inc/x.list:2: --size 9: say +9 (larger than) or -9 (smaller than)",
    ]
    plist = load("missing.list")
    assert [str(p) for p in plist.errors] == ["missing.list: cannot read the list: No such file or directory"]


def test_a_list_from_stdin_is_relative_to_the_current_directory() -> None:
    plist = load("-", text="a/b\ninclude x.list\n", read=lambda p: {"x.list": "c\n"}[p])
    assert [(e.source, e.path) for e in plist.entries] == [("<stdin>", "a/b"), ("x.list", "c")]
    plist = load("-", text="'oops\n")
    assert [str(p) for p in plist.errors] == ["<stdin>:1: unterminated quote ('): close it on the same line"]


def test_problem_text() -> None:
    assert str(Problem("a.list", 3, "matches nothing", warning=True)) == "a.list:3: warning: matches nothing"
    assert str(Problem("a.list", 0, "cannot read the list: x")) == "a.list: cannot read the list: x"


# ---------------------------------------------------------------------------
# expand: real files


def make(path: Path, size: int = 1, age_days: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)  # sparse: a 2 GiB file costs nothing
    t = NOW - age_days * DAY
    os.utime(path, (t, t))
    return path


@pytest.fixture
def data_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path/data with files of known sizes and ages; the cwd is tmp_path."""
    d = tmp_path / "data"
    make(d / "a.h5", 10, age_days=1)
    make(d / "b.h5", 2 << 30, age_days=10)
    make(d / "c.nc", 100, age_days=40)
    make(d / "x1.txt")
    make(d / "x2.txt")
    make(d / "xa.txt")
    make(d / "sub" / "d.h5", 5 << 20, age_days=2)
    make(d / "sub" / "deep" / "e.h5", 1, age_days=400)
    make(d / "sub" / "deep" / "f.nc")
    make(d / "sub2" / "g.h5")
    make(d / ".hidden" / "h.h5")
    make(d / ".dot.h5")
    os.symlink("a.h5", d / "link.h5")
    os.symlink("sub", d / "linkdir")
    os.mkfifo(d / "fifo")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def paths(text: str, base: str = "", now: float = NOW, cwd: str | None = None) -> tuple[list[str], list[str]]:
    result = expand(entries(text, base), now, cwd)
    return [m.path for m in result.files], [str(w) for w in result.warnings]


def test_plain_paths_relative_and_absolute(data_tree: Path) -> None:
    assert paths(f"data/a.h5\n{data_tree}/data/c.nc\n./data/sub/d.h5") == (
        ["data/a.h5", f"{data_tree}/data/c.nc", "data/sub/d.h5"], [])


def test_globs_sorted_within_an_entry_in_list_order(data_tree: Path) -> None:
    got, warnings = paths("data/x[0-9].txt\ndata/*.h5\ndata/x?.txt\ndata/*/*.h5")
    assert got == ["data/x1.txt", "data/x2.txt", "data/a.h5", "data/b.h5", "data/xa.txt",
                   "data/sub/d.h5", "data/sub2/g.h5"]  # no hidden file, no link, no fifo
    assert warnings == []


def test_double_star_is_any_depth_and_dir_star_star_is_recursive(data_tree: Path) -> None:
    assert paths("data/**/*.h5")[0] == ["data/a.h5", "data/b.h5", "data/sub/d.h5", "data/sub/deep/e.h5",
                                        "data/sub2/g.h5"]
    assert paths("data/sub/**")[0] == ["data/sub/d.h5", "data/sub/deep/e.h5", "data/sub/deep/f.nc"]
    assert paths("data/**/deep/*.nc")[0] == ["data/sub/deep/f.nc"]  # ** also matches no directory at all


def test_a_directory_means_the_files_directly_in_it(data_tree: Path) -> None:
    assert paths("data/sub")[0] == ["data/sub/d.h5"]
    assert paths("data/sub/")[0] == ["data/sub/d.h5"]
    # a pattern ending in / matches directories, each standing for its files
    assert paths("data/sub*/")[0] == ["data/sub/d.h5", "data/sub2/g.h5"]
    # a pattern whose last name has a wildcard matches files only
    assert paths("data/sub*")[1] == ["t.list:1: warning: matches nothing"]
    assert paths("data/a.h5/") == ([], ["t.list:1: warning: matches nothing (Not a directory)"])


def test_hidden_names_only_match_patterns_that_start_with_a_dot(data_tree: Path) -> None:
    assert paths("data/*h5")[0] == ["data/a.h5", "data/b.h5"]
    assert paths("data/.*")[0] == ["data/.dot.h5"]
    assert paths("data/.hidden/*")[0] == ["data/.hidden/h.h5"]
    assert "data/.hidden/h.h5" not in paths("data/**")[0]


def test_links_are_not_followed_and_named_ones_are_warnings(data_tree: Path) -> None:
    assert paths("data/link.h5") == ([], [
        "t.list:1: warning: 'data/link.h5' is a symbolic link: not followed (HSM requests do not follow "
        "links, like lfs); name the file it points to"])
    assert paths("data/linkdir/*.h5")[0] == ["data/linkdir/d.h5"]  # a directory you write out is resolved
    assert "data/linkdir/d.h5" not in paths("data/**/*.h5")[0]     # wildcards do not enter links
    assert paths("data/fifo") == ([], ["t.list:1: warning: 'data/fifo' is not a regular file"])


def test_newer_and_older_with_an_injected_now(data_tree: Path) -> None:
    assert paths("data/**/*.h5 --newer 7d")[0] == ["data/a.h5", "data/sub/d.h5", "data/sub2/g.h5"]
    assert paths("data/**/*.h5 --older 7d")[0] == ["data/b.h5", "data/sub/deep/e.h5"]
    assert paths("data/**/*.h5 --older 7d --newer 30d")[0] == ["data/b.h5"]
    # the same ages counted from another "now"
    assert paths("data/**/*.h5 --newer 7d", now=NOW + 365 * DAY)[0] == []
    # an absolute time: an ISO date (UTC here) and strictly after/before it
    day = datetime.fromtimestamp(NOW - 10 * DAY, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert paths(f"data/b.h5 --newer {day}\ndata/b.h5 --older {day}")[0] == []
    assert paths(f"data/*.h5 --older {day}")[0] == []
    assert paths(f"data/*.nc --older {day}")[0] == ["data/c.nc"]


def test_size_filters(data_tree: Path) -> None:
    assert paths("data/**/*.h5 --size +1G")[0] == ["data/b.h5"]
    assert paths("data/**/*.h5 --size +1M --size -1G")[0] == ["data/sub/d.h5"]
    assert paths("data/**/*.h5 --size -10")[0] == ["data/sub/deep/e.h5", "data/sub2/g.h5"]
    assert paths("data/a.h5 --size +10\ndata/a.h5 --size -10")[0] == []  # strictly larger / smaller


def test_each_file_once_the_first_entry_keeps_it(data_tree: Path) -> None:
    os.link(data_tree / "data" / "c.nc", data_tree / "data" / "hard.nc")
    got, warnings = paths("data/sub/d.h5\ndata/**/*.h5\ndata/a.h5\ndata/c.nc\ndata/hard.nc\n"
                          "data/../data/a.h5")
    assert got == ["data/sub/d.h5", "data/a.h5", "data/b.h5", "data/sub/deep/e.h5", "data/sub2/g.h5",
                   "data/c.nc"]
    assert warnings == []  # an entry whose files came earlier matched: no warning


def test_matches_nothing_is_a_warning_saying_why(data_tree: Path) -> None:
    got, warnings = paths("data/nope.h5\ndata/*.zip\nnodir/*/x\ndata/**/*.h5 --size +1T\ndata/a.h5")
    assert got == ["data/a.h5"]
    assert warnings == [
        "t.list:1: warning: matches nothing (No such file or directory)",
        "t.list:2: warning: matches nothing",
        "t.list:3: warning: matches nothing",
        "t.list:4: warning: matches nothing: 5 file(s) left out by --size +1T",
    ]


def test_relative_paths_start_at_the_list_base_and_cwd_is_injected(data_tree: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    assert paths("sub/d.h5\n*.nc", base="data")[0] == ["data/sub/d.h5", "data/c.nc"]
    monkeypatch.chdir("/")
    got, _ = paths("data/sub/**", cwd=str(tmp_path))
    assert got == ["data/sub/d.h5", "data/sub/deep/e.h5", "data/sub/deep/f.nc"]  # as the list wrote them
    result = expand(entries("data/a.h5"), NOW, str(tmp_path))
    assert (result.files[0].size, result.files[0].mtime, result.bytes) == (10, NOW - DAY, 10)


def test_an_unreadable_directory_is_a_warning(data_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.scandir

    def scandir(path: str) -> Any:
        if os.path.normpath(path) == "data/sub":  # root here reads any directory: refuse like a mode 0 one
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr("hsmctl.prestage.os.scandir", scandir)
    got, warnings = paths("data/**/*.h5\ndata/sub/*")
    assert got == ["data/a.h5", "data/b.h5", "data/sub2/g.h5"]
    assert warnings == ["t.list:1: warning: cannot read the directory 'data/sub': Permission denied",
                        "t.list:2: warning: cannot read the directory 'data/sub': Permission denied"]


# ---------------------------------------------------------------------------
# restore --list progress lines (no terminal), with a fake clock


def test_progress_lines_each_quarter_and_every_interval() -> None:
    err = io.StringIO()
    ctx = cli.Context(command="restore", out=io.StringIO(), err=err)
    clock = iter([0.0, 1.0, 1.0, 2.0, 40.0, 50.0]).__next__
    p = cli.ListProgress(ctx, files=8, total_bytes=8 << 20, clock=clock, every=30.0)
    p.update(7, 1, 0, 0, 1 << 20)       # t=1: nothing new to say
    p.update(5, 1, 2, 0, 3 << 20)       # t=1: a quarter ended
    p.update(5, 1, 2, 0, 3 << 20)       # t=2: same quarter, not 30 s yet
    p.update(4, 1, 3, 1, 3 << 20)       # t=40: 30 s since the last line
    p.update(0, 0, 8, 1, 7 << 20)       # t=50: all ended
    p.stop()
    assert err.getvalue().splitlines() == [
        "restore: 8 waiting, 0 running, 0 done; 0B/8.0MiB, 0.0s",
        "restore: 5 waiting, 1 running, 2 done; 3.0MiB/8.0MiB, 1.0s",
        "restore: 4 waiting, 1 running, 3 done, 1 failed; 3.0MiB/8.0MiB, 40.0s",
        "restore: 0 waiting, 0 running, 8 done, 1 failed; 7.0MiB/8.0MiB, 50.0s",
    ]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_is_a_live_bar() -> None:
    err = _Tty()
    ctx = cli.Context(command="restore", out=io.StringIO(), err=err)
    p = cli.ListProgress(ctx, files=2, total_bytes=2048)
    p.update(0, 1, 1, 0, 1024)
    p.error("fs/x: RESTORE action 7 failed: ENODATA (No data available)")
    p.stop()
    shown = err.getvalue()
    assert "restore: 0 waiting, 1 running, 1 done" in shown and "1/2" in shown and "1.0KiB/2.0KiB" in shown
    assert "hsmctl restore: fs/x: RESTORE action 7 failed" in shown
    assert ctx.status == cli.EXIT_FAILED


# ---------------------------------------------------------------------------
# hsmctl restore --list against a coordinator (in this process, no agent)


def test_a_list_with_errors_restores_nothing_and_says_every_error(tree: SimFS, addr: str, tmp_path: Path,  # noqa: F811
                                                                   capsys: Any) -> None:
    Path("bad.list").write_text("fs/d/rel\nfs/d/* --newer yesterday\ninclude more.list\n'open\n")
    Path("more.list").write_text("fs/d/rel --size 1K\n")
    rc, out, err = hsmctl(capsys, "--coordinators", addr, "restore", "--list", "bad.list")
    assert (rc, out) == (2, "")
    assert err.splitlines() == [
        "bad.list:2: 'yesterday' is not a time: give an age (90s, 30m, 12h, 7d, 2w) or an ISO date or date "
        "and time (2024-05-01, 2024-05-01T12:00, 2024-05-01T12:00Z)",
        "bad.list:4: unterminated quote ('): close it on the same line",
        "more.list:1: --size 1K: say +1K (larger than) or -1K (smaller than)",
        "hsmctl restore: bad.list: 3 error(s) in the pre-stage list; nothing was restored",
    ]
    rc, out, err = hsmctl(capsys, "--coordinators", addr, "restore", "--list", "nope.list")
    assert rc == 2 and err.splitlines()[0] == "nope.list: cannot read the list: No such file or directory"
    assert actions_of(addr, include_terminal=True) == []


def test_dry_run_prints_the_files_and_contacts_nobody(tree: SimFS, capsys: Any) -> None:  # noqa: F811
    Path("fs/d/sub").mkdir()
    Path("fs/d/sub/s1").write_bytes(b"s" * 1024)
    Path("job.list").write_text("fs/d/rel\nfs/d/**/s*\nfs/d/a?\nfs/d/zzz*\n")
    rc, out, err = hsmctl(capsys, "--coordinators", "127.0.0.1:1", "--timeout", "1", "restore", "--list",
                          "job.list", "--dry-run")
    assert rc == 0
    assert out == "fs/d/rel\nfs/d/sub/s1\nfs/d/a2\n"
    assert err.splitlines() == ["job.list:4: warning: matches nothing",
                                "hsmctl restore: job.list names 3 file(s), 5.0KiB; nothing submitted (--dry-run)"]


def test_no_wait_submits_what_needs_a_restore_and_returns(tree: SimFS, addr: str, capsys: Any,  # noqa: F811
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    tree.release("fs/d/a2")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"fs/d/*\n")))
    rc, out, err = hsmctl(capsys, "--coordinators", addr, "restore", "--list", "-", "--no-wait")
    assert rc == 0, err
    assert out == "queued 2, joined 0, not needed 3, rejected 0\n"
    assert err == "hsmctl restore: <stdin> names 5 file(s), 4.0KiB\n"
    assert sorted(a.fid.oid for a in actions_of(addr)) == sorted(
        tree.fid_of(p).oid for p in ("fs/d/rel", "fs/d/a2"))


def test_deadline_stops_waiting_and_says_what_is_not_done(tree: SimFS, addr: str, capsys: Any) -> None:  # noqa: F811
    tree.release("fs/d/a2")
    Path("job.list").write_text("fs/d/rel\nfs/d/a2\nfs/d/arch\n")
    # no agent: the restores wait
    rc, out, err = hsmctl(capsys, "--coordinators", addr, "restore", "--list", "job.list", "--deadline", "0.5")
    assert rc == 1
    assert re.fullmatch(r"restored 0 \(0B\), already online 1, failed 0, not done yet 2 \(past --deadline; "
                        r"they go on\), in \d\.\ds\n", out), out
    lines = err.splitlines()
    assert lines[:2] == ["hsmctl restore: job.list names 3 file(s), 4.0KiB",
                         "restore: 2 waiting, 0 running, 0 done; 0B/4.0KiB, 0.0s"]
    assert re.fullmatch(r"hsmctl restore: gave up waiting after 0.5 s: 2 restore action\(s\) not ended yet "
                        r"\(they go on; 'hsmctl actions' shows them\): \d+, \d+", lines[-1]), lines
    assert len(actions_of(addr)) == 2


@pytest.mark.parametrize("argv, words", [
    (["--list", "x.list", "fs/d/rel"], "--list names the files itself: it takes no PATH operands"),
    (["--list", "x.list", "-r", "--filelist", "y"], "it takes no --filelist, -r"),
    (["--list", "x.list", "--no-wait", "--deadline", "5"], "--no-wait with --wait or --deadline"),
    (["--dry-run", "fs/d/rel"], "--dry-run goes with --list FILE"),
    (["--no-wait", "fs/d/rel"], "--no-wait goes with --list FILE"),
    (["--list"], "expected one argument"),
])
def test_list_usage_errors(tree: SimFS, addr: str, capsys: Any, argv: list[str], words: str) -> None:  # noqa: F811
    Path("x.list").write_text("fs/d/rel\n")
    rc, out, err = hsmctl(capsys, "--coordinators", addr, "restore", *argv)
    assert (rc, out) == (2, "") and words in err
    assert actions_of(addr, include_terminal=True) == []


def test_help_says_how_to_write_a_list() -> None:
    r = run("restore", "--help")
    assert r.returncode == 0
    for words in ("--list FILE", "pre-stage list FILE", "docs/prestage.md", "--no-wait", "--dry-run",
                  "include common.list", "warning: matches nothing", "(exit 2)", "restored 38 (11.8GiB), "
                  "already online 2, failed 1, in 4m12s"):
        assert words in r.stdout, words


# ---------------------------------------------------------------------------
# End to end: files archived and released by a real agentd, restored through a list


@pytest.mark.slow
@pytest.mark.skipif(not AGENTD.exists(), reason="agentd console script not installed")
def test_restore_list_end_to_end_with_agentd(tree: SimFS, addr: str, tmp_path: Path, agentd: Any) -> None:  # noqa: F811
    (tmp_path / "archive").mkdir()
    agentd("--archive-root", str(tmp_path / "archive"))
    data = {"fs/run/in/a.dat": os.urandom(3000), "fs/run/in/b.dat": os.urandom(5000),
            "fs/run/in/old/c.dat": os.urandom(7000), "fs/run/big.bin": os.urandom(64 * 1024),
            "fs/run/small.bin": b"tiny"}
    for path, content in data.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(content)
    r = run("--coordinators", addr, "archive", "--wait", *data, cwd=tmp_path, timeout=60)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    r = run("--coordinators", addr, "release", *data, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert all(tree.hsm_state(p).flags & HS.RELEASED for p in data)

    # The list sits beside the tree; the include inside it, relative to itself.
    Path("job.list").write_text(
        "# pre-stage for run 42\n"
        "fs/run/in/**\n"
        "fs/d/arch          # archived and online: skipped\n"
        "fs/d/rel           # released, but its copy is not in this archive: fails\n"
        "fs/run/in/*.zip    # nothing: a warning\n"
        "include fs/run/extra.list --size +1K\n")
    Path("fs/run/extra.list").write_text("*.bin\n")
    # A list with an error restores nothing, however many good lines it has.
    Path("bad.list").write_text("fs/run/in/**\nfs/run/big.bin --older 2024-99-99\n")
    r = run("--coordinators", addr, "restore", "--list", "bad.list", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr.splitlines()[0].startswith("bad.list:2: '2024-99-99' is not a time")
    assert r.stderr.splitlines()[-1] == "hsmctl restore: bad.list: 1 error(s) in the pre-stage list; " \
                                        "nothing was restored"
    assert [a for a in actions_of(addr, include_terminal=True) if kind_of(a) == "RESTORE"] == []
    assert all(tree.hsm_state(p).flags & HS.RELEASED for p in data)

    start = time.monotonic()
    r = run("--coordinators", addr, "restore", "--list", "job.list", cwd=tmp_path, timeout=60)
    assert time.monotonic() - start < 60
    assert r.returncode == 1, r.stderr  # one file failed
    out = r.stdout.splitlines()
    assert re.fullmatch(r"restored 4 \(78\.6KiB\), already online 1, failed 1, in \d+\.\ds", out[0]), out
    assert len(out) == 2 and re.fullmatch(
        r"failed: fs/d/rel: RESTORE action \d+ failed: archive object .* does not exist \(errno ENOENT\)",
        out[1]), out
    err = r.stderr.splitlines()
    assert err[:3] == ["job.list:5: warning: matches nothing",
                       "hsmctl restore: job.list names 6 file(s), 82.6KiB",  # 5 to restore, 1 online
                       "restore: 5 waiting, 0 running, 0 done; 0B/82.6KiB, 0.0s"]
    assert re.fullmatch(r"restore: 0 waiting, 0 running, 5 done, 1 failed; 78\.6KiB/82\.6KiB, \d+\.\ds",
                        err[-1]), err
    assert 4 <= len(err) <= 3 + 5 + 1, err  # a few lines: one per quarter of the files at most, the failure
    assert [x for x in err if "failed:" in x] == ["hsmctl restore: " + out[1].removeprefix("failed: ")]
    for path, content in data.items():
        if path != "fs/run/small.bin":  # left out by --size +1K on the include
            assert Path(path).read_bytes() == content
            assert not tree.hsm_state(path).flags & HS.RELEASED
    assert tree.hsm_state("fs/run/small.bin").flags & HS.RELEASED

    # Again: everything is online now but the file that cannot be restored.
    r = run("--coordinators", addr, "restore", "--list", "job.list", cwd=tmp_path, timeout=60)
    assert r.returncode == 1
    assert re.fullmatch(r"restored 0 \(0B\), already online 5, failed 1, in \d+\.\ds",
                        r.stdout.splitlines()[0]), r.stdout


def kind_of(action: Any) -> str:
    from hsm.client import kind_name

    return str(kind_name(action.kind))


def test_a_list_on_stdin(tree: SimFS, tmp_path: Path) -> None:  # noqa: F811
    r = run("restore", "--list", "-", "--dry-run", input="fs/d/a?\nfs/d/rel\n", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, "fs/d/a2\nfs/d/rel\n"), r.stderr
    assert r.stderr == "hsmctl restore: <stdin> names 2 file(s), 4.0KiB; nothing submitted (--dry-run)\n"


# ---------------------------------------------------------------------------
# On Lustre (the stand-in liblustreapi over a simulated MDT): the same list, sent to the MDT


@pytest.mark.slow  # a simulated MDT process
def test_restore_list_on_lustre_goes_to_the_mdt(standin_lib: Path, mount: Any, mover: Any,  # noqa: F811
                                                 capsys: Any) -> None:
    from tests.test_hsmctl_lustre import archive_now as archive_on
    from tests.test_hsmctl_lustre import lhsmctl

    data = {name: os.urandom(size) for name, size in (("in/a", 3000), ("in/b", 5000), ("in/c", 10))}
    for name, content in data.items():
        mount.file(name, content)
        archive_on(mount.fs, mount.root / name)
    for name in ("in/a", "in/b"):
        mount.fs.release(mount.root / name)
    mount.file("in/bad", b"z" * 100)
    archive_on(mount.fs, mount.root / "in/bad")
    mount.fs.release(mount.root / "in/bad")
    mover([1], content={mount.fid(f"mnt/{n}"): c for n, c in data.items()},
          fail={mount.fid("mnt/in/bad"): errno.EIO})
    Path("l.list").write_text("mnt/in/\n")
    rc, out, err = lhsmctl(capsys, "restore", "--list", "l.list")
    assert rc == 1, err
    lines = out.splitlines()
    assert re.fullmatch(r"restored 2 \(7\.8KiB\), already online 1, failed 1, in \d+\.\ds", lines[0]), out
    assert lines[1:] == ["failed: mnt/in/bad: RESTORE failed or was canceled: the file is still released "
                         "(released exists archived)"]
    assert err.splitlines()[0] == "hsmctl restore: l.list names 4 file(s), 7.9KiB"
    for name, content in data.items():
        assert (mount.root / name).read_bytes() == content
