"""Screenshots of the dashboard, from scripted scenarios on a real cluster.

    python tools/screenshots.py                 # screenshots/*.svg (and *.png) from the recordings
    python tools/screenshots.py --record        # re-record the demo from a real cluster first

The recording (tests/tui/snapshots/demo_recording.json) is a real 3-node, 8-shard cluster
driven through the demo: load, large writes that fill and seal a WAL segment while every
replica is flushed and compacted (so the shards hold tables on several levels), the meta leader
isolated then healed, the leader killed, then restarted while every node compacts. Times, pids
and ports are normalised so the snapshot tests and the pictures are the same on every machine;
every other figure is what the nodes answered. Each scenario replays the frames up to its mark
through the dashboard (so the event log and the flashing cells are what a live audience saw
at that moment) and saves an SVG, and a PNG of it when resvg_py and a monospace font are
there (otherwise one line says why not).

`repairing` replays the other recording, a real 4-node cluster losing a node and being
repaired (tests/tui/snapshots/maintenance_recording.json, made by
tests/tui/snapshots/record_maintenance.py).
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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from textual.pilot import Pilot  # noqa: E402

from minikv_core.client import AsyncClient  # noqa: E402
from minikv_tui.cluster_status import ClusterSnapshot, NodeTarget, Poller  # noqa: E402
from minikv_tui.dashboard.app import DashboardApp, DashboardOptions  # noqa: E402
from minikv_tui.dashboard.control import ClusterControl  # noqa: E402
from minikv_tui.dashboard.session import RecordedSession  # noqa: E402
from minikv_tui.dashboard.source import load_recording, recorded_frames  # noqa: E402
from minikv_tui.dashboard.widgets.event_log import EventLog  # noqa: E402
from minikv_tui.launcher import Launcher  # noqa: E402
from minikv_tui.loadgen import LoadGenerator  # noqa: E402
from minikv_tui.registry import Registry  # noqa: E402

RECORDING = ROOT / "tests" / "tui" / "snapshots" / "demo_recording.json"
MAINTENANCE = ROOT / "tests" / "tui" / "snapshots" / "maintenance_recording.json"
SCENARIOS = {
    "steady": (RECORDING, "steady"),
    "partitioned": (RECORDING, "partitioned"),
    "leader-killed": (RECORDING, "leader-killed"),
    "recovering": (RECORDING, "recovering"),
    "repairing": (MAINTENANCE, "repairing"),
}
"""Picture -> (recording, the mark it is replayed to)."""
CLUSTER = "demo"
FRAME_S = 0.25
BASE_TIME = 1_700_000_000.0
"""Recorded times start here (2023-11-14 22:13:20 UTC), one frame every FRAME_S."""
RENDER_TIMEOUT_S = 30.0
POLL_TIMEOUT_S = 1.0
"""Longer than the dashboard's: during the bulk writes a busy node must not be recorded as
unreachable (the replay would tell of nodes going down that never did)."""
CONDITION_TIMEOUT_S = 120.0
BULK_CLIENTS = 4
BULK_KEYS = 400
BULK_VALUE_BYTES = 32 * 1024
"""Large values fill the first 64 MiB WAL segment in seconds on a laptop."""
STORAGE_PLAN: tuple[tuple[int, tuple[str, ...]], ...] = (
    (8 << 20, ("snapshot",)),
    (22 << 20, ("snapshot", "compact")),
    (36 << 20, ("snapshot",)),
    (50 << 20, ("snapshot",)),
)
"""What every node is told ('a', 'c') when each node's WAL reaches a size, while the bulk load
fills the first segment: runs of one merged older table and two newer ones per shard when the
segment seals. Measured: a shard's memtable (4 MiB) flushes by itself about every 16 MiB of
WAL, and four runs of a size merge, so flushes come every 14 MiB, the last one as close to
the seal (64 MiB) as that allows: nothing flushes by itself before the seal, and the flushes
have stopped flashing when it comes."""
SHOWN_HOME = "~/.local/share/minikv"
"""What a recording shows in place of the temporary home it ran in: the default home."""


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


FrameHook = Callable[[Sequence[NodeTarget], ClusterSnapshot], Awaitable[None]]
"""Runs once per frame after the poll, before the journal is read (a recorder that journals
events of its own does it here)."""


class FrameRecorder:
    """One frame every FRAME_S, in a task of its own: the cluster's status as the dashboard
    polls it, the load generator's window, the journal events since the last frame. Shared by
    every recorder (the demo here, the snapshot tests' maintenance and large-cluster ones)."""

    def __init__(
        self,
        launcher: Launcher,
        poller: Poller,
        registry: Registry,
        loadgen: LoadGenerator,
        on_frame: FrameHook | None = None,
    ) -> None:
        self._launcher = launcher
        self._poller = poller
        self._registry = registry
        self._loadgen = loadgen
        self._on_frame = on_frame
        self._task: asyncio.Task[None] | None = None
        self._last_event = 0
        self.frames: list[dict[str, Any]] = []
        self.loads: list[dict[str, Any] | None] = []
        self.events: list[list[dict[str, Any]]] = []
        self.marks: dict[str, int] = {}

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def more(self, count: int) -> None:
        """Until `count` more frames are taken."""
        target = len(self.frames) + count
        deadline = time.monotonic() + count * FRAME_S * 10 + 30
        while len(self.frames) < target:
            if time.monotonic() > deadline:
                raise RuntimeError("the recorder fell behind: is the machine overloaded?")
            await asyncio.sleep(0.05)

    def document(self, home: Path) -> dict[str, Any]:
        """The recording (normalised): marks, frames, load windows, events."""
        return normalise(
            {"marks": self.marks, "frames": self.frames, "load": self.loads, "events": self.events},
            home=home,
        )

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            targets = (await self._launcher.view()).targets()
            snapshot = await self._poller.poll(targets)
            if self._on_frame is not None:
                await self._on_frame(targets, snapshot)
            loadgen = self._loadgen
            window = loadgen.take_window() if loadgen.running else None
            new = await self._registry.events(CLUSTER, after_id=self._last_event)
            if new:
                self._last_event = new[-1].id
            self.frames.append(snapshot.to_json())
            self.loads.append(vars(window) if window is not None else None)
            self.events.append(
                [{"at": e.at, "kind": e.kind, "node": e.node, "detail": e.detail} for e in new]
            )
            await asyncio.sleep(max(0.0, FRAME_S - (time.monotonic() - started)))


async def record(path: Path) -> None:
    await record_scenario(_record, path)


async def _record(launcher: Launcher, home: Path, path: Path) -> None:
    await launcher.up(nodes=3, shards=8)
    view = await launcher.view()
    addresses = {node.node_id: node.grpc for node in view.nodes}
    client = AsyncClient(view.endpoints())
    load_client = AsyncClient(view.endpoints(), timeout_s=2.0)
    bulk_client = AsyncClient(view.endpoints(), timeout_s=10.0)
    loadgen = LoadGenerator(load_client, clients=4, keys=1000, seed=0)
    bulk = LoadGenerator(
        bulk_client,
        workload="put",
        clients=BULK_CLIENTS,
        keys=BULK_KEYS,
        value_size=BULK_VALUE_BYTES,
        seed=1,
        prefix=b"bulk/",
    )
    # The dashboard's own actions ('a' snapshot, 'c' compact), journalled as it journals them.
    control = ClusterControl(
        client, lambda: addresses, launcher=launcher, journal=launcher.record_event
    )
    poller = Poller(client, name=CLUSTER, timeout_s=POLL_TIMEOUT_S)
    registry = await Registry.open(home)
    recorder = FrameRecorder(launcher, poller, registry, loadgen)
    frames, marks, frames_more = recorder.frames, recorder.marks, recorder.more

    async def until(what: str, condition: Callable[[dict[str, Any]], bool]) -> int:
        """The index of the first frame taken from now on that satisfies `condition`."""
        checked = len(frames)
        deadline = time.monotonic() + CONDITION_TIMEOUT_S
        while True:
            for index in range(checked, len(frames)):
                if condition(frames[index]):
                    return index
            checked = len(frames)
            if time.monotonic() > deadline:
                raise RuntimeError(f"gave up waiting for {what}")
            await asyncio.sleep(0.05)

    def meta_leader() -> int:
        leader = frames[-1]["meta_leader"]
        if leader is None:
            raise RuntimeError("no meta leader to act on")
        return int(leader)

    def every_node(frame: dict[str, Any], test: Callable[[dict[str, Any]], bool]) -> bool:
        return all(node["reachable"] and test(node) for node in frame["nodes"])

    def sealed(node: dict[str, Any]) -> bool:
        return any(segment["state"] == "sealed" for segment in node["wal_segments"])

    def wal_at_least(least: int) -> Callable[[dict[str, Any]], bool]:
        return lambda frame: every_node(frame, lambda node: (node["wal_bytes"] or 0) >= least)

    def tables(frame: dict[str, Any]) -> dict[int, set[str]]:
        return {s["shard"]: {t["name"] for t in s["tables"]} for s in frame["shards"]}

    def merged_since(before: dict[int, set[str]]) -> Callable[[dict[str, Any]], bool]:
        """Every shard's tables on one level, some of them new since `before`."""
        return lambda frame: (
            tables(frame) != before
            and all(
                shard["leader"] is not None and len({t["level"] for t in shard["tables"]}) == 1
                for shard in frame["shards"]
            )
        )

    recorder.start()
    try:
        loadgen.start()
        await frames_more(8)
        # Steady, with storage that has lived: large writes fill the first WAL segment while
        # every replica is flushed a few times ('a'), so each shard holds tables on several
        # levels when the segment seals. Its records of the shards' newest writes keep the
        # sealed segment alive (it goes once every shard has flushed past it).
        bulk.start()
        for wal_bytes, actions in STORAGE_PLAN:
            await until(f"{wal_bytes} bytes of WAL everywhere", wal_at_least(wal_bytes))
            for action in actions:
                act = control.snapshot if action == "snapshot" else control.compact
                await asyncio.gather(*(act(node) for node in sorted(addresses)))
        rotated = await until("every node to seal a WAL segment", lambda f: every_node(f, sealed))
        # Steady up to that frame: the rotation flashes, the shards hold their runs. A second
        # later the nodes flush every shard whose entries pin the sealed segment (host.py's
        # maintenance), the runs merge and the segment is deleted.
        marks["steady"] = rotated + 1
        await bulk.stop()
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
        await frames_more(12)
        # 'a' then 'c' on every node while the restarted one catches up: a fresh run on top of
        # each shard's merged one, then a full compaction; the tables panel flashes the shards
        # whose tables changed.
        answering = [node["node_id"] for node in frames[-1]["nodes"] if node["reachable"]]
        await asyncio.gather(*(control.snapshot(node) for node in answering))
        await frames_more(1)
        before = tables(frames[-1])
        await asyncio.gather(*(control.compact(node) for node in answering))
        merged = await until("every shard's tables to be merged", merged_since(before))
        marks["recovering"] = merged + 1
    finally:
        await recorder.stop()
        await loadgen.stop()
        await bulk.stop()
        await client.close()
        await load_client.close()
        await bulk_client.close()
        await registry.close()
    document = recorder.document(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, separators=(",", ":")) + "\n")
    print(f"recorded {len(frames)} frames to {path}")


