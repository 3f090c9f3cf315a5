"""The event log's memory: the registry's journal for a local cluster, else this process.

A local cluster's journal is shared: the launcher records what it did (kill, partition …), any
`minikv cluster` command in another terminal does too, and the dashboard adds what it observed
between polls (elections, leader changes). Tailing it by id shows all of them in one log, in
order, and a dashboard opened later starts with the history. A cluster attached by endpoints
has no journal, so its events live only as long as the dashboard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from minikv_tui.registry import Registry, RegistryError

HISTORY_EVENTS = 200
"""Events a dashboard shows from before it started."""
PAGE_EVENTS = 1000


@dataclass(frozen=True)
class LogEvent:
    at: float
    kind: str
    node: int | None
    detail: str


class EventJournal(Protocol):
    @property
    def shared(self) -> bool:
        """Other tools write here too (they journal what they do themselves)."""
        ...

    async def record(self, kind: str, detail: str, node: int | None, at: float) -> None: ...

    async def new_events(self) -> list[LogEvent]:
        """What was recorded since the previous call (the first call: recent history)."""
        ...

    async def close(self) -> None: ...


class MemoryJournal:
    def __init__(self) -> None:
        self._pending: list[LogEvent] = []

    @property
    def shared(self) -> bool:
        return False

    async def record(self, kind: str, detail: str, node: int | None, at: float) -> None:
        self._pending.append(LogEvent(at, kind, node, detail))

    async def new_events(self) -> list[LogEvent]:
        pending, self._pending = self._pending, []
        return pending

    async def close(self) -> None:
        return None


class RegistryJournal:
    """Tails one cluster's events in the registry (kept open: one SELECT per refresh)."""

    def __init__(self, registry: Registry, cluster: str) -> None:
        self._registry = registry
        self._cluster = cluster
        self._last_id = 0
        self._started = False

    @property
    def shared(self) -> bool:
        return True

    async def record(self, kind: str, detail: str, node: int | None, at: float) -> None:
        # The registry stamps its own time: the journal is ordered by when it was written.
        try:
            await self._registry.record_event(self._cluster, kind, detail, node)
        except RegistryError:
            return  # the cluster was destroyed meanwhile: nothing left to journal it in

    async def new_events(self) -> list[LogEvent]:
        records = []
        while True:
            page = await self._registry.events(
                self._cluster, after_id=self._last_id, limit=PAGE_EVENTS
            )
            if not page:
                break
            self._last_id = page[-1].id
            records.extend(page)
            if not self._started:
                records = records[-HISTORY_EVENTS:]
            if len(page) < PAGE_EVENTS:
                break
        self._started = True
        return [LogEvent(r.at, r.kind, r.node, r.detail) for r in records]

    async def close(self) -> None:
        await self._registry.close()
