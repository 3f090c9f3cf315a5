"""Generate the protobuf/gRPC modules (and their .pyi stubs) from minikv_core/net/proto/*.proto.

The output is committed so `pip install` needs no grpcio-tools. The generator versions are
pinned in pyproject's `dev` extra, so regenerating on any machine yields the same bytes and
tests/test_proto_generated.py can demand that the committed files match.

Usage: python tools/gen_proto.py [OUT_ROOT]   (default: the repository root, in place)
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = Path("minikv_core") / "net" / "proto"


def proto_files() -> list[Path]:
    return sorted((ROOT / PROTO_DIR).glob("*.proto"))


def generate(out_root: Path) -> list[Path]:
    """Run protoc with the repository root as include path, so the generated modules import
    each other as `minikv_core.net.proto.x_pb2` and work from an installed package."""
    out_root.mkdir(parents=True, exist_ok=True)
    (out_root / PROTO_DIR).mkdir(parents=True, exist_ok=True)
    include = str(Path(protoc.__file__).parent / "_proto")
    sources = [str(p.relative_to(ROOT)) for p in proto_files()]
    bin_dir = Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *sources,
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    return sorted(
        p
        for p in (out_root / PROTO_DIR).iterdir()
        if p.name.endswith((".py", ".pyi")) and "_pb2" in p.name
    )


def main() -> None:
    out_root = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    if out_root == ROOT:
        for old in (ROOT / PROTO_DIR).glob("*_pb2*"):
            old.unlink()
    for path in generate(out_root):
        print(f"generated {path.relative_to(out_root)}")
    shutil.rmtree(ROOT / PROTO_DIR / "__pycache__", ignore_errors=True)


if __name__ == "__main__":
    main()
