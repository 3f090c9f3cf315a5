"""Child process of test_store_crash: writes batches and reports each one after it is durable.

Before each batch it prints `intent k=v,k=v…` (value hex, `-` for a delete), and `ack` only
after `write_batch` returned: every acknowledged batch is a promise the parent checks after
SIGKILLing this process at a random moment; the one batch in flight may or may not be durable. Small
memtables and segments make flushes, WAL truncation and compactions happen during the run.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from minikv_core.storage.engine import EngineOptions
from minikv_core.storage.store import Store


def main() -> None:
    path, seed, key_space = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    store = Store.open(
        path,
        segment_size_bytes=64 * 1024,
        engine_options=EngineOptions(memtable_size_bytes=64 * 1024),
    )
    out = sys.stdout
    while True:
        size = rng.choice((1, 1, 4, 32))
        writes: list[tuple[bytes, bytes | None]] = []
        for _ in range(size):
            key = b"key-%05d" % rng.randrange(key_space)
            if rng.random() < 0.1:
                writes.append((key, None))
            else:
                writes.append((key, rng.randbytes(rng.randrange(1, 300))))
        shown = ",".join(
            f"{key.decode()}={'-' if value is None else value.hex()}" for key, value in writes
        )
        out.write(f"intent {shown}\n")
        out.flush()
        store.write_batch(writes)
        out.write("ack\n")
        out.flush()


if __name__ == "__main__":
    main()
