"""Maintenance jobs (repair, rebalance, remove a node, verify) as the tools run and follow them.

The meta leader runs a job in the background and answers its JSON document
(`minikv_core/cluster/maintenance.py`); this module starts one through the client, polls it by
id until it is done or failed, and hands every poll to a callback (the CLI's progress bar,
the dashboard's job panel). Documents become typed records here, once, for both tools, so
callers never index dicts; each tool words them its own way (`dashboard/jobs.py` for the panel).

Why the runner rotates endpoints: any node forwards `maintain` to the meta leader, but a job
that removes a node, or a node that was killed, can leave the endpoint we used dead, and
`AsyncClient.maintain` talks to one endpoint only. So a call that finds a node unreachable
tries the next, and only a cluster that stays silent for `lost_after_s` ends the wait.

What a person can meet is a `UserError` saying what to do: another job running (wait, run
again), the job gone with a meta leader change (run it again: every step is safe to
interrupt and the planner starts from what the cluster is now), a bad argument the node
refused (a node that is not a member).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from minikv_core.client import (
    AsyncClient,
    ClientError,
    DeadlineExceededError,
    InvalidRequestError,
    PermissionDeniedError,
    UnavailableError,
)
from minikv_tui.errors import EXIT_FAILURE, EXIT_USAGE, UserError

CALL_TIMEOUT_S: Final = 15.0
"""One `maintain` call: a dry run observes every node first (a dead one costs its timeout)."""
POLL_S: Final = 0.4
LOST_AFTER_S: Final = 60.0
"""No node answered for this long: the cluster is gone (the job may still run on it)."""
FOLLOW_TIMEOUT_S: Final = 1800.0
"""A job's steps are bounded on the node (180 s each); this only bounds the waiting tool."""

KIND_FAILED: Final = "maintenance-failed"
KIND_CORRUPT: Final = "corrupt"
"""Journal kinds of a failed job and of a verify that found damage (the dashboard uses the
same, so its event log reads alike whichever tool ran the job)."""

_RUNNING: Final = re.compile(r"job (\S+) \((\w+)\) is running")


class Operation(enum.StrEnum):
    """What `minikv.v1.Cluster/Operate` starts."""

    REPAIR = "repair"
    REBALANCE = "rebalance"
    REMOVE_NODE = "remove_node"
    VERIFY = "verify"

    @property
    def command(self) -> str:
        """The `minikv cluster` command that starts it."""
        return self.value.replace("_", "-")


class JobFailedError(UserError):
    """A job ended failed, or could not be followed to its end."""


class RefusedError(UserError):
    """The meta leader refused the request as invalid (a node that is no member, a job id
    it does not know)."""


# ------------------------------------------------------------------------------- documents


def _int(document: Mapping[str, Any], key: str, default: int = 0) -> int:
    value = document.get(key, default)
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _str(document: Mapping[str, Any], key: str) -> str:
    value = document.get(key, "")
    return value if isinstance(value, str) else str(value)


def _objects(document: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = document.get(key)
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, Mapping)]


_JOB_KEYS: Final = ("id", "kind", "state")
_ITEM_KEYS: Final = {
    "steps": ("kind", "shard", "node"),
    "under_replicated": ("shard", "healthy", "wanted"),
    "blocked": ("reason",),
    "corrupt": ("shard", "node"),
}


def missing_keys(document: Mapping[str, Any], *, job: bool) -> list[str]:
    """What a job (or, `job=False`, a dry run's) document lacks of what every node sends
    ("kind", "steps[0].shard"). The records read leniently, with defaults, so the CLI can tell
    what a half-readable answer holds; the dashboard refuses such an answer instead of
    showing a job made of defaults in front of an audience."""
    missing = [key for key in _JOB_KEYS if key not in document] if job else []
    for key, required in _ITEM_KEYS.items():
        items = document.get(key, [])
        if not isinstance(items, list):
            missing.append(key)
            continue
        for index, item in enumerate(items):
            if not isinstance(item, Mapping):
                missing.append(f"{key}[{index}]")
                continue
            missing.extend(f"{key}[{index}].{name}" for name in required if name not in item)
    return missing


