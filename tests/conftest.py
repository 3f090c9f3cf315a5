"""Test-session settings shared by every layer of the suite."""

from __future__ import annotations

import os
import signal
from types import FrameType

# gRPC's C core reads this once, at import: silence its INFO lines ("Got goaway") so a test
# failure's output shows our messages, as the `minikv` CLI does for users.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def _interrupt_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


# A run stopped with SIGTERM (a CI job's timeout, `kill`) would otherwise die at once and
# leave every node process it started running (they lead their own sessions, so nothing else
# stops them). As a KeyboardInterrupt, pytest runs the fixtures' finalizers, which stop them.
signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
