"""The dashboard's budget (issue 7): first frame within 1 s of the cluster being ready, and at
most 15% of one core with 5 nodes and 16 shards refreshing at 4 Hz.

    .venv/bin/python bench/dashboard_cpu.py [--nodes 5] [--shards 16] [--seconds 20] [--load]

Starts a real local cluster (in a temporary minikv home), waits until every shard has a
leader, then runs the real dashboard headless (Textual's test driver, 160x48) against it:
prints the time from app start to the first applied frame, the frame rate reached, and the
dashboard process's CPU time over the measured window as a percentage of one core. With
`--load` the built-in load generator runs too; it lives in the dashboard's process, so its
CPU is included (the budget is for the dashboard, so the default run has it off). The cluster
is stopped and its home deleted at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minikv_tui.dashboard.app import DashboardApp, DashboardOptions  # noqa: E402
from minikv_tui.dashboard.session import LocalSession  # noqa: E402
from minikv_tui.launcher import Launcher  # noqa: E402

CLUSTER = "bench"
FIRST_FRAME_TIMEOUT_S = 30.0


async def measure(home: Path, nodes: int, shards: int, seconds: float, load: bool) -> str:
    launcher = Launcher(CLUSTER, home=home)
    try:
        await launcher.up(nodes=nodes, shards=shards)
        app = DashboardApp(
            LocalSession(CLUSTER, home=home), DashboardOptions(on_exit="keep", tz=dt.UTC)
        )
        started = time.monotonic()
        async with app.run_test(size=(160, 48)) as pilot:
            while app.frames_applied < 1:
                if time.monotonic() - started > FIRST_FRAME_TIMEOUT_S:
                    return f"no frame within {FIRST_FRAME_TIMEOUT_S:g} s"
                await pilot.pause(0.01)
            first_frame_s = time.monotonic() - started
            if load:
                await pilot.press("l")
            while app.frames_applied < 8:  # past start-up work (fonts, first layouts)
                await pilot.pause(0.1)
            frames0, cpu0, wall0 = app.frames_applied, time.process_time(), time.monotonic()
            await asyncio.sleep(seconds)
            frames1, cpu1, wall1 = app.frames_applied, time.process_time(), time.monotonic()
            if load:
                await pilot.press("l")
        elapsed = wall1 - wall0
        return (
            f"{nodes} nodes, {shards} shards, load {'on' if load else 'off'}: first frame "
            f"{first_frame_s:.2f} s after start; {(frames1 - frames0) / elapsed:.2f} frames/s; "
            f"dashboard CPU {(cpu1 - cpu0) / elapsed * 100:.1f}% of one core over {elapsed:.0f} s"
        )
    finally:
        await launcher.down(grace_s=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--load", action="store_true", help="run the load generator too")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="minikv-dash-bench-"))
    try:
        print(asyncio.run(measure(home, args.nodes, args.shards, args.seconds, args.load)))
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
