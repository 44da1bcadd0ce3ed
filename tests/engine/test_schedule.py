import math

import pytest

from mavil.config import load_config
from mavil.engine.run import deepspeed_config
from mavil.engine.schedule import lr_at

from ..conftest import CONFIGS


@pytest.mark.parametrize("world, accumulation", [(1, 64), (2, 32), (64, 1)])
def test_effective_batch_and_lr_follow_the_formulas_at_any_rank_count(world, accumulation):
    cfg = load_config(CONFIGS / "stage1.json")
    ds = deepspeed_config(cfg, world)
    assert ds["train_micro_batch_size_per_gpu"] * world * ds["gradient_accumulation_steps"] == 512
    assert ds["gradient_accumulation_steps"] == accumulation
    assert lr_at(cfg.train.warmup_epochs, cfg.train) == pytest.approx(2e-4 * 512 / 256)  # peak = lr_eff, whatever world


def test_warmup_then_half_cycle_cosine():
    train = load_config(CONFIGS / "stage1.json").train  # 20 epochs, 4 warm-up, lr_eff 4e-4, min 1e-6
    assert lr_at(0.0, train) == 0.0
    assert lr_at(1.0, train) == pytest.approx(1e-4)  # linear: a quarter of the way up
    assert lr_at(2.5, train) == pytest.approx(2.5e-4)
    assert lr_at(12.0, train) == pytest.approx(1e-6 + (4e-4 - 1e-6) * 0.5)  # cosine midpoint
    assert lr_at(16.0, train) == pytest.approx(1e-6 + (4e-4 - 1e-6) * 0.5 * (1 + math.cos(math.pi * 0.75)))
    assert lr_at(20.0, train) == pytest.approx(1e-6)
    values = [lr_at(e / 10, train) for e in range(201)]
    peak = values.index(max(values))
    assert peak == 40 and all(a <= b for a, b in zip(values[:peak], values[1 : peak + 1]))
    assert all(a >= b for a, b in zip(values[peak:], values[peak + 1 :]))
