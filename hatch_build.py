"""Builds the optional C loops (minikv_core/storage/_speedups.c) when the package is installed.

hatchling has no C-extension support, and the module is one file with no dependency but
Python's own headers, so the compiler is called directly, with the flags this interpreter was
built with. The shared object is written next to its source: an editable install (what `make`
does) imports the package from the source tree. Without a compiler, or when the compile
fails, the install goes on and the Python twins run (minikv_core/storage/speedups.py): the C
loops are a speed-up, never a requirement.
"""

from __future__ import annotations

import shlex
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("minikv_core/storage/_speedups.c")


class SpeedupsBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        root = Path(self.root)
        suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
        target = root / SOURCE.with_name("_speedups" + suffix)
        if not build(root / SOURCE, target, self.app.display_warning):
            return
        if self.target_name == "wheel" and version != "editable":
            # A wheel carries the object (git-ignored, so listed explicitly) and is tagged for
            # this interpreter and platform.
            build_data["force_include"][str(target)] = str(target.relative_to(root))
            build_data["pure_python"] = False
            build_data["infer_tag"] = True


def build(source: Path, target: Path, warn: Any) -> bool:
    """Compile `source` into `target`; False (after a warning) when that is not possible."""
    compiler = shlex.split(sysconfig.get_config_var("CC") or "cc")
    include = sysconfig.get_paths()["include"]
    command = [
        *compiler,
        "-O2",
        "-fPIC",
        "-shared",
        "-Wall",
        f"-I{include}",
        str(source),
        "-o",
        str(target),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    except (OSError, subprocess.SubprocessError) as error:
        warn(f"minikv: C loops not built ({error}); the Python ones will run")
        return False
    if done.returncode != 0:
        warn(f"minikv: C loops not built ({' '.join(command)}):\n{done.stderr}")
        target.unlink(missing_ok=True)
        return False
    return True
