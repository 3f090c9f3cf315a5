"""The leader's view of each member's log (etcd-io/raft `tracker/progress.go`, `inflights.go`).

A leader replicates to each follower in one of three states (ProgressState):

- PROBE: the leader does not know where the follower's log matches; it sends one append and
  waits for its answer (or the next heartbeat response) before sending another.
- REPLICATE: the match is known; appends are pipelined, `next` advances optimistically on
  send, and at most `inflight_messages_max` appends are unacknowledged.
- SNAPSHOT: the follower needs compacted entries; InstallSnapshot chunks are in flight, at
  most `snapshot_chunks_in_flight_max` unacknowledged.
"""

from __future__ import annotations

from collections import deque

from minikv_core.raft.types import ProgressState, Snapshot

NEVER = -(1 << 62)
"""A tick stamp older than any real one: no lease evidence yet."""


class Inflights:
    """Last indexes of the unacknowledged appends to one follower, oldest first (bounded)."""

    __slots__ = ("_capacity", "_last_indexes")

    def __init__(self, capacity: int) -> None:
        assert capacity >= 1
        self._capacity = capacity
        self._last_indexes: deque[int] = deque()

    def add(self, last_index: int) -> None:
        assert len(self._last_indexes) < self._capacity, "inflights overflow"
        self._last_indexes.append(last_index)

    def free_up_to(self, index: int) -> None:
        """An append up to `index` was acknowledged: every message ending at or below it is."""
        last_indexes = self._last_indexes
        while last_indexes and last_indexes[0] <= index:
            last_indexes.popleft()

    def free_first(self) -> None:
        if self._last_indexes:
            self._last_indexes.popleft()

    def reset(self) -> None:
        self._last_indexes.clear()

    @property
    def full(self) -> bool:
        return len(self._last_indexes) >= self._capacity

    def __len__(self) -> int:
        return len(self._last_indexes)


class Progress:
    """Replication state of one member, kept by the leader (and reset on each election)."""

    __slots__ = (
        "acked_round",
        "commit_wanted",
        "inflights",
        "is_learner",
        "lease_stamp",
        "match",
        "match_tick",
        "next",
        "probe_sent",
        "recent_active",
        "sent_commit",
        "snapshot",
        "snapshot_acked_offset",
        "snapshot_chunks_in_flight",
        "snapshot_reset_offset",
        "snapshot_sent_offset",
        "snapshot_stalled_rounds",
        "state",
    )

    def __init__(self, next_index: int, inflight_messages_max: int, is_learner: bool) -> None:
        self.match = 0
        self.match_tick = NEVER
        """Leader tick at which `match` last went up. A heartbeat answer is evidence about the
        follower's log only if its heartbeat was sent after that tick (see RawNode's
        _handle_lost_entries): an earlier one may have been overtaken by the acknowledgement."""
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        """PROBE only: an append is outstanding; wait for its answer or a heartbeat."""
        self.inflights = Inflights(inflight_messages_max)
        self.recent_active = True
        """Heard from since the last check-quorum round (Raft thesis §6.2)."""
        self.is_learner = is_learner
        self.sent_commit = 0
        """The highest commit index sent to this member (to know when to send a bump)."""
        self.commit_wanted = 0
        """The last entry this member proposed through us (PROPOSE): it waits to apply it,
        so a lazy_commit leader sends it the commit that covers it without delay."""
        self.acked_round = 0
        """Highest read-index heartbeat round this member acknowledged (thesis §6.4)."""
        self.lease_stamp = NEVER
        """Leader tick at which the newest heartbeat this member acknowledged was sent."""
        self.snapshot: Snapshot | None = None
        """SNAPSHOT only: the snapshot being sent in chunks."""
        self.snapshot_sent_offset = 0
        """Next byte to send; len(data) + 1 once the last chunk went out."""
        self.snapshot_acked_offset = 0
        """Bytes the follower last reported holding contiguously (its truth, may go down if
        it restarted and lost a partial transfer)."""
        self.snapshot_reset_offset = -1
        """Offset of the last resend, so a burst of rejections for one gap resends once."""
        self.snapshot_chunks_in_flight = 0
        self.snapshot_stalled_rounds = 0
        """Heartbeat responses since the follower last reported more bytes."""

    # -- state transitions --------------------------------------------------------------------

    def _reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.state = state
        self.inflights.reset()
        self.snapshot = None
        self.snapshot_sent_offset = 0
        self.snapshot_acked_offset = 0
        self.snapshot_reset_offset = -1
        self.snapshot_chunks_in_flight = 0
        self.snapshot_stalled_rounds = 0

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT and self.snapshot is not None:
            # The follower installed the snapshot or it was abandoned; resume after it.
            pending = self.snapshot.metadata.index
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot: Snapshot) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.snapshot = snapshot

    def resend_snapshot_from(self, offset: int) -> None:
        """Restart the chunk stream at `offset` (a gap was reported or the stream stalled)."""
        self.snapshot_reset_offset = offset
        self.snapshot_sent_offset = offset
        self.snapshot_chunks_in_flight = 0
        self.snapshot_stalled_rounds = 0

    @property
    def pending_snapshot_index(self) -> int:
        return self.snapshot.metadata.index if self.snapshot is not None else 0

    # -- acknowledgements ---------------------------------------------------------------------

    def maybe_update(self, index: int) -> bool:
        """An append up to `index` was accepted. Returns whether `match` advanced."""
        updated = False
        if self.match < index:
            self.match = index
            updated = True
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def lower_match_to(self, held: int) -> None:
        """The follower lost entries it had acknowledged (its disk dropped them): `held` is
        what it is now known to hold. The only place `match` goes down; probe from there."""
        assert 0 <= held < self.match, f"lowering match {self.match} to {held}"
        self.match = held
        if self.state == ProgressState.SNAPSHOT:
            return  # the snapshot under way brings it past `held`; its answer resumes probing
        self.become_probe()

    def maybe_decrease_to(self, rejected: int, match_hint: int) -> bool:
        """An append at `rejected` was refused; `match_hint` is where to probe next.

        Returns False for a stale rejection (already superseded), which must be ignored.
        """
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            # Pipelined appends after the gap are wasted: restart right after the match.
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        if rejected <= self.match:
            # It refuses an entry it acknowledged: a stale answer, or its disk lost entries.
            # Probing the same index again at once would loop; the next heartbeat answer tells
            # which (RawNode lowers match on evidence of loss) and unpauses the probe.
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def sent_entries(self, last_index: int) -> None:
        """An append ending at `last_index` was sent (with entries)."""
        if self.state == ProgressState.REPLICATE:
            self.next = last_index + 1
            self.inflights.add(last_index)
        elif self.state == ProgressState.PROBE:
            self.probe_sent = True

    @property
    def paused(self) -> bool:
        """Whether the leader must not send another append now (flow control)."""
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return self.inflights.full
        return True
