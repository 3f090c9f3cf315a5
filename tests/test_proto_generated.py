"""The committed protobuf modules must be exactly what `make proto` produces from the schemas."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "minikv_core" / "net" / "proto"


def test_generated_modules_match_the_proto_files(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_proto.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    fresh_dir = tmp_path / "minikv_core" / "net" / "proto"
    fresh = {p.name: p.read_bytes() for p in fresh_dir.iterdir() if "_pb2" in p.name}
    committed = {p.name: p.read_bytes() for p in PROTO_DIR.iterdir() if "_pb2" in p.name}
    assert fresh, "protoc produced nothing"
    assert sorted(fresh) == sorted(committed), "run `make proto` and commit the result"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"out of date: {stale}; run `make proto` and commit the result"


def test_generated_kv_module_imports_and_round_trips() -> None:
    from minikv_core.net.proto import kv_pb2, kv_pb2_grpc

    request = kv_pb2.PutRequest(key=b"k", value=b"\x00\xff")
    assert kv_pb2.PutRequest.FromString(request.SerializeToString()) == request
    assert hasattr(kv_pb2_grpc, "KVServicer")
