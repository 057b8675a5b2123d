"""Lustre fidelity vectors (issue 11, "close every gap found against
lustre-release"). Each test names, in its docstring, the Lustre header or
function its expected values come from; the expected values are written
out by hand or transcribed from that code, never computed by the code
under test."""

from __future__ import annotations

import errno as E
import itertools
import os
from pathlib import Path
from typing import Any

import grpc
import pytest

from agentd.movers.base import Job, MoverError, run_action
from agentd.simfs_backend import SimfsBackend
from coordinator.convert import InvalidRequest, item_from_pb
from coordinator.roles import BRIDGE
from coordinator.state import (
    Assign,
    Cancel,
    CancelOutcome,
    Complete,
    Completion,
    CookieTarget,
    Item,
    Kind,
    Outcome,
    Requester,
    SendCancel,
    ShardConfig,
    ShardState,
    State,
    Submit,
)
from hsm import client as hc
from hsm.client import InvalidArgument
from hsm.fid import Fid, FidError
from hsm.hsmflags import (
    ARS,
    CL_HSM,
    CLF_HSM_DIRTY,
    CLF_HSM_ERROVERFLOW,
    HE,
    HS,
    HS_ALL,
    HSM_FORCE_ACTION,
    HSMA,
    agent_req_status2name,
    check_request,
    clf_hsm_pack,
    clf_hsm_unpack,
    completion_changelog_flags,
    format_hsm_state,
)
from hsm.simfs import XATTR_HSM, HsmAttrs, SimFS
from hsm.v1 import coordinator_pb2 as C
from hsm.v1 import coordinator_pb2_grpc
from hsm.v1 import types_pb2 as T
from hsmctl import cli

FS = "lustre1"
SEQ = 0x200000400
# enum hsm_states (include/uapi/linux/lustre/lustre_user.h), as numbers
HS_EXISTS, HS_DIRTY, HS_RELEASED, HS_ARCHIVED = 0x1, 0x2, 0x4, 0x8
HS_NORELEASE, HS_NOARCHIVE, HS_LOST, HS_PCCRW, HS_PCCRO = 0x10, 0x20, 0x40, 0x80, 0x100


def fid(n: int) -> Fid:
    return Fid(SEQ, n, 0)


def step(state: ShardState, cmd: Any) -> Any:
    res = state.apply(cmd)
    state.check_invariants()
    return res


# ---------------------------------------------------------------------------
# 1. HSM_FORCE_ACTION


def lustre_is_action_compat(action: int, flags: int, archive_id: int, file_archive_id: int) -> bool:
    """mdt_hsm_is_action_compat(), transcribed branch by branch."""
    if action == HSMA.ARCHIVE:
        ok = not flags & HS_NOARCHIVE and bool(flags & HS_DIRTY or not flags & HS_ARCHIVED)
        if flags & HS_EXISTS and archive_id != 0 and archive_id != file_archive_id:
            ok = False
        return ok
    if action == HSMA.RESTORE:
        return (not flags & HS_DIRTY and bool(flags & HS_RELEASED) and bool(flags & HS_ARCHIVED)
                and not flags & HS_LOST)
    return not flags & HS_RELEASED and bool(flags & (HS_ARCHIVED | HS_EXISTS))


def test_forced_action_is_needed_then_refused_eperm_when_not_compatible() -> None:
    """lustre/mdt/mdt_hsm_cdt_client.c: hsm_action_is_needed (HSM_FORCE_ACTION
    returns true at once) and mdt_hsm_register_hal (then
    mdt_hsm_is_action_compat, lustre/mdt/mdt_coordinator.c, or -EPERM):
    a forced request is never skipped as "not needed"."""
    for action, flags, file_aid, req_aid in itertools.product(
            (HSMA.ARCHIVE, HSMA.RESTORE, HSMA.REMOVE), range(0x200), (0, 1, 2), (0, 1, 2)):
        expected = None if lustre_is_action_compat(action, flags, req_aid, file_aid) else E.EPERM
        got = check_request(action, flags, file_aid, req_aid, HSM_FORCE_ACTION)
        assert got == expected, (action.name, hex(flags), file_aid, req_aid)