def normalise(document: dict[str, Any], home: Path | None = None) -> dict[str, Any]:
    """Times on a fixed clock, pids and ports renumbered, noisy figures rounded, the temporary
    minikv home shown as the default one: what differs between two runs of the same scenario,
    and nothing else."""
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
            if home is not None:
                event["detail"] = event["detail"].replace(str(home), SHOWN_HOME)
    return document


# ------------------------------------------------------------------------------ rendering


async def render(
    scenario: str,
    size: tuple[int, int],
    out: Path,
    theme: str = "dark",
    recording: Path = RECORDING,
) -> Path:
    frames = recorded_frames(recording, end=scenario)
    app = DashboardApp(
        RecordedSession(frames, title=CLUSTER), DashboardOptions(tz=dt.UTC, theme=theme)
    )
    async with app.run_test(size=size) as pilot:
        await settle(app, pilot, scenario)
        app.save_screenshot(filename=out.name, path=str(out.parent))
    return out


async def settle(app: DashboardApp, pilot: Pilot[str | None], scenario: str) -> None:
    """The wait of the snapshot tests (`wait_replayed` in tests/tui/test_dashboard_snapshots.py):
    every frame applied, then the event log scrolled to its end, which it does a refresh
    after the job panel or a resize took lines from it."""
    deadline = time.monotonic() + RENDER_TIMEOUT_S
    while not app.replay_finished:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{scenario}: the replay stuck at frame {app.frames_applied}")
        await pilot.pause(0.02)
    await pilot.pause()
    for log in app.query(EventLog):
        while log.auto_scroll and log.scroll_y != log.max_scroll_y:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{scenario}: the event log never scrolled to its end")
            await pilot.pause(0.02)


