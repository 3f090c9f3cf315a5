"""Virtual time and the one seeded event queue that orders everything in a simulated run.

Why a queue of timestamped events instead of real threads: a run is then a pure function of
the seed. Ties in time are broken by a sequence number given at scheduling, never by object
identity or hash order, so two runs of one seed pop the same events in the same order.
"""

from __future__ import annotations

import heapq
from typing import Generic, TypeVar

EventT = TypeVar("EventT")


class EventQueueFullError(Exception):
    """More events pending than the bound: a message storm or a runaway schedule."""


class EventQueue(Generic[EventT]):
    """A bounded min-heap of (time_ms, sequence, event); popping an event advances `now_ms`.

    Time never goes backwards: an event is scheduled at `now_ms + delay_ms` with a delay >= 0.
    """

    __slots__ = ("_heap", "_sequence", "events_pending_max", "now_ms")

    def __init__(self, events_pending_max: int) -> None:
        assert events_pending_max > 0
        self.events_pending_max = events_pending_max
        self.now_ms = 0
        self._sequence = 0
        self._heap: list[tuple[int, int, EventT]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, delay_ms: int, event: EventT) -> None:
        assert delay_ms >= 0, f"events cannot be scheduled in the past: delay_ms={delay_ms}"
        if len(self._heap) >= self.events_pending_max:
            raise EventQueueFullError(
                f"{len(self._heap)} events pending at {self.now_ms} ms "
                f"(events_pending_max={self.events_pending_max})"
            )
        self._sequence += 1
        heapq.heappush(self._heap, (self.now_ms + delay_ms, self._sequence, event))

    def pop(self) -> EventT | None:
        """The earliest event (FIFO among equal times), or None when nothing is pending."""
        if not self._heap:
            return None
        time_ms, _, event = heapq.heappop(self._heap)
        assert time_ms >= self.now_ms, "virtual time went backwards"
        self.now_ms = time_ms
        return event

    def next_time_ms(self) -> int | None:
        return self._heap[0][0] if self._heap else None
