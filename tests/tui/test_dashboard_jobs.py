"""The job model and watcher without a cluster: which job is read, what is journalled and when,
and what a person reads about a finished job. Job documents come from the maintenance
recording (a real cluster's answers), so the shapes are the node's, not invented."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from minikv_core.client import InvalidRequestError, UnavailableError
from minikv_tui.dashboard.job_watch import JobWatcher
from minikv_tui.dashboard.jobs import (
    JobDocumentError,
    confirm_text,
    job_title,
    nothing_planned,
    outcome,
    parse_job,
    parse_plan,
    progress_line,
    step_action,
)
from minikv_tui.dashboard.source import load_recording
from minikv_tui.maintenance_jobs import JobStep

RECORDING = Path(__file__).parent / "snapshots" / "maintenance_recording.json"


def recorded_jobs() -> list[dict[str, Any]]:
    return [job for job in load_recording(RECORDING)["jobs"] if job is not None]


def job_in_state(kind: str, state: str) -> dict[str, Any]:
    return copy.deepcopy(
        next(j for j in recorded_jobs() if j["kind"] == kind and j["state"] == state)
    )


class Reader:
    """Answers `operate job` from a script of documents (or errors), recording the args."""

    def __init__(self, *answers: Mapping[str, Any] | Exception) -> None:
        self.answers = list(answers)
        self.asked: list[dict[str, Any]] = []

    async def __call__(self, args: Mapping[str, Any]) -> Mapping[str, Any]:
        self.asked.append(dict(args))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


NONE = {"id": "", "state": "none"}


async def test_a_job_seen_running_then_done_is_journalled_once_each() -> None:
    running, done = job_in_state("repair", "running"), job_in_state("repair", "done")
    watcher = JobWatcher(idle_every=1)
    read = Reader(NONE, running, running, done, done)
    for at in range(5):
        await watcher.poll(read, float(at))
    events = watcher.take_events()
    assert [event.kind for event in events] == ["repair", "repair"]
    assert all(event.foreign for event in events)  # started elsewhere, not automatic
    assert read.asked == [{}, {}, {"id": running["id"]}, {"id": running["id"]}, {}]
    assert watcher.running is None


async def test_a_job_already_finished_when_the_dashboard_opens_is_shown_not_journalled() -> None:
    watcher = JobWatcher(idle_every=1)
    await watcher.poll(Reader(job_in_state("verify", "done")), 0.0)
    assert watcher.take_events() == []
    assert watcher.status.job is not None and watcher.status.job.kind == "verify"


async def test_a_job_that_ran_between_two_polls_is_journalled_as_finished() -> None:
    watcher = JobWatcher(idle_every=1)
    await watcher.poll(Reader(NONE, job_in_state("verify", "done")), 0.0)
    await watcher.poll(Reader(job_in_state("verify", "done")), 1.0)
    assert [event.kind for event in watcher.take_events()] == ["verify"]


async def test_an_answer_in_flight_when_a_job_starts_does_not_replace_it() -> None:
    old, new = job_in_state("repair", "done"), job_in_state("verify", "running")
    release = asyncio.Event()

    async def slow(args: Mapping[str, Any]) -> Mapping[str, Any]:
        await release.wait()
        return old

    watcher = JobWatcher(idle_every=1)
    poll = asyncio.ensure_future(watcher.poll(slow, 0.0))
    await asyncio.sleep(0)
    watcher.follow(new, 0.5)
    release.set()
    await poll
    job = watcher.status.job
    assert job is not None and job.id == new["id"] and job.running


async def test_a_followed_job_the_new_meta_leader_does_not_know_is_lost_not_done() -> None:
    running = job_in_state("repair", "running")
    watcher = JobWatcher(idle_every=1)
    watcher.follow(running, 0.0)
    gone = InvalidRequestError(f"no job {running['id']!r} on this meta leader")
    await watcher.poll(Reader(gone), 1.0)
    await watcher.poll(Reader(NONE), 2.0)  # the new leader has no job: the loss stays shown
    assert watcher.status.lost
    assert watcher.running is None
    events = watcher.take_events()
    assert [e.kind for e in events] == ["repair", "maintenance-failed"]
    assert not any(e.foreign for e in events)  # started here: this dashboard tells it


async def test_an_automatic_job_is_not_foreign() -> None:
    running = job_in_state("repair", "running")
    running["auto"] = True
    watcher = JobWatcher(idle_every=1)
    await watcher.poll(Reader(running), 0.0)
    (event,) = watcher.take_events()
    assert not event.foreign and event.detail.startswith("automatic repair")


async def test_a_node_that_cannot_answer_jobs_is_asked_once() -> None:
    watcher = JobWatcher(idle_every=1)
    read = Reader(InvalidRequestError("the node does not implement this call"))
    await watcher.poll(read, 0.0)
    await watcher.poll(read, 1.0)
    assert len(read.asked) == 1
    assert "maintenance unavailable" in watcher.status.note


async def test_an_unreachable_meta_leader_while_following_is_a_note_then_clears() -> None:
    running = job_in_state("repair", "running")
    watcher = JobWatcher(idle_every=1)
    watcher.follow(running, 0.0)
    await watcher.poll(Reader(UnavailableError("the meta group has no leader right now")), 1.0)
    assert "job status unavailable" in watcher.status.note
    await watcher.poll(Reader(running), 2.0)
    assert watcher.status.note == "" and watcher.running is not None


async def test_idle_polls_read_the_latest_job_once_every_idle_every() -> None:
    watcher = JobWatcher(idle_every=4)
    read = Reader(NONE, NONE, NONE)
    for at in range(9):
        await watcher.poll(read, float(at))
    assert len(read.asked) == 3


def test_outcomes_say_what_was_achieved_or_what_to_do() -> None:
    done = parse_job(job_in_state("repair", "done"))
    assert done is not None
    assert outcome(done).startswith("6 replicas moved in ")
    verify = job_in_state("verify", "done")
    clean = parse_job(verify)
    assert clean is not None and outcome(clean).startswith("all 8 shards consistent")
    verify["corrupt"] = [{"shard": 5, "node": 2, "reason": "checksum differs"}]
    corrupt = parse_job(verify)
    assert corrupt is not None and not corrupt.succeeded
    assert outcome(corrupt) == "1 corrupt replica: shard 5 on node 2: checksum differs"
    verify["corrupt"].append({"shard": -1, "node": 3, "reason": "WAL segment 1.wal: bad CRC"})
    both = parse_job(verify)
    assert both is not None
    assert outcome(both) == (
        "2 findings: shard 5 on node 2: checksum differs; the WAL of node 3: WAL segment 1.wal: "
        "bad CRC"
    )
    assert both.summary().endswith("1 corrupt replica (shard 5 on node 2); 1 damaged WAL (node 3)")
    failed = job_in_state("repair", "running")
    failed.update(state="failed", error="node 3 did not catch up in time")
    parsed = parse_job(failed)
    assert parsed is not None and "node 3 did not catch up in time" in outcome(parsed)


def test_a_running_step_is_told_by_what_it_does_and_why() -> None:
    job = parse_job(next(j for j in recorded_jobs() if j["state"] == "running" and j["steps"]))
    assert job is not None
    line = progress_line(job)
    assert line.startswith("shard ") and " — replace replica on dead node " in line
    rewrite = JobStep("rewrite_wal", -1, 2, "its WAL is damaged (…): rewrite it from memory")
    assert step_action(rewrite) == "node 2 rewrites its WAL"
    meta = JobStep("remove_meta_member", -1, 4, "node 4 is dead")
    assert step_action(meta) == "meta group: node 4 leaves the meta group"


def test_the_plan_dialog_lists_steps_and_escapes_markup() -> None:
    plan = parse_plan(load_recording(RECORDING)["dry_runs"]["repair"])
    text = confirm_text("repair", plan, (4,), dead_up=False)
    assert "Repair, with node 4 declared dead?" in text
    assert f"The plan ({len(plan.steps)} steps)" in text and "… and" in text
    blocked = parse_plan(
        {"kind": "repair", "steps": [], "blocked": [{"shard": 1, "reason": "[x]"}]}
    )
    assert r"\[x]" in confirm_text("repair", blocked, (), dead_up=False)


@pytest.mark.parametrize(
    "document",
    [{"id": "1-1"}, {"id": "1-1", "kind": "repair", "state": "running", "steps": [{"kind": 1}]}],
)
def test_an_unreadable_job_document_is_refused_by_name(document: dict[str, Any]) -> None:
    with pytest.raises(JobDocumentError, match="unreadable job document"):
        parse_job(document)


def test_a_repair_told_of_dead_nodes_is_titled_with_them_and_timed_by_the_clock() -> None:
    document = job_in_state("repair", "running")
    document["args"] = {"dead": [4, 5]}
    job = parse_job(document)
    assert job is not None
    assert job_title(job) == f"repair {document['id']} (dead: node 4,5)"
    assert job.elapsed_s(job.started_at + 7.5) == 7.5  # running: the clock moves with `now`


def test_a_job_a_new_meta_leader_took_over_says_so() -> None:
    document = job_in_state("repair", "running")
    document["args"], document["resumed"] = {}, True
    job = parse_job(document)
    assert job is not None and job.resumed
    assert job_title(job) == f"repair {document['id']} (resumed)"
    assert job.title.endswith("(resumed)")  # the CLI's name for it


def test_a_plan_with_nothing_to_do_says_what_blocks_it() -> None:
    plan = parse_plan(
        {
            "kind": "rebalance",
            "steps": [],
            "blocked": [
                {"shard": 1, "reason": "shard 1 has no leader"},
                {"shard": 2, "reason": "x"},
            ],
        }
    )
    assert nothing_planned(plan) == "nothing rebalance can do now: shard 1 has no leader (+1 more)"


@pytest.mark.parametrize(
    "document",
    [{"kind": "defragment", "steps": []}, {"kind": "repair", "steps": [{"kind": "add_replica"}]}],
)
def test_an_unreadable_plan_is_refused_by_name(document: dict[str, Any]) -> None:
    with pytest.raises(JobDocumentError, match="unreadable plan"):
        parse_plan(document)


def test_a_job_done_with_blocked_shards_says_so_in_its_summary() -> None:
    """`add-node` while another node was down moved nothing and said only "done" (a chaos
    run): the summary, which ends the command's output and the journal entry, says what
    was left."""
    document = job_in_state("repair", "done")
    plain = parse_job(document)
    assert plain is not None and "blocked" not in plain.summary()
    document["blocked"] = [
        {"shard": 3, "reason": "waiting: node 2 is down but not declared dead"},
        {"shard": 5, "reason": "waiting: node 2 is down but not declared dead"},
    ]
    job = parse_job(document)
    assert job is not None
    assert job.summary().endswith(
        "; 2 shards blocked, left unchanged (see above): run it again once that is resolved"
    )
