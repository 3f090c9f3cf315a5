"""Handing a group's leadership to a chosen voter and waiting until it leads.

Shared by the admin transfer (`Node.transfer_leader`) and maintenance steps (moving a leader
off a node before its replica goes): both must ride out an attempt the leader abandons.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from minikv_core.cluster.group import Group
from minikv_core.cluster.service import DeadlineExceededError


async def hand_over(
    group: Group,
    target: int,
    *,
    wake: Callable[[], None],
    tick_s: float,
    retry_s: float,
    deadline: float,
    what: str,
) -> None:
    """Ask the leader (through this replica) to transfer to `target` until `target` leads.

    The leader abandons a transfer the target could not catch up for within an election
    timeout (thesis §3.10): ask again every `retry_s` rather than wait out the deadline on an
    attempt that is already over (a target just back from a pause or a partition is often
    still reconnecting on the first try). Raises NotLeaderError / ProposalDroppedError from
    the core (callers map them), DeadlineExceededError naming `what` at the deadline.
    """
    while group.leader_id != target:
        group.raw.transfer_leader(target)
        group.rebalance_wanted = False
        wake()
        asked = time.monotonic()
        while group.leader_id != target and time.monotonic() - asked < retry_s:
            if deadline - time.monotonic() <= 0:
                raise DeadlineExceededError(
                    f"{what}: node {target} did not take over before the deadline"
                )
            await asyncio.sleep(tick_s)