def test_forced_requests_of_files_that_do_not_need_them_are_rejected() -> None:
    """lustre/mdt/mdt_hsm_cdt_client.c: mdt_hsm_add_actions -> EPERM for a
    forced archive of a clean archived file, a forced restore of a file not
    released, a forced remove of a file never archived; a forced archive of
    a dirty archived file is queued."""
    st = ShardState(ShardConfig())
    clean = HS_EXISTS | HS_ARCHIVED
    force = HSM_FORCE_ACTION
    replies = step(st, Submit(1.0, (
        Item(FS, fid(1), Kind.ARCHIVE, flags=force, hsm_flags=clean, hsm_archive_id=1),
        Item(FS, fid(2), Kind.RESTORE, flags=force, hsm_flags=clean, hsm_archive_id=1),
        Item(FS, fid(3), Kind.REMOVE, flags=force, hsm_flags=0),
        Item(FS, fid(4), Kind.ARCHIVE, flags=force, hsm_flags=clean | HS_DIRTY, hsm_archive_id=1),
        Item(FS, fid(5), Kind.RESTORE, flags=force, hsm_flags=clean | HS_RELEASED, hsm_archive_id=1),
    ))).replies
    assert [(r.outcome, r.errno) for r in replies] == [
        (Outcome.REJECTED, E.EPERM), (Outcome.REJECTED, E.EPERM), (Outcome.REJECTED, E.EPERM),
        (Outcome.CREATED, 0), (Outcome.CREATED, 0)]


# ---------------------------------------------------------------------------
# 2. hsmctl action never prints CANCEL


class _FakeClient:
    def __init__(self, actions: list[T.Action]) -> None:
        self.actions = actions

    def __enter__(self) -> _FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def list_actions(self, **kw: Any) -> list[T.Action]:
        return self.actions


