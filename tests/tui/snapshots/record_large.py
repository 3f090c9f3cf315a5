"""Records large_recording.json: a real 5-node, 16-shard cluster under load, then one of its
nodes killed — the largest cluster the issue asks the dashboard to handle, for the snapshot
tests that check every node and every important column still shows without scrolling.

    .venv/bin/python tests/tui/snapshots/record_large.py

Like tools/screenshots.py (whose `FrameRecorder` and `record_scenario` it reuses): one frame
every FRAME_S, times on a fixed clock, pids and ports renumbered.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))  # `screenshots`, the module name mypy knows it by

from minikv_core.client import AsyncClient  # noqa: E402
from minikv_tui.cluster_status import Poller  # noqa: E402
from minikv_tui.launcher import Launcher  # noqa: E402
from minikv_tui.loadgen import LoadGenerator  # noqa: E402
from minikv_tui.registry import Registry  # noqa: E402
from screenshots import CLUSTER, POLL_TIMEOUT_S, FrameRecorder, record_scenario  # noqa: E402

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
    recorder = FrameRecorder(launcher, poller, registry, loadgen)
    frames, marks = recorder.frames, recorder.marks
    recorder.start()
    try:
        loadgen.start()
        await recorder.more(12)
        marks["steady"] = len(frames)
        # The node leading most shards, unless it leads the meta group: elections in many
        # shards at once, the meta group undisturbed.
        last = frames[-1]
        leaders = [s["leader"] for s in last["shards"] if s["leader"] is not None]
        candidates = [n for n in range(1, NODES + 1) if n != last["meta_leader"]]
        victim = max(candidates, key=lambda node: (leaders.count(node), node))
        await launcher.kill(victim)
        await recorder.more(12)
        marks["node-down"] = len(frames)
    finally:
        await recorder.stop()
        await loadgen.stop()
        await client.close()
        await load_client.close()
        await registry.close()
    document = recorder.document(home)
    path.write_text(json.dumps(document, separators=(",", ":")) + "\n")
    print(f"recorded {len(frames)} frames to {path}")


if __name__ == "__main__":
    asyncio.run(record(RECORDING))
