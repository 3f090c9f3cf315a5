"""A bounded ring buffer of readable events, plus a digest of every event ever recorded.

The ring keeps the last `trace_events_max` events for the failure report (a violation is
almost always explained by the last few dozen). The digest covers the whole run, so the
determinism test can compare two runs of one seed without keeping every event in memory.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass

from minikv_core.raft.sim import limits


@dataclass(frozen=True, slots=True)
class TraceEvent:
    time_ms: int
    node: int  # 0 for events not about one node (faults on the network, clients)
    kind: str
    detail: str

    def render(self) -> str:
        who = f"n{self.node}" if self.node else "--"
        return f"{self.time_ms:>7}ms {who:>3} {self.kind:<14} {self.detail}"


class Trace:
    __slots__ = ("_digest", "_ring", "events_recorded", "kind_counts")

    def __init__(self, events_max: int = limits.trace_events_max) -> None:
        assert events_max > 0
        self._ring: deque[TraceEvent] = deque(maxlen=events_max)
        self._digest = hashlib.blake2b(digest_size=16)
        self.events_recorded = 0
        self.kind_counts: dict[str, int] = {}  # events per kind: what a run exercised

    def record(self, time_ms: int, node: int, kind: str, detail: str) -> None:
        event = TraceEvent(time_ms, node, kind, detail)
        self._ring.append(event)
        self._digest.update(f"{time_ms}|{node}|{kind}|{detail}\n".encode())
        self.events_recorded += 1
        self.kind_counts[kind] = self.kind_counts.get(kind, 0) + 1

    def last(self, count: int = limits.trace_events_printed) -> list[TraceEvent]:
        assert count >= 0
        if count == 0:
            return []
        return list(self._ring)[-count:]

    def render_last(self, count: int = limits.trace_events_printed) -> str:
        return "\n".join(event.render() for event in self.last(count))

    def digest(self) -> str:
        """Hex digest of every event recorded so far (not only those still in the ring)."""
        return self._digest.copy().hexdigest()
