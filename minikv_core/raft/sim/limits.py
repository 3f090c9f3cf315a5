"""Every bound of the simulator in one place, with the relations between them checked at import.

TigerBeetle style: a limit that lives next to the code using it drifts; one module with asserts
keeps "the liveness bound is many election timeouts" or "a message delay is shorter than a
heartbeat" true when somebody retunes a number.

Virtual time is counted in integer milliseconds (`_ms`). A Raft tick is `tick_interval_ms`.
"""

from __future__ import annotations

from minikv_core.raft import limits as core_limits

# --- Raft timing given to the core (ticks) ---------------------------------------------------
tick_interval_ms = 10
# Each node's clock runs at its own rate: its tick interval is drawn from this range (+-10%).
# Leader leases must stay safe with that drift (thesis §6.4.1: bounded clock drift).
tick_interval_ms_min = 9
tick_interval_ms_max = 11
heartbeat_interval_ticks_choices = (1, 2, 3)  # drawn per seed (knobs)
election_timeout_ticks = 10
election_timeout_ms = election_timeout_ticks * tick_interval_ms

# --- network ---------------------------------------------------------------------------------
message_delay_ms_min = 1
message_delay_ms_max = 12  # larger than a tick: messages overtake each other (reordering)
# A few messages are held up far longer (a congested switch, a retransmission), arriving after
# elections and restarts happened: the stale-message paths of the core must ignore them.
message_delay_spike_probability = 0.01
message_delay_spike_ms_max = 3 * election_timeout_ms
message_loss_probability = 0.02  # background loss during the fault phase
message_duplicate_probability = 0.02
loss_burst_probability = 0.6  # loss on the affected links during a loss burst
in_flight_messages_max = 4_000  # a full "socket buffer" drops, like a real one

# --- clients ---------------------------------------------------------------------------------
clients_count = 3
client_key_space_size = 4  # a small key space makes reads and writes collide on keys
client_request_delay_ms_max = 3  # client <-> node one-way latency
client_think_ms_max = 15  # pause between one operation's end and the next operation
client_timeout_ms = 4 * election_timeout_ms  # give up on an operation (outcome unknown)
client_read_fraction = 0.4

# --- host / disk -----------------------------------------------------------------------------
disk_latency_ms_max = 3  # a Ready waits this long (at most) before it is persisted
disk_latency_spike_probability = 0.05  # a slow fsync ...
disk_latency_spike_ms_max = 25  # ... holds a Ready for up to two and a half ticks
compaction_probability = 0.05  # per Ready that applied entries: snapshot + compact the log;
# as likely again: flush a state machine image (the restart point of `Config.applied_index`)

# --- faults ----------------------------------------------------------------------------------
fault_interval_ms_min = 20
fault_interval_ms_max = 300
node_ids_max = 9  # node ids 1..node_ids_max; spares above the initial cluster join as learners
crash_mid_ready_probability = 0.3  # a crash hits between "persist" and "send" of a Ready
crash_quick_restart_probability = 0.6  # a supervisor restarts the crashed process soon
crash_quick_restart_ms_max = 2 * election_timeout_ms
# A paused process (SIGSTOP, a long GC) loses its ticks and finds its messages queued when it
# resumes. Only in SAFE read mode: leases assume a bounded clock drift, which a pause breaks.
pause_ms_max = 4 * election_timeout_ms
# A crashed node's disk loses up to this many of its newest (fsynced, acknowledged) entries: a
# damaged last WAL record cut as a torn tail. Only while each lost entry stays on a majority of
# voters elsewhere (Raft's safety needs a committed entry on a majority, §5.4.3).
lost_tail_entries_max = 4
crash_lose_tail_probability = 0.4  # of immediate crashes (the LOSE_TAIL fault hits down nodes)
paused_inbox_messages_max = 1_000  # the socket buffer of a stopped process

# --- runner ----------------------------------------------------------------------------------
# Liveness (Raft §5.2, §9.3): once faults stop, a leader is elected and pending proposals commit
# within this bound. 50 election timeouts is far above the expected few timeouts of a healthy
# cluster, so hitting it means a livelock or a lost wake-up, not bad luck.
liveness_bound_ms = 50 * election_timeout_ms
steps_max_default = 200_000  # events per seed: a runaway message storm is a failure too
trace_events_max = 4_096  # ring buffer of readable events kept per seed
trace_events_printed = 50

assert max(heartbeat_interval_ticks_choices) < election_timeout_ticks, "heartbeat within a term"
assert 0 < message_delay_ms_min <= message_delay_ms_max
assert message_delay_ms_max < election_timeout_ms, "a healthy network must elect a leader"
assert 0 < tick_interval_ms_min <= tick_interval_ms <= tick_interval_ms_max
# Lease safety margin (thesis §6.4.1): a lease read on the slowest clock must end before an
# election timeout on the fastest clock.
assert (
    core_limits.LEASE_TICKS * tick_interval_ms_max < election_timeout_ticks * tick_interval_ms_min
)
assert message_delay_spike_ms_max > election_timeout_ms, "spikes must outlive an election"
assert 0.0 <= message_delay_spike_probability < 0.1
assert pause_ms_max > election_timeout_ms, "a pause must be long enough to lose leadership"
assert disk_latency_ms_max <= disk_latency_spike_ms_max < election_timeout_ms
assert 0.0 <= message_loss_probability < 1.0
assert 0.0 <= message_duplicate_probability < 1.0
assert 0.0 < loss_burst_probability < 1.0, "a loss burst that drops all is a partition"
assert client_timeout_ms > 2 * election_timeout_ms, "an election fits within a client timeout"
assert liveness_bound_ms >= 10 * client_timeout_ms
assert 0 < fault_interval_ms_min <= fault_interval_ms_max
assert trace_events_printed <= trace_events_max
assert lost_tail_entries_max >= 1
assert 0.0 <= crash_lose_tail_probability <= 1.0
assert clients_count >= 1
assert client_key_space_size >= 1
