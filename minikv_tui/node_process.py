"""Node processes on this machine, as /proc shows them: is a pid still our node, is it paused,
which ports are free, what did it log last.

Pids are not trusted on their own: a node counts as alive only while its process start time
(`/proc/<pid>/stat` field 22), its command line (`minikv_core.server`) and its `--data-dir`
all match what the registry recorded, so a dead node whose pid was reused is never signalled.
Linux-only (/proc); elsewhere every node reads as not running.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import socket
import subprocess
from pathlib import Path
from typing import Final, Literal

from minikv_tui.registry import NodeRecord

LOOPBACK: Final = "127.0.0.1"
LOG_TAIL_LINES: Final = 20
START_MARK: Final = "=== minikv launcher: start"

ProcessState = Literal["up", "paused", "down", "stopped"]
"""What a node's process is, as observed now: "down" = should run but does not (killed,
crashed, failed to start); "stopped" = stopped on purpose (or never started)."""

CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
"""Nodes this process spawned: polled so that a long-lived parent (the dashboard) reaps the
ones that exit instead of collecting zombies."""


def _reap(pid: int) -> None:
    child = CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del CHILDREN[pid]


def read_proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of a live process, else None."""
    _reap(pid)
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')'.
    fields = text[text.rfind(")") + 2 :].split()
    if len(fields) < 20:
        return None
    state, start_ticks = fields[0], int(fields[19])
    if state in ("Z", "X", "x"):
        return None
    return state, start_ticks


def process_start_ticks(pid: int) -> int | None:
    stat = read_proc_stat(pid)
    return stat[1] if stat is not None else None


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _is_node_process(pid: int, pid_start: int | None, data_dir: Path) -> str | None:
    """The /proc state letter if `pid` is still the node started on `data_dir`, else None."""
    if pid_start is None:
        return None
    stat = read_proc_stat(pid)
    if stat is None or stat[1] != pid_start:
        return None
    argv = cmdline(pid)
    if "minikv_core.server" not in argv:
        return None
    with contextlib.suppress(ValueError):
        if argv[argv.index("--data-dir") + 1] == str(data_dir):
            return stat[0]
    return None


def node_process_state(node: NodeRecord) -> ProcessState:
    """What the node's process is now (re-checked from /proc, never taken from the registry
    alone: a node can be killed, or its pid reused, behind our back)."""
    if node.pid is not None:
        letter = _is_node_process(node.pid, node.pid_start, node.data_dir)
        if letter is not None:
            return "paused" if letter in ("T", "t") else "up"
    return "stopped" if node.state == "stopped" else "down"


def node_pid(node: NodeRecord) -> int | None:
    """The node's pid if that process is alive and is the node."""
    return node.pid if node_process_state(node) in ("up", "paused") else None


def signal_group(pid: int, signum: int) -> None:
    """Nodes lead their own process group (start_new_session): signal it all."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)


def port_in_use(port: int) -> bool:
    """Whether a listener holds `port` on loopback. SO_REUSEADDR so that connections of a node
    that just stopped (TIME_WAIT) do not count, as they do not for the node's own bind."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that are free now, below the OS's ephemeral range.

    Why below it: a port is chosen here and bound later by a node process, and a port in the
    ephemeral range can be taken in between by any outgoing connection on the machine (seen in
    CI: "Address already in use" at a node's start). Outgoing connections never pick ports
    below the range, so only an explicit bind can race us there. All candidates are bound at
    once (so they differ) and released before returning. Falls back to OS-chosen ports where
    the range is unknown (not Linux) or crowded.
    """
    low, _ = _ephemeral_range()
    chosen: list[socket.socket] = []
    try:
        if low > _PORT_FLOOR + 4 * count:
            pick = random.SystemRandom()
            for _ in range(50 * count):
                if len(chosen) == count:
                    break
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    sock.bind((LOOPBACK, pick.randrange(_PORT_FLOOR, low)))
                except OSError:
                    sock.close()
                    continue
                chosen.append(sock)
        while len(chosen) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            chosen.append(sock)
            sock.bind((LOOPBACK, 0))
        return [int(sock.getsockname()[1]) for sock in chosen]
    finally:
        for sock in chosen:
            sock.close()


_PORT_FLOOR = 20_000
"""Lowest port `free_ports` picks: clear of well-known and most registered service ports."""


def _ephemeral_range() -> tuple[int, int]:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        low, high = (int(part) for part in text.split())
    except (OSError, ValueError):
        return 0, 0
    return low, high


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last `lines` lines the node wrote since its most recent start."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    mark = text.rfind(START_MARK)
    if mark >= 0:
        text = text[text.find("\n", mark) + 1 :]
    return text.splitlines()[-lines:]


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def proc_usage(pid: int) -> tuple[int | None, int | None]:
    """CPU ticks (user+system) and resident *private* bytes of a local process, from /proc
    (Linux): resident minus file-backed and shared pages (RssAnon). Why not all of RSS: a
    node reads its tables through mmap, and the table pages it has touched count in RSS while
    being reclaimable page cache; the dashboard's memory column would grow with every read.

    Elsewhere, or for a process that is gone, both are None: shown as unknown, never as 0.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        statm = Path(f"/proc/{pid}/statm").read_text()
    except OSError:
        return None, None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        resident, shared = (int(field) for field in statm.split()[1:3])
        rss = (resident - shared) * PAGE_SIZE
    except (IndexError, ValueError):
        return None, None
    return ticks, rss
