"""Runs the engine's entry points under the real `deepspeed` launcher, as a user would, for the engine tests."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ..conftest import REPO

DEEPSPEED = Path(sys.executable).with_name("deepspeed")


def launch(tmp: Path, run: str, *overrides: str, config: str = "configs/tiny/stage1.json", procs: int = 2,
           script: str | None = None) -> Path:
    """Runs the launcher to completion; -> the run directory. The synthetic sets are cached in `tmp`.
    The script is engine/finetune.py for configs with "finetune" in their name, engine/pretrain.py otherwise."""
    run_dir = tmp / run
    script = script or ("engine/finetune.py" if "finetune" in config else "engine/pretrain.py")
    env = {**os.environ, "MAVIL_CACHE": str(tmp / "cache")}
    env.pop("TRITON_INTERPRET", None)
    command = [str(DEEPSPEED), "--num_gpus", str(procs), "--master_port", str(29500 + os.getpid() % 1000), script,
               "--config", config, f"train.output_dir={run_dir}", "train.log_every=1", *overrides]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
