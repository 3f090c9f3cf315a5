"""Following maintenance jobs across polls: which job to read, and what changed.

The session worker calls `poll` once per refresh, so job reads never overlap and never block
the screen. While a job runs it is read by id every refresh (the progress bar moves at the
dashboard's rate); otherwise the meta leader's latest job is read about once a second, which
is how a repair the leader started on its own — or one started from another terminal —
appears. A job this dashboard started is handed over with `follow` the moment the node
answers, so even a job that ends before the next poll is told.

A poll's answer is dropped when `follow` ran while it was in flight (a generation counter):
the action and the poll are separate tasks, and an older answer must not replace the job just
started. Transitions become journal events, each told once: "started" when a job is first
seen running, "finished" when a job seen before (or started here) ends. Jobs that had already
ended before the dashboard opened are shown, not journalled: they are history, not news. A
job a person started with another tool is marked `foreign`: in a shared journal that tool
tells it already.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from minikv_core.client import ClientError, InvalidRequestError
from minikv_tui.dashboard.jobs import (
    JobDocumentError,
    finished_line,
    job_title,
    parse_job,
    started_line,
)
from minikv_tui.maintenance_jobs import KIND_FAILED, Job

JobReader = Callable[[Mapping[str, Any]], Awaitable[Mapping[str, Any]]]
"""Reads `operate job` with these args ({} latest, {"id": …}); raises ClientError."""


@dataclass(frozen=True)
class JobEvent:
    kind: str
    detail: str
    foreign: bool = False
    """A job a person started elsewhere (a CLI, another dashboard): that tool journals it in
    a shared journal. Jobs started here, and automatic ones, nobody else tells."""


@dataclass(frozen=True)
class JobStatus:
    """What the job panel shows: the job followed (or the last one seen); `lost` when it ended
    with its meta leader, `note` when its state could not be read (or maintenance is not
    available at all)."""

    job: Job | None
    observed_at: float
    note: str = ""
    lost: bool = False


class JobWatcher:
    def __init__(self, *, idle_every: int) -> None:
        assert idle_every >= 1, idle_every
        self._idle_every = idle_every
        self._job: Job | None = None
        self._told: dict[str, str] = {}
        """Job id -> the last state journalled for it."""
        self._ours: set[str] = set()
        self._polls = 0
        self._generation = 0
        self._note = ""
        self._lost = False
        self._observed_at = 0.0
        self._disabled = False
        self._events: list[JobEvent] = []
        self._changed = False

    # --- what the app reads ----------------------------------------------------------------

    @property
    def status(self) -> JobStatus:
        return JobStatus(self._job, self._observed_at, self._note, self._lost)

    @property
    def running(self) -> Job | None:
        """The job known to be running (an action refuses to start a second one)."""
        job = self._job
        return job if job is not None and job.running and not self._lost else None

    def take_events(self) -> list[JobEvent]:
        events, self._events = self._events, []
        return events

    def take_changed(self) -> bool:
        """Whether the status changed since the last call (the panel repaints only then)."""
        changed, self._changed = self._changed, False
        return changed

    # --- what feeds it ---------------------------------------------------------------------

    def follow(self, document: Mapping[str, Any], at: float) -> None:
        """A job this dashboard just started (the node's answer to the start call)."""
        self._generation += 1
        job = parse_job(document)
        if job is not None:
            self._ours.add(job.id)
        self._apply(job, at, first_poll=False)

    def observe(self, document: Mapping[str, Any], at: float) -> None:
        """A job document from elsewhere (a recording's frame)."""
        self._apply(parse_job(document), at, first_poll=self._polls == 0)
        self._polls += 1

    async def poll(self, read: JobReader, at: float) -> None:
        """One refresh: reads the followed job, or (about once a second) the latest one."""
        if self._disabled:
            return
        following = self._job is not None and self._job.running and not self._lost
        due = following or self._polls % self._idle_every == 0
        first_poll = self._polls == 0
        self._polls += 1
        if not due:
            return
        args: dict[str, Any] = {"id": self._job.id} if following and self._job else {}
        generation = self._generation
        try:
            document = await read(args)
            job = parse_job(document)
        except InvalidRequestError as error:
            if generation != self._generation:
                return
            if following:
                self._lose(at)
            else:
                # The node cannot serve maintenance (an older minikv): stop asking.
                self._disabled = True
                self._set_note(f"maintenance unavailable: {error}")
            return
        except (ClientError, JobDocumentError) as error:
            if generation == self._generation and following:
                self._set_note(f"job status unavailable: {error}")
            return
        if generation != self._generation:
            return  # a job was started while this read was in flight: it is newer
        self._apply(job, at, first_poll=first_poll)

    # --- machinery -------------------------------------------------------------------------

    def _apply(self, job: Job | None, at: float, *, first_poll: bool) -> None:
        self._observed_at = at
        if job is None:
            # The meta leader has no job (none ran, or leadership moved): keep what was shown.
            self._set_note("")
            return
        known = self._told.get(job.id)
        foreign = job.id not in self._ours and not job.auto
        if job.running and known is None:
            self._told[job.id] = "running"
            self._events.append(JobEvent(job.kind, started_line(job), foreign))
        elif not job.running and known != job.state:
            self._told[job.id] = job.state
            if known is not None or not first_poll:
                self._events.append(_finished_event(job, foreign))
        if job != self._job or job.running or self._lost or self._note:
            self._changed = True  # a running job's clock moves with every frame
        self._job = job
        self._lost = False
        self._note = ""

    def _lose(self, at: float) -> None:
        job = self._job
        assert job is not None
        self._observed_at = at
        self._lost = True
        self._told[job.id] = "lost"
        self._note = ""
        self._changed = True
        foreign = job.id not in self._ours and not job.auto
        self._events.append(
            JobEvent(KIND_FAILED, f"{job_title(job)} lost with the meta leader", foreign)
        )

    def _set_note(self, note: str) -> None:
        if note != self._note:
            self._note = note
            self._changed = True


def _finished_event(job: Job, foreign: bool) -> JobEvent:
    # The journal kinds `minikv cluster repair|verify|rebalance` use too (a failed job, a
    # verify that found damage, else the job's own), so the event log reads alike whichever
    # tool ran the job.
    return JobEvent(job.journal_kind(), finished_line(job), foreign)
