"""A network that loses, delays, duplicates and reorders messages, and partitions nodes.

Raft must stay safe under every one of these (Raft §5.1: "messages may be lost, delayed,
duplicated or reordered"); the simulator draws each from the run's one seeded RNG.

- delay: uniform in [message_delay_ms_min, message_delay_ms_max]; a delay longer than the gap
  between two sends reorders them; a few messages (message_delay_spike_probability) take up
  to three election timeouts and arrive into a changed cluster;
- loss: a background probability, raised on the links of nodes in a loss burst;
- duplication: a second copy with its own delay;
- partitions: a set of cut directed links. A symmetric partition cuts both directions between
  two groups; a one-way cut only `src -> dst`. A link is checked when a message is sent and
  again when it arrives, so cutting a link also drops what is in flight on it (as a reset TCP
  connection would).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from minikv_core.raft.sim import limits
from minikv_core.raft.sim.clock import EventQueue

MessageT = TypeVar("MessageT")


@dataclass(frozen=True, slots=True)
class Deliver(Generic[MessageT]):
    """Event: `message` arrives at node `dst` from node `src`."""

    src: int
    dst: int
    message: MessageT


@dataclass(slots=True)
class NetworkStats:
    sent: int = 0
    delivered: int = 0
    lost: int = 0
    cut: int = 0  # dropped by a partition
    duplicated: int = 0
    overflowed: int = 0  # dropped because in_flight_messages_max was reached


class Network(Generic[MessageT]):
    """Schedules `Deliver` events on the run's queue; decides their fate with the run's RNG."""

    def __init__(self, rng: random.Random, queue: EventQueue[object]) -> None:
        self._rng = rng
        self._queue = queue
        self._cut_links: set[tuple[int, int]] = set()
        self._loss_burst_nodes: set[int] = set()
        self.loss_probability = limits.message_loss_probability
        self.duplicate_probability = limits.message_duplicate_probability
        self.in_flight = 0
        self.stats = NetworkStats()

    # --- faults ------------------------------------------------------------------------------

    def partition(self, group_a: Iterable[int], group_b: Iterable[int]) -> None:
        """Symmetric partition: no message crosses between the two groups, either way."""
        a, b = sorted(group_a), sorted(group_b)
        assert not set(a) & set(b), "a node cannot be on both sides of a partition"
        for x in a:
            for y in b:
                self._cut_links.add((x, y))
                self._cut_links.add((y, x))

    def cut_one_way(self, src: int, dst: int) -> None:
        """One-way cut: `src` can no longer reach `dst`, but `dst` still reaches `src`."""
        assert src != dst
        self._cut_links.add((src, dst))

    def start_loss_burst(self, nodes: Iterable[int]) -> None:
        self._loss_burst_nodes.update(nodes)

    def heal(self) -> None:
        """Remove every partition, cut and loss burst (background loss stays as configured)."""
        self._cut_links.clear()
        self._loss_burst_nodes.clear()

    def make_reliable(self) -> None:
        """Quiet phase: no partitions, no loss, no duplicates; only delay and reordering remain."""
        self.heal()
        self.loss_probability = 0.0
        self.duplicate_probability = 0.0

    def cut_links(self) -> list[tuple[int, int]]:
        return sorted(self._cut_links)

    def loss_burst_nodes(self) -> list[int]:
        return sorted(self._loss_burst_nodes)

    def is_cut(self, src: int, dst: int) -> bool:
        return (src, dst) in self._cut_links

    # --- traffic -----------------------------------------------------------------------------

    def send(self, src: int, dst: int, message: MessageT) -> str:
        """Put `message` on the wire; returns its fate for the trace ("sent", "lost", ...)."""
        assert src != dst, f"node {src} sent a message to itself"
        self.stats.sent += 1
        if self.is_cut(src, dst):
            self.stats.cut += 1
            return "cut"
        loss = self.loss_probability
        if src in self._loss_burst_nodes or dst in self._loss_burst_nodes:
            loss = max(loss, limits.loss_burst_probability)
        if loss > 0.0 and self._rng.random() < loss:
            self.stats.lost += 1
            return "lost"
        copies = 1
        if self.duplicate_probability > 0.0 and self._rng.random() < self.duplicate_probability:
            copies = 2
            self.stats.duplicated += 1
        for _ in range(copies):
            if self.in_flight >= limits.in_flight_messages_max:
                self.stats.overflowed += 1
                return "overflowed"
            if self._rng.random() < limits.message_delay_spike_probability:
                delay_ms = self._rng.randint(
                    limits.message_delay_ms_max, limits.message_delay_spike_ms_max
                )
            else:
                delay_ms = self._rng.randint(
                    limits.message_delay_ms_min, limits.message_delay_ms_max
                )
            self.in_flight += 1
            self._queue.schedule(delay_ms, Deliver(src, dst, message))
        return "sent" if copies == 1 else "duplicated"

    def arrive(self, event: Deliver[MessageT]) -> bool:
        """Account for an arriving message; False if a cut made while in flight drops it."""
        self.in_flight -= 1
        assert self.in_flight >= 0
        if self.is_cut(event.src, event.dst):
            self.stats.cut += 1
            return False
        self.stats.delivered += 1
        return True
