"""Idle CPU of a 3-node cluster (8 shards x 3 replicas) whose logs were compacted.

Why this number: a node with nothing to do should cost next to nothing, and a compacted log
is the steady state of every long-running cluster. It caught the core asking for the whole
snapshot on every heartbeat (which packed the engine each time).

    .venv/bin/python -m bench.node_idle_cpu [--seconds 10]

Real `minikv serve` processes (the integration tests' harness), CPU from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

import aiohttp

from minikv_tui.node_process import CLOCK_TICKS, proc_usage
from tests.integration.conftest import Cluster


async def measure(seconds: float) -> list[float]:
    root = Path(tempfile.mkdtemp(prefix="minikv-idle-"))
    cluster = Cluster(root, 3, 8, 3)
    async with aiohttp.ClientSession() as session:
        cluster.session = session
        try:
            await cluster.start()
            await cluster.wait_ready()
            for i in range(2000):
                await cluster.request(1 + i % 3, "PUT", f"/kv/key{i}", b"x" * 100)
            for node_id in cluster.nodes:
                await cluster.request(node_id, "POST", "/admin/snapshot", json_body={})
            await asyncio.sleep(2)
            pids = [node.process.pid for node in cluster.nodes.values() if node.process]
            before = [proc_usage(pid)[0] for pid in pids]
            started = time.monotonic()
            await asyncio.sleep(seconds)
            elapsed = time.monotonic() - started
            after = [proc_usage(pid)[0] for pid in pids]
            return [
                (b - a) / CLOCK_TICKS / elapsed * 100
                for a, b in zip(before, after, strict=True)
                if a is not None and b is not None
            ]
        finally:
            cluster.kill_all()
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    used = asyncio.run(measure(args.seconds))
    print("idle CPU, % of one core per node:", " ".join(f"{u:.1f}" for u in used))


if __name__ == "__main__":
    main()
