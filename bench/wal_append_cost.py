"""What a durable WAL append costs beyond the disk's own write + fdatasync, on a real disk.

Why this tool: the engine benchmark's batched puts sit a few tens of microseconds above the
fsync floor (`minikv bench engine`), and on tmpfs the WAL's Python costs only a few of those:
work done right after a sync runs on caches the sleep left cold, so CPU measured without the
sync understates it. This measures it where it happens. Blocks of appends alternate between

- `wal`:   `Wal.append_sync` of one record (a KV_BATCH-sized payload) in a fresh WAL, and
- `floor`: one `pwrite` of the same bytes into a zero-filled, fsynced file + one `fdatasync`,

both in the directory given (put it on the disk you care about). Per system it prints the
median and mean latency of an append, the mean time inside fdatasync (the WAL's own counters;
timed around the call for the floor) and so the time outside the sync:

    .venv/bin/python -m bench.wal_append_cost DIR [--appends 2000] [--payload-bytes 7700]
        [--json]

For an A/B of two trees, run it alternately with PYTHONPATH set to a checkout of each.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from minikv_core.storage.wal import Wal
from minikv_core.storage.wal_records import RecordType

BLOCK_APPENDS = 10
"""Appends per turn: the disk's sync latency drifts within seconds, so the systems alternate."""

FLOOR_FILE_BYTES = 64 * 1024 * 1024


def measure(
    directory: Path, appends: int, payload_bytes: int, seed: int
) -> dict[str, dict[str, float]]:
    payloads = [random_bytes(payload_bytes, seed * 1_000_003 + number) for number in range(appends)]
    wal = Wal.open(directory / "wal")
    floor_fd = os.open(directory / "floor.bin", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        chunk = bytes(1024 * 1024)
        for _ in range(FLOOR_FILE_BYTES // len(chunk)):
            os.write(floor_fd, chunk)
        os.fsync(floor_fd)
        before = wal.stats
        floor_offset = 0
        latencies: dict[str, list[float]] = {"wal": [], "floor": []}
        floor_syncs: list[float] = []
        for start in range(0, appends, BLOCK_APPENDS):
            block = range(start, min(start + BLOCK_APPENDS, appends))
            order = ("wal", "floor") if (start // BLOCK_APPENDS) % 2 == 0 else ("floor", "wal")
            for system in order:
                for number in block:
                    payload = payloads[number]
                    began = time.perf_counter()
                    if system == "wal":
                        wal.append_sync([(RecordType.KV_BATCH, payload)])
                    else:
                        if floor_offset + len(payload) > FLOOR_FILE_BYTES:
                            floor_offset = 0
                        os.pwrite(floor_fd, payload, floor_offset)
                        synced = time.perf_counter()
                        os.fdatasync(floor_fd)
                        floor_syncs.append(time.perf_counter() - synced)
                        floor_offset += len(payload)
                    latencies[system].append(time.perf_counter() - began)
        after = wal.stats
    finally:
        os.close(floor_fd)
        wal.close()
    wal_sync_s = (after.sync_seconds_total - before.sync_seconds_total) / (
        after.syncs - before.syncs
    )
    return {
        "wal": summary(latencies["wal"], wal_sync_s),
        "floor": summary(latencies["floor"], statistics.fmean(floor_syncs)),
    }


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def summary(latencies: list[float], sync_mean_s: float) -> dict[str, float]:
    mean = statistics.fmean(latencies)
    return {
        "appends": len(latencies),
        "median_us": round(statistics.median(latencies) * 1e6, 1),
        "mean_us": round(mean * 1e6, 1),
        "sync_mean_us": round(sync_mean_s * 1e6, 1),
        "outside_sync_mean_us": round((mean - sync_mean_s) * 1e6, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="where to write (a scratch dir is made in it)")
    parser.add_argument("--appends", type=int, default=2000)
    parser.add_argument("--payload-bytes", type=int, default=7700, help="a batch of 64 x 100 B")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="one JSON object per system")
    args = parser.parse_args(argv)
    if args.appends < BLOCK_APPENDS or args.payload_bytes < 1:
        parser.error(f"--appends must be >= {BLOCK_APPENDS} and --payload-bytes >= 1")
    if not args.directory.is_dir():
        parser.error(f"{args.directory} is not a directory")
    scratch = Path(tempfile.mkdtemp(prefix="minikv-wal-cost-", dir=args.directory))
    try:
        results = measure(scratch, args.appends, args.payload_bytes, args.seed)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for system, row in results.items():
        if args.json:
            print(json.dumps({"system": system, "payload_bytes": args.payload_bytes, **row}))
        else:
            print(
                f"{system:5s}  median {row['median_us']:7.1f} us  mean {row['mean_us']:7.1f} us"
                f"  in fdatasync {row['sync_mean_us']:7.1f} us"
                f"  outside it {row['outside_sync_mean_us']:6.1f} us"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
