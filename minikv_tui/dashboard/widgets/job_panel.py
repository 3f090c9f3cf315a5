"""The maintenance job under the panels: a progress bar and the step being run while a job
runs, then what it achieved — so an audience sees a killed node's replicas come back.

Hidden until there is a job to tell about; two lines while one runs, one after. Lines never
wrap (an ellipsis cuts them): the panel must not push the tables around as steps change.
"""

from __future__ import annotations

import datetime as dt

from rich.console import Group
from rich.text import Text
from textual.widgets import Static

from minikv_tui.dashboard import format as fmt
from minikv_tui.dashboard.job_watch import JobStatus
from minikv_tui.dashboard.jobs import job_title, lost_parts, outcome_parts, progress_line
from minikv_tui.dashboard.palette import Palette
from minikv_tui.maintenance_jobs import Job

BAR_WIDTH = 24


class JobPanel(Static):
    DEFAULT_CSS = """
    JobPanel { height: auto; max-height: 2; padding: 0 1; background: $panel; display: none; }
    JobPanel.-shown { display: block; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._status: JobStatus | None = None
        self._plain = ""
        self._lines = 0

    @property
    def text(self) -> str:
        """What the panel says, as plain text (tests and tools read it)."""
        return self._plain

    @property
    def status(self) -> JobStatus | None:
        return self._status

    def show(self, status: JobStatus, palette: Palette, tz: dt.tzinfo | None) -> None:
        self._status = status
        lines = _lines(status, palette, tz)
        self.set_class(bool(lines), "-shown")
        for line in lines:
            line.no_wrap = True
            line.overflow = "ellipsis"
        self._plain = "\n".join(line.plain for line in lines)
        # A running job repaints every frame: re-layout the screen only when the height changes.
        self.update(Group(*lines), layout=len(lines) != self._lines)
        self._lines = len(lines)


def _lines(status: JobStatus, palette: Palette, tz: dt.tzinfo | None) -> list[Text]:
    job = status.job
    note = Text(status.note, palette.lag) if status.note else None
    if job is None:
        return [note] if note is not None else []
    if status.lost:
        lost = lost_parts(job)
        return [
            Text.assemble(("? ", palette.lag), (lost.headline, palette.lag), f" — {lost.hint}"),
            Text.assemble("  ", (lost.detail, palette.dim)),
        ]
    if job.running:
        return [_running(job, status.observed_at, palette), note or _step(job, palette)]
    finished = _finished(job, palette, tz)
    return finished if note is None else [finished[0], note]


def _running(job: Job, now: float, palette: Palette) -> Text:
    total = len(job.steps)
    done = job.steps_done
    filled = round(BAR_WIDTH * done / total) if total else 0
    counts = f" {done}/{total} steps" if total else " planning"
    return Text.assemble(
        ("▶ ", palette.candidate),
        (job_title(job), "bold"),
        "  ",
        ("━" * filled, palette.up),
        ("─" * (BAR_WIDTH - filled), palette.dim),
        counts,
        (f"  {job.elapsed_s(now):.0f} s", palette.dim),
    )


def _step(job: Job, palette: Palette) -> Text:
    return Text.assemble(("  ", ""), (progress_line(job), palette.dim))


def _finished(job: Job, palette: Palette, tz: dt.tzinfo | None) -> list[Text]:
    good = job.succeeded
    mark, style = ("✓ ", palette.up) if good else ("✗ ", palette.down)
    verb = "done" if job.state == "done" else job.state
    told = outcome_parts(job)
    when = f" {fmt.clock(job.finished_at, tz)}" if job.finished_at > 0 else ""
    lines = [
        Text.assemble(
            (mark, style),
            (f"{job_title(job)} {verb}", "bold"),
            (when, palette.dim),
            " " if job.state == "failed" else ": ",
            (told.headline, "" if good else style),
            (f" — {told.hint}" if told.hint else "", "bold"),
        )
    ]
    if told.detail:
        lines.append(Text.assemble("  ", (told.detail, palette.lag if good else style)))
    return lines
