"""agentd configuration: the YAML file, HSM_COORDINATORS, command-line flags,
and the message an admin gets for every mistake."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import agentd.config as config_mod
from agentd import cli
from agentd.config import (
    AgentConfig,
    BackendConfig,
    CommandMoverConfig,
    ConfigError,
    Override,
    PosixMoverConfig,
    SlotsConfig,
    load_config,
    parse_size,
)
from hsm.simfs import SimFS

MINIMAL = """\
backend:
  root: /srv/simfs
mover:
  archive_root: /srv/archive
"""


def write(tmp_path: Path, text: str, name: str = "agentd.yaml") -> str:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(p)


def docstring_example(title: str) -> str:
    """An example block of agentd.config's docstring (the README reference)."""
    doc = config_mod.__doc__ or ""
    start = doc.index(title)
    block = doc[start:].split("::\n", 1)[1]
    lines = []
    for line in block.splitlines()[1:]:
        if line and not line.startswith("    "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines))


# ---------------------------------------------------------------- loading


def test_minimal_file_gets_documented_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL), environ={})
    assert cfg.agent_id and "." not in cfg.agent_id  # short host name
    assert cfg.coordinators == ("127.0.0.1:7600",)
    assert cfg.archive_ids == ()
    assert cfg.slots == SlotsConfig(archive=4, restore=4, remove=2)
    assert cfg.backend == BackendConfig(type="simfs", root="/srv/simfs")
    assert cfg.mover == PosixMoverConfig(archive_root="/srv/archive")
    assert cfg.mover.chunk_size == 1 << 20
    assert cfg.mover.bandwidth_limit == 0
    assert cfg.mover.checksum == "sha256"
    assert (cfg.heartbeat_interval, cfg.progress_interval, cfg.drain_timeout) == (5.0, 2.0, 30.0)
    assert (cfg.reconnect_min_delay, cfg.reconnect_max_delay) == (0.2, 5.0)
    assert cfg.log_level == "INFO"


def test_docstring_examples_load(tmp_path: Path) -> None:
    text = docstring_example("Example (``agentd.yaml``)")
    cfg = load_config(write(tmp_path, text), environ={})
    assert cfg.agent_id == "mover01"
    assert cfg.coordinators == ("hsm-0.example.net:7600", "hsm-1.example.net:7600", "hsm-2.example.net:7600")
    assert cfg.archive_ids == (1,)
    assert cfg.slots == SlotsConfig(archive=8, restore=8, remove=2)
    assert isinstance(cfg.mover, PosixMoverConfig)
    assert cfg.mover.chunk_size == 4 << 20
    assert cfg.mover.bandwidth_limit == 200 << 20

    # the command-mover variant replaces the mover section of the same file
    cmd = docstring_example("The same agent with a site script instead")
    full = text.split("mover:")[0] + cmd + "\nprogress_interval: 2\n"
    cfg = load_config(write(tmp_path, full, "cmd.yaml"), environ={})
    assert cfg.mover == CommandMoverConfig(
        archive_cmd="/opt/hsm/put {path} {fid} {archive_id}",
        restore_cmd="/opt/hsm/get {fid} {dest} {archive_id}",
        remove_cmd="/opt/hsm/rm {fid} {archive_id}",
        timeout=3600.0,
    )


def test_sizes_and_coordinators_forms(tmp_path: Path) -> None:
    assert [parse_size(v) for v in (4096, "512K", "4MiB", "1G", "10MB", "7b", " 3 k ")] == [
        4096, 512 << 10, 4 << 20, 1 << 30, 10 << 20, 7, 3 << 10,
    ]
    path = write(
        tmp_path,
        MINIMAL + "coordinators: 'a:1, b:2,[::1]:7600,a:1'\narchive_ids: 3\nlog_level: debug\n",
    )
    cfg = load_config(path, environ={})
    assert cfg.coordinators == ("a:1", "b:2", "[::1]:7600")  # duplicates dropped
    assert cfg.archive_ids == (3,)
    assert cfg.log_level == "DEBUG"


def test_environment_overrides_file_and_flag_overrides_both(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "coordinators: [file:1]\n")
    assert load_config(path, environ={}).coordinators == ("file:1",)
    env = {"HSM_COORDINATORS": "env-a:7600,env-b:7600"}
    assert load_config(path, environ=env).coordinators == ("env-a:7600", "env-b:7600")
    flags = [Override("coordinators", "flag:9", "--coordinators")]
    assert load_config(path, flags, environ=env).coordinators == ("flag:9",)