@dataclass(frozen=True)
class JobStep:
    kind: str
    """add_replica | remove_replica | transfer_leader | decommission | verify."""
    shard: int
    """-1: the step is about the whole node (decommission)."""
    node: int
    """0: the step is about every replica of the shard (verify)."""
    reason: str
    state: str = "pending"
    """pending | running | done | failed (a dry run's steps stay pending)."""
    detail: str = ""
    seconds: float = 0.0

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> JobStep:
        seconds = document.get("seconds", 0.0)
        return cls(
            kind=_str(document, "kind"),
            shard=_int(document, "shard", -1),
            node=_int(document, "node"),
            reason=_str(document, "reason"),
            state=_str(document, "state") or "pending",
            detail=_str(document, "detail"),
            seconds=float(seconds) if isinstance(seconds, int | float) else 0.0,
        )

    def describe(self) -> str:
        """What the step does, in words: "add a replica of shard 3 on node 5"."""
        if self.kind == "add_replica":
            return f"add a replica of shard {self.shard} on node {self.node}"
        if self.kind == "remove_replica":
            return f"remove node {self.node}'s replica of shard {self.shard}"
        if self.kind == "transfer_leader":
            return f"move shard {self.shard}'s leadership to node {self.node}"
        if self.kind == "decommission":
            return f"node {self.node} leaves the cluster"
        if self.kind == "verify":
            return f"verify shard {self.shard}"
        if self.kind == "verify_wal":
            return f"read node {self.node}'s WAL back"
        if self.kind == "rewrite_wal":
            return f"node {self.node} rewrites its WAL"
        if self.kind == "remove_meta_member":
            return f"node {self.node} leaves the meta group"
        if self.kind == "add_meta_voter":
            return f"node {self.node} joins the meta group as a voter"
        if self.kind == "add_meta_learner":
            return f"node {self.node} follows the meta group as a learner"
        return f"{self.kind.replace('_', ' ')} (shard {self.shard}, node {self.node})"


@dataclass(frozen=True)
class UnderReplicated:
    shard: int
    healthy: int
    wanted: int


@dataclass(frozen=True)
class Blocked:
    shard: int
    """-1: the meta group (its reason then starts with "meta group: ")."""
    reason: str

    def describe(self) -> str:
        """The node names the shard in its reasons already ("shard 3: ..."); it printed
        "shard 3: shard 3: ..." when this added it again."""
        prefix = f"shard {self.shard}: "
        if self.shard < 0 or self.reason.startswith(prefix):
            return self.reason
        return prefix + self.reason


@dataclass(frozen=True)
class Corrupt:
    shard: int
    """-1: the node's WAL."""
    node: int
    reason: str

    def where(self) -> str:
        return (
            f"the WAL of node {self.node}"
            if self.shard < 0
            else (f"shard {self.shard} on node {self.node}")
        )


@dataclass(frozen=True)
class ReplicaCheck:
    """One replica's answer in a verify: its checksum, or why there is none."""

    node: int
    keys: int | None
    digest: str | None
    problem: str = ""
    """Unreachable, skipped, or its state could not be read (then it was not compared)."""


@dataclass(frozen=True)
class ShardCheck:
    shard: int
    index: int
    replicas: tuple[ReplicaCheck, ...]


def _replica_check(document: Mapping[str, Any]) -> ReplicaCheck:
    checksum = document.get("checksum")
    problem = ""
    if document.get("unreachable"):
        problem = f"unreachable: {document['unreachable']}"
    elif document.get("skipped"):
        problem = f"skipped: {document['skipped']}"
    elif document.get("error"):
        problem = f"error: {document['error']}"
    if isinstance(checksum, Mapping):
        return ReplicaCheck(
            _int(document, "node"), _int(checksum, "keys"), _str(checksum, "digest"), problem
        )
    return ReplicaCheck(_int(document, "node"), None, None, problem or "no checksum")


@dataclass(frozen=True)
class Plan:
    """A dry run's answer: what the job would do, as the cluster is now."""

    operation: Operation
    steps: tuple[JobStep, ...]
    under_replicated: tuple[UnderReplicated, ...]
    blocked: tuple[Blocked, ...]
    document: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """The node's JSON as it came (for `--json`)."""

    @classmethod
    def from_json(cls, operation: Operation, document: Mapping[str, Any]) -> Plan:
        return cls(
            operation,
            tuple(JobStep.from_json(s) for s in _objects(document, "steps")),
            _under_replicated(document),
            _blocked(document),
            document,
        )


