"""Records maintenance_recording.json: a real 4-node, 8-shard cluster under load loses a node,
is repaired with that node declared dead, then verified — the frames and the job documents a
dashboard saw, for the job panel's snapshot tests.

    .venv/bin/python tests/tui/snapshots/record_maintenance.py

Like tools/screenshots.py (whose `normalise` it reuses): one frame every FRAME_S, times on a
fixed clock, pids and ports renumbered. Each frame carries the job document read after it
(null before the first job), and the job transitions are journalled the way the dashboard
journals them (`JobWatcher`), so a replay's event log tells the same story. `dry_runs` holds
the repair's dry-run answer: what the confirm dialog showed before the job started.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))  # `screenshots`, the module name mypy knows it by

from minikv_core.client import AsyncClient  # noqa: E402
from minikv_tui.cluster_status import ClusterSnapshot, NodeTarget, Poller  # noqa: E402
from minikv_tui.dashboard.job_watch import JobWatcher  # noqa: E402
from minikv_tui.launcher import Launcher  # noqa: E402
from minikv_tui.loadgen import LoadGenerator  # noqa: E402
from minikv_tui.registry import Registry  # noqa: E402
from screenshots import BASE_TIME, FrameRecorder, record_scenario  # noqa: E402

RECORDING = Path(__file__).parent / "maintenance_recording.json"
CLUSTER = "demo"
JOB_TIMEOUT_S = 120.0


async def record(path: Path) -> None:
    await record_scenario(_record, path, prefix="minikv-maintenance-")


async def _record(launcher: Launcher, home: Path, path: Path) -> None:
    await launcher.up(nodes=4, shards=8, replicas=3)
    view = await launcher.view()
    client = AsyncClient(view.endpoints())
    load_client = AsyncClient(view.endpoints(), timeout_s=2.0)
    loadgen = LoadGenerator(load_client, clients=4, keys=1000, seed=0)
    poller = Poller(client, name=CLUSTER, timeout_s=0.5)
    registry = await Registry.open(home)
    watcher = JobWatcher(idle_every=1)
    real_times: list[float] = []
    jobs: list[dict[str, Any] | None] = []
    dry_runs: dict[str, dict[str, Any]] = {}
    live: list[str] = []
    last_read: list[dict[str, Any] | None] = [None]

    async def read(args: Mapping[str, Any]) -> Mapping[str, Any]:
        document = await client.maintain("job", dict(args), endpoint=live[0], timeout_s=1.0)
        last_read[0] = document
        return document

    async def follow_jobs(targets: Sequence[NodeTarget], snapshot: ClusterSnapshot) -> None:
        """Each frame: the job as the dashboard's watcher reads it, its events journalled."""
        live[:] = [t.grpc for t in targets if t.process == "up"]
        last_read[0] = None
        await watcher.poll(read, snapshot.taken_at)
        for event in watcher.take_events():
            await registry.record_event(CLUSTER, event.kind, event.detail, None)
        real_times.append(snapshot.taken_at)
        document = last_read[0]
        jobs.append(document if document and document.get("state") != "none" else None)

    recorder = FrameRecorder(launcher, poller, registry, loadgen, on_frame=follow_jobs)
    frames, marks, frames_more = recorder.frames, recorder.marks, recorder.more

    async def run_job(operation: str, args: dict[str, Any]) -> None:
        document = await client.maintain(operation, args, endpoint=live[0], timeout_s=10.0)
        watcher.follow(document, time.time())
        deadline = time.monotonic() + JOB_TIMEOUT_S
        half_marked = False
        while True:
            job = watcher.status.job
            if job is not None and job.id == document["id"] and not job.running:
                return
            if (
                operation == "repair"
                and not half_marked
                and job is not None
                and job.steps
                and job.steps_done * 2 >= len(job.steps)
            ):
                marks["repairing"] = len(frames)
                half_marked = True
            if time.monotonic() > deadline:
                raise RuntimeError(f"{operation} did not finish: {watcher.status}")
            await asyncio.sleep(0.02)

    recorder.start()
    try:
        loadgen.start()
        await frames_more(12)
        victim = max(n for n in range(1, 5) if n != frames[-1]["meta_leader"])
        await launcher.kill(victim)
        await frames_more(8)
        marks["killed"] = len(frames)
        dry_runs["repair"] = await client.maintain(
            "repair", {"dry_run": True, "dead": [victim]}, endpoint=live[0], timeout_s=10.0
        )
        await run_job("repair", {"dead": [victim]})
        await frames_more(4)
        marks["repaired"] = len(frames)
        await run_job("verify", {})
        await frames_more(4)
        marks["verified"] = len(frames)
    finally:
        await recorder.stop()
        await loadgen.stop()
        await client.close()
        await load_client.close()
        await registry.close()
    document = recorder.document(home)
    document["jobs"] = [_on_fixed_clock(job, real_times[0]) for job in jobs]
    document["dry_runs"] = dry_runs
    path.write_text(json.dumps(document, separators=(",", ":")) + "\n")
    print(f"recorded {len(frames)} frames to {path}")


def _on_fixed_clock(job: dict[str, Any] | None, real_start: float) -> dict[str, Any] | None:
    """A job's wall-clock times moved onto the recording's clock, as frame times are."""
    if job is None:
        return None
    for key in ("started_at", "finished_at"):
        if job.get(key):
            # Not rounded: the durations the panel shows are differences of these.
            job[key] = BASE_TIME + job[key] - real_start
    return job


if __name__ == "__main__":
    asyncio.run(record(RECORDING))
