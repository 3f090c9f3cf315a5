"""The shard map: which key goes to which shard, and which nodes hold each shard.

`shard_for_key(key, shard_count)` is the one shard function of minikv: nodes and clients
(`minikv_core.client`) route with it, so it is part of the on-disk format of a cluster (the
shard count is fixed at creation). It is BLAKE2b-64 of the key modulo the shard count: a keyed
cryptographic hash spreads any key pattern (sequential ids, shared prefixes) evenly, and
hashlib computes it in C in well under a microsecond for short keys. (A CRC is faster but
linear: the low bits of CRCs of keys differing only in their last bytes are correlated.)

`ShardMap` is the value the meta group replicates (epoch, nodes, per-shard replicas and
preferred leader). Leader *hints* are not part of it: they change with every election, so the
node adds them from its live Raft state when it serves the map (`document()`).

Shards are numbered 0..S-1; shard s is Raft group s + 1 (group 0 is the meta group).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Final

from minikv_core.cluster.placement import place_shards

META_GROUP_ID: Final = 0
SHARD_MAP_FORMAT: Final = 1


def shard_for_key(key: bytes, shard_count: int) -> int:
    """The shard (0..shard_count-1) holding `key`."""
    assert shard_count >= 1, shard_count
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "little") % shard_count


def group_of_shard(shard: int) -> int:
    return shard + 1


def shard_of_group(group_id: int) -> int:
    assert group_id != META_GROUP_ID, "group 0 is the meta group, not a shard"
    return group_id - 1


class ShardMapError(ValueError):
    """A shard map document that is not valid (names the field)."""


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A maintenance job under way (maintenance.py), as the replicated map names it: a meta
    leader that loses its leadership loses the job's task with it, and the next meta leader
    resumes the job from this record (every job re-plans from what the cluster now is)."""

    id: str
    kind: str
    args: str
    """Its arguments as canonical JSON: an immutable value, like the rest of the map."""
    auto: bool = False

    @property
    def arguments(self) -> dict[str, Any]:
        """The arguments as the job takes them (a fresh dict each time)."""
        arguments: dict[str, Any] = json.loads(self.args)
        return arguments

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "args": self.arguments, "auto": self.auto}

    @classmethod
    def of(cls, job_id: str, kind: str, args: Mapping[str, Any], auto: bool) -> JobRecord:
        return cls(job_id, kind, json.dumps(args, sort_keys=True, separators=(",", ":")), auto)

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> JobRecord:
        args = document["args"]
        if not isinstance(args, dict):
            raise ShardMapError("the job record's args must be a JSON object")
        return cls.of(str(document["id"]), str(document["kind"]), args, document["auto"] is True)


@dataclass(frozen=True, slots=True)
class ShardAssignment:
    shard: int
    replicas: tuple[int, ...]
    """Distinct node ids holding the shard."""
    preferred_leader: int
    """Where the node moves leadership once elected (spreads leaders evenly)."""
    learners: tuple[int, ...] = ()
    """Replicas being added (issue #10): listed here *before* the group's leader adds them as
    Raft learners, so the node creates its empty replica first. Invariant kept by the
    maintenance executor: every member of the group's Raft configuration is in `replicas` or
    `learners` (a node drops a replica the map no longer lists; see host.py)."""

    @property
    def members(self) -> tuple[int, ...]:
        return (*self.replicas, *self.learners)


