"""Screenshots of the dashboard, from scripted scenarios on a real cluster.

    python tools/screenshots.py                 # render screenshots/*.svg from the recording
    python tools/screenshots.py --record        # re-record the demo from a real cluster first

The recording (tests/tui/snapshots/demo_recording.json) is a real 3-node, 8-shard cluster
driven through the demo: steady load, the meta leader isolated then healed, the leader killed,
then restarted. Times, pids and ports are normalised so the snapshot tests and the pictures
are the same on every machine; every other figure is what the nodes answered. Each scenario
replays the frames up to its mark through the dashboard (so the event log and the flashing
cells are what a live audience saw at that moment) and saves an SVG.

`screenshots/repairing.svg` is the snapshot test `test_job_panel[repairing-160x48]` (a real
4-node cluster losing a node and being repaired, tests/tui/snapshots/record_maintenance.py):
refresh it with `pytest tests/tui/test_dashboard_snapshots.py --snapshot-update` and copy it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minikv_core.client import AsyncClient  # noqa: E402
from minikv_tui.cluster_status import Poller  # noqa: E402
from minikv_tui.dashboard.app import DashboardApp, DashboardOptions  # noqa: E402
from minikv_tui.dashboard.session import RecordedSession  # noqa: E402
from minikv_tui.dashboard.source import load_recording, recorded_frames  # noqa: E402
from minikv_tui.launcher import Launcher  # noqa: E402
from minikv_tui.loadgen import LoadGenerator  # noqa: E402
from minikv_tui.registry import Registry  # noqa: E402

RECORDING = ROOT / "tests" / "tui" / "snapshots" / "demo_recording.json"
SCENARIOS = ("steady", "partitioned", "leader-killed", "recovering")
CLUSTER = "demo"
FRAME_S = 0.25
BASE_TIME = 1_700_000_000.0
"""Recorded times start here (2023-11-14 22:13:20 UTC), one frame every FRAME_S."""
RENDER_TIMEOUT_S = 30.0


# ------------------------------------------------------------------------------ recording


Scenario = Callable[[Launcher, Path, Path], Awaitable[None]]
"""(launcher, minikv home, recording path): drives a cluster and writes the recording."""


async def record_scenario(scenario: Scenario, path: Path, prefix: str = "minikv-demo-") -> None:
    """Run `scenario` on a fresh local cluster in a temporary home; the cluster is stopped
    whatever happens (shared with the maintenance recorder of the snapshot tests)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as directory:
        home = Path(directory)
        launcher = Launcher(CLUSTER, home=home, progress=lambda step: print(step.message))
        try:
            await scenario(launcher, home, path)
        finally:
            await launcher.down(grace_s=2.0)


async def record(path: Path) -> None:
    await record_scenario(_record, path)


async def _record(launcher: Launcher, home: Path, path: Path) -> None:
    await launcher.up(nodes=3, shards=8)
    view = await launcher.view()
    client = AsyncClient(view.endpoints())
    load_client = AsyncClient(view.endpoints(), timeout_s=2.0)
    loadgen = LoadGenerator(load_client, clients=4, keys=1000, seed=0)
    poller = Poller(client, name=CLUSTER, timeout_s=0.5)
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

    def meta_leader() -> int:
        leader = frames[-1]["meta_leader"]
        if leader is None:
            raise RuntimeError("no meta leader to act on")
        return int(leader)

    task = asyncio.get_running_loop().create_task(recorder())
    try:
        loadgen.start()
        await frames_more(16)
        marks["steady"] = len(frames)
        await launcher.isolate(meta_leader())
        await frames_more(16)
        marks["partitioned"] = len(frames)
        await launcher.heal()
        await frames_more(8)
        victim = meta_leader()
        await launcher.kill(victim)
        await frames_more(14)
        marks["leader-killed"] = len(frames)
        await launcher.start(victim)
        await frames_more(16)
        marks["recovering"] = len(frames)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await loadgen.stop()
        await client.close()
        await load_client.close()
        await registry.close()
    document = normalise({"marks": marks, "frames": frames, "load": loads, "events": events})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, separators=(",", ":")) + "\n")
    print(f"recorded {len(frames)} frames to {path}")


