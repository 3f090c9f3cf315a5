"""Crash consistency of flush and compaction: SIGKILL a writing child, reopen, check.

The child applies a deterministic history (the ops at index i depend only on i), flushing and
compacting as it goes, and prints `durable <index>` each time `flush()` returns. After a kill,
the engine must reopen with a consistent manifest (every listed table present and readable,
no orphan files left), a durable applied index at least the last one printed, and exactly the
state the history has at that index. The next child continues from `applied_index + 1`, as a
Raft host replays its log.

Two ways to pick the moment of death:
- seeded random moments: the parent kills after a seeded number of progress lines plus a
  seeded sub-millisecond delay (jitter to land inside a flush or compaction, not a wait);
- every file-system step in turn: an audit hook in the child kills it at its n-th `open`,
  `rename`, `remove` or `link` inside the engine directory, covering each step of a flush,
  a manifest replacement and a compaction deterministically.

Note: SIGKILL kills the process, not the machine: written but unsynced data survives in the
page cache. Power loss (dropping unsynced data) is not simulated here.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from minikv_core.storage.engine import Delete, Engine, EngineOptions, Op, Put

SEED = 1234
KEY_SPACE = 300
FLUSH_EVERY = 40
COMPACT_EVERY = 150
OPTIONS = EngineOptions(
    memtable_size_bytes=4096,
    block_size_bytes=256,
    table_size_bytes=8192,
    tier_fanout=2,
    flush_on_close=False,
)
CHILD_TIMEOUT_S = 60


def ops_at(index: int) -> list[Op]:
    """The batch applied at `index`: a pure function of the index."""
    rng = random.Random(index)
    ops: list[Op] = []
    for _ in range(rng.randrange(1, 4)):
        key = b"key%04d" % rng.randrange(KEY_SPACE)
        if rng.random() < 0.2:
            ops.append(Delete(key))
        else:
            ops.append(Put(key, b"%d:" % index + rng.randbytes(rng.randrange(0, 40))))
    return ops


def state_at(index: int) -> dict[bytes, bytes]:
    state: dict[bytes, bytes] = {}
    for i in range(1, index + 1):
        for op in ops_at(i):
            if isinstance(op, Put):
                state[op.key] = op.value
            else:
                state.pop(op.key, None)
    return state


def child_main(directory: Path, kill_at_event: int, worker: bool) -> None:
    """Write forever (until killed). With kill_at_event > 0, die at that file-system event;
    with `worker`, every merge runs in a compaction worker process."""
    engine = Engine.open(
        directory, replace(OPTIONS, compaction_process_min_bytes=0 if worker else None)
    )
    if kill_at_event:
        events = 0
        watched = {"open", "os.rename", "os.remove", "os.link", "os.unlink"}
        prefix = str(directory)

        def hook(event: str, args: tuple[object, ...]) -> None:
            nonlocal events
            if event in watched and args and str(args[0]).startswith(prefix):
                events += 1
                if events == kill_at_event:
                    os.kill(os.getpid(), signal.SIGKILL)

        sys.addaudithook(hook)
    index = engine.applied_index
    print(f"start {index}", flush=True)
    while True:
        index += 1
        engine.apply(ops_at(index), index)
        if index % FLUSH_EVERY == 0:
            print(f"durable {engine.flush()}", flush=True)
        if index % COMPACT_EVERY == 0:
            engine.compact()
            print("compacted", flush=True)


@contextmanager
def child(
    directory: Path, kill_at_event: int = 0, worker: bool = False
) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, __file__, str(directory), str(kill_at_event), str(int(worker))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=CHILD_TIMEOUT_S)
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()
        process.stderr.close()


def check_reopened(directory: Path, last_printed: int, context: str) -> int:
    """Open after a kill and check the invariants; return the durable applied index."""
    # No background compaction while checking: the files on disk must be exactly those the
    # manifest left, not those a new compaction is writing.
    engine = Engine.open(directory, replace(OPTIONS, background_compaction=False))
    try:
        durable = engine.durable_applied_index
        assert engine.applied_index == durable, context
        assert durable >= last_printed, f"{context}: durable {durable} < printed {last_printed}"
        on_disk = {p.name for p in directory.iterdir() if p.suffix == ".sst"}
        assert on_disk == {t.name for t in engine.tables()}, f"{context}: orphans or missing"
        expected = state_at(durable)
        engine.verify()  # every block of every live table passes its CRC
        assert engine.scan() == sorted(expected.items()), f"{context}: state at {durable}"
        for i in range(0, KEY_SPACE, 7):
            key = b"key%04d" % i
            assert engine.get(key) == expected.get(key), f"{context}: get {key!r}"
        return durable
    finally:
        engine.close()


@pytest.mark.parametrize("worker", [False, True], ids=["merges in-thread", "merges in a worker"])
def test_kill_at_seeded_random_moments_keeps_flushed_state(tmp_path: Path, worker: bool) -> None:
    """With a worker, the killed engine's worker outlives it for a moment: it must abandon
    its job without touching the files of the engine reopened meanwhile."""
    rng = random.Random(SEED)
    last_printed = 0
    for round_number in range(8):
        lines_before_kill = rng.randrange(1, 12)
        delay_s = rng.uniform(0, 0.003)
        with child(tmp_path, worker=worker) as process:
            assert process.stdout is not None
            lines = 0
            for line in process.stdout:
                if line.startswith("durable "):
                    last_printed = max(last_printed, int(line.split()[1]))
                lines += 1
                if lines >= lines_before_kill:
                    break
            time.sleep(delay_s)  # jitter: land inside a flush or compaction, not a wait
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=CHILD_TIMEOUT_S)
            assert process.stderr is not None
            stderr = process.stderr.read()
            assert "Traceback" not in stderr, stderr
        context = f"seed {SEED} round {round_number} (kill after {lines} lines)"
        last_printed = check_reopened(tmp_path, last_printed, context)
    assert last_printed > 2 * COMPACT_EVERY, "the rounds should have crossed compactions"


@pytest.mark.parametrize("kill_at_event", range(1, 33))
def test_kill_at_each_file_system_step_keeps_flushed_state(
    tmp_path: Path, kill_at_event: int
) -> None:
    with child(tmp_path, kill_at_event) as process:
        assert process.stdout is not None
        last_printed = 0
        for line in process.stdout:  # ends when the child kills itself
            if line.startswith("durable "):
                last_printed = int(line.split()[1])
        assert process.wait(timeout=CHILD_TIMEOUT_S) == -signal.SIGKILL
    check_reopened(tmp_path, last_printed, f"killed at file-system event {kill_at_event}")
    # A second life: the host replays from the durable index and carries on.
    with child(tmp_path, kill_at_event + 7) as process:
        assert process.stdout is not None
        for _line in process.stdout:
            pass
    check_reopened(tmp_path, 0, f"second kill at event {kill_at_event + 7}")


if __name__ == "__main__":
    child_main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1")
