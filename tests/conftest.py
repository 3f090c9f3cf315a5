"""Test-session settings shared by every layer of the suite."""

from __future__ import annotations

import os

# gRPC's C core reads this once, at import: silence its INFO lines ("Got goaway") so a test
# failure's output shows our messages, as the `minikv` CLI does for users.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
