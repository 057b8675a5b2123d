"""The systemd units the roles render: ``systemd-analyze verify`` clean,
``systemd-analyze security`` exposure within bounds, deploy/systemd/ equal
to the templates rendered with the roles' defaults, and broken copies
caught."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.deploy import deploylib as dl
from tests.deploy.conftest import RenderedCluster

#: ``systemd-analyze security`` overall exposure (0 = locked down, 10 =
#: exposed); "OK" is below 5. The coordinator needs nothing but the network
#: and its state directory; agentd is root with copytool capabilities;
#: hsm-bridge is root with two of them and writes only its journal.
MAX_EXPOSURE = {"hsm-coordinator.service": 1.5, "agentd.service": 3.0, "hsm-bridge.service": 2.8}


def _units(cl: RenderedCluster) -> list[Path]:
    return [cl.coordinators[0].unit, cl.movers[0].unit, *(b.unit for b in cl.bridges)]


def test_rendered_units_pass_systemd_analyze_verify(rendered_cluster: RenderedCluster, tmp_path: Path) -> None:
    assert dl.systemd_verify(_units(rendered_cluster), home=tmp_path) == []


@pytest.mark.parametrize("unit", sorted(MAX_EXPOSURE))
def test_units_are_hardened(unit: str, rendered_cluster: RenderedCluster, tmp_path: Path) -> None:
    path = next(u for u in _units(rendered_cluster) if u.name == unit)
    exposure, report = dl.systemd_exposure(path, home=tmp_path)
    assert exposure <= MAX_EXPOSURE[unit], report


def test_static_units_are_the_role_templates_with_defaults(rendered_cluster: RenderedCluster) -> None:
    rendered = sorted(p.name for p in rendered_cluster.static_units.iterdir())
    assert rendered == sorted(p.name for p in dl.STATIC_UNITS.glob("*.service")) == sorted(MAX_EXPOSURE)
    for name in rendered:
        assert (dl.STATIC_UNITS / name).read_text() == (rendered_cluster.static_units / name).read_text(), (
            f"deploy/systemd/{name} differs from its template: python -m tests.deploy.deploylib --write-static-units")


@pytest.mark.parametrize("which, old, new, needle", [
    ("coordinator", "Type=notify", "Type=notfy", "Failed to parse service type"),
    ("coordinator", "Restart=on-failure", "Restrt=on-failure", "Unknown key"),
    ("coordinator", "ExecStart=", "ExecStart=/nonexistent", "is not executable"),
    ("bridge", "AF_UNIX AF_NETLINK", "AF_UNIX AF_NETLNK", "Failed to parse address family"),
    ("bridge", "hsm.active_requests'\"", "hsm.active_requests'", "Unbalanced quoting"),
    ("bridge", "StateDirectory=hsm-bridge", "StateDirectory=/var/lib/hsm-bridge", "path is absolute"),
    ("bridge", "RestartPreventExitStatus=2", "RestartPreventExitStatus=two", "Failed to parse value"),
])
def test_broken_unit_fails_verify(which: str, old: str, new: str, needle: str, rendered_cluster: RenderedCluster,
                                  tmp_path: Path) -> None:
    source = (rendered_cluster.coordinators if which == "coordinator" else rendered_cluster.bridges)[0].unit
    unit = tmp_path / source.name
    text = source.read_text()
    assert old in text
    unit.write_text(text.replace(old, new, 1))
    problems = dl.systemd_verify([unit], home=tmp_path)
    assert any(needle in p for p in problems), problems


def test_unhardened_unit_fails_the_exposure_bound(rendered_cluster: RenderedCluster, tmp_path: Path) -> None:
    src = rendered_cluster.coordinators[0].unit
    unit = tmp_path / src.name
    shutil.copyfile(src, unit)
    text = unit.read_text()
    hardening = text[text.index("# Hardening"):text.index("[Install]")]
    unit.write_text(text.replace(hardening, ""))
    exposure, report = dl.systemd_exposure(unit, home=tmp_path)
    assert exposure > MAX_EXPOSURE[unit.name], report
