"""Batches as documented (docs/training.md, "The loop"): every micro-batch a rank trains holds train.micro_batch
clips; a rank's partial tail is left out, never trained as a smaller step."""

import json
import os
import subprocess
import sys

from ..conftest import REPO


def test_a_ranks_partial_tail_is_left_out_not_trained_as_a_smaller_step(tmp_path):
    run_dir = tmp_path / "run"  # 18 clips in micro-batches of 4: 4 whole ones, then 2 clips that are left out
    overrides = ["data.synthetic_clips=18", "train.micro_batch=4", "train.global_batch=4", "train.epochs=2",
                 "train.warmup_epochs=0", "train.record_keys=true", "train.checkpoint_every=0", "train.log_every=1",
                 f"train.output_dir={run_dir}", "model.contrastive_group=null"]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "engine/pretrain.py", "--config", "configs/tiny/stage1.json", *overrides],
        cwd=REPO,
        env={**os.environ, "MAVIL_CACHE": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "keys-rank0.jsonl").read_text().splitlines()]
    assert [len(record["keys"]) for record in records] == [4] * 8  # 4 steps per epoch, each of 4 clips
    for epoch in (0, 1):
        keys = [key for record in records if record["epoch"] == epoch for key in record["keys"]]
        assert len(set(keys)) == 16  # 16 different clips of the 18, each once
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [step for step in steps if step] == [1, 2, 3, 4, 4, 5, 6, 7, 8, 8]  # a data_health line per epoch
