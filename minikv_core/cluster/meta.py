"""The meta group's state machine: the replicated shard map.

Group 0 runs on every node (up to META_VOTERS_MAX voters, the rest learners). Its log carries
meta commands; its state is one `ShardMap`. At bootstrap every node computes the same map
(epoch 0, placement.py) and uses it until the meta group's first leader proposes it as
epoch 1; from then on the map changes only through this log (repair and membership, later
issues), and every node's copy is the applied state of this group.

Commands (entry data): `b"M" | format u8 | JSON`, the JSON object having a "type":
- "set_shard_map" {"map": ShardMap.to_json()}: applied iff its epoch is exactly the current
  epoch + 1, so concurrent proposers (two successive leaders both proposing epoch 1) are
  harmless: the first one committed wins, the rest are no-ops on every replica alike.
An entry that does not decode is skipped on every replica alike (never a crash: it is
committed everywhere, so raising would take the meta group down for good).

Durability. The meta state is tiny, so instead of an engine it has one file, `meta.snap`
(format u8 | applied index u64 | ShardMap JSON), written atomically (temp, fsync, rename,
fsync directory) when the host compacts the meta group's log. On restart the state is the
file's, and Raft re-applies committed entries after its index. The file may be *newer* than
the log's snapshot mark (crash between the two): entries at or below the applied index are
skipped, so that is harmless.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from minikv_core.cluster.config import store_atomically
from minikv_core.cluster.shard_map import ShardMap, ShardMapError
from minikv_core.raft.types import Entry, EntryType

logger = logging.getLogger(__name__)

META_COMMAND_PREFIX: Final = b"M"
META_COMMAND_FORMAT: Final = 1
META_SNAPSHOT_FORMAT: Final = 1
_SNAPSHOT_HEADER = struct.Struct("<BQ")  # format, applied index
META_SNAPSHOT_NAME: Final = "meta.snap"


class MetaDecodeError(ValueError):
    """Meta entry data or a meta snapshot that is not valid (names the reason)."""


def encode_set_shard_map(shard_map: ShardMap) -> bytes:
    body = {"type": "set_shard_map", "map": shard_map.to_json()}
    return (
        META_COMMAND_PREFIX
        + bytes([META_COMMAND_FORMAT])
        + json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    )


def decode_meta_command(data: bytes) -> ShardMap:
    """The map of a set_shard_map command (the only command so far)."""
    if len(data) < 2 or data[:1] != META_COMMAND_PREFIX:
        raise MetaDecodeError("not a meta command (missing the 'M' prefix)")
    if data[1] != META_COMMAND_FORMAT:
        raise MetaDecodeError(f"unknown meta command format {data[1]}")
    try:
        body = json.loads(data[2:])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MetaDecodeError(f"meta command is not valid JSON: {error}") from None
    if not isinstance(body, dict) or body.get("type") != "set_shard_map":
        raise MetaDecodeError(f"unknown meta command {str(body)[:80]!r}")
    try:
        return ShardMap.from_json(body["map"])
    except (KeyError, ShardMapError) as error:
        raise MetaDecodeError(f"bad set_shard_map command: {error}") from None


@dataclass(frozen=True, slots=True)
class MetaSnapshot:
    applied_index: int
    shard_map: ShardMap

    def encode(self) -> bytes:
        return _SNAPSHOT_HEADER.pack(META_SNAPSHOT_FORMAT, self.applied_index) + (
            self.shard_map.encode()
        )

    @classmethod
    def decode(cls, data: bytes) -> MetaSnapshot:
        if len(data) < _SNAPSHOT_HEADER.size:
            raise MetaDecodeError(f"meta snapshot of {len(data)} bytes is too short")
        version, index = _SNAPSHOT_HEADER.unpack_from(data, 0)
        if version != META_SNAPSHOT_FORMAT:
            raise MetaDecodeError(f"unknown meta snapshot format {version}")
        try:
            shard_map = ShardMap.decode(data[_SNAPSHOT_HEADER.size :])
        except ShardMapError as error:
            raise MetaDecodeError(f"meta snapshot: {error}") from None
        return cls(index, shard_map)


class MetaStateMachine:
    """The applied shard map of this node's meta group replica."""

    def __init__(self, directory: Path, bootstrap_map: ShardMap) -> None:
        """`bootstrap_map` (epoch 0) serves until the log or the snapshot file says more."""
        self._path = directory / META_SNAPSHOT_NAME
        self._shard_map = bootstrap_map
        self._applied_index = 0
        self.entries_rejected = 0
        snapshot = self._load()
        if snapshot is not None:
            self._shard_map = snapshot.shard_map
            self._applied_index = snapshot.applied_index

    def _load(self) -> MetaSnapshot | None:
        try:
            data = self._path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return MetaSnapshot.decode(data)
        except MetaDecodeError as error:
            raise MetaDecodeError(f"{self._path}: {error}") from None

    @property
    def shard_map(self) -> ShardMap:
        return self._shard_map

    @property
    def applied_index(self) -> int:
        return self._applied_index

    def apply(self, entries: Sequence[Entry]) -> None:
        """Apply committed entries in order; entries at or below the applied index are skipped
        (a snapshot file newer than the log, or a snapshot installed ahead)."""
        for entry in entries:
            if entry.index <= self._applied_index:
                continue
            self._applied_index = entry.index
            if entry.type != EntryType.NORMAL or not entry.data:
                continue
            try:
                proposed = decode_meta_command(entry.data)
            except MetaDecodeError as error:
                self.entries_rejected += 1
                logger.error("meta entry %d skipped: %s", entry.index, error)
                continue
            if proposed.epoch == self._shard_map.epoch + 1:
                self._shard_map = proposed

    def snapshot(self) -> MetaSnapshot:
        return MetaSnapshot(self._applied_index, self._shard_map)

    def persist(self, snapshot: MetaSnapshot) -> None:
        """Write `snapshot` to meta.snap atomically (blocking: call from a thread)."""
        store_atomically(self._path, snapshot.encode())

    def install(self, data: bytes) -> None:
        """Replace the state with a snapshot received from the meta leader, durably."""
        snapshot = MetaSnapshot.decode(data)
        self.persist(snapshot)
        self._shard_map = snapshot.shard_map
        self._applied_index = snapshot.applied_index
