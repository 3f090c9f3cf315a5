"""Crash consistency of the Store: SIGKILL at random moments never loses an acknowledged write.

A child process writes batches and prints each write after `write_batch` returned (after its
fsync). The test kills it with SIGKILL at seeded random moments, reopens the store, and checks
that every acknowledged write is there — the last acknowledged value of each key, or a newer
one the child wrote but had not yet printed — and that nothing reads back a value never written.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from minikv_core.storage.store import Store

CHILD = Path(__file__).with_name("store_crash_child.py")
ROUNDS = 12
KEY_SPACE = 300
SEED = 4242


def run_child_until_killed(path: Path, seed: int, kill_after_lines: int) -> list[str]:
    """Start the child, read acknowledged lines until `kill_after_lines`, SIGKILL it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(path), str(seed), str(KEY_SPACE)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    lines: list[str] = []
    buffer = b""
    try:
        assert child.stdout is not None
        fd = child.stdout.fileno()
        deadline = time.monotonic() + 20
        while len(lines) < kill_after_lines and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                if child.poll() is not None:
                    break
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            lines.extend(line.decode() for line in complete)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        # Lines written before the kill are acknowledged too: read what is left in the pipe.
        rest = child.stdout.read()
        complete = (buffer + rest).split(b"\n")
        lines.extend(line.decode() for line in complete[:-1])
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        stderr = child.stderr.read().decode() if child.stderr else ""
        if child.stdout:
            child.stdout.close()
        if child.stderr:
            child.stderr.close()
    assert "Traceback" not in stderr, f"seed {seed}: child failed:\n{stderr}"
    return lines


def parse_batches(lines: list[str]) -> tuple[list[dict[str, str]], dict[str, str] | None]:
    """Split the child's output into acknowledged batches and the one in flight (if any)."""
    acked: list[dict[str, str]] = []
    pending: dict[str, str] | None = None
    for line in lines:
        if line.startswith("intent "):
            assert pending is None, "two intents without an ack"
            pending = dict(pair.split("=") for pair in line[len("intent ") :].split(","))
        elif line == "ack":
            assert pending is not None, "an ack without an intent"
            acked.append(pending)
            pending = None
    return acked, pending


def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    path = tmp_path / "store"
    expected: dict[str, str] = {}  # key -> value hex, or "-" when deleted
    checked = 0
    for round_number in range(ROUNDS):
        seed = rng.randrange(2**32)
        kill_after = rng.randrange(1, 3_000)
        acked, in_flight = parse_batches(run_child_until_killed(path, seed, kill_after))
        for batch in acked:
            expected.update(batch)
        store = Store.open(path)
        try:
            for key, value_hex in sorted(expected.items()):
                value = store.get(key.encode())
                found = "-" if value is None else value.hex()
                # The batch in flight at the kill may have become durable before its ack.
                allowed = {value_hex}
                if in_flight is not None and key in in_flight:
                    allowed.add(in_flight[key])
                assert found in allowed, (
                    f"seed {SEED} round {round_number} (child seed {seed}): key {key} reads "
                    f"{found[:24]}, acknowledged {value_hex[:24]}"
                )
                checked += 1
            if in_flight is not None:
                # Whether the in-flight batch landed is now known; it must be all or nothing.
                landed = {
                    k: ("-" if (v := store.get(k.encode())) is None else v.hex()) == val
                    for k, val in in_flight.items()
                }
                changed = {k for k, val in in_flight.items() if expected.get(k, "-") != val}
                states = {landed[k] for k in changed}
                assert len(states) <= 1, (
                    f"seed {SEED} round {round_number}: in-flight batch partially applied"
                )
                if states == {True}:
                    expected.update(in_flight)
        finally:
            store.close()
    assert checked > 0, "the child acknowledged nothing; the test checked nothing"
