"""FIDs parse as llapi_fid_parse does and print exactly as Lustre's DFID
does (more vectors in test_fidelity.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hsm.fid import Fid, FidError


@pytest.mark.parametrize(
    "text, fid",
    [
        ("[0x200000400:0x1:0x0]", Fid(0x200000400, 1, 0)),
        ("0x200000400:0x1:0x0", Fid(0x200000400, 1, 0)),
        ("[0x200000bd1:0x1a2b:0x3]", Fid(0x200000BD1, 0x1A2B, 3)),
        ("[0xFFFFFFFFFFFFFFFE:0xffffffff:0xffffffff]", Fid(2**64 - 2, 2**32 - 1, 2**32 - 1)),
        ("  [0x1:0x2:0x3]\n", Fid(1, 2, 3)),
        # llapi_fid_parse reads each field with strtoull(s, &end, 0)
        ("200000400:1:0", Fid(200000400, 1, 0)),
        ("[ 0x1:0x2:0x3]", Fid(1, 2, 3)),
        ("[0:0x0:0x0]", Fid(0, 0, 0)),
        ("[0x200000400:0x1:0x0", Fid(0x200000400, 1, 0)),
    ],
)
def test_parse(text: str, fid: Fid) -> None:
    assert Fid.parse(text) == fid


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "[0x200000400:0x1]",
        "[0x200000400:0x1:0x0:0x0]",
        "0x200000400:0x1:0x0]",
        "[0x1ffffffffffffffff:0x1:0x0]",
        "[0xffffffffffffffff:0x1:0x0]",
        "[0x200000400:0x100000000:0x0]",
        "[0xg:0x1:0x0]",
        "[0x-1:0x1:0x0]",
    ],
)
def test_malformed_is_a_clear_error(text: str) -> None:
    with pytest.raises(FidError, match="FID"):
        Fid.parse(text)


def test_print_like_lustre() -> None:
    f = Fid(0x200000400, 1, 0)
    assert str(f) == "[0x200000400:0x1:0x0]"
    assert f.bare == "0x200000400:0x1:0x0"
    # C's "%#llx" prints zero as "0"
    assert str(Fid(0, 0, 0)) == "[0:0x0:0x0]"


def test_out_of_range_values() -> None:
    with pytest.raises(FidError):
        Fid(-1, 0, 0)
    with pytest.raises(FidError):
        Fid(1, 2**32, 0)


def test_pack_is_struct_lu_fid() -> None:
    f = Fid(0x200000400, 0x1A, 0x2)
    assert f.pack() == bytes.fromhex("0004000002000000" "1a000000" "02000000")
    assert Fid.unpack(f.pack()) == f
    with pytest.raises(FidError):
        Fid.unpack(b"\x00" * 15)


@given(st.integers(0, 2**64 - 2), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_round_trip(seq: int, oid: int, ver: int) -> None:
    f = Fid(seq, oid, ver)
    assert Fid.parse(str(f)) == f
    assert Fid.parse(f.bare) == f
