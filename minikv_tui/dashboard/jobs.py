"""Maintenance jobs (repair, verify, rebalance) as the dashboard tells them.

The node's JSON documents become the typed records of `minikv_tui.maintenance_jobs` — the one
reader the CLI uses too — at the edge, so the panel, the confirm dialog and the event log never
index into dicts, and a malformed document is refused with a sentence instead of a KeyError
in a widget. This module holds the dashboard's wording of them. Everything here is pure: no
I/O, no clock, no terminal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from minikv_tui.maintenance_jobs import Job, JobFailedError, JobStep, Operation, Plan, missing_keys

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


# --------------------------------------------------------------------------------- parsing


def parse_job(document: Mapping[str, Any]) -> Job | None:
    """A job document (`operate job`, or a job's start answer); None when the meta leader has
    no job (`{"state": "none"}`)."""
    if document.get("state") == "none":
        return None
    missing = missing_keys(document, job=True)
    if missing:
        raise JobDocumentError(f"unreadable job document (missing {', '.join(missing)})")
    try:
        return Job.from_json(document)
    except JobFailedError as error:
        raise JobDocumentError(f"unreadable job document ({error.message})") from None


def parse_plan(document: Mapping[str, Any]) -> Plan:
    """A dry run's answer (`{"kind", "dry_run": true, "steps", "under_replicated", "blocked"}`)."""
    missing = missing_keys(document, job=False)
    if missing:
        raise JobDocumentError(f"unreadable plan (missing {', '.join(missing)})")
    kind = document.get("kind")
    if kind not in tuple(Operation):
        raise JobDocumentError(f"unreadable plan (no such operation: {kind!r})")
    return Plan.from_json(Operation(kind), document)


def job_title(job: Job) -> str:
    """How the panel and the event log name a job: "automatic repair 1-3 (dead: node 4)",
    "(resumed)" once a new meta leader took it over."""
    who = "automatic " if job.auto else ""
    dead = f" (dead: node {_ids(job.dead)})" if job.dead else ""
    resumed = " (resumed)" if job.resumed else ""
    return f"{who}{job.kind} {job.id}{dead}{resumed}"


def step_action(step: JobStep) -> str:
    """What the step does, in a few words: "shard 3: add a replica on node 2"."""
    if step.kind == "verify":
        return f"shard {step.shard}: checksum every replica"
    if step.kind in ("verify_wal", "rewrite_wal"):
        return step.describe()
    if step.shard < 0:  # a meta-group step (shard -1)
        return f"meta group: {step.describe()}"
    verb = _STEP_VERBS.get(step.kind, step.kind.replace("_", " ") + " node {node}")
    return f"shard {step.shard}: {verb.format(node=step.node)}"


# --------------------------------------------------------------------------------- telling


def outcome(job: Job) -> str:
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


def outcome_parts(job: Job) -> Outcome:
    """A finished job in parts: the panel puts headline and hint on one line and the detail
    under it, so what to do is never cut off by a long error."""
    seconds = f"{job.elapsed_s(job.finished_at):.1f} s"
    if job.state == "failed":
        failed = next((i for i, step in enumerate(job.steps) if step.state == "failed"), None)
        at = job.steps_done if failed is None else failed
        where = f"at step {at + 1}/{len(job.steps)}" if job.steps else "before any step"
        # Retrying is safe: every step may be interrupted, and the job re-plans.
        return Outcome(where, job.error or "no reason given", "press r to retry")
    if job.kind == "verify":
        if not job.corrupt:
            return Outcome(f"all {len(job.shards)} shards consistent ({seconds})")
        shown = "; ".join(f"{c.where()}: {c.reason}" for c in job.corrupt[:CORRUPT_SHOWN])
        hidden = len(job.corrupt) - CORRUPT_SHOWN
        more = f"; {hidden} more" if hidden > 0 else ""
        count = (
            _plural(len(job.corrupt), "corrupt replica", "corrupt replicas")
            if all(c.shard >= 0 for c in job.corrupt)
            else _plural(len(job.corrupt), "finding", "findings")
        )
        return Outcome(count, f"{shown}{more}", "press r to rebuild")
    moves = _moves(job.steps)
    headline = f"{moves} in {seconds}" if moves else f"nothing to do ({seconds})"
    if not job.blocked:
        return Outcome(headline)
    blocked = _plural(len(job.blocked), "shard", "shards")
    return Outcome(headline, f"{blocked} blocked: {job.blocked[0].reason}")


def progress_line(job: Job) -> str:
    """While a job runs: the step it is on."""
    step = job.current_or_next
    if step is None:
        return "planning…" if job.kind != "verify" else "starting…"
    # A reason opens with why ("replace replica on dead node 4: new replica on node 3 …");
    # the rest repeats what the action already says.
    why = step.reason.split(": ", 1)[0]
    return f"{step_action(step)} — {why}" if why and step.kind != "verify" else step_action(step)


def started_line(job: Job) -> str:
    planned = f": {_plural(len(job.steps), 'step', 'steps')}" if job.steps else ""
    return f"{job_title(job)} started{planned}"


def finished_line(job: Job) -> str:
    verb = "done" if job.state == "done" else job.state
    return f"{job_title(job)} {verb}: {outcome(job)}"


def lost_parts(job: Job) -> Outcome:
    """A job whose meta leader lost leadership: the new leader does not know it."""
    return Outcome(
        f"{job_title(job)} lost with the meta leader",
        "the new meta leader does not know it; every step is safe to interrupt",
        "press r to re-plan",
    )


VERIFY_QUESTION = (
    "[b]Verify every shard?[/b]\n\nEach shard's replicas are checksummed at one log index; a "
    "replica that differs is marked corrupt (then r rebuilds it). Nothing moves."
)


def confirm_text(operation: str, plan: Plan, dead: Sequence[int], dead_up: bool) -> str:
    """The confirm dialog for a repair or rebalance: the question, then its dry-run plan.
    `dead_up`: the node declared dead is up (its replicas are moved off all the same)."""
    if dead:
        although = ", although it is up" if dead_up else ""
        question = f"Repair, with node {_ids(dead)} declared dead{although}?"
    else:
        question = f"{operation.capitalize()} the cluster?"
    return describe_plan(plan, question)


def describe_plan(plan: Plan, question: str) -> str:
    """The confirm dialog's text (Textual markup: the question bold, names escaped)."""
    lines = [f"[b]{_escape(question)}[/b]", ""]
    lines.append(f"The plan ({_plural(len(plan.steps), 'step', 'steps')}):")
    for index, step in enumerate(plan.steps[:PLAN_STEPS_SHOWN], start=1):
        lines.append(f"  {index}. {_escape(step_action(step))}")
    if len(plan.steps) > PLAN_STEPS_SHOWN:
        lines.append(f"  … and {len(plan.steps) - PLAN_STEPS_SHOWN} more")
    if plan.under_replicated:
        shards = ", ".join(f"shard {u.shard} {u.healthy}/{u.wanted}" for u in plan.under_replicated)
        lines.append(f"Healthy voters now: {shards}")
    for blocked in plan.blocked[:2]:
        lines.append(f"[b]Blocked[/b] {_escape(blocked.reason)}")
    if len(plan.blocked) > 2:
        lines.append(f"  … and {len(plan.blocked) - 2} more blocked")
    return "\n".join(lines)


def nothing_planned(plan: Plan) -> str:
    """A dry run with no step: why nothing will move (no job is started for it)."""
    if plan.blocked:
        more = f" (+{len(plan.blocked) - 1} more)" if len(plan.blocked) > 1 else ""
        return f"nothing {plan.operation} can do now: {plan.blocked[0].reason}{more}"
    if plan.operation == Operation.REBALANCE:
        return "already balanced: nothing to move"
    return "nothing to repair: every shard has its replicas"


def _moves(steps: Sequence[JobStep]) -> str:
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
