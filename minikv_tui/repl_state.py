"""The live context of one REPL session: what the bottom toolbar shows and the commands use.

Written by the command executor (main thread) and the cluster watcher (its own thread); each
field is replaced whole by one writer, never mutated in place, so a reader in another thread
sees either the old value or the new one.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from minikv_core.client import Consistency, ShardRouting
from minikv_core.cluster.shard_map import shard_for_key
from minikv_tui.repl_multi import MultiQueue, Watched


class Connection(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    LOST = "unreachable"


@dataclass(frozen=True, slots=True)
class ShardInfo:
    """One shard as the last shard map described it."""

    shard: int
    replicas: tuple[int, ...]
    leader: int | None
    """Node id of the leader hint, None while no leader is known."""


@dataclass(slots=True)
class SessionState:
    label: str
    """What the session is connected to: the cluster's name, else its first endpoint."""
    endpoints: Sequence[str]
    consistency: Consistency = Consistency.LINEARIZABLE
    timing: bool = False
    last_latency_ms: float | None = None
    last_key: bytes | None = None
    connection: Connection = Connection.CONNECTING
    routing: ShardRouting | None = field(default=None)
    multi: MultiQueue | None = None
    """The open transaction (MULTI ... EXEC), None outside one."""
    watched: tuple[Watched, ...] = ()

    def shard_of(self, key: bytes) -> ShardInfo | None:
        """The shard holding `key` by the last known map (None before any map arrived)."""
        routing = self.routing
        if routing is None:
            return None
        shard = shard_for_key(key, routing.shard_count)
        return ShardInfo(shard, routing.replicas.get(shard, ()), routing.leaders.get(shard))