@dataclass(frozen=True, slots=True)
class ShardMap:
    epoch: int
    """0: computed locally at bootstrap, not yet recorded by the meta group; 1: the bootstrap
    map as the meta group recorded it; each later change increments it."""
    nodes: Mapping[int, str]
    """Node id -> gRPC address."""
    shards: tuple[ShardAssignment, ...]
    """Indexed by shard number."""
    retired: tuple[int, ...] = ()
    """Ids of removed nodes: never given out again (a stale process or data directory of a
    removed node must not pass for a new member)."""
    rebalance_after_join: tuple[int, ...] = ()
    """Joined nodes whose rebalance is owed (issue #10: automatic after add). Recorded by the
    join itself and dropped by the meta leader once the cluster is balanced with them: kept
    here, not in one leader's memory, so a meta leadership change between the join and the
    rebalance (the move to the preferred meta leader soon after a start) does not lose it."""
    job: JobRecord | None = None
    """The maintenance job under way, if any (`JobRecord`)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", MappingProxyType(dict(sorted(self.nodes.items()))))
        if self.epoch < 0:
            raise ShardMapError(f"epoch must be >= 0, got {self.epoch}")
        if not self.shards:
            raise ShardMapError("a shard map needs at least one shard")
        for number, assignment in enumerate(self.shards):
            if assignment.shard != number:
                raise ShardMapError(f"shard {assignment.shard} listed at position {number}")
            if not assignment.replicas or len(set(assignment.replicas)) != len(assignment.replicas):
                raise ShardMapError(f"shard {number}: replicas must be distinct and non-empty")
            if set(assignment.learners) & set(assignment.replicas) or len(
                set(assignment.learners)
            ) != len(assignment.learners):
                raise ShardMapError(f"shard {number}: learners must be distinct and not replicas")
            unknown = [r for r in assignment.members if r not in self.nodes]
            if unknown:
                raise ShardMapError(f"shard {number}: replicas {unknown} are not cluster nodes")
            if assignment.preferred_leader not in assignment.replicas:
                raise ShardMapError(
                    f"shard {number}: preferred leader {assignment.preferred_leader} is not "
                    "one of its replicas"
                )
        owed = [n for n in self.rebalance_after_join if n not in self.nodes]
        if owed:
            raise ShardMapError(f"rebalance owed to nodes {owed} that are not cluster nodes")

    @property
    def shard_count(self) -> int:
        return len(self.shards)

    def shard_for_key(self, key: bytes) -> int:
        return shard_for_key(key, len(self.shards))

    def shards_of_node(self, node_id: int) -> list[int]:
        return [a.shard for a in self.shards if node_id in a.replicas]

    def hosted_by(self, node_id: int) -> set[int]:
        """Shards `node_id` should hold a replica of (voter or incoming learner)."""
        return {a.shard for a in self.shards if node_id in a.members}

    def with_shard(self, assignment: ShardAssignment) -> ShardMap:
        shards = list(self.shards)
        shards[assignment.shard] = assignment
        return replace(self, shards=tuple(shards))

    def with_nodes(self, nodes: Mapping[int, str]) -> ShardMap:
        return replace(self, nodes=nodes)

    def without_node(self, node_id: int) -> ShardMap:
        """The map after `node_id` left for good (its id retired)."""
        nodes = {n: a for n, a in self.nodes.items() if n != node_id}
        retired = tuple(sorted({*self.retired, node_id}))
        owed = tuple(n for n in self.rebalance_after_join if n != node_id)
        return replace(self, nodes=nodes, retired=retired, rebalance_after_join=owed)

    def with_rebalance_owed(self, owed: set[int]) -> ShardMap:
        """The map with a rebalance owed to exactly the nodes `owed`."""
        return replace(self, rebalance_after_join=tuple(sorted(owed)))

    def with_job(self, job: JobRecord | None) -> ShardMap:
        return replace(self, job=job)

    @classmethod
    def bootstrap(cls, peers: Mapping[int, str], shards: int, replicas: int) -> ShardMap:
        """The initial map every founding node computes alike (placement.py), epoch 0."""
        placements = place_shards(peers, shards, replicas)
        return cls(
            epoch=0,
            nodes=dict(peers),
            shards=tuple(
                ShardAssignment(p.shard, p.replicas, p.preferred_leader) for p in placements
            ),
        )

    def with_epoch(self, epoch: int) -> ShardMap:
        return replace(self, epoch=epoch)

    # --------------------------------------------------------------------------- codec

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "format": SHARD_MAP_FORMAT,
            "epoch": self.epoch,
            "nodes": {str(node_id): address for node_id, address in self.nodes.items()},
            "shards": [
                {
                    "shard": a.shard,
                    "replicas": list(a.replicas),
                    "preferred_leader": a.preferred_leader,
                    "learners": list(a.learners),
                }
                for a in self.shards
            ],
            "retired": list(self.retired),
        }
        if self.rebalance_after_join:  # absent when empty: most maps encode as before
            document["rebalance_after_join"] = list(self.rebalance_after_join)
        if self.job is not None:
            document["job"] = self.job.to_json()
        return document

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> ShardMap:
        try:
            if document.get("format") != SHARD_MAP_FORMAT:
                raise ShardMapError(
                    f"unknown shard map format {document.get('format')!r} "
                    f"(this node reads format {SHARD_MAP_FORMAT})"
                )
            nodes = {int(node_id): str(address) for node_id, address in document["nodes"].items()}
            shards = tuple(
                ShardAssignment(
                    int(item["shard"]),
                    tuple(int(r) for r in item["replicas"]),
                    int(item["preferred_leader"]),
                    tuple(int(r) for r in item.get("learners", ())),
                )
                for item in document["shards"]
            )
            retired = tuple(int(n) for n in document.get("retired", ()))
            owed = tuple(int(n) for n in document.get("rebalance_after_join", ()))
            job = JobRecord.from_json(document["job"]) if "job" in document else None
            return cls(int(document["epoch"]), nodes, shards, retired, owed, job)
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            if isinstance(error, ShardMapError):
                raise
            raise ShardMapError(f"malformed shard map: {type(error).__name__}: {error}") from None

    @classmethod
    def decode(cls, data: bytes) -> ShardMap:
        try:
            document = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ShardMapError(f"shard map is not valid JSON: {error}") from None
        if not isinstance(document, dict):
            raise ShardMapError("shard map must be a JSON object")
        return cls.from_json(document)

    def document(self, leaders: Mapping[int, int]) -> dict[str, Any]:
        """What `GET /admin/shards` and `KV.ShardMap` serve (and `ShardRouting` parses):
        `leaders` maps shard -> the node id of its leader as this node knows it (0: unknown).
        """
        return {
            "epoch": self.epoch,
            "shard_count": len(self.shards),
            "nodes": [{"id": node_id, "grpc": address} for node_id, address in self.nodes.items()],
            "shards": [
                {
                    "shard": a.shard,
                    "group": group_of_shard(a.shard),
                    "replicas": list(a.replicas),
                    "preferred_leader": a.preferred_leader,
                    "learners": list(a.learners),
                    "leader": leaders.get(a.shard, 0),
                }
                for a in self.shards
            ],
        }