def test_hsm_action_of_a_file_whose_cancel_was_sent_is_never_cancel(
        tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    """lustre/mdt/mdt_coordinator.c: mdt_hsm_add_hsr marks a request
    ARS_CANCELED when its cancel is sent; lustre/mdt/mdt_hsm_cdt_client.c:
    mdt_hsm_get_action / hsm_get_action_cb then keep only WAITING and
    STARTED records that are not HSMA_CANCEL, so llapi_hsm_current_action
    (lfs hsm_action) gives the file's next action, or NOOP."""
    SimFS.create(tmp_path / "fs", "testfs")
    (tmp_path / "fs" / "f").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    ext = T.Extent(offset=0, length=-1)
    canceling = T.Action(action_id=1000, kind=T.ARCHIVE, state=T.CANCELING, extent=ext,
                         bytes_done=4096, created=1.0)
    waiting = T.Action(action_id=2000, kind=T.RESTORE, state=T.WAITING, extent=ext, created=2.0)

    def run(actions: list[T.Action], *args: str) -> str:
        monkeypatch.setattr(cli, "_client", lambda a, c: _FakeClient(actions))
        capsys.readouterr()
        assert cli.main(["--coordinators", "127.0.0.1:1", "action", *args, "fs/f"]) == 0
        return str(capsys.readouterr().out)

    assert run([canceling]) == "fs/f: NOOP\n"
    assert run([canceling, waiting]) == "fs/f: RESTORE waiting (from 0 to EOF)\n"
    assert '"action": "NOOP"' in run([canceling], "--json")
    assert '"action": "CANCEL"' not in run([canceling, waiting], "--json")
    started = T.Action(action_id=1000, kind=T.ARCHIVE, state=T.STARTED, extent=ext, bytes_done=4096)
    assert run([started]) == "fs/f: ARCHIVE running (4096 bytes moved)\n"


# ---------------------------------------------------------------------------
# 3. FID parsing


@pytest.mark.parametrize("text, expected", [
    ("[0:0x0:0x0]", Fid(0, 0, 0)),                       # DFID of the zero FID
    ("[0x200000400:0x1:0x0]", Fid(SEQ, 1, 0)),
    ("0x200000400:0x1:0x0", Fid(SEQ, 1, 0)),
    ("8589935616:1:0", Fid(SEQ, 1, 0)),                   # decimal
    ("[0100000002000:01:00]", Fid(SEQ, 1, 0)),            # octal
    ("[0X200000400:0X1:0X0]", Fid(SEQ, 1, 0)),
    ("[0xfffffffffffffffe:0xffffffff:0xffffffff]", Fid(2**64 - 2, 2**32 - 1, 2**32 - 1)),
    ("  [ 0x1: +0x2:\t0x3]", Fid(1, 2, 3)),               # strtoull skips white space, takes a sign
    ("[[0x1:0x2:0x3]", Fid(1, 2, 3)),                     # every '[' is skipped
    ("[0x1:0x2:0x3", Fid(1, 2, 3)),                       # the ']' is optional
    ("0x1:0x2:", Fid(1, 2, 0)),                           # glibc: no digits converts to 0
])
def test_fid_parse_like_llapi_fid_parse(text: str, expected: Fid) -> None:
    """lustre/utils/liblustreapi_fid.c: llapi_fid_parse (strtoull(s, &end, 0)
    per field, brackets optional)."""
    assert Fid.parse(text) == expected


@pytest.mark.parametrize("text, err", [
    ("[0xffffffffffffffff:0x1:0x0]", E.ERANGE),           # val >= UINT64_MAX
    ("[0x1ffffffffffffffff:0x1:0x0]", E.ERANGE),          # strtoull overflow
    ("[0x1:0x100000000:0x0]", E.ERANGE),
    ("[0x1:0x1:0x100000000]", E.ERANGE),
    ("-1:0x1:0x0", E.ERANGE),                             # strtoull("-1") is ULLONG_MAX
    ("[0xffffffffffffffff:0x1]", E.EINVAL),               # malformed wins over ERANGE
    ("", E.EINVAL),
    ("[]", E.EINVAL),
    ("[0x1:0x2]", E.EINVAL),
    ("[0xg:0x1:0x0]", E.EINVAL),                          # "0" then 'x' is not ':'
    ("[08:0x1:0x0]", E.EINVAL),                           # 8 is not an octal digit
    ("[0x1 :0x2:0x3]", E.EINVAL),
])
def test_fid_parse_errors_like_llapi_fid_parse(text: str, err: int) -> None:
    """lustre/utils/liblustreapi_fid.c: llapi_fid_parse returns -EINVAL for a
    malformed FID and -ERANGE for a field too large (a sequence of
    UINT64_MAX or more, an oid or version above UINT32_MAX)."""
    with pytest.raises(FidError, match="FID") as info:
        Fid.parse(text)
    assert info.value.errno == err


def test_every_printed_fid_parses_back() -> None:
    """lustre/include/uapi/linux/lustre/lustre_user.h: DFID "[%#llx:0x%x:0x%x]"
    read back by llapi_fid_parse, the zero FID included."""
    for f in (Fid(0, 0, 0), Fid(0, 1, 0), Fid(SEQ, 0, 0), Fid(2**64 - 2, 2**32 - 1, 7)):
        assert Fid.parse(str(f)) == f and Fid.parse(f.bare) == f
    assert Fid.parse_prefix("[0x1:0x2:0x3] rest") == (Fid(1, 2, 3), 13)


# ---------------------------------------------------------------------------
# 4. PCC bits, ARS_*, EALREADY, negative errval, ENOSYS


def test_pcc_state_bits_are_valid_and_print_only_in_the_number(tmp_path: Path) -> None:
    """include/uapi/linux/lustre/lustre_user.h: enum hsm_states HS_PCCRW 0x80,
    HS_PCCRO 0x100, HSM_FLAGS_MASK; lustre/utils/lfs.c: lfs_hsm_state prints
    no word for them."""
    assert (HS.PCCRW, HS.PCCRO, int(HS_ALL)) == (0x80, 0x100, 0x1FF)
    assert format_hsm_state("f", HS_EXISTS | HS_ARCHIVED | HS_PCCRO, 1) == (
        "f: (0x00000109) exists archived, archive_id:1")
    assert format_hsm_state("f", HS_PCCRW, 0) == "f: (0x00000080)"
    pb = C.SubmitItem(fsname=FS, fid=T.Fid(seq=SEQ, oid=1), kind=T.ARCHIVE,
                      hsm=T.HsmState(flags=HS_PCCRW | HS_PCCRO | HS_EXISTS, archive_id=1))
    assert item_from_pb(pb, 0, {1}).hsm_flags == 0x181
    pb.hsm.flags = 0x200
    with pytest.raises(InvalidRequest, match="0x200"):
        item_from_pb(pb, 0, {1})
    # a simfs file attached to a PCC keeps its bits through lfs hsm_set
    fs = SimFS.create(tmp_path / "fs", "testfs")
    path = tmp_path / "fs" / "f"
    path.write_bytes(b"data")
    fs.fid_of(path)
    os.setxattr(path, XATTR_HSM, HsmAttrs(HS_EXISTS | HS_ARCHIVED | HS_PCCRO, 1, 1).pack())
    assert fs.set_flags(path, HS_NORELEASE).flags == 0x119


def test_agent_req_status_values() -> None:
    """include/uapi/linux/lustre/lustre_idl.h: enum agent_req_status and
    agent_req_status2name."""
    assert [(int(s), agent_req_status2name(s)) for s in ARS] == [
        (0, "WAITING"), (1, "STARTED"), (2, "FAILED"), (3, "CANCELED"), (4, "SUCCEED")]
    assert agent_req_status2name(5) == "UNKNOWN"


def _archived(tmp_path: Path) -> tuple[SimFS, Path, Fid]:
    fs = SimFS.create(tmp_path / "fs", "testfs")
    path = tmp_path / "fs" / "f"
    path.write_bytes(b"data")
    f = fs.fid_of(path)
    fs.archive_end(f, fs.archive_begin(f, 1).data_version, 0)
    return fs, path, f


def test_failed_archive_with_ealready_does_not_dirty_the_file(tmp_path: Path) -> None:
    """lustre/mdt/mdt_coordinator.c: hsm_cdt_request_completed sets HS_DIRTY
    "for safety" on a failed archive of an ARCHIVED file unless the errval
    is EALREADY; ENOSYS is turned into ECANCELED first, so it dirties."""
    fs, path, f = _archived(tmp_path)
    fs.archive_end(f, fs.archive_begin(f, 1).data_version, E.EALREADY)
    assert fs.hsm_state(path).flags == HS_EXISTS | HS_ARCHIVED
    fs.archive_end(f, fs.archive_begin(f, 1).data_version, -E.EALREADY)
    assert fs.hsm_state(path).flags == HS_EXISTS | HS_ARCHIVED
    fs.archive_end(f, fs.archive_begin(f, 1).data_version, E.ENOSYS)
    assert fs.hsm_state(path).flags == HS_EXISTS | HS_ARCHIVED | HS_DIRTY


def test_negative_errval_is_made_positive(tmp_path: Path) -> None:
    """lustre/utils/liblustreapi_hsm.c: llapi_hsm_action_end sends
    hc_errval = abs(errval)."""
    fs, path, f = _archived(tmp_path)
    backend = SimfsBackend(fs.root)
    backend.begin(f, HSMA.ARCHIVE, 1).end(-E.EIO)  # a failed archive of an archived file
    assert fs.hsm_state(path).flags == HS_EXISTS | HS_ARCHIVED | HS_DIRTY

    def fail(job: Job, handle: Any) -> int:
        raise MoverError(-E.ENOSPC, "archive full")

    job = Job(1, 1, HSMA.ARCHIVE, "testfs", f, 1, 0, -1, b"", 0, backend)
    assert run_action(job, "test", fail).errno == E.ENOSPC

    st = ShardState(ShardConfig())
    [reply] = step(st, Submit(1.0, (Item(FS, fid(1), Kind.ARCHIVE),))).replies
    step(st, Assign(2.0, "a1", (reply.action_id,)))
    step(st, Complete(3.0, (Completion(reply.action_id, 1, -E.EIO, "io"),)))
    a = st.get(reply.action_id)
    assert a is not None and (a.state, a.errno) == (State.FAILED, E.EIO)


def test_enosys_fails_without_retry_and_ends_a_canceling_action_canceled() -> None:
    """lustre/mdt/mdt_coordinator.c: hsm_cdt_request_completed: errval ENOSYS
    gives ARS_FAILED whatever HP_FLAG_RETRY says (and ECANCELED in the
    changelog); with a cancel sent, the request itself is already
    ARS_CANCELED (mdt_hsm_add_hsr) and the failed record is the cancel's."""
    st = ShardState(ShardConfig())
    ids = [r.action_id for r in step(st, Submit(1.0, (
        Item(FS, fid(1), Kind.RESTORE), Item(FS, fid(2), Kind.REMOVE)))).replies]
    step(st, Assign(2.0, "a1", tuple(ids)))
    step(st, Cancel(3.0, action_ids=(ids[1],)))
    step(st, Complete(4.0, (Completion(ids[0], 1, E.ENOSYS, "", retry=True),
                            Completion(ids[1], 1, E.ENOSYS, "no cancel here"))))
    restore, remove = st.get(ids[0]), st.get(ids[1])
    assert restore is not None and (restore.state, restore.errno) == (State.FAILED, E.ENOSYS)
    assert remove is not None and (remove.state, remove.errno) == (State.CANCELED, E.ECANCELED)
    assert completion_changelog_flags(HSMA.RESTORE, E.ENOSYS, False) == 0x80 | E.ECANCELED
    assert completion_changelog_flags(HSMA.ARCHIVE, -E.EIO, True) == 0x400 | E.EIO


# ---------------------------------------------------------------------------
# 5. Changelog HSM flags


@pytest.mark.parametrize("event, error, flags, packed", [
    (HE.ARCHIVE, 0, 0, 0x0),                    # archive ok
    (HE.RESTORE, 0, 0, 0x80),                   # restore ok
    (HE.REMOVE, 0, 0, 0x200),                   # remove ok
    (HE.ARCHIVE, E.ECANCELED, 0, 0x7D),         # archive canceled
    (HE.CANCEL, 0, 0, 0x100),
    (HE.RELEASE, 0, 0, 0x180),
    (HE.STATE, 0, 0, 0x280),
    (HE.ARCHIVE, E.EIO, CLF_HSM_DIRTY, 0x405),  # failed archive, file left dirty
    (HE.RESTORE, -E.ENOENT, 0, 0x82),           # the sign is ignored
    (HE.ARCHIVE, 126, 0, 0x7E),                 # CLF_HSM_MAXERROR
    (HE.ARCHIVE, 127, 0, 0x7F),                 # above it: CLF_HSM_ERROVERFLOW
    (HE.REMOVE, 133, 0, 0x27F),                 # EHWPOISON (133)
])
def test_changelog_hsm_flags(event: HE, error: int, flags: int, packed: int) -> None:
    """include/uapi/linux/lustre/lustre_user.h: CLF_HSM_* bits, enum
    hsm_event, hsm_set_cl_event / hsm_set_cl_error / hsm_set_cl_flags and
    their getters (CLF_GET_BITS)."""
    assert CL_HSM == 16
    assert clf_hsm_pack(event, error, flags) == packed
    err = abs(error) if abs(error) <= 0x7E else CLF_HSM_ERROVERFLOW
    assert clf_hsm_unpack(packed) == (event, err, flags)
    assert clf_hsm_unpack(packed | 0xF000 | 0x10000) == (event, err, flags)  # spare and high bits ignored


# ---------------------------------------------------------------------------
# 6. Cancel by the requester's cookie


def test_cancel_by_requester_cookie_in_the_state_machine() -> None:
    """lustre/mdt/mdt_hsm_cdt_client.c: hsm_find_compatible: an HSMA_CANCEL
    item whose hai_cookie is set names the request to cancel directly; here
    the cookie reaches the action through its idempotency key."""
    st = ShardState(ShardConfig())
    mdt = Requester("mdt0", cookie=0x5E1)
    other = Requester("mdt1", cookie=0x5E1)
    created, joined = step(st, Submit(1.0, (
        Item(FS, fid(1), Kind.ARCHIVE, requester=mdt, key="mdt0:1505"),
        Item(FS, fid(1), Kind.ARCHIVE, requester=other, key="mdt1:1505"),
    ))).replies
    [running] = step(st, Submit(2.0, (Item(FS, fid(2), Kind.RESTORE, requester=Requester("mdt0", 7),
                                           key="mdt0:7"),))).replies
    step(st, Assign(3.0, "a1", (running.action_id,)))
    res = step(st, Cancel(4.0, action_ids=(running.action_id,), cookies=(
        CookieTarget("mdt1", 0x5E1), CookieTarget("mdt0", 7), CookieTarget("mdt0", 99))))
    assert [(r.action_id, r.outcome, r.cookie) for r in res.replies] == [
        (running.action_id, CancelOutcome.SENT, None),
        (created.action_id, CancelOutcome.DONE, CookieTarget("mdt1", 0x5E1)),
        (running.action_id, CancelOutcome.ALREADY_ENDED, CookieTarget("mdt0", 7)),
        (0, CancelOutcome.NOT_FOUND, CookieTarget("mdt0", 99)),
    ]
    assert joined.action_id == created.action_id
    assert [e.action_id for e in res.effects if isinstance(e, SendCancel)] == [running.action_id]


@pytest.mark.parametrize("shards", [1, 4])
def test_cancel_by_cookie_through_the_client(coordinator_factory: Any, shards: int) -> None:
    """lustre/mdt/mdt_hsm_cdt_client.c: hsm_find_compatible (an HSMA_CANCEL
    with a hai_cookie cancels that request): the MDT bridge cancels with the
    cookie it submitted (with its certificate, role bridge); every shard is
    asked, one result per cookie."""
    node = coordinator_factory(shards=shards)
    with node.client(BRIDGE, "mds1", timeout=10, initiator="bridge@mds1") as c:
        items = [c.submit_item(FS, fid(n), "archive", requester=T.Requester(initiator="bridge@mds1", cookie=n))
                 for n in range(1, 9)]
        ids = [r.action_id for r in c.submit(items)]
        results = c.cancel(action_ids=[ids[7]], cookies=[("bridge@mds1", 3), ("bridge@mds1", 77),
                                                          ("bridge@mds1", 5)])
        assert [(r.action_id, hc.cancel_outcome_name(r.outcome)) for r in results] == [
            (ids[7], "CANCEL_DONE"), (ids[2], "CANCEL_DONE"), (0, "NOT_FOUND"), (ids[4], "CANCEL_DONE")]
        assert {a.action_id for a in c.list_actions()} == {ids[n] for n in (0, 1, 3, 5, 6)}
        for bad in ([("bridge@mds1", 0)], [("", 1)], [("x",)]):
            with pytest.raises(InvalidArgument, match="cookie"):
                c.cancel(cookies=bad)
    channel = node.channel(BRIDGE, "mds1")
    try:
        with pytest.raises(grpc.RpcError) as info:
            coordinator_pb2_grpc.CoordinatorStub(channel).Cancel(
                C.CancelRequest(cookies=[T.Requester(initiator="bridge@mds1")]), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "cookie" in str(info.value.details())
    finally:
        channel.close()
