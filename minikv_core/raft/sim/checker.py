"""The properties a simulated run must keep, checked incrementally after every step.

The checker sees the run only through observations (plain ints, bytes and strings) that the
hosts and clients report, never through the core's objects. That is what lets a test feed it
a hand-made bad history and prove it flags each kind of violation (a checker that cannot fail
would make every simulated run pass).

Properties (Raft §5.2, §5.3, §5.4, Figure 3; the read rule of thesis §6.4):

- election safety: at most one leader per term, over the whole history;
- log matching: two persisted logs holding an entry with the same index and term hold the same
  entries up to it. Checked per entry: every (index, term) must always carry the same payload
  digest and follow the same previous term; by induction over the index that is the property;
- leader completeness: an entry committed in term T is in the log of every leader of a term
  greater than T. "Committed in T" is taken conservatively: T is the term of the node that
  reported the commit, which is never less than the term of the leader that decided it;
- state machine safety: no two nodes apply different commands at one index (also compared:
  the digest of the whole state machine after each index, which covers snapshot installs);
- linearizability (client-visible): a read returns a value at least as new as every write
  acknowledged, and every value read, before the read began; no acknowledged write is lost
  (it is in every later leader's log, and in every member's applied state at the end);
- liveness: reported by the runner through `report()` (it owns the clock and the bound).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping
from dataclasses import dataclass

ELECTION_SAFETY = "election safety"
LOG_MATCHING = "log matching"
LEADER_COMPLETENESS = "leader completeness"
STATE_MACHINE_SAFETY = "state machine safety"
LINEARIZABILITY = "linearizability"
LOST_WRITE = "no lost acknowledged write"
LIVENESS = "liveness"
HOST_PROTOCOL = "host protocol"  # the core asked the host for something Ready forbids
CORE_EXCEPTION = "core raised"  # an exception escaped the core (step, tick, ready, ...)
SIMULATOR_ERROR = "simulator error"  # a bug of the simulator itself, not of the core

LogTermAt = Callable[[int], int | None]
"""Term of the entry at an index in a node's log: 0 if the log does not reach that index,
None if the index is compacted into the node's snapshot (the term is then not known)."""


@dataclass(frozen=True, slots=True)
class Violation:
    time_ms: int
    property: str
    message: str

    def render(self) -> str:
        return f"[{self.property}] at {self.time_ms} ms: {self.message}"


@dataclass(frozen=True, slots=True)
class _Committed:
    term: int  # term of the entry
    commit_term: int  # the entry is in every leader's log for terms > commit_term


@dataclass(frozen=True, slots=True)
class _Applied:
    term: int
    command_digest: bytes
    state_digest: bytes
    node: int  # first node that applied it (for the message)


@dataclass(slots=True)
class _Write:
    client: int
    key: str
    value: str
    index: int  # effective log index (first application), 0 until applied
    acked_ms: int | None


@dataclass(slots=True)
class _Read:
    client: int
    key: str
    invoked_ms: int


@dataclass(slots=True)
class _KeyFloor:
    """Per key: times at which a value became known visible, and the running max index.

    Times are nondecreasing because observations arrive in virtual-time order, so the floor a
    read must meet is one bisect away.
    """

    times_ms: list[int]
    max_index: list[int]

    def add(self, time_ms: int, index: int) -> None:
        assert not self.times_ms or time_ms >= self.times_ms[-1], "observations out of order"
        floor = max(index, self.max_index[-1]) if self.max_index else index
        self.times_ms.append(time_ms)
        self.max_index.append(floor)

    def before(self, time_ms: int) -> int:
        """Highest index known visible strictly before `time_ms` (0 if none)."""
        position = bisect.bisect_left(self.times_ms, time_ms)
        return self.max_index[position - 1] if position else 0


@dataclass(frozen=True, slots=True)
class NodeFinalState:
    """A member's state machine at the end of a run, for the lost-write check."""

    node: int
    applied_index: int
    values: Mapping[str, str]