def normalise(document: dict[str, Any]) -> dict[str, Any]:
    """Times on a fixed clock, pids and ports renumbered, noisy figures rounded: what differs
    between two runs of the same scenario, and nothing else."""
    frames = document["frames"]
    pids: dict[int, int] = {}
    ports: dict[str, str] = {}

    def port(address: str | None) -> str | None:
        if address is None:
            return None
        host, _, number = address.rpartition(":")
        return ports.setdefault(number, f"{host}:{7001 + len(ports)}")

    for node in frames[0]["nodes"]:
        port(node["grpc"])
    for index, frame in enumerate(frames):
        frame["taken_at"] = BASE_TIME + index * FRAME_S
        for key in ("read_rate", "write_rate"):
            if frame[key] is not None:
                frame[key] = float(round(frame[key]))
        for node in frame["nodes"]:
            if node["pid"] is not None:
                node["pid"] = pids.setdefault(node["pid"], 4000 + 10 * len(pids) + node["node_id"])
            node["grpc"] = port(node["grpc"])
            node["http"] = port(node["http"])
            if node["cpu_percent"] is not None:
                node["cpu_percent"] = float(round(node["cpu_percent"]))
            if node["rss_bytes"] is not None:
                node["rss_bytes"] = node["rss_bytes"] // (1 << 20) * (1 << 20)
            if node["uptime_s"] is not None:
                node["uptime_s"] = round(node["uptime_s"])
    for window in document["load"]:
        if window is not None:
            window["seconds"] = FRAME_S
            window["ops_per_s"] = float(round(window["ops_per_s"]))
            for key in ("p50_ms", "p99_ms"):
                if window[key] is not None:
                    window[key] = round(window[key], 1)

    def pid_text(match: re.Match[str]) -> str:
        return f"pid {pids.get(int(match.group(1)), 4000)}"

    for index, frame_events in enumerate(document["events"]):
        for event in frame_events:
            event["at"] = BASE_TIME + index * FRAME_S
            event["detail"] = re.sub(r"pid (\d+)", pid_text, event["detail"])
    return document


# ------------------------------------------------------------------------------ rendering


async def render(scenario: str, size: tuple[int, int], out: Path, theme: str = "dark") -> Path:
    frames = recorded_frames(RECORDING, end=scenario)
    app = DashboardApp(
        RecordedSession(frames, title=CLUSTER), DashboardOptions(tz=dt.UTC, theme=theme)
    )
    async with app.run_test(size=size) as pilot:
        deadline = time.monotonic() + RENDER_TIMEOUT_S
        while app.frames_applied < len(frames):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{scenario}: the replay did not finish")
            await pilot.pause(0.02)
        await pilot.pause()
        app.save_screenshot(filename=out.name, path=str(out.parent))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", action="store_true", help="re-record from a real cluster")
    parser.add_argument("--out", type=Path, default=ROOT / "screenshots")
    parser.add_argument("--size", default="120x36", help="terminal size, WIDTHxHEIGHT")
    parser.add_argument("--theme", default="dark", help="dark, light or high-contrast")
    args = parser.parse_args()
    width, _, height = args.size.partition("x")
    size = (int(width), int(height))
    if args.record:
        asyncio.run(record(RECORDING))
    marks = load_recording(RECORDING).get("marks", {})
    args.out.mkdir(parents=True, exist_ok=True)
    for scenario in SCENARIOS:
        if scenario not in marks:
            raise SystemExit(f"{RECORDING} has no scenario {scenario!r}: run with --record")
        path = asyncio.run(render(scenario, size, args.out / f"{scenario}.svg", args.theme))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
