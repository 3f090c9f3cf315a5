"""Per-seed core settings: each seed draws its own Config knobs from the run's RNG.

Defaults hide whole code paths: with 1 MiB chunks every snapshot is one chunk, with 4096
entries per message nothing is ever split, with 256 in-flight messages flow control never
engages. Small values drawn per seed (one seed: 16-byte snapshot chunks, one entry per
message, a single in-flight append) put those paths under the same faults as the rest.
Every member of a group gets the same knobs (the core requires equal timeouts, pre-vote and
check-quorum settings across a group). The seed also picks how added nodes start: with the
group's bootstrap ConfState or with an empty one (both documented in minikv_core.raft.node),
and whether leaders tell followers of commits lazily (Config.lazy_commit, what minikv uses).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields

from minikv_core.raft import limits as core_limits
from minikv_core.raft.node import Config
from minikv_core.raft.sim import limits
from minikv_core.raft.types import ReadOnlyMode


@dataclass(frozen=True, slots=True)
class Knobs:
    read_only_mode: ReadOnlyMode
    pre_vote: bool
    check_quorum: bool
    heartbeat_interval_ticks: int
    entries_per_message_max: int
    message_bytes_max: int
    inflight_messages_max: int
    snapshot_chunk_bytes_max: int
    snapshot_chunks_in_flight_max: int
    uncommitted_bytes_max: int
    committed_bytes_per_ready_max: int
    pending_read_index_max: int
    outbox_messages_max: int
    joiners_start_empty: bool  # how an added node starts: empty or bootstrap ConfState
    lazy_commit: bool = False  # drawn last, so the other knobs of a seed stay as they were

    def config(self, node_id: int, applied_index: int) -> Config:
        return Config(
            node_id=node_id,
            election_timeout_ticks=limits.election_timeout_ticks,
            heartbeat_interval_ticks=self.heartbeat_interval_ticks,
            pre_vote=self.pre_vote,
            check_quorum=self.check_quorum,
            read_only_mode=self.read_only_mode,
            applied_index=applied_index,
            entries_per_message_max=self.entries_per_message_max,
            message_bytes_max=self.message_bytes_max,
            inflight_messages_max=self.inflight_messages_max,
            snapshot_chunk_bytes_max=self.snapshot_chunk_bytes_max,
            snapshot_chunks_in_flight_max=self.snapshot_chunks_in_flight_max,
            uncommitted_bytes_max=self.uncommitted_bytes_max,
            committed_bytes_per_ready_max=self.committed_bytes_per_ready_max,
            pending_read_index_max=self.pending_read_index_max,
            outbox_messages_max=self.outbox_messages_max,
            lazy_commit=self.lazy_commit,
        )

    def describe(self) -> str:
        parts = []
        for field in fields(self):
            value = getattr(self, field.name)
            parts.append(f"{field.name}={value.name if isinstance(value, ReadOnlyMode) else value}")
        return " ".join(parts)


def draw_knobs(rng: random.Random) -> Knobs:
    """Half the seeds keep the core's defaults for sizes; the other half draw small ones."""
    lease = rng.random() < 0.25
    small = rng.random() < 0.5

    def pick(small_values: tuple[int, ...], default: int) -> int:
        return small_values[rng.randrange(len(small_values))] if small else default

    return Knobs(
        read_only_mode=ReadOnlyMode.LEASE_BASED if lease else ReadOnlyMode.SAFE,
        pre_vote=rng.random() < 0.8,
        check_quorum=lease or rng.random() < 0.8,
        heartbeat_interval_ticks=rng.choice(limits.heartbeat_interval_ticks_choices),
        entries_per_message_max=pick((1, 2, 8), core_limits.ENTRIES_PER_MESSAGE_MAX),
        message_bytes_max=pick((16, 64, 512), core_limits.MESSAGE_BYTES_MAX),
        inflight_messages_max=pick((1, 2, 4), core_limits.INFLIGHT_MESSAGES_MAX),
        snapshot_chunk_bytes_max=pick((8, 32, 128), core_limits.SNAPSHOT_CHUNK_BYTES_MAX),
        snapshot_chunks_in_flight_max=pick((1, 2, 3), core_limits.SNAPSHOT_CHUNKS_IN_FLIGHT_MAX),
        uncommitted_bytes_max=pick((256, 2048), core_limits.UNCOMMITTED_BYTES_MAX),
        committed_bytes_per_ready_max=pick((1, 64), core_limits.COMMITTED_BYTES_PER_READY_MAX),
        pending_read_index_max=pick((1, 2, 8), core_limits.PENDING_READ_INDEX_MAX),
        outbox_messages_max=pick((64, 256), core_limits.OUTBOX_MESSAGES_MAX),
        joiners_start_empty=rng.random() < 0.5,
        lazy_commit=rng.random() < 0.5,
    )
