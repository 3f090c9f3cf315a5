"""Helpers shared by the WAL tests: deterministic records and a reference of what was written."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from minikv_core.storage.wal import Position, Wal
from minikv_core.storage.wal_records import RecordType

SMALL_SEGMENT_BYTES = 4096  # the smallest allowed: rotation every few dozen records
# For tests that do not care about rotation: zero-filling the default 64 MiB at every fresh
# open would dominate the suite's time.
TEST_SEGMENT_BYTES = 1024 * 1024


def payload_for(record_id: int, size: int) -> bytes:
    """A payload that names its record and whose every byte depends on the id (no zeros run)."""
    head = record_id.to_bytes(8, "little")
    body = b""
    counter = 0
    while len(body) < size:
        body += hashlib.blake2b(head + counter.to_bytes(4, "little"), digest_size=64).digest()
        counter += 1
    return head + body[:size]


def record_id_of(payload: bytes) -> int:
    return int.from_bytes(payload[:8], "little")


def write_records(
    wal: Wal, count: int, seed: int, *, batch_max: int = 5, size_max: int = 200
) -> list[tuple[Position, RecordType, bytes]]:
    """Append `count` records in seeded random batches; return what was written, in order."""
    rng = random.Random(seed)
    written: list[tuple[Position, RecordType, bytes]] = []
    types = list(RecordType)
    record_id = 0
    while record_id < count:
        batch_size = min(rng.randint(1, batch_max), count - record_id)
        batch = [
            (rng.choice(types), payload_for(record_id + k, rng.randint(0, size_max)))
            for k in range(batch_size)
        ]
        position = wal.append_sync(batch)
        offset = position.offset
        for record_type, payload in batch:
            written.append((Position(position.segment, offset), record_type, payload))
            offset += 9 + len(payload)
        record_id += batch_size
    return written


def segment_paths(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.wal"))