def test_flags_override_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HSM_COORDINATORS", raising=False)
    path = write(
        tmp_path,
        """\
        agent_id: from-file
        coordinators: [file:7600]
        archive_ids: [1, 2]
        slots: {archive: 1, restore: 1, remove: 1}
        backend: {root: /file/fs}
        mover: {archive_root: /file/archive, chunk_size: 64K, bandwidth_limit: 1M}
        log_level: WARNING
        """,
    )
    cfg = cli.config_from_args(
        [
            "--config", path,
            "--coordinators", "c1:1,c2:2",
            "--agent-id", "flagged",
            "--fs-root", "/flag/fs",
            "--archive-root", "/flag/archive",
            "--archive-id", "5", "--archive-id", "6",
            "--slots", "archive=7,remove=0",
            "--bandwidth-limit", "2M",
            "--log-level", "error",
        ]
    )
    assert cfg.agent_id == "flagged"
    assert cfg.coordinators == ("c1:1", "c2:2")
    assert cfg.archive_ids == (5, 6)
    assert cfg.slots == SlotsConfig(archive=7, restore=1, remove=0)  # restore kept from the file
    assert cfg.backend == BackendConfig(root="/flag/fs")
    assert isinstance(cfg.mover, PosixMoverConfig)
    assert cfg.mover.archive_root == "/flag/archive"
    assert cfg.mover.chunk_size == 64 << 10  # kept from the file
    assert cfg.mover.bandwidth_limit == 2 << 20
    assert cfg.log_level == "ERROR"


def test_flags_alone_make_a_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HSM_COORDINATORS", "env:7600")
    cfg = cli.config_from_args(
        [
            "--fs-root", "/fs", "--mover", "command",
            "--archive-cmd", "put {path} {fid}", "--restore-cmd", "get {fid} {dest}",
            "--slots", "remove=0",
        ]
    )
    assert cfg.coordinators == ("env:7600",)
    assert cfg.mover == CommandMoverConfig(archive_cmd="put {path} {fid}", restore_cmd="get {fid} {dest}")


def test_tags_from_the_file_and_the_flag(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "tags: [tape-a, tape-a, lib2]\n")
    assert cli.config_from_args(["--config", path]).tags == ("tape-a", "lib2")
    assert cli.config_from_args(["--config", path, "--tags", "x, y"]).tags == ("x", "y")
    assert cli.config_from_args(["--config", write(tmp_path, MINIMAL, "plain.yaml")]).tags == ()


def test_mover_flag_switches_away_from_the_files_mover(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "slots: {remove: 0}\n")
    cfg = cli.config_from_args(
        ["--config", path, "--mover", "command", "--archive-cmd", "a {path}", "--restore-cmd", "r {dest}"]
    )
    assert isinstance(cfg, AgentConfig)
    assert isinstance(cfg.mover, CommandMoverConfig)


# ---------------------------------------------------------------- errors

