"""`minikv serve --join HOST:GRPC`: how a new node becomes a member of a running cluster.

On its first start (no identity in the data directory) the node asks any member to add it;
the request reaches the meta leader (`maintenance.py`, operation "join"), which lists the node
in the shard map and adds it to the meta group as a learner. The answer carries what the node
must agree with: its id, the cluster id, the shard count, the replica count and the current
map (its peers). The node then starts with an empty meta replica that its leader catches up;
replicas of shards arrive later, when repair or rebalance places them on it.

On every later start the identity file says all of that, and `--join` is not asked again:
a restarted member must never re-join (it could get a second id).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any, Final

from minikv_core.cluster.config import IdentityError, NodeConfig, NodeIdentity
from minikv_core.cluster.host import NodeStartError
from minikv_core.cluster.service import ServiceError, UnavailableError
from minikv_core.cluster.shard_map import ShardMap, ShardMapError
from minikv_core.net.maintenance_rpc import MaintenanceClient

JOIN_TIMEOUT_S: Final = 30.0
"""How long a joining node keeps asking (the cluster may be electing a meta leader)."""


class JoinError(NodeStartError):
    """The cluster did not take this node in; the message says why and what to do."""


async def resolve_join(
    config: NodeConfig, join_address: str | None, *, rebalance: bool = True
) -> tuple[NodeConfig, ShardMap | None]:
    """The node's real configuration and, on a first start with `--join`, the map the meta
    leader answered with (None otherwise)."""
    if join_address is None:
        return config, None
    try:
        identity = NodeIdentity.load(config.identity_path)
    except IdentityError as error:
        raise JoinError(str(error)) from None
    if identity is not None:
        if identity.node_id != config.node_id:
            raise JoinError(
                f"data directory {config.data_dir} belongs to node {identity.node_id}, "
                f"not {config.node_id}; use --id {identity.node_id} or an empty directory"
            )
        return (
            dataclasses.replace(
                config,
                peers=identity.peers,
                shards=identity.shards,
                replicas=identity.replicas,
                cluster_id=identity.cluster_id,
            ),
            None,
        )
    answer = await _ask(join_address, config, rebalance)
    try:
        shard_map = ShardMap.from_json(answer["map"])
        node_id = int(answer["node_id"])
        joined = dataclasses.replace(
            config,
            node_id=node_id,
            peers=dict(shard_map.nodes),
            shards=int(answer["shards"]),
            replicas=int(answer["replicas"]),
            cluster_id=str(answer["cluster_id"]),
        )
    except (KeyError, TypeError, ValueError, ShardMapError) as error:
        raise JoinError(f"{join_address} answered the join with a bad document: {error}") from None
    return joined, shard_map


async def _ask(join_address: str, config: NodeConfig, rebalance: bool) -> dict[str, Any]:
    client = MaintenanceClient()
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    last: ServiceError = UnavailableError("no answer")
    try:
        while time.monotonic() < deadline:
            try:
                # Through `Operate`: adding a node is an operator's act (admin rules apply).
                return await client.call(
                    join_address,
                    "join",
                    {
                        "address": config.grpc_address,
                        "node_id": config.node_id,
                        "rebalance": rebalance,
                    },
                    min(deadline, time.monotonic() + 10.0),
                    operate=True,
                )
            except UnavailableError as error:
                last = error
                await asyncio.sleep(0.5)
            except ServiceError as error:
                raise JoinError(
                    f"the cluster at {join_address} refused to add this node: {error}"
                ) from None
    finally:
        await client.close()
    raise JoinError(
        f"could not join the cluster through {join_address} within {JOIN_TIMEOUT_S:.0f} s: "
        f"{last}; check that a member listens there and that the cluster has a quorum"
    )
