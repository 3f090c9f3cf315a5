"""The SIGUSR2 task dump: each task's chain of awaits, down to what it waits on."""

from __future__ import annotations

import asyncio
import io
import os
import signal

from minikv_core import task_dump


async def _innermost(gate: asyncio.Future[None]) -> None:
    await gate


async def _middle(gate: asyncio.Future[None]) -> None:
    await _innermost(gate)


async def test_each_task_shows_its_awaits_down_to_the_future() -> None:
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(_middle(gate), name="the-stuck-call")
    await asyncio.sleep(0)  # let it reach its await
    try:
        text = task_dump.format_tasks(asyncio.get_running_loop())
    finally:
        gate.set_result(None)
        await task
    section = text.split("Task the-stuck-call (pending):\n", 1)[1].split("\nTask ", 1)[0]
    lines = section.splitlines()
    assert lines[0].endswith("in _middle") and lines[1].endswith("in _innermost"), section
    assert "test_task_dump.py" in lines[1] and lines[2].startswith("  waiting on <Future"), section
    assert text.startswith(f"--- {text.count('Task ')} asyncio tasks (SIGUSR2) ---"), text
    assert text.endswith("--- end of asyncio tasks ---\n")


async def test_a_sigusr2_writes_the_dump_and_the_loop_runs_on() -> None:
    loop = asyncio.get_running_loop()
    log = io.StringIO()
    task_dump.install(loop, log)
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        for _ in range(100):
            if "end of asyncio tasks" in log.getvalue():
                break
            await asyncio.sleep(0.01)
    finally:
        loop.remove_signal_handler(signal.SIGUSR2)
    assert "in test_a_sigusr2_writes_the_dump_and_the_loop_runs_on" in log.getvalue()
