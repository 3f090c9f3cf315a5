"""Where the replicas of every shard live, and who should lead them: a pure function of the
sorted node ids, the shard count and the replica count.

Why pure and deterministic: nodes started with the same `--peers` and empty data directories
must create the *same* Raft groups with the *same* founding membership without talking to each
other first (Raft needs an agreed initial configuration before it can agree on anything). Each
node computes the placement independently; the meta group then records it as epoch 1, and
every later change goes through Raft.

The rule, over the sorted ids, shard by shard in order:

    preferred_leader(s) = ids[s mod n]
    replicas(s)         = [preferred_leader(s)] + the R-1 other nodes holding the fewest
                          replicas so far (ties: ring distance after the leader)

- Distinct nodes: the others are chosen among the n-1 nodes that are not the leader.
- Leaders even: shard s prefers ids[s mod n], so preferred-leader counts differ by at most one.
- Replicas even: the greedy choice keeps replica counts within one of each other (checked by
  the tests over many shapes). With R = n every node holds every shard.

The meta group has at most META_VOTERS_MAX voters (the lowest ids); the other nodes follow it
as learners (they keep the shard map without slowing its quorum). Its preferred leader is the
voter with the fewest preferred shard leaders (lowest id on ties), so the node that leads the
meta group leads one shard fewer where it can.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from minikv_core.cluster.config import META_VOTERS_MAX


@dataclass(frozen=True, slots=True)
class ShardPlacement:
    shard: int
    replicas: tuple[int, ...]
    """Distinct node ids; the first is the preferred leader."""

    @property
    def preferred_leader(self) -> int:
        return self.replicas[0]


@dataclass(frozen=True, slots=True)
class MetaPlacement:
    voters: tuple[int, ...]
    learners: tuple[int, ...]
    preferred_leader: int


def _sorted_ids(node_ids: Iterable[int]) -> tuple[int, ...]:
    ids = tuple(sorted(set(node_ids)))
    if not ids:
        raise ValueError("placement needs at least one node")
    for node_id in ids:
        if isinstance(node_id, bool) or not isinstance(node_id, int) or node_id <= 0:
            raise ValueError(f"node ids must be positive integers, got {node_id!r}")
    return ids


def place_shards(node_ids: Iterable[int], shards: int, replicas: int) -> tuple[ShardPlacement, ...]:
    """The initial replicas of shards 0..shards-1 (see the module docstring for the rule)."""
    ids = _sorted_ids(node_ids)
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    if not 1 <= replicas <= len(ids):
        raise ValueError(
            f"replicas must be in 1..{len(ids)} (the number of nodes), got {replicas}: "
            "replicas of a shard live on distinct nodes"
        )
    count = len(ids)
    # Load counts every leadership up front (they are fixed by the rule), so followers go
    # where the *final* replica count will be lowest.
    load = {node_id: len(range(position, shards, count)) for position, node_id in enumerate(ids)}
    placements_list: list[ShardPlacement] = []
    for shard in range(shards):
        leader_position = shard % count
        # The others: the least loaded nodes, ties broken by ring distance after the leader.
        others = sorted(
            (ids[(leader_position + step) % count] for step in range(1, count)),
            key=lambda node_id: (load[node_id], (ids.index(node_id) - leader_position) % count),
        )[: replicas - 1]
        for node_id in others:
            load[node_id] += 1
        placements_list.append(ShardPlacement(shard, (ids[leader_position], *others)))
    placements = tuple(placements_list)
    for placement in placements:
        assert len(set(placement.replicas)) == replicas, placement
    return placements


def place_meta(node_ids: Iterable[int], shards: int, replicas: int) -> MetaPlacement:
    """The meta group's founding membership and preferred leader."""
    ids = _sorted_ids(node_ids)
    voters = ids[:META_VOTERS_MAX]
    learners = ids[META_VOTERS_MAX:]
    leads = Counter(p.preferred_leader for p in place_shards(ids, shards, replicas))
    preferred = min(voters, key=lambda node_id: (leads[node_id], node_id))
    return MetaPlacement(voters, learners, preferred)
