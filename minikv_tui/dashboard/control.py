"""What the dashboard's keys do to a cluster.

Process actions (kill, stop, start, pause, resume) need the launcher: only it knows which
process is which node. Everything else is an admin call any client can make, so a cluster the
dashboard merely attached to (`--endpoints`) can still be partitioned, healed, snapshotted and
compacted — and repaired, verified and rebalanced: maintenance jobs run on the meta leader,
which any node forwards to, so they need no launcher either. When the launcher is there,
partitions go through it so they outlive restarts and land in the registry's journal like the
CLI's. A one-way cut goes through the launcher too when there is one (so a restarted node
gets it back); attached by endpoints, it is set directly on the nodes and journalled here.

Every method returns one line for the UI, or raises `ActionError` with one that says what went
wrong; nothing here prints or raises a traceback at a person.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from minikv_core.client import (
    AsyncClient,
    ClientError,
    DeadlineExceededError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)
from minikv_tui.errors import UserError
from minikv_tui.launcher import Launcher

ADMIN_TIMEOUT_S = 5.0
SNAPSHOT_TIMEOUT_S = 30.0
MAINTENANCE_TIMEOUT_S = 10.0
"""A dry run polls every node before it answers; a start answers at once."""
READ_ATTEMPTS = 2
"""Nodes a read (dry run, job status) tries before giving up for this time."""

T = TypeVar("T")

Journal = Callable[[str, str, int | None], Awaitable[None]]
"""Records an action the launcher does not journal itself: (kind, detail, node)."""


PROCESS_ACTIONS_UNAVAILABLE = (
    "process actions need a cluster started by minikv on this machine "
    "(attached by --endpoints: signal the process where it runs)"
)


class ActionError(Exception):
    """An action that failed or cannot be done here; the message is for the person."""


@dataclass(frozen=True)
class PartitionPlan:
    """What the partition dialog asks for. `groups`: a symmetric cut (nodes not named form one
    more group). `one_way`: traffic from the first set to the second is dropped, the reverse
    still flows."""

    groups: tuple[tuple[int, ...], ...] = ()
    one_way: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    def describe(self) -> str:
        if self.one_way is not None:
            source, sink = self.one_way
            return f"cut {_ids(source)} -> {_ids(sink)} (one way)"
        return " | ".join(_ids(group) for group in self.groups)


class ClusterControl:
    """The actions, with or without a launcher. `addresses()` maps node id to gRPC address
    (the dashboard's latest view), so admin calls go to the right node."""

    def __init__(
        self,
        client: AsyncClient,
        addresses: Callable[[], Mapping[int, str]],
        *,
        launcher: Launcher | None = None,
        journal: Journal | None = None,
    ) -> None:
        self._client = client
        self._addresses = addresses
        self._launcher = launcher
        self._journal = journal

    @property
    def manages_processes(self) -> bool:
        """False when attached by --endpoints: kill, stop, start and pause are refused."""
        return self._launcher is not None

    # --- processes -------------------------------------------------------------------------

    async def kill(self, node: int) -> str:
        return await self._launched(lambda launcher: launcher.kill(node))

    async def stop(self, node: int) -> str:
        return await self._launched(lambda launcher: launcher.stop(node))

    async def start(self, node: int) -> str:
        return await self._launched(lambda launcher: launcher.start(node))

    async def pause(self, node: int) -> str:
        return await self._launched(lambda launcher: launcher.pause(node))

    async def resume(self, node: int) -> str:
        return await self._launched(lambda launcher: launcher.resume(node))

    async def stop_cluster(self) -> str:
        stopped = await self._launched(lambda launcher: launcher.down())
        return f"stopped nodes {_ids(stopped)}" if stopped else "no node was running"

    # --- network ---------------------------------------------------------------------------

    async def partition(self, plan: PartitionPlan) -> str:
        if plan.one_way is not None:
            return await self._one_way(*plan.one_way)
        if self._launcher is not None:
            launcher = self._launcher
            groups = await self._launched(lambda _: launcher.partition(plan.groups))
            return f"partitioned: {' | '.join(_ids(g) for g in groups)}"
        addresses = self._addresses()
        groups = _complete(plan.groups, sorted(addresses))
        for group in groups:
            others = sorted(set(addresses) - set(group))
            for node in group:
                await self._admin(
                    f"set the fault rules of node {node}",
                    self._client.set_fault(
                        addresses[node], drop_to=others, drop_from=others, timeout_s=ADMIN_TIMEOUT_S
                    ),
                )
        detail = " | ".join(_ids(g) for g in groups)
        await self._record("partition", detail, None)
        return f"partitioned: {detail}"

    async def isolate(self, node: int) -> str:
        if self._launcher is not None:
            launcher = self._launcher
            await self._launched(lambda _: launcher.isolate(node))
            return f"node {node} cut off from the others"
        return await self.partition(PartitionPlan(groups=((node,),)))

    async def heal(self) -> str:
        if self._launcher is not None:
            launcher = self._launcher
            cleared = await self._launched(lambda _: launcher.heal())
            # The launcher skips nodes that are down or paused (it clears them when they
            # start or resume): "healed ... nodes none" read as if it had worked.
            skipped = sorted(set(self._addresses()) - set(cleared))
            if not cleared:
                return (
                    f"no node running to clear: nodes {_ids(skipped)} start (or resume) "
                    "with no fault rules"
                )
            later = f"; nodes {_ids(skipped)} when started or resumed" if skipped else ""
            return f"healed: fault rules cleared on nodes {_ids(cleared)}{later}"
        addresses = self._addresses()
        failed: list[str] = []
        for node, address in sorted(addresses.items()):
            try:
                await self._client.clear_fault(address, timeout_s=ADMIN_TIMEOUT_S)
            except ClientError as error:
                failed.append(f"node {node}: {error}")
        await self._record("heal", f"cleared nodes {_ids(sorted(addresses))}", None)
        if failed:
            raise ActionError("heal incomplete: " + "; ".join(failed))
        return f"healed: fault rules cleared on nodes {_ids(sorted(addresses))}"

    async def _one_way(self, source: Sequence[int], sink: Sequence[int]) -> str:
        addresses = self._addresses()
        unknown = sorted((set(source) | set(sink)) - set(addresses))
        if unknown:
            raise ActionError(f"no node {_ids(unknown)} in this cluster")
        if not source or not sink:
            raise ActionError("a one-way cut needs nodes on both sides")
        if set(source) & set(sink):
            raise ActionError("a one-way cut needs two disjoint sets of nodes")
        source, sink = sorted(set(source)), sorted(set(sink))
        if self._launcher is not None:
            launcher = self._launcher
            await self._launched(lambda _: launcher.cut_one_way(source, sink))
            return f"cut {_ids(source)} -> {_ids(sink)} dropped (one way)"
        for node in source:
            await self._admin(
                f"set the fault rules of node {node}",
                self._client.set_fault(addresses[node], drop_to=sink, timeout_s=ADMIN_TIMEOUT_S),
            )
        for node in sink:
            await self._admin(
                f"set the fault rules of node {node}",
                self._client.set_fault(
                    addresses[node], drop_from=source, timeout_s=ADMIN_TIMEOUT_S
                ),
            )
        detail = f"{_ids(source)} -> {_ids(sink)} dropped (one way)"
        await self._record("partition", detail, None)
        return f"cut {detail}"

    # --- leadership and storage ------------------------------------------------------------

    async def transfer_leader(self, shard: int, to_node: int, via_node: int | None) -> str:
        if self._launcher is not None:
            launcher = self._launcher
            return await self._launched(lambda _: launcher.transfer_leader(shard, to_node))
        addresses = self._addresses()
        via = via_node if via_node is not None and via_node in addresses else to_node
        await self._admin(
            f"transfer shard {shard} to node {to_node}",
            self._client.transfer_leader(addresses[via], shard, to_node, timeout_s=ADMIN_TIMEOUT_S),
        )
        await self._record("transfer-leader", f"shard {shard}: -> {to_node}", to_node)
        return f"asked node {via} to hand shard {shard} to node {to_node}"

    async def snapshot(self, node: int) -> str:
        address = self._address(node)
        await self._admin(
            f"snapshot node {node}",
            self._client.snapshot(address, timeout_s=SNAPSHOT_TIMEOUT_S),
        )
        await self._record("snapshot", "all replicas flushed and snapshotted", node)
        return f"node {node}: replicas flushed and snapshotted"

    async def compact(self, node: int) -> str:
        address = self._address(node)
        await self._admin(
            f"compact node {node}",
            self._client.compact(address, timeout_s=SNAPSHOT_TIMEOUT_S),
        )
        await self._record("compact", "full compaction of every replica", node)
        return f"node {node}: replicas compacted"

    # --- data ------------------------------------------------------------------------------

    async def put(self, key: bytes, value: bytes) -> str:
        version = await self._admin("put", self._client.put(key, value, timeout_s=ADMIN_TIMEOUT_S))
        return f"put {key!r}: version {version}"

    async def get(self, key: bytes) -> str:
        try:
            value = await self._client.get(key, timeout_s=ADMIN_TIMEOUT_S)
        except NotFoundError:
            return f"{key!r}: not found"
        except ClientError as error:
            raise ActionError(f"get {key!r} failed: {error}") from None
        return f"{key!r} = {value!r}"

    # --- maintenance -----------------------------------------------------------------------

    async def plan(
        self, operation: str, args: Mapping[str, Any], via: Sequence[int]
    ) -> dict[str, Any]:
        """A dry run of "repair" or "rebalance": the plan document, nothing moves."""
        what = f"planning the {operation}"
        try:
            return await self._read(
                operation, {**args, "dry_run": True}, via, MAINTENANCE_TIMEOUT_S
            )
        except ClientError as error:
            raise _maintenance_error(what, error) from None

    async def start_job(
        self, operation: str, args: Mapping[str, Any], via: Sequence[int]
    ) -> dict[str, Any]:
        """Starts a job and answers its document. One attempt only: a start is not
        idempotent, and a second node would only answer that the first job is running."""
        nodes = self._maintenance_nodes(via)
        if not nodes:
            raise ActionError("no node of this cluster is known yet: wait for the first frame")
        node = nodes[0]
        try:
            return await self._client.maintain(
                operation,
                dict(args),
                endpoint=self._address(node),
                timeout_s=MAINTENANCE_TIMEOUT_S,
            )
        except ClientError as error:
            raise _maintenance_error(f"{operation} not started", error) from None

    async def read_job(
        self, args: Mapping[str, Any], via: Sequence[int], timeout_s: float
    ) -> dict[str, Any]:
        """`operate job` (by id, or the latest): raises ClientError, whose type tells the
        caller a job the meta leader does not know (InvalidRequestError) from a node that
        did not answer."""
        return await self._read("job", args, via, timeout_s)

    async def _read(
        self, operation: str, args: Mapping[str, Any], via: Sequence[int], timeout_s: float
    ) -> dict[str, Any]:
        last: ClientError = UnavailableError("no node of this cluster is known yet")
        for node in self._maintenance_nodes(via)[:READ_ATTEMPTS]:
            try:
                return await self._client.maintain(
                    operation, dict(args), endpoint=self._address(node), timeout_s=timeout_s
                )
            except (UnavailableError, DeadlineExceededError) as error:
                last = error  # this node may be the one that is down: ask the next
        raise last

    def _maintenance_nodes(self, via: Sequence[int]) -> list[int]:
        """`via` (the caller's best guesses: meta leader, then live nodes) where known, else
        every node: any node forwards maintenance to the meta leader."""
        addresses = self._addresses()
        return [node for node in via if node in addresses] or sorted(addresses)

    # --- machinery -------------------------------------------------------------------------

    async def _launched(self, action: Callable[[Launcher], Awaitable[T]]) -> T:
        if self._launcher is None:
            raise ActionError(PROCESS_ACTIONS_UNAVAILABLE)
        try:
            return await action(self._launcher)
        except UserError as error:
            raise ActionError(error.message + (f" ({error.hint})" if error.hint else "")) from None
        except (ClientError, OSError) as error:
            raise ActionError(str(error)) from None

    async def _admin(self, what: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except ClientError as error:
            raise ActionError(f"{what} failed: {error}") from None

    def _address(self, node: int) -> str:
        address = self._addresses().get(node)
        if address is None:
            raise ActionError(f"no node {node} in this cluster")
        return address

    async def _record(self, kind: str, detail: str, node: int | None) -> None:
        if self._journal is not None:
            await self._journal(kind, detail, node)


def _maintenance_error(what: str, error: ClientError) -> ActionError:
    """A node's refusal as one line that says what to do next."""
    text = str(error)
    if isinstance(error, PermissionDeniedError):
        hint = "the nodes answer admin calls from their own machine only: run the dashboard there"
    elif isinstance(error, DeadlineExceededError):
        hint = "the meta leader did not answer in time: try again in a few seconds"
    elif isinstance(error, UnavailableError):
        if "is running" in text:
            hint = "one job at a time: watch it in the job panel, then try again"
        elif "no leader" in text:
            hint = "wait a few seconds for the meta group to elect a leader, then try again"
        else:
            hint = "no node answered: try again once the dashboard shows nodes up"
    else:
        hint = ""
    return ActionError(f"{what}: {text}" + (f" ({hint})" if hint else ""))


def _complete(
    groups: Sequence[Sequence[int]], node_ids: Sequence[int]
) -> tuple[tuple[int, ...], ...]:
    """As the launcher does it: the groups given, plus one of every node left out."""
    seen: set[int] = set()
    result: list[tuple[int, ...]] = []
    for group in groups:
        members = tuple(sorted(set(group)))
        unknown = [n for n in members if n not in node_ids]
        if unknown:
            raise ActionError(f"no node {_ids(unknown)} in this cluster")
        if seen.intersection(members):
            raise ActionError("a node is in two groups: each belongs to one side")
        seen.update(members)
        if members:
            result.append(members)
    rest = tuple(n for n in node_ids if n not in seen)
    if rest:
        result.append(rest)
    if len(result) < 2:
        raise ActionError("a partition needs at least two groups")
    return tuple(result)


def _ids(ids: Sequence[int]) -> str:
    return ",".join(str(i) for i in ids) or "none"
