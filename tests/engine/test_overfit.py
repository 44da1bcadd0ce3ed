"""mavil.engine.overfit: the tiny model's losses fall on one batch, in stage 1 and stage 2."""

import pytest

from mavil.engine.overfit import load_configs, overfit

from ..conftest import CONFIGS


@pytest.mark.parametrize("fusion", ["vanilla", "mbt"])
def test_tiny_model_overfits_one_batch_in_both_stages(fusion, tmp_path):
    stage1, stage2 = load_configs(
        CONFIGS / "tiny" / "stage1.json", CONFIGS / "tiny" / "stage2.json", [f"model.fusion={fusion}"]
    )
    history = overfit(stage1, stage2, steps=80, lr=2e-3, out=tmp_path)
    for stage in ("stage1", "stage2"):
        first = history[stage][0]["loss"]
        last = sum(step["loss"] for step in history[stage][-5:]) / 5
        assert last < 0.5 * first, f"{stage}: loss {first:.3f} -> {last:.3f}"
    assert (tmp_path / "stage1.safetensors").is_file() and (tmp_path / "stage2.safetensors").is_file()
