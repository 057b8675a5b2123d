"""End to end with real processes: ``hsm-coordinator local`` (coordinator
plus real agentd processes on a simfs tree) driven by the real ``hsmctl``,
and the demo itself."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentd.movers.posix import object_path
from hsm.hsmflags import HS
from hsm.simfs import SimFS
from hsmfs.cli import fuse_problem
from tests.readme import assert_sample, block_after, shape

pytestmark = pytest.mark.slow  # real processes, seconds per test


def _pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        alive.append(pid)
    return alive


def _children(pid: int) -> list[int]:
    """Direct children of *pid*, from /proc (the local system's processes)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    work = tmp_path / "hsm"
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordinator.cli", "local", "--dir", str(work), "--agents", "2",
         "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert "coordinators at" in first, first + (proc.stderr.read() if proc.poll() is not None else "")
    address = first.split("coordinators at ", 1)[1].split(" ", 1)[0].rstrip(",")
    banner = [first]
    while not banner[-1].startswith("  stop:"):
        banner.append(proc.stdout.readline())
    # the README shows a start with --dir /tmp/hsm on the default ports
    ports = address.replace(",", " ").split()
    assert_sample("It prints where everything is:", "".join(banner).replace(str(work), "/tmp/hsm"))
    assert len(ports) == 3
    # local runs mutual TLS: hsmctl and the clients here use the admin's
    # certificate it made, through the variables its banner prints
    tls = work / "cluster" / "tls"
    for var, name in (("HSM_TLS_CA", "ca.pem"), ("HSM_TLS_CERT", "admin.pem"), ("HSM_TLS_KEY", "admin.key")):
        monkeypatch.setenv(var, str(tls / name))
    yield work, address, proc
    if proc.poll() is None:  # the test failed half-way: stop it all, children included
        family = _children(proc.pid)
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pid in _pids_alive(family):
            os.kill(pid, signal.SIGKILL)


def hsmctl(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HSM_COORDINATORS=address)
    return subprocess.run([sys.executable, "-m", "hsmctl.cli", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_local_archive_release_restore_remove_and_clean_stop(local) -> None:  # type: ignore[no-untyped-def]
    work, address, proc = local
    fs = SimFS.open(work / "fs")
    f = fs.root / "results.bin"
    payload = os.urandom(3 << 20)
    f.write_bytes(payload)

    r = hsmctl(address, "archive", "--wait", str(f))
    assert r.returncode == 0, r.stderr
    fid = fs.fid_of(f)
    obj = object_path(work / "archive", fid)
    assert obj.read_bytes() == payload, "object at the lhsmtool_posix v1 path of the FID"
    assert hsmctl(address, "state", str(f)).stdout == f"{f}: (0x00000009) exists archived, archive_id:1\n"

    assert hsmctl(address, "release", str(f)).returncode == 0
    assert f.stat().st_size == len(payload) and f.stat().st_blocks == 0
    assert hsmctl(address, "restore", "--wait", str(f)).returncode == 0
    assert f.read_bytes() == payload and not fs.hsm_state(f).flags & HS.RELEASED

    r = hsmctl(address, "actions", "--all")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert any(" ARCHIVE " in ln and "succeeded" in ln for ln in lines)
    assert any(" RESTORE " in ln and "succeeded" in ln for ln in lines)

    assert hsmctl(address, "remove", "--wait", str(f)).returncode == 0
    assert not obj.exists()
    # like the MDT, remove clears EXISTS and ARCHIVED but keeps the archive id
    assert hsmctl(address, "state", str(f)).stdout == f"{f}: (0x00000000), archive_id:1\n"

    children = _children(proc.pid)
    agents = [p for p in children if "agentd.cli" in _cmdline(p)]
    assert len(agents) == 2, [_cmdline(p) for p in children]
    agents += [p for p in children if "coordinator.cli run" in _cmdline(p)]
    assert len(agents) == 5, "2 agentd and 3 replicas"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    deadline = time.monotonic() + 30
    while _pids_alive(agents) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pids_alive(agents), "agentd or replica processes left behind"
    assert hsmctl(address, "status").returncode == 3  # coordinator gone: exit 3


def test_three_clients_restoring_the_same_files_make_one_restore_each(local) -> None:  # type: ignore[no-untyped-def]
    """Three users run ``hsmctl restore --wait`` on the same 20 released
    files at once: 20 restore actions, each run once. Then a request that
    read the files' state before their restores ended and arrives after (a
    late duplicate, made certain here) is answered by those actions."""
    from hsm.client import CoordinatorClient, outcome_name, state_name
    from hsm.tls import TlsFiles
    from hsmctl.cli import _request_state

    work, address, _proc = local
    fs = SimFS.open(work / "fs")
    files = []
    for i in range(20):
        f = fs.root / f"shared{i:02d}"
        f.write_bytes(os.urandom(1000 + i))
        files.append(f)
    assert hsmctl(address, "archive", "--wait", *map(str, files)).returncode == 0
    assert hsmctl(address, "release", *map(str, files)).returncode == 0
    env = dict(os.environ, HSM_COORDINATORS=address)
    users = [subprocess.Popen([sys.executable, "-m", "hsmctl.cli", "restore", "--wait", *map(str, files)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    for u in users:
        _out, err = u.communicate(timeout=120)
        assert u.returncode == 0, err
    with CoordinatorClient(address, tls=TlsFiles.from_args(None, None, None)) as client:
        restores = [a for a in client.list_actions(include_terminal=True) if a.kind == 21]
        assert len(restores) == 20, f"{len(restores)} restore actions for 20 files"
        # each ran once: an assignment an agent handed back unstarted (it
        # arrived beyond the credits the agent had meanwhile moved to another
        # replica) costs an attempt number, not a run
        logs = "".join(p.read_text(errors="replace") for p in (work / "logs").glob("agent*.log"))
        runs = {a.action_id: len(re.findall(rf"action {a.action_id}/\d+ RESTORE \S+ started", logs))
                for a in restores}
        odd = [(a.action_id, state_name(a.state), a.attempt, a.agent, a.error, runs[a.action_id])
               for a in restores if state_name(a.state) != "SUCCEEDED" or runs[a.action_id] != 1]
        assert not odd, f"(action, state, attempt, agent, error, runs): {odd}"

        # the late duplicate: the state read before a restore, sent after it
        assert hsmctl(address, "release", *map(str, files[:5])).returncode == 0
        seen = [_request_state(fs, str(f)) for f in files[:5]]
        assert hsmctl(address, "restore", "--wait", *map(str, files[:5])).returncode == 0
        late = client.submit([client.submit_item(fs.fsname, fs.fid_of(f), "restore", hsm=state)
                              for f, state in zip(files[:5], seen, strict=True)])
        assert [outcome_name(r.outcome) for r in late] == ["JOINED"] * 5
        after = [a for a in client.list_actions(include_terminal=True) if a.kind == 21]
        assert len(after) == 25, "5 more restores for the second release, none for the late duplicates"
        assert {r.action_id for r in late} <= {a.action_id for a in after if state_name(a.state) == "SUCCEEDED"}
    for f in files:
        assert not fs.hsm_state(f).flags & HS.RELEASED


def test_demo_passes() -> None:
    r = subprocess.run([sys.executable, "-m", "coordinator.demo"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    if fuse_problem() is not None:
        # the README shows a run that could mount: compare the rest
        sample = block_after("### What `make demo` prints")
        mounted = re.search(r"== hsm-mount: .*?unmounted \d+ mounts\n", sample, re.S)
        assert mounted is not None
        out, n = re.subn(r"== hsm-mount skipped: .*\n", lambda _m: mounted.group(0), out)
        assert n == 1, r.stdout
    else:
        assert "restore actions: 60 for 60 files, asked for by 3 initiators" in out
        assert "readers with the right bytes: 9 of 9" in out
    assert_sample("### What `make demo` prints", out)
    # one restore per file: the requesters send the ctime token, so even a
    # duplicate arriving after its file's restore ended joins that restore
    assert "answers: created 300, joined 600, not needed 0, rejected 0" in r.stdout, r.stdout
    assert "restore actions: 300; files whose data was copied back: 300; copied more than once: 0" in r.stdout
    assert "every byte matches" in r.stdout and "demo passed" in r.stdout


def test_the_readme_walkthrough_prints_what_the_readme_shows(local) -> None:  # type: ignore[no-untyped-def]
    """Runs the README's "Try it by hand" commands against a local system
    and compares each command's first lines with the ``#   `` sample lines
    under it (numbers, ids and the temporary directory ignored)."""
    work, address, proc = local
    block = block_after("In another shell:")
    steps: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("#   "):
            steps[-1][1].append(line[4:])
        elif line.strip() and not line.startswith(". "):
            steps.append((line.split("  #", 1)[0].strip(), []))
    assert any(expected for _cmd, expected in steps), "the walkthrough shows outputs"
    licenses = Path("/usr/share/common-licenses")
    if not licenses.is_dir():
        pytest.skip("no /usr/share/common-licenses to copy on this host")
    bindir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
    env.pop("HSM_CLUSTER", None)
    script = []
    for n, (cmd, _expected) in enumerate(steps):
        cmd = cmd.replace("/tmp/hsm", str(work))
        if cmd.startswith("export HSM_COORDINATORS="):
            cmd = f"export HSM_COORDINATORS={address}"  # the README's cluster id is another cluster's
        script.append(f"echo '@@step {n}'; {cmd} 2>&1")
    r = subprocess.run(["bash", "-e", "-c", "\n".join(script)], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    outputs = r.stdout.split("@@step ")[1:]
    assert len(outputs) == len(steps)
    for (cmd, expected), out in zip(steps, outputs, strict=True):
        got = out.split("\n", 1)[1].replace(str(work), "/tmp/hsm").splitlines()[:len(expected)]
        assert shape("\n".join(got)) == shape("\n".join(expected)), (
            f"README sample of `{cmd}`:\n" + "\n".join(expected) + "\nactual:\n" + "\n".join(got))