# ------------------------------------------------------------------------------ PNG


@dataclass(frozen=True)
class MonospaceFont:
    directory: Path
    family: str


FONT_DIRS = (
    "/usr/share/fonts",
    "/usr/local/share/fonts",
    "~/.local/share/fonts",
    "~/.fonts",
    "/Library/Fonts",
    "/System/Library/Fonts",
    "~/Library/Fonts",
    "C:/Windows/Fonts",
)
MONOSPACE_FILES = (
    ("DejaVuSansMono.ttf", "DejaVu Sans Mono"),
    ("LiberationMono-Regular.ttf", "Liberation Mono"),
    ("NotoSansMono-Regular.ttf", "Noto Sans Mono"),
    ("Menlo.ttc", "Menlo"),
    ("consola.ttf", "Consolas"),
)
"""Fonts with the box-drawing and block glyphs the dashboard draws, best first."""


def find_monospace_font(roots: Sequence[str] = FONT_DIRS) -> MonospaceFont | None:
    """A directory holding one of `MONOSPACE_FILES` under the usual font directories. Textual's
    SVGs name a web font resvg cannot fetch, then `monospace`: without a real monospace font
    the PNGs would have no text at all."""
    for file_name, family in MONOSPACE_FILES:
        for root in roots:
            base = Path(root).expanduser()
            if not base.is_dir():
                continue
            found = next(base.rglob(file_name), None)
            if found is not None:
                return MonospaceFont(found.parent, family)
    return None


