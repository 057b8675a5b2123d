"""``make demo``: the whole path from ``hsmctl archive`` to a mover and back.

Starts ``hsm-coordinator local`` (3 coordinator replicas x 8 shards and two
agentd with the posix mover on a fresh simfs tree), writes a few hundred files of mixed
sizes, archives them all with ``hsmctl archive --wait``, releases them with
``hsmctl release``, then restores every file through three concurrent
requesters (as three OSS nodes would) and shows that each file's data was
restored once, verifies every byte, prints ``hsmctl status`` and stops.
Exit status 0 when everything checked out, 1 otherwise (the work directory
is then kept for inspection).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from hsm.client import CoordinatorClient, submit_item
from hsm.hsmflags import HS
from hsm.simfs import SimFS
from hsm.tls import ENV_CA, ENV_CERT, ENV_KEY, TlsFiles
from hsm.v1 import coordinator_pb2 as C
from hsm.v1 import types_pb2 as T

FILES = 300
REQUESTERS = 3
BATCH = 50
#: hsm-mount part: mounts (one initiator each), readers per mount, files read
MOUNTS = 3
READERS = 3
MOUNT_FILES = 60


class DemoFailed(Exception):
    pass


def say(msg: str) -> None:
    print(msg, flush=True)


def make_files(root: Path, n: int, seed: int = 20261122) -> dict[Path, str]:
    """n files in a few directories, sizes from empty to a few MiB."""
    rng = random.Random(seed)
    digests: dict[Path, str] = {}
    for i in range(n):
        r = rng.random()
        if r < 0.05:
            size = 0
        elif r < 0.45:
            size = rng.randint(1, 16 << 10)
        elif r < 0.85:
            size = rng.randint(16 << 10, 512 << 10)
        elif r < 0.97:
            size = rng.randint(512 << 10, 2 << 20)
        else:
            size = rng.randint(2 << 20, 6 << 20)
        d = root / f"project{i % 5}" / f"run{i % 7:02d}"
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"file{i:04d}.dat"
        data = rng.randbytes(size)
        path.write_bytes(data)
        digests[path] = hashlib.sha256(data).hexdigest()
    return digests


#: the admin's certificate that hsm-coordinator local made (mutual TLS), set by start_local
TLS: TlsFiles | None = None


def hsmctl(address: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HSM_COORDINATORS=address)
    if TLS is not None:
        env.update({ENV_CA: str(TLS.ca), ENV_CERT: str(TLS.cert), ENV_KEY: str(TLS.key)})
    r = subprocess.run([sys.executable, "-m", "hsmctl.cli", *args], env=env, capture_output=True,
                       text=True, timeout=300)
    if check and r.returncode != 0:
        raise DemoFailed(f"hsmctl {args[0]} exited {r.returncode}: {r.stderr.strip() or r.stdout.strip()}")
    return r


def start_local(work: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordinator.cli", "local", "--dir", str(work), "--agents", "2", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if "coordinators at " in line:
            address = line.split("coordinators at ", 1)[1].split(" ", 1)[0].rstrip(",")
            global TLS
            tls = work / "cluster" / "tls"
            TLS = TlsFiles(tls / "ca.pem", tls / "admin.pem", tls / "admin.key") if tls.is_dir() else None
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
            return proc, address
    proc.kill()
    raise DemoFailed("hsm-coordinator local did not start:\n" + "".join(seen))


def stop_local(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def concurrent_restores(address: str, fs: SimFS, paths: list[Path]) -> list[list[C.SubmitResult]]:
    """Each requester asks for every file, batch by batch, all at once."""
    barrier = threading.Barrier(REQUESTERS)
    results: list[list[C.SubmitResult]] = [[] for _ in range(REQUESTERS)]
    errors: list[BaseException] = []
    fids = [fs.fid_of(p) for p in paths]

    def requester(n: int) -> None:
        try:
            with CoordinatorClient(address, initiator=f"oss{n + 1}", tls=TLS) as client:
                for start in range(0, len(paths), BATCH):
                    items = []
                    for j in range(start, min(start + BATCH, len(paths))):
                        # what every requester sends (hsmctl, hsm-mount):
                        # flags, data version and the ctime of one state,
                        # so a duplicate that arrives after the restore
                        # ended joins it instead of queuing another
                        version, attrs, st = fs.request_state(paths[j])
                        items.append(submit_item(
                            fs.fsname, fids[j], "restore", 0, initiator=f"oss{n + 1}",
                            hsm=(attrs.flags, attrs.archive_id, version, st.st_ctime_ns),
                        ))
                    barrier.wait(30)
                    results[n].extend(client.submit(items))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=requester, args=(n,)) for n in range(REQUESTERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise DemoFailed(f"a requester failed: {errors[0]!r}")
    return results


def mounted_reads(work: Path, address: str, fs: SimFS, paths: list[Path]) -> None:
    """Implicit restore: the tree mounted MOUNTS times with hsm-mount (one
    simulated OST, one initiator, each), MOUNT_FILES files released again,
    and READERS ``cat`` processes per mount reading all of them at once, each
    in its own order: one restore per file, and every reader gets the
    right bytes. Skipped, saying why, where FUSE cannot be used."""
    from hsmfs.cli import fuse_problem, unmount

    problem = fuse_problem()
    if problem:
        say(f"== hsm-mount skipped: {problem}; the demo goes on without it")
        return
    # not the empty ones: reading an empty file reads nothing (the kernel
    # knows its size), so nothing asks for it back
    chosen = [p for p in paths if p.stat().st_size][:MOUNT_FILES]
    hsmctl(address, "release", *map(str, chosen))
    with CoordinatorClient(address, tls=TLS) as client:
        before = {a.action_id for a in client.list_actions(kinds=[T.RESTORE], include_terminal=True)}
    env = dict(os.environ, HSM_COORDINATORS=address)
    if TLS is not None:
        env.update({ENV_CA: str(TLS.ca), ENV_CERT: str(TLS.cert), ENV_KEY: str(TLS.key)})
    mounts: list[tuple[Path, subprocess.Popen[bytes]]] = []
    try:
        for k in range(MOUNTS):
            mnt = work / f"mnt-ost{k}"
            mnt.mkdir()
            proc = subprocess.Popen([sys.executable, "-m", "hsmfs.cli", str(fs.root), str(mnt), "--initiator",
                                     f"ost{k}"], env=env, stdout=subprocess.DEVNULL,
                                    stderr=(work / "logs" / f"hsm-mount-ost{k}.log").open("wb"))
            mounts.append((mnt, proc))
        deadline = time.monotonic() + 30
        for mnt, proc in mounts:
            while not os.path.ismount(mnt):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise DemoFailed(f"hsm-mount did not mount {mnt} (see {work / 'logs'})")
                time.sleep(0.05)
        say(f"== hsm-mount: the tree mounted {MOUNTS} times (initiators "
            + ", ".join(f"ost{k}" for k in range(MOUNTS)) + f"); {len(chosen)} files released again")
        t = time.monotonic()
        readers = []
        for r in range(MOUNTS * READERS):
            mnt = mounts[r % MOUNTS][0]
            order = chosen[:]
            random.Random(r).shuffle(order)
            rel = [mnt / p.relative_to(fs.root) for p in order]
            readers.append((order, subprocess.Popen(["cat", *map(str, rel)], stdout=subprocess.PIPE,
                                                    stderr=subprocess.PIPE)))
        outputs = [(order, *proc.communicate(timeout=300), proc.returncode) for order, proc in readers]
        took = time.monotonic() - t
        wrong = 0
        for order, out, err, rc in outputs:
            expected = hashlib.sha256(b"".join(p.read_bytes() for p in order)).hexdigest()
            if rc != 0 or hashlib.sha256(out).hexdigest() != expected:
                wrong += 1
                say(f"!! a reader got wrong bytes or an error: {err.decode(errors='replace').strip()[:200]}")
        say(f"   {len(readers)} readers ({READERS} per mount) cat the same {len(chosen)} files at once: "
            f"{len(readers) * len(chosen)} reads in {took:.1f} s")
        with CoordinatorClient(address, tls=TLS) as client:
            new = [a for a in client.list_actions(kinds=[T.RESTORE], include_terminal=True)
                   if a.action_id not in before]
        per_file = Counter((a.fid.seq, a.fid.oid, a.fid.ver) for a in new)
        initiators = {q.initiator for a in new for q in a.requesters}
        say(f"   restore actions: {len(new)} for {len(per_file)} files, asked for by "
            f"{len(initiators)} initiators; readers with the right bytes: {len(outputs) - wrong} of {len(outputs)}")
        if wrong or len(per_file) != len(chosen) or any(n != 1 for n in per_file.values()):
            raise DemoFailed("every mounted reader must get the right bytes from one restore per file")
    finally:
        for mnt, proc in mounts:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            unmount(os.fspath(mnt))
    say(f"   unmounted {len(mounts)} mounts")


def run(work: Path) -> None:
    t0 = time.monotonic()
    say(f"== hsm-coordinator demo in {work}")
    proc, address = start_local(work)
    try:
        say(f"   3 coordinator replicas x 8 shards at {address}; 2 agentd with the posix mover; "
            + ("mutual TLS, certificates in " + str(TLS.ca.parent) if TLS else "plain text"))
        fs = SimFS.open(work / "fs")
        data_dir = fs.root / "data"
        digests = make_files(data_dir, FILES)
        paths = sorted(digests)
        total = sum(p.stat().st_size for p in paths)
        say(f"== wrote {len(paths)} files, {total / 2**20:.1f} MiB, under {data_dir}")

        t = time.monotonic()
        hsmctl(address, "archive", "--wait", "-r", str(data_dir))
        not_archived = [p for p in paths if not fs.hsm_state(p).flags & HS.ARCHIVED]
        if not_archived:
            raise DemoFailed(f"{len(not_archived)} files not archived, e.g. {not_archived[0]}")
        objects = sum(1 for o in (work / "archive").rglob("0x*") if o.is_file())
        say(f"== hsmctl archive --wait -r: {len(paths)} files archived in {time.monotonic() - t:.1f} s "
            f"({objects} objects in the lhsmtool_posix layout under {work / 'archive'})")
        say("   " + hsmctl(address, "state", str(paths[0])).stdout.strip())

        for start in range(0, len(paths), 100):
            hsmctl(address, "release", *map(str, paths[start:start + 100]))
        released = [p for p in paths if fs.hsm_state(p).flags & HS.RELEASED]
        blocks = sum(p.stat().st_blocks for p in paths)
        if len(released) != len(paths):
            raise DemoFailed(f"only {len(released)} of {len(paths)} files released")
        say(f"== hsmctl release: {len(released)} files released, sizes kept, {blocks * 512 // 1024} KiB "
            "of data left on the file system")
        say("   " + hsmctl(address, "state", str(paths[0])).stdout.strip())

        t = time.monotonic()
        per_requester = concurrent_restores(address, fs, paths)
        outcomes = Counter(C.SubmitOutcome.Name(r.outcome) for rs in per_requester for r in rs)
        action_ids = {r.action_id for rs in per_requester for r in rs if r.action_id}
        with CoordinatorClient(address, tls=TLS) as client:
            ended = client.wait(sorted(action_ids), deadline=300)
            failed = [a for a in ended.values() if a.state != T.SUCCEEDED]
            if failed:
                a = failed[0]
                raise DemoFailed(f"{len(failed)} restores did not succeed, e.g. action {a.action_id}: "
                                 f"{T.ActionState.Name(a.state)} {a.error}")
            restores = [a for a in client.list_actions(kinds=[T.RESTORE], include_terminal=True)]
        moved = Counter((a.fid.seq, a.fid.oid, a.fid.ver) for a in restores
                        if a.state == T.SUCCEEDED and not a.error.startswith("not needed"))
        requests = sum(len(rs) for rs in per_requester)
        say(f"== {REQUESTERS} requesters asked for every file at once: {requests} restore requests "
            f"in {time.monotonic() - t:.1f} s")
        say("   answers: " + ", ".join(f"{k.lower().replace('_', ' ')} {outcomes.get(k, 0)}"
                                       for k in ("CREATED", "JOINED", "NOT_NEEDED", "REJECTED")))
        say(f"   restore actions: {len(restores)}; files whose data was copied back: {len(moved)}; "
            f"copied more than once: {sum(1 for n in moved.values() if n > 1)}")
        if len(moved) != len(paths) or any(n != 1 for n in moved.values()):
            raise DemoFailed("every file must be restored exactly once")
        if len(restores) != len(paths):
            raise DemoFailed(f"{len(restores)} restore actions for {len(paths)} files: duplicates must join "
                             "one restore per file")

        bad = [p for p in paths if hashlib.sha256(p.read_bytes()).hexdigest() != digests[p]]
        still = [p for p in paths if fs.hsm_state(p).flags & HS.RELEASED]
        if bad or still:
            raise DemoFailed(f"{len(bad)} files differ, {len(still)} still released")
        say(f"== verified: all {len(paths)} files online again, every byte matches ({total / 2**20:.1f} MiB)")

        mounted_reads(work, address, fs, paths)

        say("== hsmctl status")
        say(hsmctl(address, "status").stdout.rstrip())
    finally:
        stop_local(proc)
    say(f"== demo passed in {time.monotonic() - t0:.1f} s; coordinator and agents stopped")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="hsm-demo-"))
    try:
        run(work)
    except DemoFailed as exc:
        say(f"!! demo FAILED: {exc}")
        say(f"!! logs kept in {work / 'logs'}")
        return 1
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
