"""The per-node host loop, exactly as a real node drives the core: tick, step, ready, persist,
send, apply, advance; plus crash and restart from the disk.

A Ready is not handled at once: it waits a random disk latency (`ReadyDue`), so a crash can hit
while the core holds unpersisted state (which must then be lost without harm), and with
`crash_after_persist` a crash can land between the fsync and the sends of one Ready.

Ordering follows the Ready contract of minikv_core.raft.types.Ready: persist snapshot, entries
and hard state; then send; then apply committed entries and answer read states; then advance.
Compactions (snapshot of applied state, log dropped) and state-machine flushes happen at random
points after advance, driven by the run's RNG.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

from minikv_core.raft.node import RawNode
from minikv_core.raft.sim import checker as props
from minikv_core.raft.sim import limits
from minikv_core.raft.sim.checker import Checker
from minikv_core.raft.sim.clock import EventQueue
from minikv_core.raft.sim.disk import Disk, DiskInvariantError, StateMachineImage
from minikv_core.raft.sim.knobs import Knobs
from minikv_core.raft.sim.network import Network
from minikv_core.raft.sim.state_machine import (
    CommandFormatError,
    KvStateMachine,
    WriteCommand,
    command_digest,
)
from minikv_core.raft.sim.trace import Trace
from minikv_core.raft.storage import MemoryStorage
from minikv_core.raft.types import (
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Ready,
    Role,
)


@dataclass(frozen=True, slots=True)
class Tick:
    """Event: one Raft tick of `node` (ignored if the node restarted since it was scheduled)."""

    node: int
    incarnation: int


@dataclass(frozen=True, slots=True)
class ReadyDue:
    """Event: the host of `node` handles the core's pending Ready (after disk latency)."""

    node: int
    incarnation: int


class HostListener(Protocol):
    """What the runner hears from hosts: client answers and applied membership changes."""

    def write_done(
        self, *, node: int, op_id: int, committed: bool, index: int, log_term: int, node_term: int
    ) -> None: ...

    def read_done(self, node: int, op_id: int, value: str | None) -> None: ...

    def conf_change_applied(self, node: int, change: ConfChange) -> None: ...


@dataclass(frozen=True, slots=True)
class _PendingWrite:
    op_id: int
    term: int


def describe_message(message: Message) -> str:
    """One readable line per message for the trace."""
    text = f"{message.type.name} {message.sender}->{message.to} t{message.term}"
    kind = message.type
    if kind in (MessageType.APPEND, MessageType.VOTE, MessageType.PRE_VOTE):
        text += f" i{message.index} lt{message.log_term}"
    if kind == MessageType.APPEND:
        if message.entries:
            text += f" [{message.entries[0].index}..{message.entries[-1].index}]"
        text += f" c{message.commit}"
    elif kind in (MessageType.HEARTBEAT, MessageType.HEARTBEAT_RESPONSE):
        text += f" c{message.commit}" if kind == MessageType.HEARTBEAT else ""
        text += f" ctx={message.context.hex()}" if message.context else ""
    elif kind == MessageType.SNAPSHOT:
        meta = message.snapshot
        if meta is not None:
            text += f" snap@{meta.index}/t{meta.term} off{message.chunk_offset}"
            text += f"+{len(message.chunk_data)}"
        text += " done" if message.chunk_done else ""
    elif kind == MessageType.SNAPSHOT_RESPONSE:
        text += f" i{message.index} off{message.chunk_offset}"
    elif kind in (
        MessageType.APPEND_RESPONSE,
        MessageType.READ_INDEX_RESPONSE,
        MessageType.TRANSFER_LEADER,
    ):
        text += f" i{message.index}"
    if message.reject:
        text += f" REJECT hint{message.reject_hint} lt{message.log_term}"
    return text


