"""Engine settings and the digest reference shared by the verify and pinned-checksum tests."""

from __future__ import annotations

import hashlib
import struct

from minikv_core.storage.engine import EngineOptions

BATCH_OPS = 64
# Tiny sizes, flushes only where the calls put them: a few thousand keys make many tables.
SMALL = EngineOptions(
    memtable_size_bytes=2048,
    block_size_bytes=256,
    table_size_bytes=4096,
    background_flush=False,
    background_compaction=False,
)
# Everything stays in the memtable, even across close.
MEMTABLE_ONLY = EngineOptions(
    memtable_size_bytes=64 * 1024 * 1024,
    background_flush=False,
    background_compaction=False,
    flush_on_close=False,
)
# The engine as a node runs it, with tiny tables so flushes and merges happen all the time.
BACKGROUND = EngineOptions(
    memtable_size_bytes=2048,
    block_size_bytes=256,
    table_size_bytes=4096,
    compaction_process_min_bytes=None,
)
# BLAKE2b-128 of no input: the digest of an engine with no live key.
EMPTY_DIGEST = "cae66941d9efbd404e4d88758ea67670"


def reference_digest(model: dict[bytes, bytes]) -> str:
    """The documented format (storage/verify.py), computed independently of the engine."""
    digest = hashlib.blake2b(digest_size=16)
    for key in sorted(model):
        value = model[key]
        digest.update(struct.pack("<I", len(key)) + key + struct.pack("<I", len(value)) + value)
    return digest.hexdigest()