BAD_FILES = [
    # (file text, message expected (regex))
    ("agent_idd: x\n" + MINIMAL, r"agent_idd: unknown key; did you mean 'agent_id'\?"),
    (MINIMAL + "  chunksize: 1M\n", r"mover\.chunksize: unknown key; did you mean 'mover\.chunk_size'\?"),
    (MINIMAL + "  archive_cmd: x\n", r"mover\.archive_cmd: is a key of the command mover, but mover\.type is 'posix' \(set mover\.type: command, flag --mover command\)"),
    (MINIMAL + "slots: {archive: four}\n", r"slots\.archive: must be an integer, got 'four'"),
    (MINIMAL + "slots: {archive: -1}\n", r"slots\.archive: must be between 0 and 100000, got -1"),
    (MINIMAL + "slots: {archive: 0, restore: 0, remove: 0}\n", r"slots: every slot count is 0"),
    (MINIMAL + "slots: {tape: 1}\n", r"slots\.tape: unknown key"),
    (MINIMAL + "slots: 4\n", r"slots: must be a mapping"),
    ("mover: {archive_root: /a}\n", r"backend: required"),
    ("backend: {}\nmover: {archive_root: /a}\n", r"backend\.root: required"),
    ("backend: {type: gpfs, root: /x}\nmover: {archive_root: /a}\n",
     r"backend\.type: unknown backend 'gpfs' \(known: simfs, lustre\)"),
    ("backend: {type: lustre, root: /x}\nmover: {archive_root: /a}\n", r"backend\.root: is a key of the simfs backend"),
    ("backend: {root: /x}\n", r"mover: required"),
    ("backend: {root: /x}\nmover: {type: posix}\n", r"mover\.archive_root: required for the posix mover"),
    ("backend: {root: /x}\nmover: {type: tape}\n", r"mover\.type: unknown mover 'tape' \(known: posix, command, null\)"),
    ("backend: {root: /x}\nmover: {archive_root: 17}\n", r"mover\.archive_root: must be a string, got 17"),
    ("backend: {root: /x}\nmover: {archive_root: ''}\n", r"mover\.archive_root: must not be empty"),
    (MINIMAL + "  chunk_size: lots\n", r"mover\.chunk_size: must be a size in bytes such as"),
    (MINIMAL + "  chunk_size: 1\n", r"mover\.chunk_size: must be between 4K and 1G"),
    (MINIMAL + "  bandwidth_limit: -5\n", r"mover\.bandwidth_limit: must be a size >= 0"),
    (MINIMAL + "  checksum: crc99\n", r"mover\.checksum: unknown checksum algorithm 'crc99'"),
    (MINIMAL + "coordinators: [localhost]\n", r"coordinators\[0\]: 'localhost' is not host:port"),
    (MINIMAL + "coordinators: ['a:1', 'b:99999']\n", r"coordinators\[1\]: 'b:99999': port 99999"),
    (MINIMAL + "coordinators: []\n", r"coordinators: needs at least one"),
    (MINIMAL + "coordinators: {a: 1}\n", r"coordinators: must be a list"),
    (MINIMAL + "archive_ids: [1, 0]\n", r"archive_ids\[1\]: archive id 0 is not an archive; leave the list empty"),
    (MINIMAL + "archive_ids: [1, x]\n", r"archive_ids\[1\]: must be an integer"),
    (MINIMAL + "archive_ids: [4294967296]\n", r"archive_ids\[0\]: must be between 0 and 4294967295"),
    (MINIMAL + "log_level: LOUD\n", r"log_level: 'LOUD' is not one of DEBUG, INFO"),
    (MINIMAL + "tags: [ok, 'two words']\n", r"tags\[1\]: 'two words' is not a tag \(1 to 64 printable ASCII"),
    (MINIMAL + "tags: ['a=b']\n", r"tags\[0\]: 'a=b' is not a tag"),
    (MINIMAL + "tags: {a: 1}\n", r"tags: must be a list of tags"),
    (MINIMAL + "drain_timeout: -1\n", r"drain_timeout: must be a number of seconds >= 0"),
    (MINIMAL + "progress_interval: 0\n", r"progress_interval: must be a number of seconds > 0"),
    (MINIMAL + "heartbeat_interval: true\n", r"heartbeat_interval: must be a number of seconds"),
    (MINIMAL + "reconnect_min_delay: 9\n", r"reconnect_min_delay: 9 s is more than reconnect_max_delay"),
    (MINIMAL + "agent_id: 'two words'\n", r"agent_id: 'two words' may only use"),
    (
        "backend: {root: /x}\nmover: {type: command, archive_cmd: 'a {path}'}\n",
        r"mover\.restore_cmd: required by the command mover while slots\.restore is 4 .*--restore-cmd.*restore=0",
    ),
    (
        "backend: {root: /x}\nslots: {restore: 0, remove: 0}\nmover: {type: command, archive_cmd: 'a {nope}'}\n",
        r"mover\.archive_cmd: .*unknown placeholder \{nope\}",
    ),
    (
        "backend: {root: /x}\nslots: {restore: 0, remove: 0}\nmover: {type: command, archive_cmd: 'a {path}', timeout: soon}\n",
        r"mover\.timeout: must be a number of seconds",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD_FILES)
def test_bad_file_names_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    msg = str(info.value)
    assert msg.startswith(f"config file {path}: "), msg
    assert re.search(expected, msg), msg


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("backend: {root: /x\n", r"not valid YAML at line 2, column 1"),
        ("backend:\n  root: /a\n  root: /b\n", r"not valid YAML at line 3, column 3: key 'root' appears twice"),
        ("- a\n- b\n", r"the top level must be a mapping of keys"),
        ("agent_id: x\n\tslots: 1\n", r"not valid YAML"),
    ],
)
def test_unreadable_yaml(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=expected):
        load_config(path, environ={})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file .*nope\.yaml: No such file or directory"):
        load_config(str(tmp_path / "nope.yaml"), environ={})


