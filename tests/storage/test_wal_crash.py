"""Crash consistency: SIGKILL a writer at seeded random moments; no acknowledged record is lost.

A child process (wal_crash_child.py) appends batches with `append_sync` and prints each
record's id only after the append returned. The parent kills it with SIGKILL at a random
moment (after a random number of acknowledged records, or after a random delay that may land
during startup and recovery), reopens the WAL and checks: every printed id is present, the
log holds exactly ids 0..n-1 in order with their exact payloads, nothing else. The next round
appends to the same, recovered log, so recovery after recovery is exercised too.

SIGKILL keeps the page cache, so this proves the write/recovery protocol (torn batches,
kills during rotation and during recovery), not the disk's honesty about fsync.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

from minikv_core.storage.wal import Wal, verify
from tests.storage.wal_crash_child import CRASH_SEGMENT_BYTES
from tests.storage.wal_support import payload_for, record_id_of

CHILD = Path(__file__).with_name("wal_crash_child.py")
SEED = 20240611
ROUNDS_MIN = 8
ROUNDS_MAX = 40
TIME_BUDGET_S = 8.0


def run_round(directory: Path, round_seed: int, rng: random.Random, log_path: Path) -> list[int]:
    """Start the child, kill it at a random moment, return the ids it acknowledged."""
    with log_path.open("ab") as child_log:
        child = subprocess.Popen(
            [sys.executable, str(CHILD), str(directory), str(round_seed)],
            stdout=subprocess.PIPE,
            stderr=child_log,
            text=True,
        )
        acknowledged: list[int] = []
        try:
            assert child.stdout is not None
            if rng.random() < 0.25:
                # Kill at a random time after spawn: may land in startup or recovery.
                time.sleep(rng.uniform(0.0, 0.3))
            else:
                kill_after = rng.randint(1, 300)
                for line in child.stdout:
                    if not line.startswith("start"):
                        acknowledged.append(int(line))
                    if len(acknowledged) >= kill_after:
                        break
            child.kill()
            child.wait(timeout=10)
            # Ids printed before the kill but not yet read are acknowledged too.
            for line in child.stdout.read().splitlines():
                if not line.startswith("start"):
                    acknowledged.append(int(line))
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=10)
            if child.stdout is not None:
                child.stdout.close()
    assert child.returncode == -9, (
        f"round seed {round_seed}: child exited with {child.returncode} before the kill; "
        f"see {log_path}: {log_path.read_text()[-2000:]}"
    )
    return acknowledged


def test_sigkill_at_random_moments_loses_no_acknowledged_record(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    log_path = tmp_path / "child.log"
    rng = random.Random(SEED)
    started = time.monotonic()
    rounds = 0
    acknowledged_total = 0
    while rounds < ROUNDS_MAX and (
        rounds < ROUNDS_MIN or time.monotonic() - started < TIME_BUDGET_S
    ):
        round_seed = rng.randrange(2**31)
        acknowledged = run_round(directory, round_seed, rng, log_path)
        acknowledged_total += len(acknowledged)
        context = f"seed={SEED} round={rounds} round_seed={round_seed}"
        if not directory.exists():
            assert not acknowledged, context
            rounds += 1
            continue
        with Wal.open(directory, segment_size_bytes=CRASH_SEGMENT_BYTES) as wal:
            entries = list(wal.read())
        ids = [record_id_of(e.payload) for e in entries]
        assert ids == list(range(len(ids))), f"{context}: the log is not ids 0..n-1 in order"
        for entry, record_id in zip(entries, ids, strict=True):
            size = len(entry.payload) - 8
            assert entry.payload == payload_for(record_id, size), f"{context}: id {record_id}"
        if acknowledged:
            assert max(acknowledged) < len(ids), (
                f"{context}: acknowledged id {max(acknowledged)} lost; log ends at {len(ids)}"
            )
        rounds += 1
    assert rounds >= ROUNDS_MIN
    assert acknowledged_total > 0, f"seed={SEED}: no round acknowledged anything"
    report = verify(directory)
    assert report.ok, report.findings
    assert len(report.segments) > 1, "the rounds must have rotated segments"
