"""Where every asyncio task of a running node is waiting, written on SIGUSR2.

SIGUSR1's thread stacks (faulthandler) show an idle event loop as one frame in `run_forever`;
a request that never ends is then invisible, parked in some coroutine's `await`. This walks
each task's chain of awaits (`cr_await`) down to the future it waits on, so a hung call shows
up as the line that awaits it, on which node. Python 3.11 has no `asyncio` call-graph API
(3.14 adds one), hence the walk.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Iterator
from types import CoroutineType, FrameType, GeneratorType
from typing import Any, Final, TextIO

logger = logging.getLogger(__name__)

AWAIT_DEPTH_MAX: Final = 64
"""A chain of awaits this deep is cut (a recursion in our own code would be a bug, but the
dump must end)."""

TASKS_MAX: Final = 2_000
"""A node under load runs a task per request; past this many, the rest are counted only."""


def _frame_line(frame: FrameType) -> str:
    code = frame.f_code
    return f'  File "{code.co_filename}", line {frame.f_lineno}, in {code.co_name}'


def _waited_on(awaitable: Any) -> Any:
    """The future behind a C `FutureIter` (what `await future` suspends in): it does not
    expose it, but hands it to the garbage collector's traversal."""
    if type(awaitable).__name__ == "FutureIter":
        referents = gc.get_referents(awaitable)
        if len(referents) == 1:
            return referents[0]
    return awaitable


def _awaits(awaitable: Any) -> Iterator[str]:
    """The frames of `awaitable`'s await chain, outermost first, then what it waits on."""
    for _ in range(AWAIT_DEPTH_MAX):
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if isinstance(awaitable, CoroutineType | GeneratorType) or frame is not None:
            if frame is not None:
                yield _frame_line(frame)
            awaitable = getattr(awaitable, "cr_await", None) or getattr(
                awaitable, "gi_yieldfrom", None
            )
            if awaitable is None:
                return
            continue
        yield f"  waiting on {_waited_on(awaitable)!r:.300}"
        return
    yield "  ... (deeper awaits cut)"


def format_tasks(loop: asyncio.AbstractEventLoop) -> str:
    """Every task of `loop`, each with the await chain it is suspended in."""
    tasks = sorted(asyncio.all_tasks(loop), key=lambda task: task.get_name())
    lines = [f"--- {len(tasks)} asyncio tasks (SIGUSR2) ---"]
    for task in tasks[:TASKS_MAX]:
        lines.append(f"Task {task.get_name()} ({'done' if task.done() else 'pending'}):")
        lines.extend(_awaits(task.get_coro()))
    if len(tasks) > TASKS_MAX:
        lines.append(f"... and {len(tasks) - TASKS_MAX} more tasks")
    lines.append("--- end of asyncio tasks ---")
    return "\n".join(lines) + "\n"


def install(loop: asyncio.AbstractEventLoop, file: TextIO = sys.stderr) -> None:
    """On SIGUSR2, write `format_tasks` to `file` (a node's log) from the loop itself: the
    walk reads coroutine frames, which only the loop's thread may do safely. A loop that is
    stuck answers nothing here; SIGUSR1's thread stacks cover that case."""

    def dump() -> None:
        try:
            file.write(format_tasks(loop))
            file.flush()
        except Exception:  # a diagnostic must never take the node down
            logger.exception("SIGUSR2: could not write the asyncio tasks")

    loop.add_signal_handler(signal.SIGUSR2, dump)
