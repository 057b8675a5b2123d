"""Pre-stage lists: the files to bring back from the archive before a job
runs, named in a small language (``hsmctl restore --list FILE``; the
reference, with examples, is ``docs/prestage.md``).

One entry per line; ``#`` starts a comment (at the start of a line or
after a blank), blank lines are ignored::

    # inputs of run 42
    /lustre/proj/run42/mesh.h5           a file
    params/base.yaml                     relative to the list file's directory
    run42/*.nc --newer 7d                a glob: * ? [...] within one name
    archive/**/*.h5 --size +1G           ** is any number of directories (none too)
    forcing/                             a directory: the files directly in it
    climatology/**                       ... and every file below it, at any depth
    "name with spaces.dat"               quotes ('...' or "...") or \\ for odd names
    set --older 2024-01-01T00:00Z        defaults for the lines after it (set alone: none)
    include common.list --newer 30d      another list, relative to this one

Filters (on an entry, an include, or ``set``; they all must hold):
``--newer WHEN`` / ``--older WHEN`` on the modification time (strictly
after / before WHEN), WHEN an ISO date or date and time (local time
unless it ends with ``Z`` or ``+HH:MM``) or an age: ``90s``, ``30m``,
``12h``, ``7d``, ``2w`` before "now"; ``--size +N`` (larger than N bytes) and
``--size -N`` (smaller than N), N with an optional binary unit ``K``,
``M``, ``G``, ``T`` (``+1.5G``). A released file keeps its size, so size
filters see the size it will have.

Matching: wildcards do not match names starting with ``.`` unless the
pattern's name does (as in the shell: ``.simfs`` and ``.lustre`` stay out);
a directory stands for the regular files directly in it (``dir/*``); a
pattern ending in ``/`` matches directories only, each standing for its
files; a pattern whose last name has a wildcard matches regular files
only. Symbolic links are not followed, as ``hsmctl restore -r`` and lfs do
not: wildcards and directories skip them, and a link named exactly is a
warning (name the file it points to); the directories of a path you write
out are resolved as in any path.

The three steps are apart, so that each can be tested on its own:
``parse`` (pure: text in, entries and errors out), ``load`` (reads a list
and the lists it includes, detects include cycles, gathers every error of
every file) and ``expand`` (the entries against the file system, with
"now" passed in): regular files only, each once (the first entry that
names it wins), in the list's order and sorted by path within an entry.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

#: binary size units (``--size +1G``); no unit: bytes
SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
#: age units (``--newer 7d``): seconds, minutes, hours, days, weeks
AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
OPTIONS = ("--newer", "--older", "--size")
KEYWORDS = ("set", "include")
STDIN = "-"
STDIN_NAME = "<stdin>"

_WILD = "*?["
_BLANKS = " \t\r\f\v"
_SIZE = re.compile(r"([+-])(\d+(?:\.\d+)?|\.\d+)([KMGT]?)(?:i?B)?", re.IGNORECASE)
_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_OPTIONS_HELP = "--newer WHEN, --older WHEN, --size +N|-N"


# ---------------------------------------------------------------------------
# What parsing and expanding return


@dataclass(frozen=True, slots=True)
class Problem:
    """An error (or a warning) at a line of a list: ``FILE:LINE: message``.
    *line* 0 is the file as a whole (it cannot be read)."""

    source: str
    line: int
    message: str
    warning: bool = False

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {'warning: ' if self.warning else ''}{self.message}"


@dataclass(frozen=True, slots=True)
class When:
    """A point in time: *seconds* since the epoch, or (*relative*) an age in
    seconds before "now"."""

    text: str
    seconds: float
    relative: bool

    def at(self, now: float) -> float:
        return now - self.seconds if self.relative else self.seconds


@dataclass(frozen=True, slots=True)
class TimeFilter:
    """``--newer WHEN`` (modified after WHEN) or ``--older WHEN`` (before)."""

    newer: bool
    when: When

    def passes(self, st: os.stat_result, now: float) -> bool:
        limit = self.when.at(now)
        return st.st_mtime > limit if self.newer else st.st_mtime < limit

    def __str__(self) -> str:
        return f"--{'newer' if self.newer else 'older'} {self.when.text}"


@dataclass(frozen=True, slots=True)
class SizeFilter:
    """``--size +N`` (larger than N bytes) or ``--size -N`` (smaller)."""

    larger: bool
    limit: int
    text: str

    def passes(self, st: os.stat_result, now: float) -> bool:
        return st.st_size > self.limit if self.larger else st.st_size < self.limit

    def __str__(self) -> str:
        return f"--size {self.text}"


Filter = TimeFilter | SizeFilter


@dataclass(frozen=True, slots=True)
class Part:
    """One name of a pattern: literal, or (*glob*) an fnmatch pattern in
    which quoted wildcard characters are bracketed (``[*]``); ``**`` as a
    whole unquoted name is any number of directories."""

    name: str
    glob: bool = False

    @property
    def globstar(self) -> bool:
        return self.glob and self.name == "**"


@dataclass(frozen=True, slots=True)
class Entry:
    """One line naming files: *text* as written, *prefix* where its names
    start (``/``, the list's directory, or ``""``: the current directory),
    *parts* the names after it, *dir_only* when it ended in ``/``, and every
    filter that applies (``set`` defaults and includes' filters merged)."""

    source: str
    line: int
    text: str
    prefix: str
    parts: tuple[Part, ...]
    dir_only: bool = False
    filters: tuple[Filter, ...] = ()

    @property
    def literal(self) -> bool:
        """No wildcard: it names one path."""
        return not any(p.glob for p in self.parts)

    @property
    def path(self) -> str:
        """The path (or pattern) as a path from the current directory."""
        return os.path.join(self.prefix, *(p.name for p in self.parts)) if self.parts else (self.prefix or ".")


@dataclass(frozen=True, slots=True)
class Include:
    """``include PATH [filters]``: *path* from the current directory."""

    source: str
    line: int
    text: str
    path: str
    filters: tuple[Filter, ...] = ()


@dataclass(frozen=True, slots=True)
class Parsed:
    """What ``parse`` makes of one list's text."""

    items: tuple[Entry | Include, ...]
    errors: tuple[Problem, ...]


@dataclass
class PrestageList:
    """A list with its includes resolved: the entries in order, and every
    error of every file read."""

    entries: list[Entry] = field(default_factory=list)
    errors: list[Problem] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Match:
    """A regular file an entry names: *path* as a path from the current
    directory (as the list wrote it), its size and mtime, and the entry."""

    path: str
    size: int
    mtime: float
    source: str
    line: int


@dataclass
class Expansion:
    files: list[Match] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(m.size for m in self.files)


# ---------------------------------------------------------------------------
# Words of a line


@dataclass(frozen=True, slots=True)
class _Word:
    text: str
    quoted: tuple[bool, ...]  # per character: came from quotes or a backslash

    @property
    def bare(self) -> bool:
        return not any(self.quoted)

    @property
    def is_option(self) -> bool:
        return bool(self.text) and self.text[0] == "-" and not self.quoted[0]


def _split(line: str) -> tuple[list[_Word], str | None]:
    """The words of *line* (shell-like quoting: '...', "..." with \\ escapes,
    \\ outside quotes; # at the start of a word begins a comment), or the
    error that stops it."""
    words: list[_Word] = []
    chars: list[str] = []
    quoted: list[bool] = []
    in_word = False
    i, n = 0, len(line)

    def end() -> None:
        nonlocal in_word
        if in_word:
            words.append(_Word("".join(chars), tuple(quoted)))
        chars.clear()
        quoted.clear()
        in_word = False

    while i < n:
        ch = line[i]
        if ch in _BLANKS:
            end()
            i += 1
        elif ch == "#" and not in_word:
            break
        elif ch == "\\":
            if i + 1 == n:
                return words, "a backslash at the end of the line escapes nothing (no line continuation)"
            chars.append(line[i + 1])
            quoted.append(True)
            in_word = True
            i += 2
        elif ch in "'\"":
            in_word = True
            j = i + 1
            while j < n and line[j] != ch:
                if ch == '"' and line[j] == "\\" and j + 1 < n:
                    j += 1
                chars.append(line[j])
                quoted.append(True)
                j += 1
            if j >= n:
                return words, f"unterminated quote ({ch}): close it on the same line"
            i = j + 1
        else:
            chars.append(ch)
            quoted.append(False)
            in_word = True
            i += 1
    end()
    return words, None


def _pattern(word: _Word) -> tuple[bool, tuple[Part, ...], bool]:
    """(absolute, parts, dir_only) of a path word: ``/`` separates names
    (quoted or not), ``.`` names and empty ones are dropped, a name with an
    unquoted wildcard is a glob (its quoted wildcard characters bracketed)."""
    absolute = word.text.startswith("/")
    dir_only = word.text.endswith("/")
    parts: list[Part] = []
    start = 0
    for pos in range(len(word.text) + 1):
        if pos < len(word.text) and word.text[pos] != "/":
            continue
        name, q = word.text[start:pos], word.quoted[start:pos]
        start = pos + 1
        if name in ("", "."):
            continue
        if any(c in _WILD and not qc for c, qc in zip(name, q, strict=True)):
            glob = "".join(f"[{c}]" if c in _WILD and qc else c for c, qc in zip(name, q, strict=True))
            parts.append(Part(glob, True))
        else:
            parts.append(Part(name))
    return absolute, tuple(parts), dir_only


# ---------------------------------------------------------------------------
# Values


def parse_when(text: str) -> When:
    """An age (``7d``: 7 days before now) or an ISO date or date and time
    (local time unless it carries ``Z`` or an offset). ValueError if neither."""
    m = _AGE.fullmatch(text)
    if m:
        return When(text, float(m.group(1)) * AGE_UNITS[m.group(2)], True)
    if text[:1].isdigit() and "-" in text:
        try:
            return When(text, datetime.fromisoformat(text).timestamp(), False)
        except (ValueError, OverflowError, OSError):
            pass
    raise ValueError(f"'{text}' is not a time: give an age (90s, 30m, 12h, 7d, 2w) or an ISO date "
                     "or date and time (2024-05-01, 2024-05-01T12:00, 2024-05-01T12:00Z)")


def parse_size(text: str) -> SizeFilter:
    """``+N`` (larger than) or ``-N`` (smaller than) N bytes, N with an
    optional binary unit K, M, G or T (also KiB, KB: 1024). ValueError if not."""
    m = _SIZE.fullmatch(text)
    if not m:
        if re.fullmatch(r"\d+(?:\.\d+)?[KMGT]?(?:i?B)?", text, re.IGNORECASE):
            raise ValueError(f"--size {text}: say +{text} (larger than) or -{text} (smaller than)")
        raise ValueError(f"--size '{text}' is not a size: +N (larger than N) or -N (smaller than N), "
                         "N in bytes or with a unit K, M, G, T (binary): +1G, -100M")
    limit = int(float(m.group(2)) * SIZE_UNITS[m.group(3).upper()])
    return SizeFilter(m.group(1) == "+", limit, text)


def _filter(option: str, value: str) -> Filter:
    if option == "--size":
        return parse_size(value)
    return TimeFilter(option == "--newer", parse_when(value))


def quote(path: str) -> str:
    """*path* as one word of a list line, naming exactly that path (no
    wildcard, no keyword, no option): for tools that write lists."""
    if path and re.fullmatch(r"[A-Za-z0-9_./+,:=@%^-]+", path) and not path.startswith("-") \
            and path not in KEYWORDS:
        return path
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---------------------------------------------------------------------------
# parse: text in, entries and errors out


def parse(text: str, source: str = STDIN_NAME, base: str = "") -> Parsed:
    """The entries and includes of one list (pure: no file is read).
    *source* names it in messages, *base* is the directory its relative
    paths start from (the list file's own). Every error of every line is
    returned, each with its line number (from 1)."""
    items: list[Entry | Include] = []
    errors: list[Problem] = []
    defaults: tuple[Filter, ...] = ()
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw[:-1] if raw.endswith("\r") else raw

        def error(message: str, number: int = number) -> None:
            errors.append(Problem(source, number, message))

        if "\0" in line:
            error("a NUL byte: a list is text, one path per line")
            continue
        before = len(errors)
        words, problem = _split(line)
        if problem:
            error(problem)
            continue
        if not words:
            continue
        keyword = words[0].text if words[0].bare and words[0].text in KEYWORDS else ""
        filters: list[Filter] = []
        paths: list[_Word] = []
        rest = words[1:] if keyword else words
        i = 0
        while i < len(rest):
            word = rest[i]
            i += 1
            if not word.is_option:
                paths.append(word)
                continue
            option, eq, value = word.text.partition("=")
            if option not in OPTIONS:
                error(f"unknown option '{word.text}' (options: {_OPTIONS_HELP}; a path that "
                      f"starts with - is written ./{word.text} or quoted)")
                continue
            if not eq:
                if i == len(rest) or rest[i].is_option and rest[i].text.partition("=")[0] in OPTIONS:
                    error(f"{option} needs a value: {option} " + ("+1G" if option == "--size" else "7d"))
                    continue
                value = rest[i].text
                i += 1
            try:
                filters.append(_filter(option, value))
            except ValueError as e:
                error(str(e))
        if keyword == "set":
            if paths:
                error(f"set takes filters only ({_OPTIONS_HELP}), not '{paths[0].text}'")
            else:
                defaults = tuple(filters)
            continue
        if not paths:
            if keyword == "include":
                error("include needs the path of a list: include other.list")
            elif filters:
                error("filters without a path: put them after a path, or 'set' them for the lines below")
            continue
        if len(paths) > 1:
            error(f"one path per line, not {len(paths)}: quote a name with blanks (\"a b\") or put "
                  "each path on its own line")
            continue
        word = paths[0]
        if not word.text:
            error("an empty path")
        if len(errors) > before:
            continue  # a line with an error names nothing
        merged = defaults + tuple(filters)
        if keyword == "include":
            if any(c in _WILD and not q for c, q in zip(word.text, word.quoted, strict=True)):
                error(f"include names one list, not a pattern: '{word.text}' (quote it if that is its name)")
                continue
            items.append(Include(source, number, word.text, os.path.join(base, word.text), merged))
            continue
        absolute, parts, dir_only = _pattern(word)
        items.append(Entry(source, number, word.text, "/" if absolute else base, parts, dir_only, merged))
    return Parsed(tuple(items), tuple(errors))


# ---------------------------------------------------------------------------
# load: a list file and what it includes


def read_list(path: str) -> str:
    """A list file's text; bytes that are not UTF-8 kept as in file names
    (os.fsdecode), so any name can be given."""
    with open(path, "rb") as f:
        return os.fsdecode(f.read())


def load(path: str, text: str | None = None, read: Callable[[str], str] = read_list) -> PrestageList:
    """The list at *path* (``-``: standard input, whose *text* the caller
    passes, relative to the current directory) with every list it includes,
    read with *read*. An include is relative to the including list; an
    include cycle is an error at the include that closes it, naming every
    line of the cycle. Every error of every file is gathered."""
    out = PrestageList()
    source = STDIN_NAME if path == STDIN else path
    if text is None:
        try:
            text = read(path)
        except OSError as e:
            out.errors.append(Problem(source, 0, f"cannot read the list: {e.strerror or e}"))
            return out
    base = "" if path == STDIN else os.path.dirname(path)
    key = STDIN if path == STDIN else os.path.realpath(path)
    out.errors.extend(_load(text, source, base, (), [(key, None)], out.entries, read))
    return out


def _load(text: str, source: str, base: str, outer: tuple[Filter, ...],
          stack: list[tuple[str, Include | None]], entries: list[Entry],
          read: Callable[[str], str]) -> list[Problem]:
    """Appends the entries of one list (and of those it includes) to
    *entries*; returns its errors in line order, then those of the lists it
    includes, in include order."""
    parsed = parse(text, source, base)
    own = list(parsed.errors)
    nested: list[Problem] = []
    for item in parsed.items:
        if isinstance(item, Entry):
            entries.append(replace(item, filters=outer + item.filters) if outer else item)
            continue
        key = os.path.realpath(item.path)
        keys = [k for k, _ in stack]
        if key in keys:
            chain = [inc for _, inc in stack[keys.index(key) + 1:] if inc is not None] + [item]
            steps = ", ".join(f"{inc.source}:{inc.line} includes {inc.path}" for inc in chain)
            own.append(Problem(item.source, item.line, f"include cycle: {steps}"))
            continue
        try:
            included = read(item.path)
        except OSError as e:
            own.append(Problem(item.source, item.line, f"cannot include '{item.path}': {e.strerror or e}"))
            continue
        nested += _load(included, item.path, os.path.dirname(item.path), outer + item.filters,
                        [*stack, (key, item)], entries, read)
    return sorted(own, key=lambda p: p.line) + nested


# ---------------------------------------------------------------------------
# expand: entries against the file system


def _hidden_ok(pattern: str, name: str) -> bool:
    return not name.startswith(".") or pattern.startswith(".") or pattern.startswith("[.]")


class _Walker:
    """File-system access for one expansion: paths as the list gives them,
    opened relative to *cwd*; unreadable directories reported once."""

    def __init__(self, cwd: str | None, warn: Callable[[str], None]) -> None:
        self.cwd = cwd
        self.warn = warn
        self.reported: set[str] = set()

    def fs(self, path: str) -> str:
        if self.cwd is None:
            return path or "."
        return os.path.join(self.cwd, path) if path else self.cwd

    def listdir(self, path: str) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(self.fs(path)) as it:
                return sorted(it, key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as e:
            if path not in self.reported:
                self.reported.add(path)
                self.warn(f"cannot read the directory '{path or '.'}': {e.strerror or e}")
            return []

    def subdirs(self, path: str) -> Iterator[str]:
        """*path* and every directory below it (no link followed, no hidden name)."""
        yield path
        for e in self.listdir(path):
            if not e.name.startswith(".") and e.is_dir(follow_symlinks=False):
                yield from self.subdirs(os.path.join(path, e.name))

    def files_in(self, path: str, recursive: bool = False) -> Iterator[str]:
        """The regular files directly in *path* (or at any depth), no hidden
        name, no link."""
        for e in self.listdir(path):
            if e.name.startswith("."):
                continue
            full = os.path.join(path, e.name)
            if e.is_file(follow_symlinks=False):
                yield full
            elif recursive and e.is_dir(follow_symlinks=False):
                yield from self.files_in(full, True)


def _candidates(entry: Entry, w: _Walker, warn: Callable[[str], None],
                missing: list[str]) -> Iterator[str]:
    """The paths an entry names (regular files, and for a literal last name
    whatever is there: checked by the caller)."""
    dirs = [entry.prefix]
    parts = entry.parts
    for part in parts[:-1]:
        if part.globstar:
            dirs = [d for top in dirs for d in w.subdirs(top)]
        elif part.glob:
            dirs = [os.path.join(d, e.name) for d in dirs for e in w.listdir(d)
                    if _hidden_ok(part.name, e.name) and fnmatch.fnmatchcase(e.name, part.name)
                    and e.is_dir(follow_symlinks=False)]
        else:
            dirs = [os.path.join(d, part.name) for d in dirs]
    last = parts[-1] if parts else None
    for d in dirs:
        if last is None or not last.glob:
            yield from _named(os.path.join(d, last.name) if last else (d or "."), entry, w, warn, missing)
        elif last.globstar:
            yield from w.files_in(d, recursive=True)
        else:
            for e in w.listdir(d):
                if not (_hidden_ok(last.name, e.name) and fnmatch.fnmatchcase(e.name, last.name)):
                    continue
                full = os.path.join(d, e.name)
                if entry.dir_only:
                    if e.is_dir(follow_symlinks=False):
                        yield from w.files_in(full)
                elif e.is_file(follow_symlinks=False):
                    yield full


def _named(path: str, entry: Entry, w: _Walker, warn: Callable[[str], None],
           missing: list[str]) -> Iterator[str]:
    """A path named exactly: a file, or a directory's files; a symbolic
    link or another kind of file is a warning."""
    try:
        st = os.lstat(w.fs(path))
    except OSError as e:
        if entry.literal:
            missing.append(e.strerror or str(e))
        return
    if stat.S_ISLNK(st.st_mode):
        warn(f"'{path}' is a symbolic link: not followed (HSM requests do not follow links, like "
             "lfs); name the file it points to")
    elif stat.S_ISDIR(st.st_mode):
        yield from w.files_in(path)
    elif stat.S_ISREG(st.st_mode):
        if entry.dir_only:
            missing.append("Not a directory")
        else:
            yield path
    else:
        warn(f"'{path}' is not a regular file")


def _sort_key(path: str) -> tuple[str, ...]:
    return tuple(path.split("/"))


def expand(entries: Sequence[Entry], now: float, cwd: str | None = None) -> Expansion:
    """The regular files *entries* name, each once (the first entry naming
    it keeps it; a hard link is the same file), in the entries' order and
    sorted by path within each. *now* (seconds since the epoch) is the time
    relative ages count back from; *cwd* is the directory relative paths
    are read from (None: the current one; the paths returned stay as the
    list wrote them). An entry that names no file is a warning (``matches
    nothing``), as are links and unreadable directories."""
    result = Expansion()
    seen: set[tuple[int, int]] = set()
    for entry in entries:

        def warn(message: str, entry: Entry = entry) -> None:
            result.warnings.append(Problem(entry.source, entry.line, message, warning=True))

        w = _Walker(cwd, warn)
        warned = len(result.warnings)
        missing: list[str] = []
        found = passed = 0
        matches: list[tuple[tuple[str, ...], Match, tuple[int, int]]] = []
        for path in dict.fromkeys(_candidates(entry, w, warn, missing)):
            try:
                st = os.lstat(w.fs(path))
            except OSError:
                continue  # gone since it was listed
            if not stat.S_ISREG(st.st_mode):
                continue
            found += 1
            if not all(f.passes(st, now) for f in entry.filters):
                continue
            passed += 1
            match = Match(path[2:] if path.startswith("./") else path,  # the entry "." itself
                          st.st_size, st.st_mtime, entry.source, entry.line)
            matches.append((_sort_key(path), match, (st.st_dev, st.st_ino)))
        for _key, match, ident in sorted(matches, key=lambda m: m[0]):
            if ident not in seen:
                seen.add(ident)
                result.files.append(match)
        if not passed and len(result.warnings) == warned:  # nothing said about it yet
            if found:
                shown = " ".join(map(str, entry.filters))
                warn(f"matches nothing: {found} file(s) left out by {shown}")
            elif missing:
                warn(f"matches nothing ({missing[0]})")
            else:
                warn("matches nothing")
    return result

