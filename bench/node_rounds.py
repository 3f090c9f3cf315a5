"""What one replicated write (or read) costs a 3-node cluster: driver rounds, WAL syncs, CPU.

Why this tool: ops/s alone cannot say whether a cluster is bound by its fsyncs, by its batching
(rounds per write) or by CPU per request. This drives puts over HTTP (or the leader-routed
gRPC client) at several client counts and prints, per step, the throughput next to each
node's counters from `/admin/status` (driver rounds, WAL appends and syncs, time in fdatasync)
and the CPU the three processes used, from /proc:

    .venv/bin/python -m bench.node_rounds [--clients 1,16,64,200] [--seconds 8] [--grpc]
        [--workload put|get|mixed]

`cpu ms/write` is the servers' CPU over the measured window divided by the writes: on this
2-core machine, once it times ops/s reaches ~2 cores the cluster is CPU-bound, whatever the
latency. `writes/round` near 1 means batching is not engaged (latency-bound); `sync %` is
the share of wall time a node spent inside fdatasync. The cluster is the one of
bench/cluster_vs_etcd.py (8 shards x 3 replicas, fsync on), stopped in `finally`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.cluster_vs_etcd import Cluster, start_minikv
from minikv_core.client import AsyncClient
from minikv_tui.loadgen import GrpcTarget, LoadGenerator, LoadTarget, MinikvHttpTarget, Workload

WARMUP_S = 2.0


@dataclass(frozen=True)
class Step:
    clients: int
    ops_per_s: float
    p50_ms: float
    errors: int
    cpu_ms_per_write: float
    nodes: list[dict[str, Any]]
    writes: int = 0


async def _statuses(session: aiohttp.ClientSession, urls: list[str]) -> list[dict[str, Any]]:
    documents = []
    for url in urls:
        async with session.get(url + "/admin/status") as response:
            documents.append(json.loads(await response.read()))
    return documents


def _node_deltas(
    before: dict[str, Any], after: dict[str, Any], seconds: float, writes: int
) -> dict[str, Any]:
    rounds = after["host"]["rounds"] - before["host"]["rounds"]
    frames = after["host"]["frames_received"] - before["host"]["frames_received"]
    messages = after["host"]["messages_received"] - before["host"]["messages_received"]
    syncs = after["wal"]["syncs"] - before["wal"]["syncs"]
    sync_s = after["wal"]["sync_seconds_total"] - before["wal"]["sync_seconds_total"]

    def follower_reads(document: dict[str, Any], field: str) -> int:
        return sum(group.get("follower_reads", {}).get(field, 0) for group in document["groups"])

    return {
        "node": after["node_id"],
        "read_requests": follower_reads(after, "requests") - follower_reads(before, "requests"),
        "follower_reads": follower_reads(after, "reads_answered")
        - follower_reads(before, "reads_answered"),
        "leads": sum(1 for group in after["groups"] if group.get("role") == "leader"),
        "rounds_per_s": rounds / seconds,
        "syncs_per_s": syncs / seconds,
        "sync_pct": 100.0 * sync_s / seconds,
        "writes_per_round": writes / rounds if rounds else 0.0,
        "frames_received": frames,
        "messages_received": messages,
    }


async def _step(
    cluster: Cluster,
    status_session: aiohttp.ClientSession,
    target: LoadTarget,
    clients: int,
    seconds: float,
    *,
    workload: Workload,
) -> Step:
    generator = LoadGenerator(target, workload=workload, clients=clients, keys=10_000, seed=0)
    if workload != "put":
        await generator.preload()
    generator.start()
    try:
        await asyncio.sleep(WARMUP_S)
        generator.reset_totals()
        before = await _statuses(status_session, cluster.urls)
        cpu_before = cluster.cpu_seconds()
        started = time.monotonic()
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - started
        cpu = cluster.cpu_seconds() - cpu_before
        after = await _statuses(status_session, cluster.urls)
    finally:
        await generator.stop()
    totals = generator.totals()
    writes = totals.ops
    return Step(
        clients,
        totals.ops_per_s,
        totals.p50_ms or 0.0,
        totals.errors,
        1000.0 * cpu / writes if writes else float("nan"),
        # Every node applies every write of the shards it holds (all of them here).
        [_node_deltas(b, a, elapsed, writes) for b, a in zip(before, after, strict=True)],
        writes,
    )


def _print(step: Step, unit: str) -> None:
    """`unit`: what one operation is called in the lines ("write" for puts, else "op")."""
    writes = step.writes
    frames = sum(node["frames_received"] for node in step.nodes)
    messages = sum(node["messages_received"] for node in step.nodes)
    print(
        f"{step.clients:>4} clients  {step.ops_per_s:8.0f} {unit}s/s  p50 {step.p50_ms:6.1f} ms  "
        f"errors {step.errors}  cpu {step.cpu_ms_per_write:.2f} ms/{unit}  "
        f"peer frames {frames / writes if writes else 0.0:.2f}/{unit} "
        f"({messages / frames if frames else 0.0:.1f} messages each)"
    )
    for node in step.nodes:
        print(
            f"      node {node['node']} (leads {node['leads']}): "
            f"{node['rounds_per_s']:6.0f} rounds/s  {node['writes_per_round']:5.1f} {unit}s/round  "
            f"{node['syncs_per_s']:6.0f} syncs/s  sync {node['sync_pct']:4.1f}%"
            + (
                f"  follower reads {node['follower_reads']} in {node['read_requests']} ReadIndex"
                if node["read_requests"]
                else ""
            )
        )


async def run(clients: list[int], seconds: float, grpc: bool, workload: Workload) -> None:
    root = Path(tempfile.mkdtemp(prefix="minikv-rounds-"))
    # Unbounded pool: 200 clients must not queue behind aiohttp's default 100 connections,
    # and the status polls get their own session so they never wait behind the load.
    connector = aiohttp.TCPConnector(limit=0)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        aiohttp.ClientSession() as status_session,
    ):
        cluster = await start_minikv(root, session, 8)
        client: AsyncClient | None = None
        http_target: MinikvHttpTarget | None = None
        try:
            target: LoadTarget
            if grpc:
                client = AsyncClient([m.grpc_address for m in cluster.members])
                target = GrpcTarget(client)
            else:
                target = http_target = MinikvHttpTarget(cluster.urls)
            for count in clients:
                _print(
                    await _step(cluster, status_session, target, count, seconds, workload=workload),
                    "write" if workload == "put" else "op",
                )
        finally:
            if client is not None:
                await client.close()
            if http_target is not None:
                await http_target.close()
            cluster.stop()
            # Three nodes' WALs: ~200 MiB a run, left behind before this.
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,16,64,200", help="client counts, in order")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per step")
    parser.add_argument("--grpc", action="store_true", help="leader-routed gRPC client")
    parser.add_argument(
        "--workload",
        choices=("put", "get", "mixed"),
        default="put",
        help="what the clients do (get and mixed preload the keys first)",
    )
    args = parser.parse_args()
    counts = [int(part) for part in args.clients.split(",") if part.strip()]
    asyncio.run(run(counts, args.seconds, args.grpc, args.workload))


if __name__ == "__main__":
    main()
