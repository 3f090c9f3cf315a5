"""Single-server membership changes (Raft thesis §4.1) applied to a ConfState.

Only one voter is added or removed per change, so any majority of the old voters overlaps
any majority of the new ones and no joint consensus is needed. Learners (thesis §4.2.1) are
added first, catch up without counting toward any quorum, then are promoted.
"""

from __future__ import annotations

from minikv_core.raft.types import ConfChange, ConfChangeType, ConfState, RaftError


class ConfChangeError(RaftError):
    """A membership change that cannot apply to the current configuration."""


def apply_conf_change(conf_state: ConfState, change: ConfChange) -> ConfState:
    """The configuration after `change`; raises ConfChangeError naming why it is invalid."""
    node_id = change.node_id
    if node_id <= 0:
        raise ConfChangeError(f"node id must be positive, got {node_id}")
    voters = set(conf_state.voters)
    learners = set(conf_state.learners)
    if change.type == ConfChangeType.ADD_LEARNER:
        if node_id in voters:
            raise ConfChangeError(f"node {node_id} is a voter; demotion is not supported")
        if node_id in learners:
            raise ConfChangeError(f"node {node_id} is already a learner")
        learners.add(node_id)
    elif change.type == ConfChangeType.ADD_VOTER:
        if node_id in voters:
            raise ConfChangeError(f"node {node_id} is already a voter")
        learners.discard(node_id)
        voters.add(node_id)
    elif change.type == ConfChangeType.REMOVE_NODE:
        if node_id in voters:
            if len(voters) == 1:
                raise ConfChangeError(f"node {node_id} is the last voter")
            voters.remove(node_id)
        elif node_id in learners:
            learners.remove(node_id)
        else:
            raise ConfChangeError(f"node {node_id} is not a member")
    else:  # pragma: no cover - the enum is closed
        raise ConfChangeError(f"unknown conf change type {change.type!r}")
    return ConfState(voters=tuple(sorted(voters)), learners=tuple(sorted(learners)))
