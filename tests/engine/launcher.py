"""Runs the engine's entry points under the real `deepspeed` launcher, as a user would, for the engine tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ..conftest import REPO

DEEPSPEED = Path(sys.executable).with_name("deepspeed")


def launch(
    tmp: Path,
    run: str,
    *overrides: str,
    config: str = "configs/tiny/stage1.json",
    procs: int = 2,
    script: str | None = None,
) -> Path:
    """Runs the launcher to completion; -> the run directory. The synthetic sets are cached in `tmp`, the output
    goes to `tmp`/<run>.log. The script is engine/finetune.py for configs with "finetune" in their name,
    engine/pretrain.py otherwise."""
    run_dir = tmp / run
    argv, env = command(tmp, run, *overrides, config=config, procs=procs, script=script)
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    (tmp / f"{run}.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir


def command(
    tmp: Path,
    run: str,
    *overrides: str,
    config: str = "configs/tiny/stage1.json",
    procs: int = 2,
    script: str | None = None,
) -> tuple[list[str], dict]:
    """-> (argv, environment) of `launch`'s command, to run from the repository root."""
    script = script or ("engine/finetune.py" if "finetune" in config else "engine/pretrain.py")
    env = {**os.environ, "MAVIL_CACHE": str(tmp / "cache")}
    env.pop("TRITON_INTERPRET", None)
    argv = [
        str(DEEPSPEED),
        "--num_gpus",
        str(procs),
        "--master_port",
        str(29500 + os.getpid() % 1000),
        script,
        "--config",
        config,
        f"train.output_dir={tmp / run}",
        "train.log_every=1",
        *overrides,
    ]
    return argv, env


def metrics(run_dir: Path, event: str | None = None) -> list[dict]:
    """The logging-window lines of metrics.jsonl, or with `event` that event's lines (e.g. "data_health")."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if line.get("event") == event]
