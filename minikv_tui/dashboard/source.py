"""Where the dashboard's cluster states come from: a live cluster, or a recording.

The app only ever sees `Frame`s, one per refresh, from a `StatusSource`. A live source polls
real nodes through `cluster_status.Poller`; a recorded source replays frames saved as JSON, so
snapshot tests and screenshots render a real cluster's states byte for byte the same every run.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from minikv_tui.cluster_status import ClusterSnapshot, NodeTarget, Poller
from minikv_tui.dashboard.journal import LogEvent
from minikv_tui.loadgen import LoadWindow


@dataclass(frozen=True)
class Frame:
    """One refresh. `detailed` is False when WAL/SSTable documents were skipped to save CPU:
    widgets that show them keep what they last had rather than blank out."""

    snapshot: ClusterSnapshot
    detailed: bool
    load: LoadWindow | None = None
    """A recorded load-generator window (live frames leave it None: the app samples its own)."""
    events: tuple[LogEvent, ...] = ()
    """Journal events recorded with this frame (live frames leave it empty: the app tails the
    journal itself)."""
    job: Mapping[str, Any] | None = None
    """A recorded maintenance job document, as `operate job` answered it (live frames leave
    it None: the app reads the job itself)."""


class StatusSource(Protocol):
    """What the poll worker reads; `fetch` is awaited by one worker, never concurrently."""

    @property
    def live(self) -> bool: ...

    @property
    def exhausted(self) -> bool:
        """No frame left to fetch (a live source never is)."""
        ...

    @property
    def frames(self) -> int:
        """Frames fetched so far (live) or in the recording."""
        ...

    async def fetch(self) -> Frame: ...


TargetsProvider = Callable[[], Awaitable[Sequence[NodeTarget]]]


class LiveSource:
    """Polls the nodes `targets()` names, asking for WAL/SSTable detail every
    `detail_every`-th poll only: those documents cost more than the status and change slower.
    The first poll asks for the status alone, so the first frame (roles, leaders: what a
    person looks for first) is not held up by documents it can show a refresh later; detail
    comes with the second poll, then every `detail_every`-th."""

    def __init__(self, poller: Poller, targets: TargetsProvider, *, detail_every: int = 4) -> None:
        assert detail_every >= 1, detail_every
        self._poller = poller
        self._targets = targets
        self._detail_every = detail_every
        self._polls = 0

    @property
    def live(self) -> bool:
        return True

    @property
    def exhausted(self) -> bool:
        return False

    @property
    def frames(self) -> int:
        return self._polls

    async def fetch(self) -> Frame:
        detailed = self._polls > 0 and (self._polls - 1) % self._detail_every == 0
        self._polls += 1
        targets = await self._targets()
        snapshot = await self._poller.poll(targets, detail=detailed)
        return Frame(snapshot, detailed)


class RecordedSource:
    """Replays frames in order, then holds: once exhausted, `fetch` waits forever (the app
    cancels it on exit), so a finished replay costs nothing and never repeats a change."""

    def __init__(self, frames: Sequence[Frame]) -> None:
        assert frames, "a recording needs at least one frame"
        self._frames = list(frames)
        self._next = 0

    @property
    def live(self) -> bool:
        return False

    @property
    def frames(self) -> int:
        return len(self._frames)

    @property
    def exhausted(self) -> bool:
        return self._next >= len(self._frames)

    async def fetch(self) -> Frame:
        if self._next >= len(self._frames):
            await asyncio.Event().wait()
        frame = self._frames[self._next]
        self._next += 1
        return frame


def load_recording(path: Path) -> dict[str, Any]:
    """A recording file: `{"marks": {label: end frame index}, "frames": [snapshot JSON, …],
    "load": [load window or null, …], "events": [[event, …], …], "jobs": [job document or
    null, …]}` (`load`, `events` and `jobs` optional, parallel to `frames`)."""
    document = json.loads(path.read_text())
    if not isinstance(document, dict) or not isinstance(document.get("frames"), list):
        raise ValueError(f"{path}: not a recording (expected an object with a 'frames' list)")
    return document


def recorded_frames(path: Path, *, end: str | None = None) -> list[Frame]:
    """The frames of a recording, up to (not including) the frame marked `end` when given."""
    document = load_recording(path)
    count = len(document["frames"])
    loads = document.get("load") or [None] * count
    events = document.get("events") or [[] for _ in range(count)]
    jobs = document.get("jobs") or [None] * count
    frames = [
        Frame(
            ClusterSnapshot.from_json(frame),
            detailed=True,
            load=LoadWindow(**load) if load is not None else None,
            events=tuple(LogEvent(**event) for event in frame_events),
            job=job,
        )
        for frame, load, frame_events, job in zip(
            document["frames"], loads, events, jobs, strict=True
        )
    ]
    if end is not None:
        marks = document.get("marks", {})
        if end not in marks:
            raise ValueError(f"{path}: no mark {end!r} (marks: {', '.join(marks)})")
        frames = frames[: int(marks[end])]
    return frames


def frame_json(frame: Frame) -> tuple[dict[str, Any], dict[str, Any] | None, list[Any]]:
    """A frame as a recording stores it: snapshot, load window, events."""
    load = vars(frame.load) if frame.load is not None else None
    return frame.snapshot.to_json(), load, [vars(event) for event in frame.events]
