"""Child process of test_wal_crash: appends forever, printing each record id once durable.

Usage: python wal_crash_child.py DIRECTORY SEED. It reopens the WAL (recovering whatever the
last SIGKILL left), continues after the last record id found, and appends batches of random
size; a record's id is printed only after `append_sync` returned for its batch, so every
printed id is a promise the WAL must keep after the parent SIGKILLs this process.
"""

from __future__ import annotations

import logging
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from minikv_core.storage.wal import Wal
from minikv_core.storage.wal_records import RecordType
from tests.storage.wal_support import payload_for, record_id_of

CRASH_SEGMENT_BYTES = 16 * 1024


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    directory, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    wal = Wal.open(directory, segment_size_bytes=CRASH_SEGMENT_BYTES)
    next_id = 0
    for entry in wal.read():
        next_id = record_id_of(entry.payload) + 1
    sys.stdout.write(f"start {next_id}\n")
    sys.stdout.flush()
    while True:
        count = rng.randint(1, 20)
        batch = [
            (RecordType.RAFT_ENTRY, payload_for(next_id + k, rng.randint(0, 400)))
            for k in range(count)
        ]
        wal.append_sync(batch)
        sys.stdout.write("".join(f"{next_id + k}\n" for k in range(count)))
        sys.stdout.flush()
        next_id += count


if __name__ == "__main__":
    main()
