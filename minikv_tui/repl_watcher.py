"""Keeps an interactive session's view of the cluster current: a thread that fetches the
shard map once a second, updates the session state (connection, leaders) and reports what
changed as events (a leader moved, contact lost, contact back).

It is also how the REPL "reconnects": the client's channels reconnect by themselves, and this
poll is what notices, so the toolbar and an event line say so without the user asking.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from minikv_core.client import ClientError, ShardRouting
from minikv_tui.repl_state import Connection, SessionState

POLL_INTERVAL_S: Final = 1.0
FETCH_TIMEOUT_S: Final = 1.0
"""One shard-map request: below the poll interval, so a dead node delays no poll much."""


class EventKind(enum.Enum):
    LEADER_CHANGED = "leader changed"
    CONTACT_LOST = "contact lost"
    RECONNECTED = "reconnected"


@dataclass(frozen=True, slots=True)
class ClusterEvent:
    kind: EventKind
    text: str


FetchShardMap = Callable[[], dict[str, Any]]


class ClusterWatcher:
    """Polls `fetch` (the shard map) every `interval_s` in a daemon thread; `poll_once` is the
    whole of one round, callable directly. Events go to `on_event`, any change of state to
    `on_change` (both called from the watcher's thread)."""

    def __init__(
        self,
        fetch: FetchShardMap,
        state: SessionState,
        on_event: Callable[[ClusterEvent], None],
        on_change: Callable[[], None] = lambda: None,
        *,
        interval_s: float = POLL_INTERVAL_S,
    ) -> None:
        self._fetch = fetch
        self._state = state
        self._on_event = on_event
        self._on_change = on_change
        self._interval_s = interval_s
        self._known_leaders: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        assert self._thread is None, "the watcher runs once"
        self._thread = threading.Thread(target=self._run, name="minikv-repl-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            # A round in progress ends within FETCH_TIMEOUT_S (its request's deadline).
            self._thread.join(timeout=FETCH_TIMEOUT_S + 1.0)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.poll_once()

    def poll_once(self) -> list[ClusterEvent]:
        """Fetch the map once; update the state; report and return what changed."""
        with self._lock:
            events = self._poll_locked()
        for event in events:
            self._on_event(event)
        return events

    def _poll_locked(self) -> list[ClusterEvent]:
        state = self._state
        before = state.connection
        try:
            routing = ShardRouting.from_document(self._fetch())
        except (ClientError, ValueError) as error:
            if before is Connection.LOST:
                return []
            state.connection = Connection.LOST
            self._on_change()
            return [
                ClusterEvent(
                    EventKind.CONTACT_LOST,
                    f"no node of {', '.join(state.endpoints)} answers ({error}); "
                    "retrying every second",
                )
            ]
        events: list[ClusterEvent] = []
        if before is Connection.LOST:
            events.append(ClusterEvent(EventKind.RECONNECTED, "the cluster answers again"))
        for shard, leader in sorted(routing.leaders.items()):
            previous = self._known_leaders.get(shard)
            if previous is not None and previous != leader:
                address = routing.addresses.get(leader, "?")
                events.append(
                    ClusterEvent(
                        EventKind.LEADER_CHANGED,
                        f"shard {shard}: leader n{previous} → n{leader} ({address})",
                    )
                )
            self._known_leaders[shard] = leader
        changed = before is not Connection.CONNECTED or state.routing != routing
        state.routing = routing
        state.connection = Connection.CONNECTED
        if changed:
            self._on_change()
        return events
