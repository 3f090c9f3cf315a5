"""The simulator's checker flags each kind of bad history: proof that the simulation can fail.

Each test feeds the checker a small hand-made history with exactly one defect and asserts
that the defect, and only the expected property, is reported. The clean twin of each history
passes, so the checker is not simply flagging everything.
"""

from __future__ import annotations

from minikv_core.raft.sim import checker as props
from minikv_core.raft.sim.checker import Checker, NodeFinalState


def _log(terms: dict[int, int]) -> props.LogTermAt:
    """A log given as index -> term; 0 beyond its end (nothing compacted)."""
    return lambda index: terms.get(index, 0)


def _properties(checker: Checker) -> list[str]:
    return [violation.property for violation in checker.violations]


def test_two_leaders_in_one_term_violate_election_safety() -> None:
    checker = Checker()
    checker.on_leader(10, 1, 3)
    checker.on_leader(12, 1, 3)  # the same leader seen again is fine
    checker.on_leader(20, 2, 4)
    assert checker.ok
    checker.on_leader(30, 3, 4)
    assert _properties(checker) == [props.ELECTION_SAFETY]
    assert "nodes 2 and 3 are both leader of term 4" in checker.violations[0].message


def test_same_index_and_term_with_different_payload_violates_log_matching() -> None:
    checker = Checker()
    checker.on_persist_entry(time_ms=1, node=1, index=1, term=1, prev_term=0, payload=b"\x00a")
    checker.on_persist_entry(time_ms=2, node=2, index=1, term=1, prev_term=0, payload=b"\x00a")
    assert checker.ok
    checker.on_persist_entry(time_ms=3, node=3, index=1, term=1, prev_term=0, payload=b"\x00b")
    assert _properties(checker) == [props.LOG_MATCHING]


def test_same_entry_after_different_predecessors_violates_log_matching() -> None:
    """Raft §5.3: equal (index, term) implies equal logs before it, not only equal entries."""
    checker = Checker()
    checker.on_persist_entry(time_ms=1, node=1, index=5, term=3, prev_term=2, payload=b"\x00x")
    checker.on_persist_entry(time_ms=2, node=2, index=5, term=3, prev_term=1, payload=b"\x00x")
    assert _properties(checker) == [props.LOG_MATCHING]
    assert "different logs before it" in checker.violations[0].message


def test_later_leader_missing_a_committed_entry_violates_leader_completeness() -> None:
    checker = Checker()
    checker.on_commit(10, 1, 2, 3, _log({1: 1, 2: 2, 3: 2}))
    checker.on_leader(20, 2, 3)
    checker.on_leader_log(20, 2, 3, _log({1: 1, 2: 2}), still_leader=True)  # lacks index 3
    assert _properties(checker) == [props.LEADER_COMPLETENESS]
    assert "index 3" in checker.violations[0].message


def test_later_leader_holding_every_committed_entry_passes() -> None:
    checker = Checker()
    checker.on_commit(10, 1, 2, 3, _log({1: 1, 2: 2, 3: 2}))
    checker.on_leader(20, 2, 3)
    checker.on_leader_log(20, 2, 3, _log({1: 1, 2: 2, 3: 2, 4: 3}), still_leader=True)
    # A leader of the commit's own term (or older) may legitimately lack it: not checked.
    checker.on_leader_log(21, 3, 2, _log({1: 1}), still_leader=True)
    assert checker.ok, checker.violations


def test_entry_committed_while_a_later_leader_reigns_is_checked_against_it() -> None:
    checker = Checker()
    checker.on_leader(5, 2, 4)
    checker.on_leader_log(5, 2, 4, _log({1: 1, 2: 1}), still_leader=True)
    checker.on_commit(9, 1, 3, 2, _log({1: 1, 2: 3}))  # term 3 entry at 2, leader 2 has term 1
    assert _properties(checker) == [props.LEADER_COMPLETENESS]


def test_divergent_applied_entries_violate_state_machine_safety() -> None:
    checker = Checker()
    checker.on_apply(time_ms=1, node=1, index=1, term=1, command_digest=b"a", state_digest=b"s1")
    checker.on_apply(time_ms=2, node=2, index=1, term=1, command_digest=b"a", state_digest=b"s1")
    assert checker.ok
    checker.on_apply(time_ms=3, node=3, index=1, term=1, command_digest=b"b", state_digest=b"s2")
    assert _properties(checker) == [props.STATE_MACHINE_SAFETY]


