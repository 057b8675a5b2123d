"""The committed generated code must match proto/: regenerate into a
temporary directory and compare byte for byte (``make proto`` fixes it)."""

from __future__ import annotations

from pathlib import Path

from hsm import protogen


def test_generated_code_is_current(tmp_path: Path) -> None:
    generated = protogen.generate(tmp_path)
    assert generated, "protoc generated nothing"
    committed_dir = protogen.ROOT / "hsm" / "v1"
    names = sorted(p.name for p in generated)
    assert names == sorted(p.name for p in committed_dir.glob("*_pb2*.py*")), "generated file set differs"
    stale = [n for n in names if (tmp_path / "hsm" / "v1" / n).read_bytes() != (committed_dir / n).read_bytes()]
    assert not stale, f"stale generated code, run `make proto`: {stale}"


def test_every_proto_is_compiled() -> None:
    protos = {p.stem for p in protogen.proto_files()}
    assert protos == {"types", "coordinator", "agent"}
