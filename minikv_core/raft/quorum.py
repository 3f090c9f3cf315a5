"""Majority arithmetic over a set of voters (Raft §5.2, §5.3). Learners never appear here."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping


class VoteResult(enum.IntEnum):
    PENDING = 0
    WON = 1
    LOST = 2


def quorum_size(voter_count: int) -> int:
    return voter_count // 2 + 1


def quorum_value(values: Iterable[int]) -> int:
    """The largest v such that a majority of `values` are >= v (0 for no voters).

    With match indexes this is the commit candidate (Raft §5.3); with acknowledged read
    rounds it is the round a quorum confirmed (thesis §6.4); with lease stamps, the oldest
    send time a quorum vouches for.
    """
    ordered = sorted(values, reverse=True)
    if not ordered:
        return 0
    return ordered[len(ordered) // 2]


def vote_result(voters: Iterable[int], votes: Mapping[int, bool]) -> VoteResult:
    """WON once a majority granted, LOST once a majority can no longer grant."""
    voter_list = list(voters)
    granted = sum(1 for voter in voter_list if votes.get(voter) is True)
    rejected = sum(1 for voter in voter_list if votes.get(voter) is False)
    quorum = quorum_size(len(voter_list))
    if granted >= quorum:
        return VoteResult.WON
    if len(voter_list) - rejected < quorum:
        return VoteResult.LOST
    return VoteResult.PENDING
