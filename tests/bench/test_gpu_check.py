"""The one-shot GPU check runs end to end on the CPU in its dry mode, so it cannot rot before a GPU is lent."""

import json
import subprocess

import pytest
import torch

from tests.conftest import REPO


def gpu_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "bench/gpu_check.sh", *args], cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is the CPU's stand-in for the real check")
def test_dry_run_runs_every_part_and_writes_results(tmp_path):
    done = gpu_check("--dry-run", "--results", str(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "gpu-check-cpu.json").read_text())
    assert [(p["part"], p["status"]) for p in summary["parts"]] == [("tests", "ok"), ("kernels", "ok"), ("train", "ok")]
    assert summary["budget_s"] <= 480
    kernels = json.loads((tmp_path / "kernels-cpu.json").read_text())
    assert {case["op"] for case in kernels["cases"]} == {"masked_gather", "masked_restore", "masked_mse", "info_nce"}
    train = json.loads((tmp_path / "train-cpu.json").read_text())
    assert {record["stage"] for record in train["records"]} == {1, 2}
    log = (tmp_path / "gpu-check-cpu.log").read_text()
    assert "GPU check done: 3 of 3 parts ok" in log


def test_gpu_budgets_fit_in_eight_minutes():
    from bench.gpu_check import parts

    assert sum(part.budget_s for part in parts(dry=False)) < 8 * 60


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_without_a_gpu_the_real_check_is_refused_in_one_line(tmp_path):
    done = gpu_check("--results", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: no CUDA device visible to torch")