def _under_replicated(document: Mapping[str, Any]) -> tuple[UnderReplicated, ...]:
    return tuple(
        UnderReplicated(_int(u, "shard"), _int(u, "healthy"), _int(u, "wanted"))
        for u in _objects(document, "under_replicated")
    )


def _blocked(document: Mapping[str, Any]) -> tuple[Blocked, ...]:
    return tuple(
        Blocked(_int(b, "shard"), _str(b, "reason")) for b in _objects(document, "blocked")
    )


@dataclass(frozen=True)
class Job:
    """A job document as the meta leader answered it."""

    id: str
    kind: str
    state: str
    """running | done | failed."""
    error: str
    steps: tuple[JobStep, ...]
    under_replicated: tuple[UnderReplicated, ...]
    blocked: tuple[Blocked, ...]
    shards: tuple[ShardCheck, ...] = ()
    """verify: one per shard checked so far."""
    corrupt: tuple[Corrupt, ...] = ()
    auto: bool = False
    """Started by the meta leader on its own (a node stayed dead), not by a person."""
    dead: tuple[int, ...] = ()
    """repair: the nodes it was told to treat as dead."""
    resumed: bool = False
    """Taken over by a new meta leader (its steps are those run since)."""
    started_at: float = 0.0
    finished_at: float = 0.0
    document: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """The node's JSON as it came (for `--json`)."""

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Job:
        job_id = document.get("id")
        if not isinstance(job_id, str) or not job_id:
            raise JobFailedError(
                f"the cluster answered a job document without an id: {dict(document)}",
                hint="The nodes may run another minikv version than this tool.",
            )
        shards = tuple(
            ShardCheck(
                _int(s, "shard"),
                _int(s, "index"),
                tuple(_replica_check(r) for r in _objects(s, "replicas")),
            )
            for s in _objects(document, "shards")
        )
        started_at = document.get("started_at", 0.0)
        finished_at = document.get("finished_at", 0.0)
        args = document.get("args")
        dead = args.get("dead") if isinstance(args, Mapping) else None
        return cls(
            id=job_id,
            kind=_str(document, "kind"),
            state=_str(document, "state"),
            error=_str(document, "error"),
            steps=tuple(JobStep.from_json(s) for s in _objects(document, "steps")),
            under_replicated=_under_replicated(document),
            blocked=_blocked(document),
            shards=shards,
            corrupt=tuple(
                Corrupt(_int(c, "shard"), _int(c, "node"), _str(c, "reason"))
                for c in _objects(document, "corrupt")
            ),
            auto=bool(document.get("auto", False)),
            resumed=document.get("resumed") is True,
            dead=tuple(n for n in dead if isinstance(n, int)) if isinstance(dead, list) else (),
            started_at=float(started_at) if isinstance(started_at, int | float) else 0.0,
            finished_at=float(finished_at) if isinstance(finished_at, int | float) else 0.0,
            document=document,
        )

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def succeeded(self) -> bool:
        """Done, and for verify: nothing corrupt."""
        return self.state == "done" and not self.corrupt

    @property
    def steps_done(self) -> int:
        return sum(1 for step in self.steps if step.state == "done")

    @property
    def current(self) -> JobStep | None:
        """The step under way (None between steps, e.g. while the job plans)."""
        return next((step for step in self.steps if step.state == "running"), None)

    @property
    def current_or_next(self) -> JobStep | None:
        """The step under way, else the next one: what a job is about to do while it plans a
        step (the dashboard's panel tells this)."""
        return self.current or next((s for s in self.steps if s.state == "pending"), None)

    @property
    def seconds(self) -> float:
        if self.finished_at and self.started_at:
            return max(0.0, self.finished_at - self.started_at)
        return sum(step.seconds for step in self.steps)

    def elapsed_s(self, now: float) -> float:
        """Wall time since the job started, up to `now` while it runs: a clock that moves
        between polls (`seconds` is what the node measured)."""
        end = self.finished_at if self.finished_at > 0 and not self.running else now
        return max(0.0, end - self.started_at)

    @property
    def title(self) -> str:
        resumed = " (resumed)" if self.resumed else ""
        return f"{self.kind.replace('_', '-')} job {self.id}{resumed}"

    def replicas_checked(self) -> int:
        return sum(1 for s in self.shards for r in s.replicas if r.digest is not None)

    def summary(self) -> str:
        """One line for the journal and the end of a command's output."""
        if self.state == "running":
            return self.started_line()
        if self.state == "failed":
            return (
                f"{self.title} failed after {self.steps_done}/{_count(len(self.steps), 'step')} "
                f"({self.seconds:.1f} s): {self.error or 'no reason given'}"
            )
        if self.kind == Operation.VERIFY:
            if self.corrupt:
                replicas = [c for c in self.corrupt if c.shard >= 0]
                wal_nodes = sorted({c.node for c in self.corrupt if c.shard < 0})
                found = []
                if replicas:
                    where = ", ".join(c.where() for c in replicas)
                    found.append(f"{_count(len(replicas), 'corrupt replica')} ({where})")
                if wal_nodes:
                    nodes = ", ".join(map(str, wal_nodes))
                    found.append(f"{_count(len(wal_nodes), 'damaged WAL')} (node {nodes})")
                return f"{self.title} done: {'; '.join(found)}"
            return (
                f"{self.title} done: all {_count(len(self.shards), 'shard')} consistent "
                f"({_count(self.replicas_checked(), 'replica')} checked)"
            )
        done = f"{self.title} done: {_count(len(self.steps), 'step')} in {self.seconds:.1f} s"
        if self.blocked:
            # "done" alone read as "the cluster is as it should be" (a chaos run: add-node
            # while another node was down moved nothing onto the new node, and said done).
            shards = len({b.shard for b in self.blocked})
            return (
                f"{done}; {_count(shards, 'shard')} blocked, left unchanged (see above): "
                "run it again once that is resolved"
            )
        return done

    def started_line(self) -> str:
        return f"{self.title} started{self._arguments()}"

    def _arguments(self) -> str:
        args = self.document.get("args")
        if not isinstance(args, Mapping):
            return ""
        parts = []
        dead = args.get("dead")
        if isinstance(dead, list) and dead:
            parts.append("dead node " + ", ".join(str(n) for n in dead))
        if isinstance(args.get("node"), int):
            parts.append(f"node {args['node']}")
        return f" ({'; '.join(parts)})" if parts else ""

    def journal_kind(self) -> str:
        if self.state == "failed":
            return KIND_FAILED
        if self.corrupt:
            return KIND_CORRUPT
        return self.kind


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# ---------------------------------------------------------------------------------- runner

