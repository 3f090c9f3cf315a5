"""Closed-loop clients: each has at most one operation outstanding, as a real caller would.

A client writes unique values to a small key space (so reads and writes collide) and reads
through the ReadIndex path (thesis §6.4). It sends to the node it believes leads; a
NotLeaderError answer redirects it (the core never forwards proposals), a dropped proposal is
retried after a short backoff, and an operation unanswered after `client_timeout_ms` is
abandoned: its outcome stays unknown (the write may still commit), so the next operation uses
a new value. Only definite answers (acknowledged write, read value) reach the checker's
linearizability rule.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from minikv_core.raft.sim import limits
from minikv_core.raft.sim.checker import Checker
from minikv_core.raft.sim.clock import EventQueue
from minikv_core.raft.sim.host import Host
from minikv_core.raft.sim.state_machine import WriteCommand
from minikv_core.raft.sim.trace import Trace
from minikv_core.raft.types import NONE, NotLeaderError, RaftError


@dataclass(frozen=True, slots=True)
class ClientWake:
    """Event: `client` starts its next operation."""

    client: int


@dataclass(frozen=True, slots=True)
class ClientArrive:
    """Event: attempt `attempt` of operation `op_id` reaches node `node`."""

    op_id: int
    node: int
    attempt: int


@dataclass(frozen=True, slots=True)
class ClientTimeout:
    op_id: int


@dataclass(slots=True)
class Operation:
    op_id: int
    client: int
    is_write: bool
    key: str
    value: str  # the value written; "" for a read
    invoked_ms: int
    attempt: int = 0


@dataclass(slots=True)
class ClientState:
    client: int
    leader_hint: int = NONE
    current: Operation | None = None
    stopped: bool = False
    writes_acked_in_quiet: int = 0
    reads_acked_in_quiet: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)


class Clients:
    def __init__(
        self,
        *,
        rng: random.Random,
        queue: EventQueue[object],
        checker: Checker,
        trace: Trace,
        host_of: Callable[[int], Host | None],
        node_ids: Callable[[], list[int]],
    ) -> None:
        self._rng = rng
        self._queue = queue
        self._checker = checker
        self._trace = trace
        self._host_of = host_of
        self._node_ids = node_ids
        self.clients = [ClientState(client) for client in range(1, limits.clients_count + 1)]
        self._operations: dict[int, Operation] = {}  # outstanding, by op id
        self._next_op_id = 1
        self.quiet_since_ms: int | None = None  # set when faults stop: clients then drain

    def start(self) -> None:
        for state in self.clients:
            delay_ms = self._rng.randint(0, limits.client_think_ms_max)
            self._queue.schedule(delay_ms, ClientWake(state.client))

    def _record(self, client: int, kind: str, detail: str) -> None:
        self._trace.record(self._queue.now_ms, 0, kind, f"client {client}: {detail}")

    def _count(self, state: ClientState, outcome: str) -> None:
        state.outcomes[outcome] = state.outcomes.get(outcome, 0) + 1

    # --- quiet phase -----------------------------------------------------------------------------

    def begin_quiet(self) -> None:
        self.quiet_since_ms = self._queue.now_ms
        for state in self.clients:
            if state.current is None and not state.stopped:
                self._queue.schedule(0, ClientWake(state.client))

    def _quota_met(self, state: ClientState) -> bool:
        return state.writes_acked_in_quiet >= 1 and state.reads_acked_in_quiet >= 1

    def all_stopped(self) -> bool:
        return all(state.stopped and state.current is None for state in self.clients)

    def describe(self) -> str:
        parts = []
        for state in self.clients:
            op = state.current
            doing = "idle" if op is None else f"op {op.op_id} since {op.invoked_ms} ms"
            parts.append(
                f"client {state.client}: {doing}, quiet acks w{state.writes_acked_in_quiet}"
                f"/r{state.reads_acked_in_quiet}, {dict(sorted(state.outcomes.items()))}"
            )
        return "; ".join(parts)

    # --- events ----------------------------------------------------------------------------------

    def on_wake(self, event: ClientWake) -> None:
        state = self.clients[event.client - 1]
        if state.current is not None or state.stopped:
            return
        if self.quiet_since_ms is not None and self._quota_met(state):
            state.stopped = True
            self._record(state.client, "client_stop", "quiet-phase quota met")
            return
        op_id = self._next_op_id
        self._next_op_id += 1
        key = f"k{self._rng.randrange(limits.client_key_space_size)}"
        now = self._queue.now_ms
        is_write = self._rng.random() >= limits.client_read_fraction
        if self.quiet_since_ms is not None:
            # Drain: do whatever the quota still lacks.
            is_write = state.writes_acked_in_quiet == 0
        value = f"c{state.client}.{op_id}" if is_write else ""
        op = Operation(op_id, state.client, is_write, key, value, now)
        state.current = op
        self._operations[op_id] = op
        if is_write:
            self._checker.on_write_invoked(state.client, key, op.value)
            self._record(state.client, "invoke", f"op {op_id} write {key}={op.value}")
        else:
            self._checker.on_read_invoked(now, op_id, state.client, key)
            self._record(state.client, "invoke", f"op {op_id} read {key}")
        self._queue.schedule(limits.client_timeout_ms, ClientTimeout(op_id))
        self._send(op, self._target(state))

    def _target(self, state: ClientState) -> int:
        ids = self._node_ids()
        if state.leader_hint != NONE and state.leader_hint in ids:
            return state.leader_hint
        return ids[self._rng.randrange(len(ids))]

    def _send(self, op: Operation, node: int, delay_ms: int | None = None) -> None:
        op.attempt += 1
        if delay_ms is None:
            delay_ms = self._rng.randint(0, limits.client_request_delay_ms_max)
        self._queue.schedule(delay_ms, ClientArrive(op.op_id, node, op.attempt))

    def on_arrive(self, event: ClientArrive) -> None:
        op = self._operations.get(event.op_id)
        if op is None or op.attempt != event.attempt:
            return  # abandoned or superseded
        state = self.clients[op.client - 1]
        host = self._host_of(event.node)
        if host is not None and host.paused:
            # The request waits in the stopped process's socket buffer.
            self._queue.schedule(limits.tick_interval_ms, event)
            return
        if host is None or not host.up:
            state.leader_hint = NONE
            # The connection is refused: try another node after a moment.
            self._send(op, self._target(state), limits.election_timeout_ms // 2)
            return
        try:
            if op.is_write:
                host.submit_write(op.op_id, WriteCommand(op.client, op.key, op.value))
            else:
                host.submit_read(op.op_id, op.key)
            state.leader_hint = event.node
        except NotLeaderError as error:
            state.leader_hint = error.leader_id
            backoff_ms = 0 if error.leader_id != NONE else limits.election_timeout_ms // 2
            self._send(op, self._target(state), backoff_ms + limits.client_request_delay_ms_max)
        except RaftError as error:
            self._record(op.client, "refused", f"op {op.op_id} on n{event.node}: {error}")
            self._send(op, event.node, limits.election_timeout_ms // 2)

    def on_timeout(self, event: ClientTimeout) -> None:
        op = self._operations.pop(event.op_id, None)
        if op is None:
            return
        state = self.clients[op.client - 1]
        state.current = None
        state.leader_hint = NONE
        self._count(state, "timeout")
        if not op.is_write:
            self._checker.on_read_abandoned(op.op_id)
        self._record(op.client, "timeout", f"op {op.op_id} abandoned (outcome unknown)")
        self._wake_later(state)

    def _wake_later(self, state: ClientState) -> None:
        delay_ms = self._rng.randint(1, limits.client_think_ms_max)
        self._queue.schedule(delay_ms, ClientWake(state.client))

    def _in_quiet(self, op: Operation) -> bool:
        return self.quiet_since_ms is not None and op.invoked_ms >= self.quiet_since_ms

    def write_done(
        self, *, node: int, op_id: int, committed: bool, index: int, log_term: int, node_term: int
    ) -> None:
        op = self._operations.get(op_id)
        if op is None:
            return  # abandoned: the client is no longer listening
        state = self.clients[op.client - 1]
        if committed:
            self._checker.on_write_acked(self._queue.now_ms, op.value, index, log_term, node_term)
            self._record(op.client, "ack", f"op {op_id} write {op.key}={op.value} at {index}")
            self._count(state, "write_ok")
            if self._in_quiet(op):
                state.writes_acked_in_quiet += 1
        else:
            # Another entry won the index: this proposal is definitely not committed.
            self._record(op.client, "fail", f"op {op_id} lost its index {index} on n{node}")
            self._count(state, "write_failed")
        del self._operations[op_id]
        state.current = None
        self._wake_later(state)

    def read_done(self, node: int, op_id: int, value: str | None) -> None:
        op = self._operations.get(op_id)
        if op is None:
            return
        state = self.clients[op.client - 1]
        self._checker.on_read_acked(self._queue.now_ms, op_id, node, value)
        self._record(op.client, "ack", f"op {op_id} read {op.key} -> {value} from n{node}")
        self._count(state, "read_ok")
        if self._in_quiet(op):
            state.reads_acked_in_quiet += 1
        del self._operations[op_id]
        state.current = None
        self._wake_later(state)
