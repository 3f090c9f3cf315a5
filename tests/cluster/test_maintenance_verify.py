"""Which replica `verify` may call corrupt: only one outvoted by a strict majority."""

from __future__ import annotations

import pytest

from minikv_core.cluster.maintenance_verify import _agreement, majority_digest


@pytest.mark.parametrize(
    ("digests", "members", "expected"),
    [
        (["a", "a", "a"], 3, "a"),
        (["a", "a", "b"], 3, "a"),
        (["a", "b"], 3, None),  # one replica skipped: a tie decides nothing
        (["a", "b"], 2, None),
        (["a"], 3, None),  # too few answers
        (["b", "a", "b", "a", "b"], 5, "b"),
        ([], 3, None),
    ],
)
def test_only_a_strict_majority_of_members_is_the_reference(
    digests: list[str], members: int, expected: str | None
) -> None:
    assert majority_digest(digests, members) == expected


def test_a_shard_verified_with_a_replica_unreachable_says_how_many_were_compared() -> None:
    """With a node down, the step read "3 replicas agree" though only two were compared."""
    replicas = [
        {"node": 1, "checksum": {"digest": "d"}},
        {"node": 2, "checksum": {"digest": "d"}},
        {"node": 3, "unreachable": "node 3 did not answer"},
    ]
    assert _agreement(replicas, 40) == (
        "2 replicas agree at index 40; not checked: node 3 (unreachable)"
    )
    assert _agreement(replicas[:2], 40) == "2 replicas agree at index 40"
