"""Runs a command in a fresh interpreter where some packages do not import, as if they were never installed.

A finder placed first on `sys.meta_path` raises ModuleNotFoundError("No module named ...") for the blocked
names and their submodules, what Python raises for a package that is not there; everything else imports as
usual. The code under test runs unchanged: the failure is the import's own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BOOT = """
import importlib.abc, runpy, sys
blocked = [name for name in sys.argv[1].split(",") if name]
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in blocked):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Absent())
mode, target, *rest = sys.argv[2:]
if mode == "-c":
    sys.argv = ["-c", *rest]
    exec(compile(target, "<test>", "exec"))
elif mode == "-m":
    sys.argv = [target, *rest]
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    sys.argv = [target, *rest]
    runpy.run_path(target, run_name="__main__")
"""


def run_without(
    blocked: tuple[str, ...],
    mode: str,
    target: str,
    args: list[str],
    cwd: Path,
    env: dict | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess:
    """`python <mode> <target> args...` (mode "-c" code, "-m" module or "script" path) with `blocked` not importable."""
    return subprocess.run(
        [sys.executable, "-c", BOOT, ",".join(blocked), mode, target, *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