def png_writer() -> tuple[Callable[[Path], Path] | None, str]:
    """(write PNG beside an SVG, "") or (None, why PNGs cannot be made here)."""
    try:
        import resvg_py  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None, "resvg_py is not installed (it renders SVG to PNG)"
    font = find_monospace_font()
    if font is None:
        families = ", ".join(family for _, family in MONOSPACE_FILES)
        return None, f"no monospace font found (looked for {families} under {', '.join(FONT_DIRS)})"

    def write(svg: Path) -> Path:
        data = resvg_py.svg_to_bytes(
            svg_path=str(svg),
            font_dirs=[str(font.directory)],
            monospace_family=font.family,
            font_family=font.family,
        )
        png = svg.with_suffix(".png")
        png.write_bytes(bytes(data))
        return png

    return write, ""


# ------------------------------------------------------------------------------ main


def terminal_size(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    if not (width.isdigit() and height.isdigit() and int(width) >= 20 and int(height) >= 10):
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, e.g. 120x36")
    return int(width), int(height)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", action="store_true", help="re-record the demo first")
    parser.add_argument("--out", type=Path, default=ROOT / "screenshots")
    parser.add_argument(
        "--size", type=terminal_size, default="120x36", help="terminal size, WIDTHxHEIGHT"
    )
    parser.add_argument("--theme", default="dark", help="dark, light or high-contrast")
    args = parser.parse_args()
    if args.record:
        asyncio.run(record(RECORDING))
    args.out.mkdir(parents=True, exist_ok=True)
    write_png, why_not = png_writer()
    if write_png is None:
        print(f"PNGs skipped: {why_not}")
    for name, (recording, mark) in SCENARIOS.items():
        if mark not in load_recording(recording).get("marks", {}):
            raise SystemExit(f"{recording} has no scenario {mark!r}: re-record it (--record)")
        svg = asyncio.run(render(mark, args.size, args.out / f"{name}.svg", args.theme, recording))
        print(f"wrote {svg}")
        if write_png is not None:
            try:
                print(f"wrote {write_png(svg)}")
            except Exception as error:  # one line, never a traceback: the SVG is there
                print(f"PNG of {svg.name} failed: {type(error).__name__}: {error}")


if __name__ == "__main__":
    main()