class Host:
    """One simulated node process: a RawNode (None while crashed), its disk and state machine."""

    def __init__(
        self,
        node_id: int,
        disk: Disk,
        *,
        rng: random.Random,
        queue: EventQueue[object],
        network: Network[Message],
        checker: Checker,
        trace: Trace,
        listener: HostListener,
        knobs: Knobs,
    ) -> None:
        assert node_id > 0
        self.node_id = node_id
        self.disk = disk
        self._rng = rng
        self._queue = queue
        self._network = network
        self._checker = checker
        self._trace = trace
        self._listener = listener
        self._knobs = knobs
        self.node: RawNode | None = None
        self.storage: MemoryStorage | None = None
        self.conf_state_at_crash = ConfState()
        """The membership the node had when it last crashed (it resumes about that one)."""
        self.machine = KvStateMachine()
        self.incarnation = 0
        self.decommissioned = False  # removed from the group: stopped for good
        self.crash_after_persist = False
        # This node's clock rate: its tick interval, fixed for the life of the host.
        self.tick_interval_ms = rng.randint(
            limits.tick_interval_ms_min, limits.tick_interval_ms_max
        )
        self.paused = False
        self._inbox: list[Message] = []  # messages that arrived while paused
        self._ready_scheduled = False
        self._pending_writes: dict[int, _PendingWrite] = {}  # by log index
        self._pending_reads: dict[bytes, int] = {}  # read-index context -> op id
        self._waiting_reads: list[tuple[int, int, str]] = []  # (read index, op id, key)
        self._read_keys: dict[int, str] = {}
        self._leader_term = 0  # term in which this node was last seen leader (0: not leader)
        self._leader_log_check_term = 0  # leader completeness still to check at next persist

    @property
    def up(self) -> bool:
        """The process exists (it may be paused)."""
        return self.node is not None

    @property
    def role(self) -> Role | None:
        return None if self.node is None else self.node.role

    @property
    def running(self) -> bool:
        """The process exists and is not paused: it can act now."""
        return self.node is not None and not self.paused

    def _now(self) -> int:
        return self._queue.now_ms

    def _record(self, kind: str, detail: str) -> None:
        self._trace.record(self._queue.now_ms, self.node_id, kind, detail)

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start (or restart) the core from what is on disk."""
        assert self.node is None and not self.decommissioned
        self.incarnation += 1
        storage = self.disk.rebuild_storage()
        image = self.disk.image()
        applied_index = 0
        if image is not None and image.applied_index > self.disk.snapshot_index:
            # Resume from the flushed state machine: the core re-delivers entries after it.
            self.machine = KvStateMachine.decode(image.data)
            applied_index = image.applied_index
        elif self.disk.snapshot_index > 0:
            self.machine = KvStateMachine.decode(self.disk.snapshot.data)
        else:
            self.machine = KvStateMachine()
        config = self._knobs.config(self.node_id, applied_index)
        self.storage = storage
        self.node = RawNode(config, storage, self._rng)
        hard = self.disk.hard_state
        self._record(
            "start",
            f"incarnation {self.incarnation} term {hard.term} vote {hard.vote} commit "
            f"{hard.commit} snapshot {self.disk.snapshot_index} last {self.disk.last_index()} "
            f"applied {self.machine.applied_index}",
        )
        # Phase the ticks randomly: nodes are not in lock step in real life either.
        self._queue.schedule(self._rng.randint(0, self.tick_interval_ms - 1), self._tick_event())
        self.after_input()

    def crash(self, reason: str) -> None:
        """Lose everything not on disk: the core, the state machine, pending client requests."""
        if self.node is None:
            return
        self.conf_state_at_crash = self.node.conf_state
        self.node = None
        self.storage = None
        self.machine = KvStateMachine()
        self.incarnation += 1
        self.crash_after_persist = False
        self.paused = False
        self._inbox.clear()
        self._ready_scheduled = False
        self._pending_writes.clear()
        self._pending_reads.clear()
        self._waiting_reads.clear()
        self._read_keys.clear()
        if self._leader_term:
            self._checker.on_leader_end(self.node_id)
        self._leader_term = 0
        self._leader_log_check_term = 0
        self._record("crash", reason)

    def _tick_event(self) -> Tick:
        return Tick(self.node_id, self.incarnation)

    # --- inputs --------------------------------------------------------------------------------

    def pause(self) -> None:
        """Stop the process (SIGSTOP): no ticks, no processing; messages wait in its inbox."""
        if self.node is not None and not self.paused:
            self.paused = True
            self._record("pause", "process stopped")

    def resume(self) -> None:
        """Continue (SIGCONT): lost ticks stay lost; queued messages are processed in order."""
        if not self.paused:
            return
        self.paused = False
        inbox, self._inbox = self._inbox, []
        self._record("resume", f"process continues, {len(inbox)} messages queued")
        for message in inbox:
            self.on_message(message)
        self.after_input()

    def on_tick(self, event: Tick) -> None:
        if event.incarnation != self.incarnation or self.node is None:
            return
        self._queue.schedule(self.tick_interval_ms, self._tick_event())
        if self.paused:
            return  # like a ticker channel, ticks missed while stopped are dropped
        self.node.tick()
        self.after_input()

    def on_message(self, message: Message) -> None:
        if self.node is None:
            return
        if self.paused:
            if len(self._inbox) < limits.paused_inbox_messages_max:
                self._inbox.append(message)
            return
        self._record("recv", describe_message(message))
        self.node.step(message)
        self.after_input()

    def after_input(self) -> None:
        """After anything that may change the core: observe the role, schedule the Ready."""
        node = self.node
        if node is None or self.paused:
            return
        if node.role == Role.LEADER:
            term = node.term
            if self._leader_term != term:
                self._leader_term = term
                self._leader_log_check_term = term
                self._record("leader", f"became leader of term {term}")
                self._checker.on_leader(self._now(), self.node_id, term)
        elif self._leader_term:
            self._leader_term = 0
            self._leader_log_check_term = 0
            self._checker.on_leader_end(self.node_id)
        if not self._ready_scheduled and node.has_ready():
            self._ready_scheduled = True
            delay_ms = self._rng.randint(0, limits.disk_latency_ms_max)
            if self._rng.random() < limits.disk_latency_spike_probability:
                # A slow fsync: the core keeps stepping messages with a Ready outstanding.
                delay_ms = self._rng.randint(0, limits.disk_latency_spike_ms_max)
            self._queue.schedule(delay_ms, ReadyDue(self.node_id, self.incarnation))

    # --- client requests -----------------------------------------------------------------------

    def submit_write(self, op_id: int, command: WriteCommand) -> tuple[int, int]:
        """Propose; raises the core's RaftError (NotLeaderError carries the leader hint)."""
        assert self.node is not None
        if self._rng.random() < 0.3:
            term, index = self.node.propose_batch([command.encode()])
        else:
            term, index = self.node.propose(command.encode())
        self._pending_writes[index] = _PendingWrite(op_id, term)
        self._record("propose", f"op {op_id} {command.key}={command.value} at {index}/t{term}")
        self.after_input()
        return term, index

    def submit_read(self, op_id: int, key: str) -> None:
        """Ask the core for a read index; raises the core's RaftError."""
        assert self.node is not None
        context = f"r{op_id}".encode()
        self.node.read_index(context)
        self._pending_reads[context] = op_id
        self._read_keys[op_id] = key
        self._record("read_index", f"op {op_id} key {key}")
        self.after_input()

    # --- the Ready loop ------------------------------------------------------------------------

    def on_ready_due(self, event: ReadyDue) -> None:
        if event.incarnation != self.incarnation or self.node is None:
            return
        self._ready_scheduled = False
        if self.paused:
            return  # resume() schedules it again
        if self.node.has_ready():
            self._handle_ready(self.node, self.node.ready())
        self.after_input()

    def _handle_ready(self, node: RawNode, ready: Ready) -> None:
        now = self._now()
        # 1. Persist: snapshot, entries, hard state (one fsync), then let the core see them.
        if not self._persist(ready):
            return
        assert self.storage is not None
        self.storage.persist(ready)
        if self.crash_after_persist:
            self.crash("crash between fsync and send")
            return
        # 2. Send, only after the persist (every message speaks for durable state).
        unreachable: set[int] = set()
        for message in ready.messages:
            if message.to == self.node_id:
                self._checker.report(now, props.HOST_PROTOCOL, f"message to self: {message}")
                continue
            fate = self._network.send(self.node_id, message.to, message)
            if fate != "sent":
                self._record(fate, describe_message(message))
            if fate == "cut":
                unreachable.add(message.to)  # the connection is refused, as a transport sees
        # 3. Apply: a snapshot first (it replaces the state machine), then committed entries.
        if not ready.snapshot.is_empty:
            self._restore(ready)
        for entry in ready.committed_entries:
            if not self._apply(node, entry):
                return
        for state in ready.read_states:
            op_id = self._pending_reads.pop(state.context, None)
            if op_id is None:
                continue  # a read from before a restart, or answered twice: not ours now
            self._waiting_reads.append((state.index, op_id, self._read_keys.pop(op_id)))
        self._answer_reads()
        # 4. Advance: conf changes among the committed entries take effect in the core now.
        node.advance(ready)
        for peer in sorted(unreachable):
            node.report_unreachable(peer)
        if ready.committed_entries:
            self._maybe_compact(node)

    def _persist(self, ready: Ready) -> bool:
        now = self._now()
        try:
            if not ready.snapshot.is_empty:
                self.disk.install_snapshot(ready.snapshot)
                meta = ready.snapshot.metadata
                self._record("persist_snap", f"snapshot at {meta.index}/t{meta.term}")
            written = self.disk.append(ready.entries)
            for entry in written:
                prev_term = self.disk.term_at(entry.index - 1)
                assert prev_term is not None, "an appended entry follows the snapshot at least"
                self._checker.on_persist_entry(
                    time_ms=now,
                    node=self.node_id,
                    index=entry.index,
                    term=entry.term,
                    prev_term=prev_term,
                    payload=command_digest(entry),
                )
            if written:
                self._record(
                    "persist",
                    f"entries {written[0].index}..{written[-1].index} t{written[-1].term}",
                )
            if ready.hard_state is not None:
                self.disk.set_hard_state(ready.hard_state)
                hard = ready.hard_state
                self._record(
                    "persist_hs", f"term {hard.term} vote {hard.vote} commit {hard.commit}"
                )
                self._checker.on_commit(
                    now, self.node_id, hard.term, hard.commit, self.disk.term_at
                )
        except DiskInvariantError as error:
            self._checker.report(now, props.HOST_PROTOCOL, f"node {self.node_id}: {error}")
            return False
        if self._leader_log_check_term and self._leader_log_check_term == self.disk.hard_state.term:
            # The disk now holds everything the node had when it won (ready() hands out every
            # unstable entry), so its log is the election-time log plus its own appends.
            self._checker.on_leader_log(
                now,
                self.node_id,
                self._leader_log_check_term,
                self.disk.term_at,
                still_leader=self._leader_term == self._leader_log_check_term,
            )
            self._leader_log_check_term = 0
        return True

    def _restore(self, ready: Ready) -> None:
        meta = ready.snapshot.metadata
        try:
            machine = KvStateMachine.decode(ready.snapshot.data)
        except CommandFormatError as error:
            self._checker.report(self._now(), props.HOST_PROTOCOL, str(error))
            return
        if machine.applied_index != meta.index:
            self._checker.report(
                self._now(),
                props.STATE_MACHINE_SAFETY,
                f"snapshot metadata index {meta.index} holds state at {machine.applied_index}",
            )
        self.machine = machine
        self._record("restore", f"state machine from snapshot at {meta.index}/t{meta.term}")
        self._checker.on_restore(self._now(), self.node_id, meta.index, machine.digest)
        self._answer_reads()

    def _apply(self, node: RawNode, entry: Entry) -> bool:
        now = self._now()
        if entry.index != self.machine.applied_index + 1:
            self._checker.report(
                now,
                props.HOST_PROTOCOL,
                f"node {self.node_id} asked to apply {entry.index} after "
                f"{self.machine.applied_index}",
            )
            return False
        try:
            write = self.machine.apply(entry)
        except CommandFormatError as error:
            self._checker.report(now, props.STATE_MACHINE_SAFETY, f"node {self.node_id}: {error}")
            return False
        self._checker.on_apply(
            time_ms=now,
            node=self.node_id,
            index=entry.index,
            term=entry.term,
            command_digest=command_digest(entry),
            state_digest=self.machine.digest,
        )
        if write is not None:
            self._checker.on_write_applied(now, self.node_id, write.key, write.value, entry.index)
        elif entry.type == EntryType.CONF_CHANGE:
            change = ConfChange.decode(entry.data)
            self._record("apply_conf", f"{change.type.name} {change.node_id} at {entry.index}")
            self._listener.conf_change_applied(self.node_id, change)
        pending = self._pending_writes.pop(entry.index, None)
        if pending is not None:
            committed = pending.term == entry.term
            self._listener.write_done(
                node=self.node_id,
                op_id=pending.op_id,
                committed=committed,
                index=entry.index,
                log_term=entry.term,
                node_term=node.term,
            )
        return True

    def _answer_reads(self) -> None:
        if not self._waiting_reads:
            return
        applied = self.machine.applied_index
        still_waiting: list[tuple[int, int, str]] = []
        for read_index, op_id, key in self._waiting_reads:
            if read_index <= applied:
                self._listener.read_done(self.node_id, op_id, self.machine.values.get(key))
            else:
                still_waiting.append((read_index, op_id, key))
        self._waiting_reads = still_waiting

    def _maybe_compact(self, node: RawNode) -> None:
        applied = self.machine.applied_index
        if applied <= self.disk.snapshot_index:
            return
        roll = self._rng.random()
        if roll < limits.compaction_probability:
            snapshot = node.compact(applied, self.machine.encode())
            self.disk.compact(snapshot)
            self._record("compact", f"snapshot at {applied}/t{snapshot.metadata.term}")
        elif roll < 2 * limits.compaction_probability:
            self.disk.flush_image(StateMachineImage(applied, self.machine.encode()))
            self._record("flush", f"state machine image at {applied}")
