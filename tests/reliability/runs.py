"""Launches meant to die, for the crash and numeric-fault tests: the engine under the real `deepspeed` launcher
(the command of tests/engine/launcher.py), started in the background with faults from MAVIL_INJECT
(engine/inject.py) or a SIGKILL sent from outside to one rank, and the checkpoints they leave, read back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from mavil.engine.checkpoint import LATEST, tag_for

from ..conftest import REPO
from ..engine.launcher import command

TIMEOUT = 600


class Launch:
    """One background launch of engine/pretrain.py; its output goes to tmp/<run>-<n>.log."""

    def __init__(self, tmp: Path, run: str, *overrides: str, inject: str = "", name: str = ""):
        argv, env = command(tmp, run, *overrides)
        env["MAVIL_INJECT"] = inject
        self.run_dir, self.log = tmp / run, tmp / f"{name or run}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.ranks: list[psutil.Process] = []
        self.returncode: int | None = None

    def wait(self) -> int:
        """-> the launcher's exit status, once it and every rank process it started are gone."""
        self.returncode = self.proc.wait(timeout=TIMEOUT)
        gone, alive = psutil.wait_procs(self.ranks, timeout=30)
        assert not alive, f"rank processes left running after the launcher exited: {alive}"
        return self.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def find_ranks(self, world: int = 2) -> list[psutil.Process]:
        """The rank processes (the launcher's descendants started with --local_rank), in rank order."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                found = [
                    p
                    for p in psutil.Process(self.proc.pid).children(recursive=True)
                    if any(arg.startswith("--local_rank") for arg in p.cmdline())
                ]
            except psutil.Error:
                found = []
            if len(found) == world:
                self.ranks = sorted(found, key=lambda p: next(a for a in p.cmdline() if a.startswith("--local_rank")))
                return self.ranks
            time.sleep(0.1)
        raise AssertionError(f"{world} rank processes never appeared; launcher output:\n{self.output()[-3000:]}")

    def kill_rank_in_step(self, step: int, fraction: float, rank: int) -> None:
        """SIGKILL of `rank`'s process `fraction` of a step's time after metrics.jsonl shows `step` (a fresh run
        directory), the step's time being the time between the lines of `step` - 1 and `step`: a random moment of
        the next step or of `step`'s checkpoint, however fast the machine."""
        processes = self.find_ranks()
        seen = [self.wait_for_step(s) for s in (step - 1, step)]
        time.sleep(fraction * (seen[1] - seen[0]))
        os.kill(processes[rank].pid, signal.SIGKILL)

    def wait_for_step(self, step: int) -> float:
        """-> the time.monotonic() at which metrics.jsonl was first seen with `step` logged."""
        deadline = time.monotonic() + TIMEOUT
        while logged_step(self.run_dir) < step:
            assert self.proc.poll() is None, f"the run ended before step {step}:\n{self.output()[-3000:]}"
            assert time.monotonic() < deadline, f"step {step} never logged"
            time.sleep(0.01)
        return time.monotonic()


def logged_step(run_dir: Path) -> int:
    """The last step of metrics.jsonl's logging lines, 0 when none."""
    path = run_dir / "metrics.jsonl"
    steps = [0]
    for text in path.read_text().splitlines() if path.is_file() else []:
        try:
            line = json.loads(text)
        except json.JSONDecodeError:  # being written
            continue
        if "event" not in line:
            steps.append(line["step"])
    return steps[-1]


def latest_step(run_dir: Path) -> int:
    """The step of the checkpoint `latest` names; 0 when there is none."""
    path = run_dir / "checkpoints" / LATEST
    return int(path.read_text().removeprefix("step")) if path.is_file() else 0


def checkpoint_files(run_dir: Path, step: int, world: int = 2, bf16: bool = False) -> list[Path]:
    """The files a complete two-rank ZeRO checkpoint of `step` holds: DeepSpeed's and our RNG states (DeepSpeed
    names the optimizer states bf16_zero_pp_rank_... in bf16)."""
    tag_dir, optim = run_dir / "checkpoints" / tag_for(step), "bf16_zero_pp_rank" if bf16 else "zero_pp_rank"
    return [
        tag_dir / "mp_rank_00_model_states.pt",
        *(tag_dir / f"{optim}_{r}_mp_rank_00_optim_states.pt" for r in range(world)),
        *(tag_dir / f"rng-rank{r}.pt" for r in range(world)),
    ]


def load_checkpoint(run_dir: Path, step: int, bf16: bool = False) -> dict[str, object]:
    """Every file of the checkpoint of `step`, loaded, by file name."""
    return {path.name: torch.load(path, weights_only=False) for path in checkpoint_files(run_dir, step, bf16=bf16)}


def differences(a, b, where: str = "") -> list[str]:
    """Where two loaded checkpoints (nested dicts, lists, tensors, objects) differ; [] when bit-identical."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return [] if a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b) else [where]
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return [] if np.array_equal(a, b) else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where} keys {sorted(map(str, a.keys() ^ b.keys()))}"]
        return [d for key in a for d in differences(a[key], b[key], f"{where}/{key}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where} length"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    if hasattr(a, "__dict__") and type(a) is type(b) and not isinstance(a, type):
        return differences(vars(a), vars(b), where)
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]