OnPoll = Callable[[Job], None]
Journal = Callable[[str, str], Awaitable[None]]
"""(kind, detail): appends to a local cluster's event journal."""


class JobRunner:
    """Starts maintenance jobs on one cluster and follows them to their end."""

    def __init__(
        self,
        client: AsyncClient,
        endpoints: Sequence[str],
        *,
        journal: Journal | None = None,
        poll_s: float = POLL_S,
        call_timeout_s: float = CALL_TIMEOUT_S,
        lost_after_s: float = LOST_AFTER_S,
    ) -> None:
        assert endpoints, "a runner needs at least one endpoint"
        self._client = client
        self._endpoints = list(endpoints)
        self._preferred = 0
        self._journal = journal
        self._poll_s = poll_s
        self._call_timeout_s = call_timeout_s
        self._lost_after_s = lost_after_s

    async def plan(self, operation: Operation, args: Mapping[str, Any]) -> Plan:
        """A dry run: the steps the job would take now, changing nothing."""
        document = await self._call(operation, {**args, "dry_run": True}, retry_deadline=True)
        return Plan.from_json(operation, document)

    async def start(self, operation: Operation, args: Mapping[str, Any]) -> Job:
        """Start the job; answers its first document (usually still running)."""
        document = await self._call(operation, dict(args), retry_deadline=False)
        job = Job.from_json(document)
        await self._record(job.kind, job.started_line())
        if job.finished:
            await self._record(job.journal_kind(), job.summary())
        return job

    async def follow(
        self, job: Job, on_poll: OnPoll | None = None, *, timeout_s: float = FOLLOW_TIMEOUT_S
    ) -> Job:
        """Poll `job` until it is done or failed (its end goes in the journal). Raises
        JobFailedError when it is lost with its meta leader or outlasts `timeout_s`; a failed
        job is returned, not raised: its steps are worth showing first."""
        deadline = time.monotonic() + timeout_s
        while not job.finished:
            if time.monotonic() >= deadline:
                raise JobFailedError(
                    f"{job.title} is still running after {timeout_s:.0f} s "
                    f"({job.steps_done}/{len(job.steps)} steps done); it goes on in the cluster",
                    hint="Run the command again later: it plans only what is left.",
                )
            await asyncio.sleep(self._poll_s)
            try:
                document = await self._call("job", {"id": job.id}, retry_deadline=True)
            except RefusedError:
                await self._record(KIND_FAILED, f"{job.title} lost with the meta leader")
                raise JobFailedError(
                    f"{job.title} is gone: the meta leader changed and does not know it "
                    f"({job.steps_done}/{len(job.steps)} steps were done)",
                    hint=f"Run `minikv cluster {job.kind.replace('_', '-')}` again: every "
                    "step is safe to interrupt, and it plans from what the cluster is now.",
                ) from None
            job = Job.from_json(document)
            if on_poll is not None:
                on_poll(job)
        await self._record(job.journal_kind(), job.summary())
        return job

    async def run(
        self, operation: Operation, args: Mapping[str, Any], on_poll: OnPoll | None = None
    ) -> Job:
        job = await self.start(operation, args)
        if on_poll is not None:
            on_poll(job)
        return await self.follow(job, on_poll)

    # --- machinery -------------------------------------------------------------------------

    async def _record(self, kind: str, detail: str) -> None:
        if self._journal is None:
            return
        # The journal tells what happened; a registry that cannot be written right now must
        # not stop a tool from following a job that runs in the cluster regardless.
        with contextlib.suppress(UserError):
            await self._journal(kind, detail)

    def _rotation(self) -> list[str]:
        return self._endpoints[self._preferred :] + self._endpoints[: self._preferred]

    async def _call(
        self, operation: str, args: dict[str, Any], *, retry_deadline: bool
    ) -> dict[str, Any]:
        """One `maintain` call, tried on each endpoint in turn while nodes are unreachable
        (or the meta group is electing), for up to `lost_after_s`. A deadline is retried
        only where repeating is harmless (reads, dry runs): a start that timed out may
        have started its job."""
        started = time.monotonic()
        while True:
            last: ClientError | None = None
            for endpoint in self._rotation():
                try:
                    answer = await self._client.maintain(
                        operation, args, endpoint=endpoint, timeout_s=self._call_timeout_s
                    )
                except UnavailableError as error:
                    _raise_if_busy(error)
                    last = error
                    continue
                except DeadlineExceededError as error:
                    if not retry_deadline:
                        raise JobFailedError(
                            f"the cluster did not answer `{operation}` within "
                            f"{self._call_timeout_s:.0f} s: the job may or may not have started",
                            hint="Check `minikv cluster status`, then run the command again "
                            "(a second job is refused while one runs).",
                        ) from None
                    last = error
                    continue
                except InvalidRequestError as error:
                    raise RefusedError(
                        f"the cluster refused {operation.replace('_', '-')}: {error}",
                        hint="Check the node ids against `minikv cluster status`.",
                        exit_code=EXIT_USAGE,
                    ) from None
                except PermissionDeniedError as error:
                    raise UserError(
                        f"{endpoint} refused a maintenance call: {error}",
                        hint="Maintenance is an admin call: run it on the nodes' machine, or "
                        "start them with admin_allow_remote.",
                    ) from None
                except ClientError as error:
                    raise UserError(f"{operation} on {endpoint} failed: {error}") from None
                self._preferred = self._endpoints.index(endpoint)
                return answer
            if time.monotonic() - started >= self._lost_after_s:
                raise JobFailedError(
                    f"no node of the cluster answered `{operation}` for "
                    f"{self._lost_after_s:.0f} s (last: {last})",
                    hint="Check `minikv cluster status`; a job already started goes on in "
                    "the cluster.",
                    exit_code=EXIT_FAILURE,
                )
            await asyncio.sleep(self._poll_s)


def _raise_if_busy(error: UnavailableError) -> None:
    """The meta leader refuses a second job while one runs (`job X (kind) is running`)."""
    match = _RUNNING.search(str(error))
    if match is None:
        return
    job_id, kind = match.groups()
    raise JobFailedError(
        f"another maintenance job is running: {kind.replace('_', '-')} job {job_id}",
        hint="Wait for it to finish (the dashboard shows it), then run this command again.",
    ) from None
