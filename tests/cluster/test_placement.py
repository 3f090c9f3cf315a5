"""Placement: the initial replicas and preferred leaders every founding node computes alike."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from minikv_core.cluster.placement import place_meta, place_shards


@pytest.mark.parametrize(
    ("nodes", "shards", "replicas"),
    [(3, 8, 3), (5, 8, 3), (4, 7, 2), (1, 3, 1), (7, 16, 5), (9, 64, 3)],
)
def test_replicas_are_distinct_nodes_and_spread_evenly(
    nodes: int, shards: int, replicas: int
) -> None:
    ids = list(range(1, nodes + 1))
    placements = place_shards(ids, shards, replicas)
    assert [p.shard for p in placements] == list(range(shards))
    for placement in placements:
        assert len(placement.replicas) == replicas
        assert len(set(placement.replicas)) == replicas, placement
        assert set(placement.replicas) <= set(ids)
    per_node = Counter(r for p in placements for r in p.replicas)
    counts = [per_node.get(node_id, 0) for node_id in ids]
    assert max(counts) - min(counts) <= 1, counts


@pytest.mark.parametrize(("nodes", "shards"), [(3, 8), (5, 8), (4, 4), (6, 5), (5, 64)])
def test_preferred_leaders_differ_by_at_most_one_per_node(nodes: int, shards: int) -> None:
    ids = list(range(1, nodes + 1))
    leads = Counter(p.preferred_leader for p in place_shards(ids, shards, min(3, nodes)))
    counts = [leads.get(node_id, 0) for node_id in ids]
    assert max(counts) - min(counts) <= 1, counts
    for placement in place_shards(ids, shards, min(3, nodes)):
        assert placement.preferred_leader == placement.replicas[0]


def test_placement_depends_only_on_the_set_of_ids_not_their_order() -> None:
    rng = random.Random(7)
    ids = [3, 11, 5, 8, 2]
    expected = place_shards(ids, 8, 3)
    for _ in range(20):
        shuffled = ids[:]
        rng.shuffle(shuffled)
        assert place_shards(shuffled, 8, 3) == expected, f"order {shuffled} (seed 7)"
    assert place_meta(list(reversed(ids)), 8, 3) == place_meta(ids, 8, 3)


def test_meta_group_has_at_most_five_voters_and_the_rest_learn() -> None:
    meta = place_meta(range(1, 8), 8, 3)
    assert meta.voters == (1, 2, 3, 4, 5)
    assert meta.learners == (6, 7)
    assert meta.preferred_leader in meta.voters


def test_meta_preferred_leader_is_a_voter_leading_the_fewest_shards() -> None:
    # 8 shards on 3 nodes: nodes 1 and 2 prefer 3 shards each, node 3 prefers 2.
    assert place_meta([1, 2, 3], 8, 3).preferred_leader == 3
    assert place_meta([1, 2, 3], 9, 3).preferred_leader == 1, "ties go to the lowest id"


def test_more_replicas_than_nodes_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="distinct nodes"):
        place_shards([1, 2], 4, 3)
    with pytest.raises(ValueError, match="shards must be >= 1"):
        place_shards([1, 2, 3], 0, 3)
    with pytest.raises(ValueError, match="positive"):
        place_shards([0, 1, 2], 4, 3)


def test_every_small_shape_is_balanced_in_replicas_and_leaders() -> None:
    for nodes in range(1, 10):
        ids = list(range(10, 10 + nodes))
        for replicas in range(1, nodes + 1):
            for shards in range(1, 41):
                placements = place_shards(ids, shards, replicas)
                held = Counter(r for p in placements for r in p.replicas)
                led = Counter(p.preferred_leader for p in placements)
                held_counts = [held.get(i, 0) for i in ids]
                led_counts = [led.get(i, 0) for i in ids]
                shape = f"nodes={nodes} replicas={replicas} shards={shards}"
                assert max(held_counts) - min(held_counts) <= 1, f"{shape}: {held_counts}"
                assert max(led_counts) - min(led_counts) <= 1, f"{shape}: {led_counts}"
                assert all(len(set(p.replicas)) == replicas for p in placements), shape
