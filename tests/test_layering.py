"""The dependency direction of DESIGN.md, enforced: the node core never loads terminal code."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import minikv_core

TERMINAL_PACKAGES = ("textual", "prompt_toolkit", "rich", "typer", "minikv_tui")


def test_minikv_core_imports_no_terminal_library() -> None:
    modules = [
        info.name
        for info in pkgutil.walk_packages(minikv_core.__path__, prefix="minikv_core.")
        # `sim` is a developer tool run with `python -m`; it may print with rich one day.
        if not info.name.endswith(".sim")
    ]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {TERMINAL_PACKAGES!r})\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"minikv_core pulled in: {result.stdout.strip()}"
