"""A maintenance job's record: its steps as they run, what it found, how it ended. The
document (`to_json`) is what `operate job`, `GET /admin/maintenance`, the CLI's progress bar
and the dashboard's job panel read."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from minikv_core.cluster.maintenance_plan import Plan, Step

JsonObject = dict[str, Any]


@dataclass(slots=True)
class StepRecord:
    doc: JsonObject
    step: Step | None = None
    state: str = "pending"
    detail: str = ""
    seconds: float = 0.0

    @contextmanager
    def running(self) -> Iterator[None]:
        """Run the step's work in the `with` body: timed, `done` when the body returns,
        `failed` with the error as its detail when it raises (the error goes on)."""
        self.state = "running"
        started = time.monotonic()
        try:
            yield
        except BaseException as error:
            self.state = "failed"
            self.detail = str(error) or type(error).__name__
            raise
        finally:
            self.seconds = time.monotonic() - started
        self.state = "done"

    def to_json(self) -> JsonObject:
        return {
            **self.doc,
            "state": self.state,
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
        }


@dataclass(slots=True)
class Job:
    id: str
    kind: str
    args: JsonObject
    auto: bool = False
    resumed: bool = False
    """Taken over from the shard map's record after a meta leadership change: the steps
    listed are those run since (the earlier ones were done under the previous leader)."""
    handed_off: bool = False
    """It stopped here with its record left in the map for the next meta leader: this
    copy's end is not the job's (`Maintenance._job_document` looks for the later one)."""
    state: str = "running"
    plan: Plan | None = None
    steps: list[StepRecord] = field(default_factory=list)
    error: str = ""
    results: list[JsonObject] = field(default_factory=list)
    """verify: one document per shard."""
    wal_checks: list[JsonObject] = field(default_factory=list)
    """verify: each live node's WAL check ({"node", "damage": [descriptions]})."""
    started_at: float = field(default_factory=time.time)
    finished_at: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def to_json(self) -> JsonObject:
        document: JsonObject = {
            "id": self.id,
            "kind": self.kind,
            "args": self.args,
            "auto": self.auto,
            "resumed": self.resumed,
            "handed_off": self.handed_off,
            "state": self.state,
            "error": self.error,
            "steps": [s.to_json() for s in self.steps],
            "steps_done": sum(1 for s in self.steps if s.state == "done"),
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }
        if self.plan is not None:
            plan = self.plan.to_json()
            document["under_replicated"] = plan["under_replicated"]
            document["blocked"] = plan["blocked"]
        if self.kind == "verify":
            document["shards"] = self.results
            document["wal"] = self.wal_checks
            # A damaged WAL is a finding like a corrupt replica (shard -1: the whole node).
            wal_corrupt = [
                {"shard": -1, "node": check["node"], "reason": damage}
                for check in self.wal_checks
                for damage in check.get("damage", [])
            ]
            document["corrupt"] = [
                *(c for r in self.results for c in r.get("corrupt", [])),
                *wal_corrupt,
            ]
            document["clean"] = self.state == "done" and not document["corrupt"]
        return document
