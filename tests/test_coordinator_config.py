"""hsm-coordinator configuration and command line: good values load, bad
ones are clear errors naming the setting, never tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.config import ConfigError, load


def test_file_and_overrides(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("replica_id: c7\narchive_ids: [1, 2]\nagent_grace: 5\nlog_level: DEBUG\n")
    cfg, level = load(f, {"listen": "0.0.0.0:7700", "agent_grace": None})
    assert (cfg.replica_id, cfg.archive_ids, cfg.agent_grace, cfg.listen, level) == (
        "c7", (1, 2), 5.0, "0.0.0.0:7700", "debug")


def test_defaults_without_file() -> None:
    cfg, level = load(None)
    assert cfg.archive_ids == (1,) and cfg.listen == "127.0.0.1:7600" and level == "info"
    assert cfg.replica_id  # the host name


@pytest.mark.parametrize(
    "text, words",
    [
        ("bogus: 1\n", "unknown setting(s): bogus"),
        ("archive_ids: 3\n", "archive_ids: expected a list of integers"),
        ("archive_ids: [1]\ndefault_archive_id: 2\n", "default_archive_id 2 is not in archive_ids"),
        ("agent_grace: soon\n", "agent_grace: expected float"),
        ("max_attempts: 0\n", "max_attempts"),
        ("listen: 7600\n", "listen: expected str"),
        ("- a\n- b\n", "mapping"),
        ("a: [\n", "not valid YAML"),
        ("log_level: loud\n", "log_level"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, text: str, words: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load(f)
    assert words in str(exc.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(tmp_path / "nope.yaml")


def test_cli_reports_config_errors_with_exit_2(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("archive_ids: []\n")
    r = subprocess.run([sys.executable, "-m", "coordinator.cli", "run", "--config", str(f)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "configuration error: archive_ids" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_help_lists_commands() -> None:
    r = subprocess.run([sys.executable, "-m", "coordinator.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "local" in r.stdout and "run" in r.stdout and "exit codes" in r.stdout
