"""`minikv bench` (the cluster benchmark), run as the console script a user runs: argument
errors are one clear line and exit 2, an unreachable cluster one line and exit 1, and a short
run against a real three-node cluster prints numbers a script can parse."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.integration.conftest import Cluster, reserve_ports

COMMAND_TIMEOUT_S = 60


def run_minikv(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("minikv", path=str(Path(sys.executable).parent))
    assert exe is not None, "the minikv console script is not installed in this environment"
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--clients", "0"), "--clients must be in 1..4096"),
        (("--duration", "0"), "--duration must be > 0"),
        (("--value-size", "-1"), "--value-size must be in 0.."),
        (("--keys", "0"), "--keys must be >= 1"),
        (("--workload", "scan"), "Invalid value for '--workload'"),
        (("--workload", "txn2"), "Invalid value for '--workload'"),
        (("--clients", "many"), "Invalid value for '--clients'"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(args: tuple[str, ...], message: str) -> None:
    result = run_minikv("bench", "--endpoints", "127.0.0.1:9001", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_malformed_endpoints_exit_2() -> None:
    result = run_minikv("bench", "--endpoints", "localhost", "--duration", "1")
    assert result.returncode == 2
    assert "not host:port" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_unreachable_cluster_is_one_line_and_exit_1() -> None:
    (closed_port,) = reserve_ports(1)
    # -e, as every other command spells --endpoints
    result = run_minikv("bench", "-e", f"127.0.0.1:{closed_port}", "--duration", "1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "cannot reach the cluster" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_help_shows_the_cluster_options_and_the_engine_subcommand() -> None:
    result = run_minikv("bench", "--help")
    assert result.returncode == 0, result.stderr
    for text in ("--endpoints", "--clients", "--duration", "--workload", "engine", "txn1"):
        assert text in result.stdout
    engine = run_minikv("bench", "engine", "--help")
    assert engine.returncode == 0, engine.stderr
    assert "sqlite3" in engine.stdout


async def _start(cluster: Cluster) -> None:
    async with aiohttp.ClientSession() as session:
        cluster.session = session
        try:
            await cluster.start()
            await cluster.wait_ready()
        finally:
            cluster.session = None


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(tmp_path / "cluster", size=3, shards=2, replicas=3)
    made.root.mkdir(parents=True)
    try:
        asyncio.run(_start(made))
        yield made
    finally:
        made.kill_all()


@pytest.mark.integration
def test_short_json_run_prints_parseable_numbers(cluster: Cluster) -> None:
    result = run_minikv(
        "bench",
        "--endpoints",
        ",".join(cluster.grpc_endpoints),
        "--duration",
        "1",
        "--warmup",
        "0",
        "--clients",
        "4",
        "--keys",
        "50",
        "--workload",
        "mixed",
        "--json",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert document["workload"] == "mixed" and document["clients"] == 4
    assert document["endpoints"] == cluster.grpc_endpoints
    assert document["errors"] == 0, document["last_error"]
    assert document["ops"] > 0 and document["ops_per_s"] > 0
    assert document["reads"] + document["writes"] == document["ops"]
    assert document["misses"] == 0  # the key space was preloaded
    assert 0.9 <= document["seconds"] <= 5.0
    assert 0 < document["p50_ms"] <= document["p90_ms"] <= document["p99_ms"]
    assert document["p99_ms"] <= document["max_ms"]


def bench_json(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return run_minikv(
        "bench",
        "--endpoints",
        ",".join(cluster.grpc_endpoints),
        "--duration",
        "1",
        "--warmup",
        "0",
        "--clients",
        "4",
        "--json",
        *args,
    )


@pytest.mark.integration
def test_transaction_workloads_report_transactions_as_writes(cluster: Cluster) -> None:
    for workload in ("txn", "txn1"):
        result = bench_json(cluster, "--workload", workload, "--keys", "100")
        assert result.returncode == 0, result.stdout + result.stderr
        document = json.loads(result.stdout)
        assert document["workload"] == workload
        assert document["errors"] == 0, document["last_error"]
        assert document["ops"] > 0 and document["writes"] == document["ops"]
        assert document["reads"] == 0
        assert 0 < document["p50_ms"] <= document["p99_ms"] <= document["max_ms"]
    table = run_minikv(
        "bench",
        "--endpoints",
        ",".join(cluster.grpc_endpoints),
        "--duration",
        "0.5",
        "--warmup",
        "0",
        "--clients",
        "2",
        "--workload",
        "txn",
    )
    assert table.returncode == 0, table.stdout + table.stderr
    assert "transaction of 2 puts on 2 shards" in " ".join(table.stdout.split())
    # One key cannot be on two shards: a usage error, before any load.
    too_few = bench_json(cluster, "--workload", "txn", "--keys", "1")
    assert too_few.returncode == 2, too_few.stdout + too_few.stderr
    assert "needs keys on 2 or more shards" in too_few.stderr
    assert "Raise --keys" in too_few.stderr
    assert "Traceback" not in too_few.stdout + too_few.stderr
