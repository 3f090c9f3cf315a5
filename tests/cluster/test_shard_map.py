"""The shard function and the replicated shard map (codec, validation, served document)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from minikv_core.client import ShardRouting
from minikv_core.cluster.shard_map import (
    JobRecord,
    ShardAssignment,
    ShardMap,
    ShardMapError,
    group_of_shard,
    shard_for_key,
    shard_of_group,
)

PEERS = {1: "127.0.0.1:9001", 2: "127.0.0.1:9002", 3: "127.0.0.1:9003"}


def test_shard_function_is_stable_across_processes() -> None:
    """Golden values: the shard function is part of a cluster's on-disk format (keys stored in
    shard s must be found in shard s after a restart or an upgrade), and Python's own hash()
    is salted per process, so these must never change."""
    keys = (b"a", b"key-1", b"key-2", b"\x00", b"x" * 4096)
    assert [shard_for_key(key, 8) for key in keys] == [0, 0, 0, 4, 3]
    assert [shard_for_key(key, 5) for key in keys[:3]] == [3, 2, 4]
    assert shard_for_key(b"hello", 1) == 0


def test_sequential_keys_spread_evenly_over_shards() -> None:
    counts = Counter(shard_for_key(f"user:{i:08d}".encode(), 8) for i in range(8000))
    assert set(counts) == set(range(8))
    assert max(counts.values()) < 1.1 * 1000 and min(counts.values()) > 0.9 * 1000, counts


def test_random_binary_keys_spread_evenly_over_a_prime_shard_count() -> None:
    rng = random.Random(3)
    counts = Counter(shard_for_key(rng.randbytes(rng.randint(1, 40)), 7) for _ in range(7000))
    assert max(counts.values()) < 1.15 * 1000, f"{counts} (seed 3)"


def test_group_ids_are_shard_plus_one_and_zero_is_meta() -> None:
    assert group_of_shard(0) == 1
    assert shard_of_group(8) == 7
    with pytest.raises(AssertionError):
        shard_of_group(0)


def test_bootstrap_map_round_trips_through_its_encoding() -> None:
    shard_map = ShardMap.bootstrap(PEERS, 8, 3).with_epoch(1)
    assert ShardMap.decode(shard_map.encode()) == shard_map
    assert shard_map.shard_count == 8
    assert shard_map.shards_of_node(2) == list(range(8))


def test_an_owed_rebalance_is_part_of_the_map_until_the_node_leaves() -> None:
    """The join's rebalance debt rides in the replicated map (not one meta leader's memory),
    through every change of the map, and is absent from the encoding when nothing is owed."""
    plain = ShardMap.bootstrap(PEERS, 4, 3).with_epoch(1)
    assert b"rebalance_after_join" not in plain.encode()
    joined = plain.with_nodes({**plain.nodes, 4: "127.0.0.1:9004"}).with_rebalance_owed({4})
    assert ShardMap.decode(joined.encode()) == joined
    moved = joined.with_epoch(2).with_shard(ShardAssignment(0, (1, 2, 4), 1))
    assert moved.rebalance_after_join == (4,)
    assert joined.without_node(4).rebalance_after_join == ()
    assert joined.with_rebalance_owed(set()).encode() == plain.with_nodes(joined.nodes).encode()
    with pytest.raises(ShardMapError, match="rebalance owed to nodes \\[7\\]"):
        plain.with_rebalance_owed({7})


def test_the_job_under_way_is_part_of_the_map() -> None:
    """The next meta leader resumes the job the map names: it must survive the codec exactly,
    args included, and a malformed record must be refused like any malformed map."""
    plain = ShardMap.bootstrap(PEERS, 4, 3).with_epoch(1)
    record = JobRecord.of("2-7", "repair", {"dead": [3], "wait": True}, auto=False)
    with_job = plain.with_job(record)
    assert ShardMap.decode(with_job.encode()) == with_job
    assert with_job.to_json()["job"] == {
        "id": "2-7",
        "kind": "repair",
        "args": {"dead": [3], "wait": True},
        "auto": False,
    }
    assert with_job.with_job(None).encode() == plain.encode()
    broken = with_job.to_json()
    broken["job"]["args"] = [3]
    with pytest.raises(ShardMapError, match="args must be a JSON object"):
        ShardMap.from_json(broken)


def test_invalid_maps_are_refused_naming_the_problem() -> None:
    good = ShardAssignment(0, (1, 2, 3), 1)
    with pytest.raises(ShardMapError, match="not cluster nodes"):
        ShardMap(1, PEERS, (ShardAssignment(0, (1, 2, 4), 1),))
    with pytest.raises(ShardMapError, match="distinct"):
        ShardMap(1, PEERS, (ShardAssignment(0, (1, 1, 2), 1),))
    with pytest.raises(ShardMapError, match="preferred leader"):
        ShardMap(1, {**PEERS, 4: "h:4"}, (ShardAssignment(0, (1, 2, 3), 4),))
    with pytest.raises(ShardMapError, match="position"):
        ShardMap(1, PEERS, (good, good))
    with pytest.raises(ShardMapError, match="format"):
        ShardMap.decode(b'{"format": 9}')
    with pytest.raises(ShardMapError, match="malformed"):
        ShardMap.decode(b'{"format": 1, "epoch": 1}')
    with pytest.raises(ShardMapError, match="JSON"):
        ShardMap.decode(b"\xff")


def test_served_document_is_what_the_client_routes_by() -> None:
    shard_map = ShardMap.bootstrap(PEERS, 4, 3).with_epoch(1)
    document = shard_map.document({0: 1, 2: 3})
    routing = ShardRouting.from_document(document)
    assert routing.epoch == 1
    assert routing.shard_count == 4
    assert routing.addresses == PEERS
    assert routing.leaders == {0: 1, 2: 3}, "unknown leaders (0) are left out"
    assert routing.replicas[1] == shard_map.shards[1].replicas
