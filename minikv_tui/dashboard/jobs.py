"""Maintenance jobs (repair, verify, rebalance) as the dashboard reads and tells them.

The node answers JSON documents (`minikv_core/cluster/maintenance.py`); this module turns them
into typed views once, at the edge, so the panel, the confirm dialog and the event log never
index into dicts, and a malformed document is refused with a sentence instead of a KeyError
in a widget. Everything here is pure: no I/O, no clock, no terminal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

JobKind = str
""""repair" | "rebalance" | "verify" (others — remove_node — are shown by their name)."""

PLAN_STEPS_SHOWN = 6
"""Steps listed in a confirm dialog: it must fit an 80x24 terminal with its buttons."""
CORRUPT_SHOWN = 3

_STEP_VERBS = {
    "add_replica": "add a replica on node {node}",
    "remove_replica": "remove the replica on node {node}",
    "transfer_leader": "move leadership to node {node}",
}


class JobDocumentError(ValueError):
    """A node answered a document this dashboard cannot read (a different minikv version)."""


@dataclass(frozen=True)
class StepView:
    kind: str
    shard: int
    node: int
    reason: str
    state: str = "pending"
    """pending | running | done | failed."""
    detail: str = ""

    def action(self) -> str:
        """What the step does, in a few words: "shard 3: add a replica on node 2"."""
        if self.kind == "verify":
            return f"shard {self.shard}: checksum every replica"
        verb = _STEP_VERBS.get(self.kind, self.kind.replace("_", " ") + " node {node}")
        return f"shard {self.shard}: {verb.format(node=self.node)}"


@dataclass(frozen=True)
class CorruptReplica:
    shard: int
    node: int
    reason: str


@dataclass(frozen=True)
class JobView:
    id: str
    kind: JobKind
    state: str
    """running | done | failed."""
    auto: bool
    error: str
    steps: tuple[StepView, ...]
    started_at: float
    finished_at: float
    dead: tuple[int, ...] = ()
    under_replicated: tuple[int, ...] = ()
    blocked: tuple[str, ...] = ()
    corrupt: tuple[CorruptReplica, ...] = ()
    shards_verified: int = 0

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def steps_done(self) -> int:
        return sum(1 for step in self.steps if step.state == "done")

    @property
    def current_step(self) -> StepView | None:
        """The step being run (else the next one): what the panel says the job is doing."""
        for wanted in ("running", "pending"):
            for step in self.steps:
                if step.state == wanted:
                    return step
        return None

    @property
    def title(self) -> str:
        who = "automatic " if self.auto else ""
        dead = f" (dead: node {_ids(self.dead)})" if self.dead else ""
        return f"{who}{self.kind} {self.id}{dead}"

    def seconds(self, now: float) -> float:
        end = self.finished_at if self.finished_at > 0 and not self.running else now
        return max(0.0, end - self.started_at)

    @property
    def succeeded(self) -> bool:
        """Done, and for verify: nothing corrupt."""
        return self.state == "done" and not self.corrupt


@dataclass(frozen=True)
class PlanView:
    """A dry run's answer: what the job would do, before anything moves."""

    kind: JobKind
    steps: tuple[StepView, ...]
    under_replicated: tuple[tuple[int, int, int], ...]
    """(shard, healthy voters, wanted)."""
    blocked: tuple[str, ...]


# --------------------------------------------------------------------------------- parsing


