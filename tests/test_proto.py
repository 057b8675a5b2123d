"""The committed generated code must match proto/: regenerate into a
temporary directory and compare byte for byte, but for the line naming the
grpcio-tools version that ran (``make proto`` fixes it)."""

from __future__ import annotations

import re
from pathlib import Path

from hsm import protogen


def test_generated_code_is_current(tmp_path: Path) -> None:
    generated = protogen.generate(tmp_path)
    assert generated, "protoc generated nothing"
    committed_dir = protogen.ROOT / "hsm" / "v1"
    names = sorted(p.name for p in generated)
    assert names == sorted(p.name for p in committed_dir.glob("*_pb2*.py*")), "generated file set differs"
    stale = [n for n in names if _content((tmp_path / "hsm" / "v1" / n).read_bytes())
             != _content((committed_dir / n).read_bytes())]
    assert not stale, f"stale generated code, run `make proto`: {stale}"


#: the grpcio-tools version that generated a *_grpc.py file: which one a
#: fresh install picks (grpcio-tools>=1.85.0) changes, the code does not
_VERSION_LINE = re.compile(rb"^GRPC_GENERATED_VERSION = '[0-9.]+'$", re.M)


def _content(code: bytes) -> bytes:
    return _VERSION_LINE.sub(b"GRPC_GENERATED_VERSION = '<version>'", code)


def test_generated_version_line_is_ignored_and_nothing_else() -> None:
    a = b"x = 1\nGRPC_GENERATED_VERSION = '1.85.1'\n"
    assert _content(a) == _content(a.replace(b"1.85.1", b"1.85.4"))
    assert _content(a) != _content(a.replace(b"x = 1", b"x = 2"))


def test_every_proto_is_compiled() -> None:
    protos = {p.stem for p in protogen.proto_files()}
    assert protos == {"types", "coordinator", "agent"}
