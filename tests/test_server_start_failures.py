"""A node that refuses its data directory says, in its one error line, what to do about it.

Start-up refusals already named the damaged file and offset, but stopped there: an operator
was left to guess whether to edit files, delete the data directory or run a repair. Each
refusal now ends with a recovery step that fits its cause.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from minikv_core.cluster.config import NodeConfig
from minikv_core.cluster.host import NodeStartError
from minikv_core.server import (
    EXIT_FAILURE,
    NodeServer,
    ServerConfig,
    recovery_advice,
    resolve,
)
from minikv_core.storage.errors import CorruptionError, WalCorruptionError
from minikv_core.storage.wal_format import SEGMENT_HEADER_SIZE
from minikv_tui.node_process import free_ports


def _argv(data_dir: Path, grpc_port: int) -> list[str]:
    return [
        "--id",
        "1",
        "--data-dir",
        str(data_dir),
        "--http",
        "127.0.0.1:0",
        "--grpc",
        f"127.0.0.1:{grpc_port}",
        "--peers",
        f"1=127.0.0.1:{grpc_port}",
        "--shards",
        "1",
        "--replicas",
        "1",
    ]


def _config(data_dir: Path, grpc_port: int) -> ServerConfig:
    return resolve(
        {
            "id": 1,
            "data_dir": str(data_dir),
            "http": "127.0.0.1:0",
            "grpc": f"127.0.0.1:{grpc_port}",
            "peers": f"1=127.0.0.1:{grpc_port}",
            "shards": 1,
            "replicas": 1,
        },
        env={},
    )


@pytest.fixture(scope="module")
def bootstrapped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """The data directory of a one-node cluster that started once and stopped cleanly."""
    data_dir = tmp_path_factory.mktemp("node") / "d"
    (grpc_port,) = free_ports(1)

    async def start_and_stop() -> None:
        server = NodeServer(_config(data_dir, grpc_port))
        try:
            await server.start()
        finally:
            await server.stop()

    asyncio.run(start_and_stop())
    assert sorted((data_dir / "wal").glob("*.wal")), "the node wrote its WAL"
    return data_dir, grpc_port  # the identity file holds the port: a restart must reuse it


@pytest.fixture
def node(bootstrapped: tuple[Path, int], tmp_path: Path) -> tuple[Path, int]:
    """A private copy of `bootstrapped` for one test to damage."""
    copy = tmp_path / "d"
    shutil.copytree(bootstrapped[0], copy)
    return copy, bootstrapped[1]


def _refusal(node: tuple[Path, int]) -> str:
    """The node's one error line: run as the launcher runs it, a process of its own."""
    data_dir, grpc_port = node
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIKV_")}
    result = subprocess.run(
        [sys.executable, "-m", "minikv_core.server", *_argv(data_dir, grpc_port)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == EXIT_FAILURE, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("minikv serve: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_damaged_wal_record_says_to_run_wal_repair(
    node: tuple[Path, int],
) -> None:
    data_dir = node[0]
    segment = sorted((data_dir / "wal").glob("*.wal"))[0]
    data = bytearray(segment.read_bytes())
    data[SEGMENT_HEADER_SIZE + 12] ^= 0xFF  # inside the first record's payload
    segment.write_bytes(bytes(data))
    line = _refusal(node)
    assert segment.name in line and "corruption at byte offset" in line
    assert f"`minikv wal repair {data_dir / 'wal'}`" in line


def test_a_wal_whose_first_header_is_gone_says_to_replace_the_node(
    node: tuple[Path, int],
) -> None:
    data_dir = node[0]
    """`wal repair` would delete the whole log here, and a node without one cannot rejoin:
    advising it would send the operator into a second refusal."""
    segment = sorted((data_dir / "wal").glob("*.wal"))[0]
    with segment.open("r+b") as file:
        file.write(bytes(SEGMENT_HEADER_SIZE))
    line = _refusal(node)
    assert segment.name in line
    assert "wal repair" not in line
    assert "`minikv cluster remove-node 1`" in line


def test_a_damaged_engine_says_to_replace_the_node(
    node: tuple[Path, int],
) -> None:
    data_dir = node[0]
    manifest = data_dir / "shards" / "0" / "MANIFEST"
    manifest.write_bytes(b"")
    line = _refusal(node)
    assert str(manifest) in line
    assert "`minikv cluster remove-node 1`" in line


def test_a_malformed_identity_file_says_what_to_do(
    node: tuple[Path, int],
) -> None:
    data_dir = node[0]
    (data_dir / "identity.json").write_text("{broken")
    line = _refusal(node)
    assert "identity.json" in line and "to recover:" in line


def test_permission_denied_says_which_file_to_make_accessible(tmp_path: Path) -> None:
    """Run as root in CI, chmod cannot make a file unreadable: the advice is checked on the
    error the engine raises when it is."""
    node = NodeConfig(2, tmp_path, "127.0.0.1:1", "127.0.0.1:0", {2: "127.0.0.1:1"}, replicas=1)
    denied = PermissionError(13, "Permission denied", str(tmp_path / "shards/0/MANIFEST"))
    error = NodeStartError("shard 0: cannot open its engine")
    error.__cause__ = denied
    advice = recovery_advice(error, node)
    assert str(tmp_path / "shards/0/MANIFEST") in advice and "read and write" in advice
    corrupt = NodeStartError("shard 0: cannot open its engine")
    corrupt.__cause__ = CorruptionError(tmp_path / "000001.sst", 7, "bad")
    assert "`minikv cluster remove-node 2`" in recovery_advice(corrupt, node)
    wal = NodeStartError("cannot open the Raft log")
    wal.__cause__ = WalCorruptionError(tmp_path / "wal" / "0000000000000003.wal", 900, "bad")
    assert "minikv wal repair" in recovery_advice(wal, node)


@pytest.mark.parametrize(
    ("code", "words"),
    [(errno.ENOSPC, "free space"), (errno.EDQUOT, "free space"), (errno.EROFS, "writable")],
)
def test_a_full_or_read_only_disk_is_not_advised_as_damage(
    tmp_path: Path, code: int, words: str
) -> None:
    """A node that cannot write its WAL on a full disk has intact data: advising to replace
    it (the advice for damage) would throw a healthy replica away."""
    node = NodeConfig(2, tmp_path, "127.0.0.1:1", "127.0.0.1:0", {2: "127.0.0.1:1"}, replicas=1)
    error = NodeStartError("cannot open the Raft log")
    error.__cause__ = OSError(code, os.strerror(code))
    advice = recovery_advice(error, node)
    assert words in advice and str(tmp_path) in advice
    assert "remove-node" not in advice