def parse_job(document: Mapping[str, Any]) -> JobView | None:
    """A job document (`operate job`, or a job's start answer); None when the meta leader has
    no job (`{"state": "none"}`)."""
    try:
        if document.get("state") == "none":
            return None
        args = document.get("args") or {}
        finished_at = float(document.get("finished_at") or 0.0)
        return JobView(
            id=str(document["id"]),
            kind=str(document["kind"]),
            state=str(document["state"]),
            auto=bool(document.get("auto", False)),
            error=str(document.get("error") or ""),
            steps=tuple(_step(step) for step in document.get("steps", [])),
            started_at=float(document.get("started_at") or 0.0),
            finished_at=finished_at,
            dead=tuple(int(node) for node in args.get("dead", [])),
            under_replicated=tuple(int(u["shard"]) for u in document.get("under_replicated", [])),
            blocked=tuple(str(b["reason"]) for b in document.get("blocked", [])),
            corrupt=tuple(
                CorruptReplica(int(c["shard"]), int(c["node"]), str(c.get("reason", "")))
                for c in document.get("corrupt", [])
            ),
            shards_verified=len(document.get("shards", [])),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise JobDocumentError(
            f"unreadable job document ({type(error).__name__}: {error})"
        ) from None


def parse_plan(document: Mapping[str, Any]) -> PlanView:
    """A dry run's answer (`{"kind", "dry_run": true, "steps", "under_replicated", "blocked"}`)."""
    try:
        return PlanView(
            kind=str(document.get("kind", "")),
            steps=tuple(_step(step) for step in document.get("steps", [])),
            under_replicated=tuple(
                (int(u["shard"]), int(u["healthy"]), int(u["wanted"]))
                for u in document.get("under_replicated", [])
            ),
            blocked=tuple(str(b["reason"]) for b in document.get("blocked", [])),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise JobDocumentError(f"unreadable plan ({type(error).__name__}: {error})") from None


def _step(document: Mapping[str, Any]) -> StepView:
    return StepView(
        kind=str(document["kind"]),
        shard=int(document["shard"]),
        node=int(document["node"]),
        reason=str(document.get("reason", "")),
        state=str(document.get("state", "pending")),
        detail=str(document.get("detail") or ""),
    )


# --------------------------------------------------------------------------------- telling


def outcome(job: JobView) -> str:
    """One line for a finished job (the event log): what it achieved, or why not."""
    told = outcome_parts(job)
    return f"{told.headline}: {told.detail}" if told.detail else told.headline


@dataclass(frozen=True)
class Outcome:
    headline: str
    detail: str = ""
    """The error, the corrupt replicas, the blocked shards ("" if none)."""
    hint: str = ""
    """What to do about it ("" when nothing needs doing)."""


def outcome_parts(job: JobView) -> Outcome:
    """A finished job in parts: the panel puts headline and hint on one line and the detail
    under it, so what to do is never cut off by a long error."""
    seconds = f"{job.seconds(job.finished_at):.1f} s"
    if job.state == "failed":
        failed = next((i for i, step in enumerate(job.steps) if step.state == "failed"), None)
        at = job.steps_done if failed is None else failed
        where = f"at step {at + 1}/{len(job.steps)}" if job.steps else "before any step"
        # Retrying is safe: every step may be interrupted, and the job re-plans.
        return Outcome(where, job.error or "no reason given", "press r to retry")
    if job.kind == "verify":
        if not job.corrupt:
            return Outcome(f"all {job.shards_verified} shards consistent ({seconds})")
        shown = "; ".join(
            f"shard {c.shard} on node {c.node}: {c.reason}" for c in job.corrupt[:CORRUPT_SHOWN]
        )
        hidden = len(job.corrupt) - CORRUPT_SHOWN
        more = f"; {hidden} more" if hidden > 0 else ""
        count = _plural(len(job.corrupt), "corrupt replica", "corrupt replicas")
        return Outcome(count, f"{shown}{more}", "press r to rebuild")
    moves = _moves(job.steps)
    headline = f"{moves} in {seconds}" if moves else f"nothing to do ({seconds})"
    if not job.blocked:
        return Outcome(headline)
    blocked = _plural(len(job.blocked), "shard", "shards")
    return Outcome(headline, f"{blocked} blocked: {job.blocked[0]}")


def progress_line(job: JobView) -> str:
    """While a job runs: the step it is on."""
    step = job.current_step
    if step is None:
        return "planning…" if job.kind != "verify" else "starting…"
    # A reason opens with why ("replace replica on dead node 4: new replica on node 3 …");
    # the rest repeats what the action already says.
    why = step.reason.split(": ", 1)[0]
    return f"{step.action()} — {why}" if why and step.kind != "verify" else step.action()


def started_line(job: JobView) -> str:
    planned = f": {_plural(len(job.steps), 'step', 'steps')}" if job.steps else ""
    return f"{job.title} started{planned}"


def finished_line(job: JobView) -> str:
    verb = "done" if job.state == "done" else job.state
    return f"{job.title} {verb}: {outcome(job)}"


def lost_parts(job: JobView) -> Outcome:
    """A job whose meta leader lost leadership: the new leader does not know it."""
    return Outcome(
        f"{job.title} lost with the meta leader",
        "the new meta leader does not know it; every step is safe to interrupt",
        "press r to re-plan",
    )


VERIFY_QUESTION = (
    "[b]Verify every shard?[/b]\n\nEach shard's replicas are checksummed at one log index; a "
    "replica that differs is marked corrupt (then r rebuilds it). Nothing moves."
)


def confirm_text(operation: str, plan: PlanView, dead: Sequence[int], dead_up: bool) -> str:
    """The confirm dialog for a repair or rebalance: the question, then its dry-run plan.
    `dead_up`: the node declared dead is up (its replicas are moved off all the same)."""
    if dead:
        although = ", although it is up" if dead_up else ""
        question = f"Repair, with node {_ids(dead)} declared dead{although}?"
    else:
        question = f"{operation.capitalize()} the cluster?"
    return describe_plan(plan, question)


def describe_plan(plan: PlanView, question: str) -> str:
    """The confirm dialog's text (Textual markup: the question bold, names escaped)."""
    lines = [f"[b]{_escape(question)}[/b]", ""]
    lines.append(f"The plan ({_plural(len(plan.steps), 'step', 'steps')}):")
    for index, step in enumerate(plan.steps[:PLAN_STEPS_SHOWN], start=1):
        lines.append(f"  {index}. {_escape(step.action())}")
    if len(plan.steps) > PLAN_STEPS_SHOWN:
        lines.append(f"  … and {len(plan.steps) - PLAN_STEPS_SHOWN} more")
    if plan.under_replicated:
        shards = ", ".join(f"shard {s} {h}/{w}" for s, h, w in plan.under_replicated)
        lines.append(f"Healthy voters now: {shards}")
    for reason in plan.blocked[:2]:
        lines.append(f"[b]Blocked[/b] {_escape(reason)}")
    if len(plan.blocked) > 2:
        lines.append(f"  … and {len(plan.blocked) - 2} more blocked")
    return "\n".join(lines)


def nothing_planned(plan: PlanView) -> str:
    """A dry run with no step: why nothing will move (no job is started for it)."""
    if plan.blocked:
        more = f" (+{len(plan.blocked) - 1} more)" if len(plan.blocked) > 1 else ""
        return f"nothing {plan.kind} can do now: {plan.blocked[0]}{more}"
    if plan.kind == "rebalance":
        return "already balanced: nothing to move"
    return "nothing to repair: every shard has its replicas"


def _moves(steps: Sequence[StepView]) -> str:
    done = [step for step in steps if step.state == "done"]
    added = sum(1 for step in done if step.kind == "add_replica")
    removed = sum(1 for step in done if step.kind == "remove_replica")
    leaders = sum(1 for step in done if step.kind == "transfer_leader")
    parts = []
    if added:
        parts.append(_plural(added, "replica moved", "replicas moved"))
    if removed > added:
        parts.append(_plural(removed - added, "replica removed", "replicas removed"))
    if leaders:
        parts.append(_plural(leaders, "leader moved", "leaders moved"))
    return ", ".join(parts)


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _ids(ids: Sequence[int]) -> str:
    return ",".join(str(i) for i in ids)


def _escape(text: str) -> str:
    return text.replace("[", r"\[")
