"""Cluster maintenance (issue #10): membership, repair, verify and rebalance, run by the meta
group's leader as background *jobs* that operators start and watch.

Why the meta leader: the shard map lives in the meta group, and every replica move changes
it, so the node that can propose the map is the one that drives the moves; one leader means
one driver, and `operate` on any other node forwards there. Why jobs: a repair that catches a
replica up by snapshot can outlast any request deadline; a job runs on, and `operate job`
reports its steps as they finish (the CLI's progress bar, the dashboard, `GET /admin/...`).
The shard map names the job under way (`JobRecord`) from before its first step until it ends:
if its node loses the meta leadership (or stops), the task dies with it and the next meta
leader resumes the job from the map. Every step is safe to interrupt, and a resumed job
re-plans from what the cluster now is.

How a replica moves (the order is the safety argument; see also host.reconcile_replicas):
  add(shard s, node n):  map lists n as learner of s  ->  n creates an empty replica  ->
                         s's leader adds n as a Raft learner (thesis §4.2.1)  ->  n catches
                         up (entries, or a snapshot)  ->  the leader promotes n to voter  ->
                         the map lists n as a replica.
  remove(s, n):          leadership moves off n if it leads  ->  the leader removes n (§4.1,
                         one server at a time)  ->  the map drops n  ->  n deletes its replica.
Invariant: every member of a group's configuration is listed in the map (so no node deletes
a replica its group still counts), and a shard never has fewer healthy voters than before a
step (the planner adds before it removes).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from minikv_core.cluster.config import META_VOTERS_MAX
from minikv_core.cluster.maintenance_job import Job, StepRecord
from minikv_core.cluster.maintenance_local import LocalMaintenance, int_arg
from minikv_core.cluster.maintenance_plan import (
    Plan,
    plan_rebalance,
    plan_remove_node,
    plan_repair,
)
from minikv_core.cluster.maintenance_steps import STEP_TIMEOUT_S, StepRunner, preferring, soon
from minikv_core.cluster.maintenance_verify import Verifier
from minikv_core.cluster.maintenance_view import ClusterView, ViewBuilder
from minikv_core.cluster.service import (
    InvalidRequestError,
    ServiceError,
    UnavailableError,
)
from minikv_core.cluster.shard_map import META_GROUP_ID, JobRecord, ShardMap
from minikv_core.net.api import is_loopback
from minikv_core.net.fault import pass_outbound
from minikv_core.net.maintenance_rpc import MaintenanceClient, check_operator_args
from minikv_core.raft.types import NONE

if TYPE_CHECKING:
    from minikv_core.cluster.group import MetaGroup
    from minikv_core.cluster.node_service import Node

logger = logging.getLogger(__name__)

JsonObject = dict[str, Any]

AUTO_PERIOD_S: Final = 2.0
JOBS_KEPT: Final = 16
FORWARD_RETRY_S: Final = 0.2
"""Pause before an operation whose forward to the meta leader could not be sent is tried
again (the leader this node named was down; the group is electing another)."""
JOB_FOLLOW_INTERVAL_S: Final = 0.5
"""How often a caller waiting for a job that moved to the next meta leader asks about it."""
PLAN_ROUNDS_MAX: Final = 3
"""A job re-plans after its steps (the cluster may have changed meanwhile), this often."""
OPERATIONS: Final = ("repair", "rebalance", "remove_node", "verify", "job", "join")
INTERNAL_OPERATIONS: Final = ("decommission", "prefer_leader")
"""Asked by nodes of the meta leader (a departing meta leader; an admin transfer)."""


class Maintenance:
    """Serves `minikv.v1.Cluster` (net/maintenance_rpc.py) for one node."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self.local = LocalMaintenance(node)
        self._client = MaintenanceClient()
        self._views = ViewBuilder(self._poll_status, node.config.repair_after_s)
        self._steps = StepRunner(self.local, self._views, self._call)
        self._verifier = Verifier(self.local, self._views, self._steps, self._call)
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._job_ids = itertools.count(1)
        self._running: Job | None = None
        self._rebalanced_for: set[int] = set()
        """Joined nodes this meta leader started a rebalance for (the owed rebalance itself
        is in the shard map): one automatic try per node per leadership, so a rebalance that
        cannot finish (a node down) is not started again every period."""
        self._tasks: set[asyncio.Task[None]] = set()
        """Running jobs (cancelled when this node loses the meta leadership)."""
        self._leading_since: float | None = None
        """When the automatic loop first saw this node lead the meta group (None: it does not)."""
        self._resume_after_s = 2 * AUTO_PERIOD_S + node.config.election_timeout_s
        """How long a new meta leader waits before it resumes a recorded job: the previous
        leader's loop cancels its copy within AUTO_PERIOD_S of learning it lost, which a
        partitioned leader learns within an election timeout (check-quorum). One driver."""
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._auto: asyncio.Task[None] | None = None

    @property
    def _host(self):  # type: ignore[no-untyped-def]  # MultiRaftHost; avoids an import cycle
        return self._node.host

    def start(self) -> None:
        self._auto = asyncio.get_running_loop().create_task(
            self._auto_loop(), name=f"node{self._node.node_id}-maintenance-auto"
        )

    async def stop(self) -> None:
        tasks = [
            *self._tasks,
            *self._side_tasks,
            *([self._auto] if self._auto is not None else []),
        ]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:
                logger.debug("maintenance task ended with an error", exc_info=True)
        await self._client.close()

    # ------------------------------------------------------------------ peer calls

    def record_preferred_leader(self, shard: int, node: int) -> None:
        """After an admin leadership transfer: make `node` the shard's preferred leader in
        the map, so a restart of the old preferred node does not take leadership back. In
        the background, bounded: the transfer is done and answered whatever the meta group
        can do right now (partitioned, electing)."""

        async def record() -> None:
            try:
                await self._operate("prefer_leader", {"shard": shard, "node": node}, soon(), 1)
            except ServiceError as error:
                logger.warning(
                    "shard %d: node %d leads, but the map still prefers another node: %s",
                    shard,
                    node,
                    error,
                )

        task = asyncio.get_running_loop().create_task(record())
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    def accepts_peer(self, host: str | None) -> bool:
        """Loopback, or the host of a node in the shard map: `Call` changes memberships, so
        it is not for clients (they use `Operate`, which is admin-only)."""
        if is_loopback(host):
            return True
        hosts = {a.rpartition(":")[0].strip("[]") for a in self._host.shard_map.nodes.values()}
        return host in hosts

    async def handle_call(self, method: str, args: JsonObject, deadline: float) -> JsonObject:
        local = self.local
        if method == "status":
            body: JsonObject = dict(self._node.status().body)
            return body
        if method == "change_replicas":
            return await local.change_replicas(args, deadline)
        if method == "progress":
            return local.progress(args)
        if method == "transfer_leader":
            return await local.transfer_leader(args, deadline)
        if method == "checksum_propose":
            return await local.propose_checksum(args, deadline)
        if method == "checksum":
            return await local.checksum(args, deadline)
        if method == "mark_corrupt":
            return local.mark_corrupt(args)
        if method == "wal_check":
            return await local.wal_check()
        if method == "job_document":
            kept = self._jobs.get(str(args.get("id")))
            return kept.to_json() if kept is not None else {}
        if method == "wal_rewrite":
            return await local.wal_rewrite(deadline)
        if method == "operate":
            operation = args.get("operation")
            inner = args.get("args", {})
            hops = args.get("hops", 0)
            if not isinstance(operation, str) or not isinstance(inner, dict):
                raise InvalidRequestError('"operate" needs "operation" (string) and "args"')
            if not isinstance(hops, int) or hops > 2:
                raise UnavailableError("the meta leader keeps moving; try again", retry_after_s=1)
            return await self._operate(operation, inner, deadline, hops + 1)
        raise InvalidRequestError(f"unknown maintenance call {method!r}")

    # ------------------------------------------------------------------- operator

    async def operate(self, operation: str, args: JsonObject, deadline: float) -> JsonObject:
        """repair {dry_run, dead: [ids]} | rebalance {dry_run} | remove_node {node, dry_run}
        | verify {} | job {id?} | join {address, node_id?}: start a job (answers its document
        at once, or when it ends if `wait` is true and it ends before the deadline) or read
        one. Runs on the meta leader; any other node forwards there. The arguments are
        checked here, before anything starts, for every door (HTTP, `Operate`)."""
        check_operator_args(operation, args)
        return await self._operate(operation, args, deadline, 0)

    async def _operate(
        self, operation: str, args: JsonObject, deadline: float, hops: int
    ) -> JsonObject:
        if operation not in OPERATIONS and operation not in INTERNAL_OPERATIONS:
            raise InvalidRequestError(
                f"unknown operation {operation!r}; one of {', '.join(OPERATIONS)}"
            )
        meta = self._host.meta
        if meta is None or not meta.is_leader:
            return await self._forward(operation, args, deadline, hops)
        if operation == "job":
            return await self._job_document(args, deadline)
        if operation == "join":
            return await self._join(args, deadline)
        if operation == "decommission":
            await self._decommission(int_arg(args, "node", low=1), deadline)
            return {"decommissioned": args["node"]}
        if operation == "prefer_leader":
            shard, node = int_arg(args, "shard"), int_arg(args, "node", low=1)
            updated = await self.local.update_map(lambda m: preferring(m, shard, node), deadline)
            return {"shard": shard, "preferred_leader": updated.shards[shard].preferred_leader}
        dry_run = bool(args.get("dry_run", False))
        self._dead_arg(args)  # refused now, not later inside the job
        planner = None if operation == "verify" else self._planner(operation, args)
        if operation == "remove_node" and not dry_run and args["node"] == self._node.node_id:
            # The job would end with its own node: run it on another meta voter instead, so
            # its document outlives this node.
            target = await self._hand_over_meta(deadline)
            forward = {"operation": operation, "args": args, "hops": hops + 1}
            return await self._peer_call(target, "operate", forward, deadline)
        if dry_run:
            if planner is None:
                raise InvalidRequestError("verify has no dry run: it changes nothing but marks")
            view = await self._observe(args)
            plan = planner(view)
            document = {"kind": operation, "dry_run": True, **plan.to_json()}
            if operation == "remove_node" and not plan.blocked:
                # What `_finish_removal` does after the plan's steps: without it the dry run
                # of a node holding no replica showed "nothing to do", and the job then
                # removed the node.
                steps = [step.to_json() for step in plan.steps]
                document["steps"] = [*steps, _decommission_step(int_arg(args, "node", low=1))]
            return document
        job = self._start_job(operation, args, planner, auto=False)
        if not args.get("wait"):
            return job.to_json()
        document = job.to_json()
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic() - 0.2)):
                await job.done.wait()
                document = job.to_json()
                document = await self._follow_handed_off(document, deadline)
        except TimeoutError:
            pass
        return document

    async def _forward(
        self, operation: str, args: JsonObject, deadline: float, hops: int
    ) -> JsonObject:
        """Send the operation to the meta leader. A leader this node still names may have
        just died: a call that could not even be sent (`unapplied`) is tried again, as the
        group elects another (about two election timeouts), until the deadline is near; a
        call that may have reached a leader is not, since it may have started a job."""
        while True:
            meta = self._host.meta
            if meta is not None and meta.is_leader:
                return await self._operate(operation, args, deadline, hops)
            try:
                return await self._forward_once(meta, operation, args, deadline, hops)
            except UnavailableError as error:
                if not error.unapplied or time.monotonic() + FORWARD_RETRY_S * 2 >= deadline:
                    raise
            await asyncio.sleep(FORWARD_RETRY_S)

    async def _forward_once(
        self, meta: MetaGroup | None, operation: str, args: JsonObject, deadline: float, hops: int
    ) -> JsonObject:
        leader = meta.leader_id if meta is not None else 0
        forward = {"operation": operation, "args": args, "hops": hops}
        if leader:
            return await self._peer_call(leader, "operate", forward, deadline)
        # No leader known here (a node that just joined or restarted): another member may
        # know it.
        for node_id in self.local.shard_map().nodes:
            if node_id == self._node.node_id or hops >= 2:
                continue
            try:
                return await self._peer_call(node_id, "operate", forward, min(deadline, soon()))
            except UnavailableError:
                continue
        raise UnavailableError(
            "the meta group has no leader right now", retry_after_s=1, unapplied=True
        )

    async def _follow_handed_off(self, document: JsonObject, deadline: float) -> JsonObject:
        """A waiting caller's answer once its job left this node: the job as the meta leader
        now sees it, until it ends there. Why: this node's copy of a job it lost mid-way
        reads `failed` ("the next meta leader resumes the job"), and answering that to a
        caller who asked to wait for the end told it the job had failed while the next
        leader was finishing it. The caller's timeout bounds the following (the caller
        then gets the job running, as any wait that runs out does)."""
        job_id = str(document["id"])
        while document.get("handed_off") or document.get("state") not in ("done", "failed"):
            await asyncio.sleep(JOB_FOLLOW_INTERVAL_S)
            try:
                document = await self._operate("job", {"id": job_id}, deadline, 0)
            except (UnavailableError, InvalidRequestError):
                continue  # no meta leader yet, or it has not taken the job up yet
        return document

    def _planner(self, operation: str, args: JsonObject) -> Callable[[ClusterView], Plan]:
        replicas = self._node.config.replicas
        if operation == "repair":
            return lambda view: plan_repair(view.nodes, view.shards, replicas, view.meta)
        if operation == "rebalance":
            return lambda view: plan_rebalance(view.nodes, view.shards, replicas, view.meta)
        node = int_arg(args, "node", low=1)
        if node not in self.local.shard_map().nodes:
            raise InvalidRequestError(f"node {node} is not a member of the cluster")
        return lambda view: plan_remove_node(view.nodes, view.shards, replicas, node)

    async def _job_document(self, args: JsonObject, deadline: float) -> JsonObject:
        job_id = args.get("id")
        if job_id is None:
            if not self._jobs:
                return {"id": "", "state": "none"}
            return next(reversed(self._jobs.values())).to_json()
        job = self._jobs.get(str(job_id))
        if job is not None and not job.handed_off:
            return job.to_json()
        recorded = self.local.shard_map().job
        if recorded is not None and recorded.id == str(job_id):
            # Started under the previous meta leader; it resumes here within seconds.
            resuming = Job(
                recorded.id, recorded.kind, recorded.arguments, auto=recorded.auto, resumed=True
            )
            return resuming.to_json()
        ended = await self._ended_elsewhere(str(job_id), deadline)
        if ended is not None:
            return ended
        if job is not None:
            return job.to_json()  # this node's copy, handed off; no other node answered
        raise InvalidRequestError(
            f"no job {job_id!r} on this meta leader, nor on any node that answered (a node "
            "keeps the jobs it ran until it restarts): run the operation again to see what "
            "is left to do"
        )

    async def _ended_elsewhere(self, job_id: str, deadline: float) -> JsonObject | None:
        """The document of a job that ended under an earlier meta leader, from the node that
        ran it to its end: every live node is asked (`job_document`), and of the copies the
        latest to finish wins (an earlier leader's copy of a job it lost, then resumed
        elsewhere, ended first)."""
        others = [n for n in self.local.shard_map().nodes if n != self._node.node_id]
        answers = await asyncio.gather(
            *(self._call(n, "job_document", {"id": job_id}, min(deadline, soon())) for n in others),
            return_exceptions=True,
        )
        copies = [a for a in answers if isinstance(a, dict) and a.get("id") == job_id]
        ended = [c for c in copies if c.get("state") in ("done", "failed")]
        # A copy handed off to the next meta leader ended there only; the job ended where a
        # copy ran to its end, so that one speaks for it whenever a node still has it.
        ended = [c for c in ended if not c.get("handed_off")] or ended
        return max(ended, key=lambda c: float(c.get("finished_at", 0.0)), default=None)

    # ----------------------------------------------------------------------- jobs

    def _start_job(
        self,
        kind: str,
        args: JsonObject,
        planner: Callable[[ClusterView], Plan] | None,
        *,
        auto: bool,
        resumed: str = "",
    ) -> Job:
        """Start a job (`resumed`: the id of the recorded job this one takes over)."""
        if self._running is not None:
            raise UnavailableError(
                f"job {self._running.id} ({self._running.kind}) is running; wait for it "
                "to end (`GET /admin/maintenance`, `minikv cluster status`) and try again",
                retry_after_s=2,
            )
        recorded = self.local.shard_map().job
        if recorded is not None and recorded.id != resumed:
            raise UnavailableError(
                f"job {recorded.id} ({recorded.kind}), started under the previous meta leader, "
                "resumes here first; wait for it to end (`GET /admin/maintenance`) and try again",
                retry_after_s=2,
            )
        job_id = resumed or f"{self._node.node_id}-{next(self._job_ids)}"
        job = Job(job_id, kind, dict(args), auto=auto, resumed=bool(resumed))
        self._jobs[job.id] = job
        while len(self._jobs) > JOBS_KEPT:
            self._jobs.popitem(last=False)
        self._running = job
        task = asyncio.get_running_loop().create_task(self._run_job(job, planner))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        logger.info("maintenance job %s (%s) started", job.id, kind)
        return job

    async def _run_job(self, job: Job, planner: Callable[[ClusterView], Plan] | None) -> None:
        """Run `job` with the map naming it, from before its first step until it ended: a
        meta leader lost meanwhile (the task is cancelled, the record stays) leaves it to the
        next one (`_resume_recorded_job`). The job reads as running until its record is
        gone, so an operator who sees it end can start the next one at once."""
        recorded = False
        outcome, error = "done", ""
        try:
            try:
                await self._record_job(job)
                recorded = True
                if planner is None:
                    await self._verifier.run(job)
                else:
                    await self._run_plan(job, planner)
                    if job.kind == "remove_node":
                        await self._finish_removal(job)
                        if job.args.get("rebalance", True):
                            await self._run_plan(job, self._planner("rebalance", {}))
            except asyncio.CancelledError:
                job.handed_off = True
                meta = self._host.meta
                outcome, error = (
                    "failed",
                    (
                        "this node lost the meta leadership (the next meta leader resumes the job)"
                        if meta is not None and not meta.is_leader
                        else "the node stopped (the next meta leader resumes the job)"
                    ),
                )
                raise
            except ServiceError as failure:
                outcome, error = "failed", str(failure)
                meta = self._host.meta
                if recorded and (
                    meta is None or not meta.is_leader or meta.raw.lead_transferee != NONE
                ):
                    # A step met the leadership change before the loop noticed it, or while
                    # the leadership is being handed over (its proposals are refused then):
                    # the job is not over, the next leader (or this one, if the hand-over
                    # fails) resumes it from the record.
                    error += " (this node lost the meta leadership: the next resumes the job)"
                    job.handed_off = True
                    return  # the record stays
            except Exception as failure:
                logger.exception("maintenance job %s failed", job.id)
                outcome, error = "failed", f"{type(failure).__name__}: {failure}"
            await self._forget_job(job.id)
        finally:
            job.state, job.error = outcome, error
            job.finished_at = time.time()
            self._running = None
            job.done.set()
            logger.info("maintenance job %s %s %s", job.id, job.state, job.error)

    async def _run_plan(self, job: Job, planner: Callable[[ClusterView], Plan]) -> None:
        for _ in range(PLAN_ROUNDS_MAX):
            view = await self._observe(job.args)
            plan = planner(view)
            if job.plan is None:
                job.plan = plan
            if not plan.steps:
                await self._steps.sync_stale_map(view)
                return
            first = len(job.steps)
            job.steps.extend(StepRecord(step.to_json(), step) for step in plan.steps)
            for record in job.steps[first:]:
                await self._run_step(record)

    async def _run_step(self, record: StepRecord) -> None:
        step = record.step
        assert step is not None
        meta = self._host.meta
        if meta is None or not meta.is_leader:
            raise UnavailableError("this node lost the meta leadership")
        with record.running():
            record.detail = await self._steps.run(step, time.monotonic() + STEP_TIMEOUT_S)

    # ------------------------------------------------------------- membership

    async def _join(self, args: JsonObject, deadline: float) -> JsonObject:
        address = args.get("address")
        if not isinstance(address, str) or ":" not in address:
            raise InvalidRequestError('"address" must be the joining node\'s host:port')
        requested = args.get("node_id", 0)
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
            raise InvalidRequestError('"node_id" must be a positive integer (or 0: assign one)')
        current = self.local.shard_map()
        nodes = dict(current.nodes)
        if requested in current.retired:
            raise InvalidRequestError(
                f"node id {requested} belonged to a node removed from this cluster; ids are "
                "never reused: pick another id (or 0 to get one)"
            )
        if requested and requested in nodes and nodes[requested] != address:
            raise InvalidRequestError(
                f"node id {requested} belongs to {nodes[requested]}; pick another id"
            )
        same_address = [n for n, a in nodes.items() if a == address]
        if same_address and requested and same_address[0] != requested:
            raise InvalidRequestError(f"{address} is node {same_address[0]} already")
        node_id = requested or (
            same_address[0] if same_address else max((*nodes, *current.retired)) + 1
        )
        rebalance = bool(args.get("rebalance", True))

        def joined(m: ShardMap) -> ShardMap:
            m = m.with_nodes({**m.nodes, node_id: address})
            return m.with_rebalance_owed({*m.rebalance_after_join, node_id}) if rebalance else m

        await self.local.update_map(joined, deadline)
        await self.local.change_replicas(
            {"group": META_GROUP_ID, "op": "add_learner", "node": node_id}, deadline
        )
        config = self._node.config
        logger.info("node %d (%s) joined the cluster", node_id, address)
        return {
            "node_id": node_id,
            "cluster_id": config.cluster_id,
            "shards": config.shards,
            "replicas": config.replicas,
            "map": self.local.shard_map().to_json(),
        }

    async def _finish_removal(self, job: Job) -> None:
        node = int_arg(job.args, "node", low=1)
        if job.plan is not None and job.plan.blocked:
            raise UnavailableError(
                f"node {node} still holds replicas that could not move: "
                + "; ".join(b.reason for b in job.plan.blocked)
            )
        record = StepRecord(_decommission_step(node))
        job.steps.append(record)
        with record.running():
            await self._decommission(node, time.monotonic() + STEP_TIMEOUT_S)
            record.detail = f"node {node} left the meta group and the shard map"

    async def _decommission(self, node: int, deadline: float) -> None:
        """Drop a node that holds no replica any more from the map and the meta group."""
        shard_map = self.local.shard_map()
        held = sorted(shard_map.hosted_by(node))
        if held:
            raise InvalidRequestError(f"node {node} still holds replicas of shards {held}")
        meta = self._host.meta
        if node == self._node.node_id:
            # This node leaves: hand the meta group to another voter, which finishes it.
            target = await self._hand_over_meta(deadline)
            await self._peer_call(
                target,
                "operate",
                {"operation": "decommission", "args": {"node": node}, "hops": 1},
                deadline,
            )
            return
        if node in shard_map.nodes:
            await self.local.update_map(lambda m: m.without_node(node), deadline)
            # Let the leaving node learn it left before its meta removal: it stops once
            # out of both (or when its peers, which retire it then, refuse it).
            index = meta.applied_index
            wait_until = min(deadline, time.monotonic() + 5.0)
            while time.monotonic() < wait_until:
                progress = self.local.progress({"group": META_GROUP_ID})
                if int(progress["match"].get(str(node), 0)) >= index:
                    break
                await asyncio.sleep(0.1)
        if self._in_meta_group(node):  # not when resumed after it left
            await self.local.change_replicas(
                {"group": META_GROUP_ID, "op": "remove", "node": node}, deadline
            )

    async def _hand_over_meta(self, deadline: float) -> int:
        """Move the meta leadership to the most caught-up other voter; answers its id."""
        meta = self._host.meta
        progress = self.local.progress({"group": META_GROUP_ID})
        match = {int(k): v for k, v in progress["match"].items()}
        others: list[int] = [v for v in meta.raw.conf_state.voters if v != self._node.node_id]
        if not others:
            raise InvalidRequestError(f"node {self._node.node_id} is the meta group's last voter")
        target: int = max(others, key=lambda v: (match.get(v, 0), -v))
        await self.local.transfer_leader(
            {"group": META_GROUP_ID, "node": target}, min(deadline, soon())
        )
        return target

    # ------------------------------------------------------------------- automatic

    async def _auto_loop(self) -> None:
        """On the meta leader: resume the job the shard map names (`_resume_recorded_job`),
        promote caught-up meta learners while the meta group has fewer than META_VOTERS_MAX
        voters, rebalance after a join, and repair (meta group included) when a node is down
        longer than the repair delay or a live node is no member of the meta group (it came
        back after being removed as dead: without the meta group its map goes stale)."""
        while True:
            await asyncio.sleep(AUTO_PERIOD_S)
            meta = self._host.meta
            if meta is None or not meta.is_leader or not self._host.running:
                self._views.down_since.clear()  # measured afresh by the next leader
                self._leading_since = None
                self._rebalanced_for.clear()
                for task in self._tasks:
                    task.cancel()  # one driver: a deposed meta leader's job stops here
                continue
            if self._leading_since is None:
                self._leading_since = time.monotonic()
            try:
                if self._running is not None:
                    continue
                if await self._resume_recorded_job(time.monotonic() - self._leading_since):
                    continue
                await self._promote_meta_learner()
                view = await self._observe({})
                if await self._rebalance_after_join(view):
                    continue
                if self._node.config.repair_after_s <= 0:
                    continue
                outside_meta = view.meta is not None and any(
                    n.usable and n.node_id not in view.meta.members for n in view.nodes
                )
                if not outside_meta and not any(n.dead for n in view.nodes):
                    continue
                planner = self._planner("repair", {})
                if planner(view).steps:
                    self._start_job("repair", {}, planner, auto=True)
            except ServiceError as error:
                logger.info("automatic maintenance skipped a round: %s", error)
            except Exception:
                logger.exception("automatic maintenance failed")

    async def _resume_recorded_job(self, leading_s: float) -> bool:
        """Take over the job the map names, started under an earlier meta leader (or before
        this node restarted); True when it runs again here, or will once this node has led
        for `_resume_after_s` (nothing else automatic starts meanwhile). It re-plans from
        what the cluster now is, so the steps already done are not done twice."""
        record = self.local.shard_map().job
        if record is None:
            return False
        if leading_s < self._resume_after_s:
            return True
        args = record.arguments
        planner: Callable[[ClusterView], Plan] | None
        try:
            if record.kind == "verify":
                planner = None
            elif record.kind == "remove_node" and self._left_already(args):
                # The removal ended under an earlier meta leader — the removed node may have
                # run its last steps itself and stopped before it could clear the record —
                # so what is left is the rebalance after it. Failing the job here would
                # leave an earlier leader's handed-off copy as its last word.
                planner = _nothing_left_to_move
            else:
                planner = self._planner(record.kind, args)
        except ServiceError as error:
            logger.warning("job %s (%s) cannot resume: %s", record.id, record.kind, error)
            await self._forget_job(record.id)
            return False
        logger.info("resuming maintenance job %s (%s) from the shard map", record.id, record.kind)
        self._start_job(record.kind, args, planner, auto=record.auto, resumed=record.id)
        return True

    def _left_already(self, args: JsonObject) -> bool:
        """Whether the node a remove_node job names is gone from the map and the meta group."""
        node = args.get("node")
        if not isinstance(node, int) or self._host.meta is None:
            return False
        return node not in self.local.shard_map().nodes and not self._in_meta_group(node)

    def _in_meta_group(self, node: int) -> bool:
        """Whether `node` is a voter or learner of the meta group, as this node knows it."""
        conf = self._host.meta.raw.conf_state
        return node in conf.voters or node in conf.learners

    async def _record_job(self, job: Job) -> None:
        """Name `job` in the map (a resumed job is named already: update_map then changes
        nothing)."""
        record = JobRecord.of(job.id, job.kind, job.args, job.auto)
        await self.local.update_map(lambda m: m.with_job(record), soon())

    async def _forget_job(self, job_id: str) -> None:
        """Drop the map's record of a job that ended here. If that fails (this node just lost
        the meta leadership), the next leader runs the job again and finds little to do."""

        def forgotten(m: ShardMap) -> ShardMap:
            return m.with_job(None) if m.job is not None and m.job.id == job_id else m

        recorded = self.local.shard_map().job
        if recorded is None or recorded.id != job_id:
            return  # not ours to forget (nor a reason to need the meta leadership)
        try:
            await self.local.update_map(forgotten, soon())
        except ServiceError as error:
            logger.warning("job %s ended, but the map still names it: %s", job_id, error)

    async def _rebalance_after_join(self, view: ClusterView) -> bool:
        """Rebalance once a joined node serves (issue #10: automatic after add); True when a
        job started. The debt stays in the map until the cluster is balanced, so a meta
        leader that changes mid-way (or before starting) leaves it to the next one."""
        owed = set(self.local.shard_map().rebalance_after_join)
        joined = {n.node_id for n in view.nodes if n.live} & owed
        if not joined:
            return False
        planner = self._planner("rebalance", {})
        if not planner(view).steps:
            await self.local.update_map(
                lambda m: m.with_rebalance_owed(set(m.rebalance_after_join) - joined), soon()
            )
            return False
        if joined <= self._rebalanced_for:
            return False  # tried under this leadership; the debt waits for the next leader
        self._rebalanced_for |= joined
        self._start_job("rebalance", {"after_join": sorted(joined)}, planner, auto=True)
        return True

    async def _promote_meta_learner(self) -> None:
        meta = self._host.meta
        conf = meta.raw.conf_state
        if not conf.learners or len(conf.voters) >= META_VOTERS_MAX:
            return
        progress = self.local.progress({"group": META_GROUP_ID})
        for learner in conf.learners:
            if int(progress["match"].get(str(learner), 0)) >= progress["commit"] > 0:
                await self.local.change_replicas(
                    {"group": META_GROUP_ID, "op": "promote", "node": learner}, soon()
                )
                return

    # ---------------------------------------------------------------------- plumbing

    def _dead_arg(self, args: JsonObject) -> list[int]:
        dead = args.get("dead", [])
        if not isinstance(dead, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in dead
        ):
            raise InvalidRequestError('"dead" must be a list of node ids')
        unknown = sorted(set(dead) - set(self.local.shard_map().nodes))
        if unknown:
            raise InvalidRequestError(f"--dead names nodes that are not members: {unknown}")
        return dead

    async def _observe(self, args: JsonObject) -> ClusterView:
        shard_map = self.local.shard_map()
        dead = self._dead_arg(args)
        leaving = [args["node"]] if isinstance(args.get("node"), int) else []
        return await self._views.observe(
            shard_map.nodes, shard_map.shard_count, dead=dead, leaving=leaving
        )

    def _address(self, node_id: int) -> str:
        address = self._host.shard_map.nodes.get(node_id)
        if address is None:
            raise UnavailableError(f"node {node_id} has no known address")
        return str(address)

    async def _call(
        self, node_id: int, method: str, args: JsonObject, deadline: float
    ) -> JsonObject:
        if node_id == self._node.node_id:
            return await self.handle_call(method, args, deadline)
        return await self._peer_call(node_id, method, args, deadline)

    async def _peer_call(
        self, node_id: int, method: str, args: JsonObject, deadline: float
    ) -> JsonObject:
        """A call to another node, through this node's fault filter as its Raft frames and
        forwarded requests go (issue 5: the filter covers every byte exchanged between
        nodes): a repair must not reach across a partition its Raft traffic cannot cross.
        The callee applies its own filter to the calls it receives (grpc_api.py)."""
        transport = self._host.transport_or_none
        if transport is not None:
            cut = await pass_outbound(transport.fault_filter, node_id, deadline)
            if cut is not None:
                raise UnavailableError(
                    f"node {node_id} is unreachable from node {self._node.node_id} "
                    f"(fault injection: {cut})",
                    leader_hint=node_id,
                )
        return await self._client.call(
            self._address(node_id), method, args, deadline, from_node=self._node.node_id
        )

    async def _poll_status(self, node_id: int, deadline: float) -> JsonObject:
        return await self._call(node_id, "status", {}, deadline)


def _nothing_left_to_move(view: ClusterView) -> Plan:
    """The plan of a remove_node job resumed after its node left: no step."""
    return Plan((), (), ())


def _decommission_step(node: int) -> JsonObject:
    """The last step of a remove-node job (a step of the job, not of the plan: it runs once
    the plan's steps have moved every replica away)."""
    return {"kind": "decommission", "shard": -1, "node": node, "reason": "leave the cluster"}
