"""Records large_recording.json: a real 5-node, 16-shard cluster under load, then one of its
nodes killed — the largest cluster the issue asks the dashboard to handle, for the snapshot
tests that check every node and every important column still shows without scrolling.

    .venv/bin/python tests/tui/snapshots/record_large.py

Like tools/screenshots.py (whose `normalise` and `record_scenario` it reuses): one frame every
FRAME_S, times on a fixed clock, pids and ports renumbered.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))  # `screenshots`, the module name mypy knows it by

from minikv_core.client import AsyncClient  # noqa: E402
from minikv_tui.cluster_status import Poller  # noqa: E402
from minikv_tui.launcher import Launcher  # noqa: E402
from minikv_tui.loadgen import LoadGenerator  # noqa: E402
from minikv_tui.registry import Registry  # noqa: E402
from screenshots import CLUSTER, FRAME_S, POLL_TIMEOUT_S, normalise, record_scenario  # noqa: E402

RECORDING = Path(__file__).parent / "large_recording.json"
NODES = 5
SHARDS = 16


async def record(path: Path) -> None:
    await record_scenario(_record, path, prefix="minikv-large-")


async def _record(launcher: Launcher, home: Path, path: Path) -> None:
    await launcher.up(nodes=NODES, shards=SHARDS, replicas=3)
    view = await launcher.view()
    client = AsyncClient(view.endpoints())
    load_client = AsyncClient(view.endpoints(), timeout_s=2.0)
    loadgen = LoadGenerator(load_client, clients=4, keys=1000, seed=0)
    poller = Poller(client, name=CLUSTER, timeout_s=POLL_TIMEOUT_S)
    registry = await Registry.open(home)
    frames: list[dict[str, Any]] = []
    loads: list[dict[str, Any] | None] = []
    events: list[list[dict[str, Any]]] = []
    marks: dict[str, int] = {}
    last_event = 0

    async def recorder() -> None:
        nonlocal last_event
        while True:
            started = time.monotonic()
            snapshot = await poller.poll((await launcher.view()).targets())
            window = loadgen.take_window() if loadgen.running else None
            new = await registry.events(CLUSTER, after_id=last_event)
            if new:
                last_event = new[-1].id
            frames.append(snapshot.to_json())
            loads.append(vars(window) if window is not None else None)
            events.append(
                [{"at": e.at, "kind": e.kind, "node": e.node, "detail": e.detail} for e in new]
            )
            await asyncio.sleep(max(0.0, FRAME_S - (time.monotonic() - started)))

    async def frames_more(count: int) -> None:
        target = len(frames) + count
        deadline = time.monotonic() + count * FRAME_S * 10 + 30
        while len(frames) < target:
            if time.monotonic() > deadline:
                raise RuntimeError("the recorder fell behind: is the machine overloaded?")
            await asyncio.sleep(0.05)

    task = asyncio.get_running_loop().create_task(recorder())
    try:
        loadgen.start()
        await frames_more(12)
        marks["steady"] = len(frames)
        # The node leading most shards, unless it leads the meta group: elections in many
        # shards at once, the meta group undisturbed.
        last = frames[-1]
        leaders = [s["leader"] for s in last["shards"] if s["leader"] is not None]
        candidates = [n for n in range(1, NODES + 1) if n != last["meta_leader"]]
        victim = max(candidates, key=lambda node: (leaders.count(node), node))
        await launcher.kill(victim)
        await frames_more(12)
        marks["node-down"] = len(frames)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await loadgen.stop()
        await client.close()
        await load_client.close()
        await registry.close()
    document = normalise(
        {"marks": marks, "frames": frames, "load": loads, "events": events}, home=home
    )
    path.write_text(json.dumps(document, separators=(",", ":")) + "\n")
    print(f"recorded {len(frames)} frames to {path}")


if __name__ == "__main__":
    asyncio.run(record(RECORDING))
