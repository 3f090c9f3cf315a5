"""`verify`: every replica of every shard checksums its state at one agreed log index, and
every live node reads its own WAL back (cluster/wal_health.py).

The shard's leader proposes a CHECKSUM entry; each replica hashes its whole state when it
applies that entry (so all hash the same logical state, without stopping writes) and re-reads
every table of its engine from disk. A replica is corrupt when its state could not be read,
a table failed its check, or its digest differs from the one a strict majority of the members
reported; it is marked (in memory) so that `repair` rebuilds it from a healthy leader.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from minikv_core.cluster.maintenance_job import Job, StepRecord
from minikv_core.cluster.maintenance_local import JsonObject, LocalMaintenance
from minikv_core.cluster.maintenance_steps import STEP_TIMEOUT_S, Call, StepRunner, soon
from minikv_core.cluster.maintenance_view import ViewBuilder
from minikv_core.cluster.service import ServiceError
from minikv_core.cluster.shard_map import group_of_shard

logger = logging.getLogger(__name__)


class Verifier:
    """Runs a verify job from the meta leader, shard by shard (one step each)."""

    def __init__(
        self, local: LocalMaintenance, views: ViewBuilder, steps: StepRunner, call: Call
    ) -> None:
        self.local = local
        self._views = views
        self._steps = steps
        self._call = call

    async def run(self, job: Job) -> None:
        shard_map = self.local.shard_map()
        view = await self._views.observe(shard_map.nodes, shard_map.shard_count)
        for shard in range(shard_map.shard_count):
            job.steps.append(
                StepRecord(
                    {
                        "kind": "verify",
                        "shard": shard,
                        "node": 0,
                        "reason": "checksum every replica at one index",
                    }
                )
            )
        live = [node.node_id for node in view.nodes if node.live]
        wal_steps = [
            StepRecord(
                {
                    "kind": "verify_wal",
                    "shard": -1,
                    "node": node,
                    "reason": "read every record of its WAL",
                }
            )
            for node in live
        ]
        shard_steps = list(job.steps)
        job.steps.extend(wal_steps)
        for shard, record in enumerate(shard_steps):
            with record.running():
                result = await self._verify_shard(
                    shard, view.shards[shard], time.monotonic() + STEP_TIMEOUT_S
                )
                job.results.append(result)
                bad = result["corrupt"]
                record.detail = (
                    _agreement(result["replicas"], result["index"])
                    if not bad
                    else "; ".join(f"node {c['node']}: {c['reason']}" for c in bad)
                )
        for node, record in zip(live, wal_steps, strict=True):
            with record.running():
                record.detail = await self._verify_wal(job, node)

    async def _verify_wal(self, job: Job, node: int) -> str:
        """The node reads its whole WAL (in a thread there) and remembers what is damaged,
        which repair's planner then sees in its status. A node that does not answer is
        reported, not a failed verify: the shards' checks above stand."""
        try:
            answer = await self._call(node, "wal_check", {}, time.monotonic() + STEP_TIMEOUT_S)
        except ServiceError as error:
            return f"not checked: {error}"
        damage = [str(d) for d in answer.get("damage", [])]
        job.wal_checks.append({"node": node, "damage": damage})
        if not damage:
            return "every record reads back"
        return f"{len(damage)} damaged record(s): {damage[0]}"

    async def _verify_shard(self, shard: int, view: Any, deadline: float) -> JsonObject:
        group_id = group_of_shard(shard)
        proposed = await self._steps.on_leader(
            group_id, "checksum_propose", {"shard": shard}, deadline
        )
        index = int(proposed["index"])
        members = sorted({*view.voters, *view.learners})
        answers = await asyncio.gather(
            *(
                self._call(n, "checksum", {"shard": shard, "index": index}, min(deadline, soon()))
                for n in members
            ),
            return_exceptions=True,
        )
        replicas: list[JsonObject] = []
        for node, answer in zip(members, answers, strict=True):
            if isinstance(answer, BaseException):
                replicas.append({"node": node, "unreachable": str(answer)})
            else:
                replicas.append(answer)
        digests = [r["checksum"]["digest"] for r in replicas if isinstance(r.get("checksum"), dict)]
        majority = majority_digest(digests, len(members))
        inconclusive = majority is None and len(set(digests)) > 1
        corrupt: list[JsonObject] = []
        for r in replicas:
            reason = ""
            if r.get("error"):
                reason = f"reading its state failed: {r['error']}"
            elif r.get("tables"):
                reason = "bad tables: " + "; ".join(r["tables"])
            elif (
                majority is not None
                and isinstance(r.get("checksum"), dict)
                and r["checksum"]["digest"] != majority
            ):
                reason = (
                    f"checksum {r['checksum']['digest'][:12]} differs from the majority's "
                    f"{str(majority)[:12]} at index {index}"
                )
            if reason:
                corrupt.append({"shard": shard, "node": r["node"], "reason": reason})
                try:
                    await self._call(
                        r["node"], "mark_corrupt", {"shard": shard, "reason": reason}, soon()
                    )
                except ServiceError as error:
                    logger.warning(
                        "could not mark shard %d on node %s: %s", shard, r["node"], error
                    )
        leader = view.leader
        if leader and any(c["node"] == leader for c in corrupt):
            # A corrupt leader would keep serving reads from its bad state: hand over now.
            try:
                await self._steps.move_leadership_off(shard, leader, deadline)
            except ServiceError as error:
                logger.warning("shard %d: corrupt leader %d kept leading: %s", shard, leader, error)
        return {
            "shard": shard,
            "index": index,
            "replicas": replicas,
            "corrupt": corrupt,
            "inconclusive": inconclusive,
        }


def majority_digest(digests: list[str], members: int) -> str | None:
    """The digest a strict majority of a shard's `members` reported, else None: a tie, or
    too few answers, says nothing about which replica is wrong (marking one could send the
    healthy copy to be rebuilt from the bad one)."""
    return next((d for d in sorted(set(digests)) if digests.count(d) * 2 > members), None)


def _agreement(replicas: list[JsonObject], index: int) -> str:
    """How many replicas were compared, and which could not be: "3 replicas agree" when one
    node was down (and so not checked at all) overstated what verify had seen."""
    unreachable = [r["node"] for r in replicas if "unreachable" in r]
    checked = len(replicas) - len(unreachable)
    agree = f"{checked} replica{'s' if checked != 1 else ''} agree at index {index}"
    if not unreachable:
        return agree
    return f"{agree}; not checked: node {', '.join(map(str, unreachable))} (unreachable)"