def test_snapshot_with_a_different_state_violates_state_machine_safety() -> None:
    checker = Checker()
    checker.on_apply(time_ms=1, node=1, index=4, term=2, command_digest=b"a", state_digest=b"s")
    checker.on_restore(2, 2, 4, b"s")
    assert checker.ok
    checker.on_restore(3, 3, 4, b"other")
    assert _properties(checker) == [props.STATE_MACHINE_SAFETY]


def _acked_write(checker: Checker, *, key: str, value: str, index: int, time_ms: int) -> None:
    checker.on_write_invoked(1, key, value)
    checker.on_write_applied(time_ms, 1, key, value, index)
    checker.on_write_acked(time_ms, value, index, 1, 1)


def test_stale_read_violates_linearizability() -> None:
    checker = Checker()
    _acked_write(checker, key="k", value="v1", index=2, time_ms=10)
    _acked_write(checker, key="k", value="v2", index=3, time_ms=20)
    checker.on_read_invoked(25, 100, 2, "k")
    checker.on_read_acked(30, 100, 2, "v1")  # v2 was acknowledged before the read began
    assert _properties(checker) == [props.LINEARIZABILITY]
    assert "stale read" in checker.violations[0].message


def test_read_concurrent_with_a_write_may_return_either_value() -> None:
    checker = Checker()
    _acked_write(checker, key="k", value="v1", index=2, time_ms=10)
    checker.on_write_invoked(1, "k", "v2")
    checker.on_read_invoked(15, 100, 2, "k")
    checker.on_write_applied(18, 1, "k", "v2", 3)
    checker.on_write_acked(20, "v2", 3, 1, 1)  # acknowledged after the read began
    checker.on_read_acked(30, 100, 2, "v1")
    assert checker.ok, checker.violations


def test_read_going_back_after_a_newer_read_violates_linearizability() -> None:
    checker = Checker()
    _acked_write(checker, key="k", value="v1", index=2, time_ms=10)
    checker.on_write_invoked(1, "k", "v2")
    checker.on_write_applied(12, 1, "k", "v2", 3)  # committed, not yet acknowledged
    checker.on_read_invoked(13, 100, 2, "k")
    checker.on_read_acked(14, 100, 2, "v2")
    checker.on_read_invoked(15, 101, 3, "k")
    checker.on_read_acked(16, 101, 3, "v1")  # v2 was already visible to the first read
    assert _properties(checker) == [props.LINEARIZABILITY]


def test_read_of_a_value_never_applied_violates_linearizability() -> None:
    checker = Checker()
    checker.on_write_invoked(1, "k", "v1")  # invoked, never applied
    checker.on_read_invoked(5, 100, 2, "k")
    checker.on_read_acked(6, 100, 2, "v1")
    assert _properties(checker) == [props.LINEARIZABILITY]


def test_read_of_never_written_key_before_any_write_passes() -> None:
    checker = Checker()
    checker.on_read_invoked(5, 100, 2, "k")
    checker.on_read_acked(6, 100, 2, None)
    assert checker.ok


def test_acknowledged_write_missing_from_a_member_is_a_lost_write() -> None:
    checker = Checker()
    _acked_write(checker, key="k", value="v1", index=2, time_ms=10)
    good = NodeFinalState(1, 3, {"k": "v1"})
    checker.check_final(100, [good, NodeFinalState(2, 3, {"k": "v1"})])
    assert checker.ok
    checker.check_final(100, [good, NodeFinalState(3, 1, {})])
    assert _properties(checker) == [props.LOST_WRITE]


def test_acknowledged_write_overwritten_by_an_older_value_is_a_lost_write() -> None:
    checker = Checker()
    _acked_write(checker, key="k", value="v1", index=2, time_ms=10)
    _acked_write(checker, key="k", value="v2", index=3, time_ms=20)
    checker.check_final(100, [NodeFinalState(4, 3, {"k": "v1"})])
    assert props.LOST_WRITE in _properties(checker)


def test_acknowledged_write_absent_from_a_later_leader_is_flagged() -> None:
    """An acknowledged write is committed: a leader of a later term must hold it (§5.4)."""
    checker = Checker()
    checker.on_write_invoked(1, "k", "v1")
    checker.on_write_applied(10, 1, "k", "v1", 2)
    checker.on_write_acked(10, "v1", 2, 1, 1)
    checker.on_leader(20, 2, 2)
    checker.on_leader_log(20, 2, 2, _log({1: 1}), still_leader=True)
    assert _properties(checker) == [props.LEADER_COMPLETENESS]


def test_members_at_one_index_with_different_data_violate_state_machine_safety() -> None:
    checker = Checker()
    checker.check_final(100, [NodeFinalState(1, 5, {"k": "a"}), NodeFinalState(2, 5, {"k": "b"})])
    assert _properties(checker) == [props.STATE_MACHINE_SAFETY]