def test_bad_environment_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^environment HSM_COORDINATORS: coordinators\[1\]: 'oops' is not host:port"):
        load_config(write(tmp_path, MINIMAL), environ={"HSM_COORDINATORS": "a:1,oops"})


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--slots", "archive=x"], r"--slots: archive='x': N must be a whole number"),
        (["--slots", "tape=1"], r"--slots: expected KIND=N.*got 'tape=1'"),
        (["--slots", "archive=2000000"], r"--slots: slots\.archive: must be between 0 and 100000"),
        (["--archive-id", "one"], r"--archive-id: 'one' is not an archive id"),
        (["--archive-id", "0"], r"--archive-id: archive_ids\[0\]: archive id 0 is not an archive"),
        (["--coordinators", "nohost"], r"--coordinators: coordinators\[0\]: 'nohost' is not host:port"),
        (["--bandwidth-limit", "fast"], r"--bandwidth-limit: mover\.bandwidth_limit: must be a size"),
        (["--log-level", "chatty"], r"--log-level: log_level: 'chatty' is not one of"),
        (["--agent-id", ""], r"--agent-id: agent_id: must not be empty"),
        (["--archive-cmd", "x"], r"--archive-cmd: mover\.archive_cmd: is a key of the command mover, but mover\.type is 'posix'"),
        (["--mover", "command", "--bandwidth-limit", "1M", "--archive-cmd", "a {path}"], r"--bandwidth-limit: mover\.bandwidth_limit: is a key of the posix mover"),
        (["--mover", "command", "--archive-cmd", "put {path}"], r"mover\.restore_cmd: required by the command mover"),
    ],
)
def test_bad_flags_name_the_flag(tmp_path: Path, argv: list[str], expected: str) -> None:
    base = ["--config", write(tmp_path, MINIMAL)]
    with pytest.raises(ConfigError, match=expected):
        cli.config_from_args(base + argv)


def test_bad_input_is_refused_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, MINIMAL + "slots: {archive: many}\n")
    assert cli.main(["--config", path]) == 2
    err = capsys.readouterr().err
    assert err == f"agentd: error: config file {path}: slots.archive: must be an integer, got 'many'\n"


def _run_agentd(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HSM_COORDINATORS="127.0.0.1:1")
    return subprocess.run(
        [sys.executable, "-m", "agentd.cli", *args],
        capture_output=True, text=True, timeout=30, env=env, cwd=tmp_path,
    )


def test_cli_process_reports_bad_directories_clearly(tmp_path: Path) -> None:
    # the file system root is not a simfs tree
    (tmp_path / "plain").mkdir()
    (tmp_path / "archive").mkdir()
    res = _run_agentd(["--fs-root", str(tmp_path / "plain"), "--archive-root", str(tmp_path / "archive")], tmp_path)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert re.search(r"agentd: error: backend\.root: cannot open simfs tree .*plain.*is not a simfs tree", res.stderr), res.stderr

    # the archive root does not exist
    SimFS.create(tmp_path / "fs")
    res = _run_agentd(["--fs-root", str(tmp_path / "fs"), "--archive-root", str(tmp_path / "nowhere")], tmp_path)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert f"agentd: error: mover.archive_root: {tmp_path / 'nowhere'} is not an existing directory" in res.stderr

    # nothing configured at all
    res = _run_agentd([], tmp_path)
    assert res.returncode == 2
    assert res.stderr.startswith("agentd: error: backend: required: set backend.root (flag --fs-root)")


def test_help_describes_movers_and_placeholders() -> None:
    text = cli.build_parser().format_help()
    for needle in ("posix", "command", "{fid}", "{path}", "{dest}", "{archive_id}", "--slots", "HSM_COORDINATORS", "SIGTERM"):
        assert needle in text


def test_an_agent_with_a_certificate_works_under_the_id_it_names(tmp_path: Path) -> None:
    from coordinator import certs

    certs.init_ca(tmp_path / "ca")
    certs.issue(tmp_path / "ca", "mover1", "agent")
    d = tmp_path / "ca"
    env = {"HSM_TLS_CA": str(d / "ca.pem"), "HSM_TLS_CERT": str(d / "mover1.pem"), "HSM_TLS_KEY": str(d / "mover1.key")}
    path = write(tmp_path, MINIMAL + "agent_id: mover1\n")
    cfg = load_config(path, environ=env)
    assert cfg.tls is not None and cfg.tls.cert == d / "mover1.pem"
    path = write(tmp_path, MINIMAL + "agent_id: mover2\n", "other.yaml")
    with pytest.raises(ConfigError, match="the certificate names 'mover1' but agent_id is 'mover2'"):
        load_config(path, environ=env)
    with pytest.raises(ConfigError, match="missing: key"):
        load_config(path, environ={k: v for k, v in env.items() if k != "HSM_TLS_KEY"})
