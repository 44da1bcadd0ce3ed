"""pytest-benchmark entry points for training: `pytest tests/bench --benchmark-enable --benchmark-only` times them;
in the test run (pytest.ini's --benchmark-disable) each runs once, untimed. Speed is measured by
`python -m bench.train`.

One training step of the tiny model (forward, backward, AdamW step) on random tensors already on the
device, stage 1 and stage 2 (a random in-memory teacher), and one batch of the DALI pipeline from the
synthetic set at the tiny config's sizes; on the paths MAVIL_KERNELS and the config select (the engine's).
bench/train.py measures the same against the reference path, with rates, MFU and memory.
"""

import pytest
import torch

from mavil.config import load_config

from bench.common import synchronize
from bench.train import loader_batches, model_for, random_batches, synthetic_root, training_step

from ..conftest import CONFIGS

CONFIG = CONFIGS / "tiny" / "stage1.json"
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPE = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32
BATCH = 8


@pytest.fixture(scope="module")
def cfg():
    return load_config(CONFIG)


@pytest.mark.parametrize("stage", [1, 2])
def test_training_step(benchmark, cfg, stage):
    model = model_for(cfg.model, stage, cfg.model.attention).to(DEVICE, DTYPE)
    step = training_step(model, cfg)
    audio, video = next(random_batches(cfg.model, BATCH, DEVICE, DTYPE))

    def one_step():
        step(audio, video)
        synchronize(DEVICE)

    benchmark(one_step)


def test_data_pipeline_batch(benchmark, cfg):
    batches = loader_batches("dali", cfg, synthetic_root(cfg, 64), BATCH, max(cfg.data.num_workers, 1), DEVICE, DTYPE)
    next(batches)  # start-up: pipeline build, shuffle buffer
    benchmark(lambda: next(batches))
    batches.close()
