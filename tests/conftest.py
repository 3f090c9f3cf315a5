"""Test-session settings shared by every layer of the suite."""

from __future__ import annotations

import os
import signal
from collections.abc import Generator
from types import FrameType

import pytest

# gRPC's C core reads this once, at import: silence its INFO lines ("Got goaway") so a test
# failure's output shows our messages, as the `minikv` CLI does for users.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
# ... and keep its fork handlers out: pexpect starts a terminal program by forking this
# process (forkpty, not the vfork of subprocess), and with gRPC channels open here, gRPC's
# handler restarts its poller thread in the child, which then dies on "epoll_wait error: Bad
# file descriptor" once the child closes its descriptors before exec (grpc/grpc#43055, open
# since grpcio 1.81; 1 fork in ~300 here, and a CI run lost a REPL test to it). Nothing in
# the suite uses gRPC in a forked child, so nothing needs those handlers.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")


def _interrupt_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


# A run stopped with SIGTERM (a CI job's timeout, `kill`) would otherwise die at once and
# leave every node process it started running (they lead their own sessions, so nothing else
# stops them). As a KeyboardInterrupt, pytest runs the fixtures' finalizers, which stop them.
signal.signal(signal.SIGTERM, _interrupt_on_sigterm)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> Generator[None]:
    """Name every failed or errored test once more, one line each, as the last lines before
    the totals. On CI pytest prints each failure's whole message in the short summary, and
    an integration failure's message carries every node's log and task dump, so the lines
    that say *which* test failed end up far above the last screenful a CI log keeps.
    (An outermost wrapper: its code after `yield` runs after pytest's own short summary.)"""
    yield
    failed = [
        f"{report.when}: {report.nodeid}" if report.when != "call" else report.nodeid
        for key in ("failed", "error")
        for report in terminalreporter.stats.get(key, [])
        if hasattr(report, "nodeid")
    ]
    if failed:
        terminalreporter.write_sep("=", "failed or errored tests")
        for line in failed:
            terminalreporter.write_line(line)