class Checker:
    """Collects violations; `ok` is False as soon as any property failed."""

    def __init__(self) -> None:
        self.violations: list[Violation] = []
        self._leader_by_term: dict[int, int] = {}
        # (index, term) -> (payload digest, previous entry's term, first node that stored it)
        self._entries: dict[tuple[int, int], tuple[bytes, int, int]] = {}
        self._committed: dict[int, _Committed] = {}
        self._committed_max = 0
        self._current_leaders: dict[int, tuple[int, LogTermAt]] = {}  # node -> (term, log)
        self._applied: dict[int, _Applied] = {}
        self._writes: dict[str, _Write] = {}  # by value (values are unique)
        self._value_index: dict[str, int] = {}
        self._reads: dict[int, _Read] = {}
        self._floors: dict[str, _KeyFloor] = {}
        self.reads_checked = 0
        self.writes_acked = 0

    @property
    def ok(self) -> bool:
        return not self.violations

    def report(self, time_ms: int, prop: str, message: str) -> None:
        self.violations.append(Violation(time_ms, prop, message))

    # --- election safety and leader completeness ---------------------------------------------

    def on_leader(self, time_ms: int, node: int, term: int) -> None:
        """`node` is leader of `term` after a step (checked at once: Raft §5.2)."""
        other = self._leader_by_term.setdefault(term, node)
        if other != node:
            # Raft §5.2: each server votes once per term and a leader needs a majority.
            self.report(
                time_ms, ELECTION_SAFETY, f"nodes {other} and {node} are both leader of term {term}"
            )

    def on_leader_log(
        self, time_ms: int, node: int, term: int, log_term_at: LogTermAt, *, still_leader: bool
    ) -> None:
        """The log of `node`, leader of `term`, is readable (persisted) through `log_term_at`.

        Raft §5.4: it holds every entry committed in an earlier term. If it is `still_leader`,
        entries reported committed later (in earlier terms) are checked against it too, until
        `on_leader_end`.
        """
        if still_leader:
            self._current_leaders[node] = (term, log_term_at)
        for index in sorted(self._committed):
            committed = self._committed[index]
            if committed.commit_term < term:
                self._check_leader_has(
                    time_ms=time_ms,
                    node=node,
                    term=term,
                    log_term_at=log_term_at,
                    index=index,
                    committed=committed,
                )

    def on_leader_end(self, node: int) -> None:
        self._current_leaders.pop(node, None)

    def _check_leader_has(
        self,
        *,
        time_ms: int,
        node: int,
        term: int,
        log_term_at: LogTermAt,
        index: int,
        committed: _Committed,
    ) -> None:
        found = log_term_at(index)
        if found is None or found == committed.term:
            # None: compacted into the leader's snapshot; state machine safety compares
            # snapshot contents (on_restore), so nothing is lost by skipping it here.
            return
        self.report(
            time_ms,
            LEADER_COMPLETENESS,
            f"leader {node} of term {term} has term {found} at index {index}, but index "
            f"{index} was committed with term {committed.term} (by term {committed.commit_term})",
        )

    def on_commit(
        self, time_ms: int, node: int, node_term: int, commit_index: int, log_term_at: LogTermAt
    ) -> None:
        """A node's commit index reached `commit_index` (from a persisted hard state)."""
        if commit_index <= self._committed_max:
            for index in range(max(1, commit_index - 3), commit_index + 1):
                # Spot-check the top of the newly reported range against what is known.
                self._check_commit_agrees(time_ms, node, index, log_term_at)
            return
        for index in range(self._committed_max + 1, commit_index + 1):
            term = log_term_at(index)
            if term is None or term == 0:
                # None: below this node's snapshot (another node reported it before). 0 would
                # be a commit index beyond the node's own log, which the core never reports.
                if term == 0:
                    self.report(
                        time_ms,
                        LEADER_COMPLETENESS,
                        f"node {node} reports commit index {commit_index} beyond its log",
                    )
                continue
            committed = _Committed(term, node_term)
            self._committed[index] = committed
            for leader, (leader_term, leader_log) in sorted(self._current_leaders.items()):
                if leader_term > node_term:
                    self._check_leader_has(
                        time_ms=time_ms,
                        node=leader,
                        term=leader_term,
                        log_term_at=leader_log,
                        index=index,
                        committed=committed,
                    )
        self._committed_max = commit_index

    def _check_commit_agrees(
        self, time_ms: int, node: int, index: int, log_term_at: LogTermAt
    ) -> None:
        committed = self._committed.get(index)
        term = log_term_at(index)
        if committed is not None and term is not None and term != committed.term:
            self.report(
                time_ms,
                LEADER_COMPLETENESS,
                f"node {node} commits index {index} with term {term}, but it was committed "
                f"with term {committed.term} before",
            )

    # --- log matching ------------------------------------------------------------------------

    def on_persist_entry(
        self, *, time_ms: int, node: int, index: int, term: int, prev_term: int, payload: bytes
    ) -> None:
        """An entry became durable in `node`'s log right after an entry of term `prev_term`."""
        key = (index, term)
        known = self._entries.get(key)
        if known is None:
            self._entries[key] = (payload, prev_term, node)
            return
        known_payload, known_prev_term, first_node = known
        if known_payload != payload:
            self.report(
                time_ms,
                LOG_MATCHING,
                f"index {index} term {term}: node {node} persisted a different entry than "
                f"node {first_node} ({payload[:40]!r} vs {known_payload[:40]!r})",
            )
        elif known_prev_term != prev_term:
            self.report(
                time_ms,
                LOG_MATCHING,
                f"index {index} term {term}: node {node}'s log has term {prev_term} at index "
                f"{index - 1}, node {first_node}'s has term {known_prev_term}: same entry, "
                f"different logs before it",
            )

    # --- state machine safety ----------------------------------------------------------------

    def on_apply(
        self,
        *,
        time_ms: int,
        node: int,
        index: int,
        term: int,
        command_digest: bytes,
        state_digest: bytes,
    ) -> None:
        """`node` applied the entry at `index`; `state_digest` hashes its state machine after."""
        known = self._applied.get(index)
        if known is None:
            self._applied[index] = _Applied(term, command_digest, state_digest, node)
            return
        if known.term != term or known.command_digest != command_digest:
            self.report(
                time_ms,
                STATE_MACHINE_SAFETY,
                f"index {index}: node {node} applied term {term} command "
                f"{command_digest.hex()[:12]}, node {known.node} applied term {known.term} "
                f"command {known.command_digest.hex()[:12]}",
            )
        elif known.state_digest != state_digest:
            self.report(
                time_ms,
                STATE_MACHINE_SAFETY,
                f"index {index}: node {node}'s state machine differs from node {known.node}'s "
                f"after applying the same command",
            )

    def on_restore(self, time_ms: int, node: int, index: int, state_digest: bytes) -> None:
        """`node` replaced its state machine with a snapshot taken at `index`."""
        known = self._applied.get(index)
        if known is not None and known.state_digest != state_digest:
            self.report(
                time_ms,
                STATE_MACHINE_SAFETY,
                f"node {node} installed a snapshot at index {index} whose state differs from "
                f"node {known.node}'s state at that index",
            )

    # --- clients -----------------------------------------------------------------------------

    def on_write_invoked(self, client: int, key: str, value: str) -> None:
        assert value not in self._writes, f"write values must be unique: {value}"
        self._writes[value] = _Write(client, key, value, 0, None)

    def on_write_applied(self, time_ms: int, node: int, key: str, value: str, index: int) -> None:
        """A write took effect at `index` (its first application; retries are deduplicated)."""
        known = self._value_index.setdefault(value, index)
        if known != index:
            self.report(
                time_ms,
                STATE_MACHINE_SAFETY,
                f"write {key}={value} took effect at index {index} on node {node} "
                f"but at index {known} elsewhere",
            )

    def on_write_acked(
        self, time_ms: int, value: str, index: int, log_term: int, node_term: int
    ) -> None:
        """A client was told its write is done: it took effect at `index` (entry term
        `log_term`), as applied by a node whose current term is `node_term`."""
        write = self._writes[value]
        assert write.acked_ms is None, f"write {value} acknowledged twice"
        write.index = index
        write.acked_ms = time_ms
        self.writes_acked += 1
        effective = self._value_index.get(value)
        if effective != index:
            self.report(
                time_ms,
                LOST_WRITE,
                f"write {write.key}={value} acknowledged at index {index} but it took effect "
                f"at {effective}",
            )
        self._floor(write.key).add(time_ms, index)
        if index not in self._committed:
            # Acknowledged means committed, and committed by a leader of term <= node_term:
            # every leader of a later term must hold it (normally on_commit saw it first).
            self._committed[index] = _Committed(log_term, node_term)

    def on_read_invoked(self, time_ms: int, read_id: int, client: int, key: str) -> None:
        assert read_id not in self._reads
        self._reads[read_id] = _Read(client, key, time_ms)

    def on_read_acked(self, time_ms: int, read_id: int, node: int, value: str | None) -> None:
        """A read answered `value` (None: the key was never written) from `node`."""
        read = self._reads.pop(read_id)
        self.reads_checked += 1
        index = 0
        if value is not None:
            write = self._writes.get(value)
            effective = self._value_index.get(value)
            if write is None or effective is None or write.key != read.key:
                self.report(
                    time_ms,
                    LINEARIZABILITY,
                    f"read {read_id} of {read.key} on node {node} returned {value!r}, "
                    f"which no applied write of that key produced",
                )
                return
            index = effective
        floor = self._floor(read.key).before(read.invoked_ms)
        if index < floor:
            self.report(
                time_ms,
                LINEARIZABILITY,
                f"stale read: read {read_id} of {read.key} (client {read.client}, began at "
                f"{read.invoked_ms} ms) on node {node} returned {value!r} written at index "
                f"{index}, but a write at index {floor} was acknowledged or read before it began",
            )
        # What a read returned is visible from now on: later reads must not go back.
        self._floor(read.key).add(time_ms, index)

    def on_read_abandoned(self, read_id: int) -> None:
        self._reads.pop(read_id, None)

    def _floor(self, key: str) -> _KeyFloor:
        floor = self._floors.get(key)
        if floor is None:
            floor = self._floors[key] = _KeyFloor([], [])
        return floor

    # --- end of run --------------------------------------------------------------------------

    def acknowledged_index_max(self) -> int:
        return max((w.index for w in self._writes.values() if w.acked_ms is not None), default=0)

    def check_final(self, time_ms: int, members: list[NodeFinalState]) -> None:
        """Every acknowledged write is in every member's applied state machine (not lost).

        A member may hold a newer value of the key, never an older one or none.
        """
        by_index: dict[int, NodeFinalState] = {}
        for member in sorted(members, key=lambda m: m.node):
            same = by_index.setdefault(member.applied_index, member)
            if same.values != member.values:
                self.report(
                    time_ms,
                    STATE_MACHINE_SAFETY,
                    f"nodes {same.node} and {member.node} both applied up to "
                    f"{member.applied_index} but hold different data",
                )
        acked = sorted(
            (w for w in self._writes.values() if w.acked_ms is not None), key=lambda w: w.index
        )
        for member in sorted(members, key=lambda m: m.node):
            for write in acked:
                if member.applied_index < write.index:
                    self.report(
                        time_ms,
                        LOST_WRITE,
                        f"node {member.node} applied only up to {member.applied_index}; "
                        f"acknowledged write {write.key}={write.value} at index {write.index} "
                        f"is missing",
                    )
                    break
                held = member.values.get(write.key)
                held_index = self._value_index.get(held, -1) if held is not None else -1
                if held_index < write.index:
                    self.report(
                        time_ms,
                        LOST_WRITE,
                        f"node {member.node} holds {write.key}={held!r} (index {held_index}), "
                        f"older than acknowledged write {write.value} at index {write.index}",
                    )
                    break
