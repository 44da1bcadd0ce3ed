"""The run plan (`mavil.engine.run`): what it resolves from a config once, and the file checks it took over from the
config schema."""

import pytest

from mavil.config import ConfigError, load_config
from mavil.data.health import Windows
from mavil.engine.run import deepspeed_config, plan_finetuning, plan_pretraining
from mavil.seeds import seed_for

from ..conftest import CONFIGS, tiny_config


def test_a_pretraining_plan_resolves_deepspeed_loader_windows_and_seeds_once():
    plan = plan_pretraining(tiny_config("train.device=cpu"), world=2)
    cfg = plan.cfg
    assert plan.deepspeed["train_batch_size"] == cfg.train.global_batch
    assert plan.deepspeed["gradient_accumulation_steps"] == cfg.train.global_batch // (cfg.train.micro_batch * 2)
    assert plan.deepspeed["zero_allow_untested_optimizer"] is True  # our AdamW with its parameter groups
    spec = plan.train_spec
    assert (spec.batch_size, spec.audio_frames, spec.mel_bins) == (cfg.train.micro_batch, 384, 64)
    assert (spec.video_frames, spec.video_size, spec.train, spec.gain_db) == (4, 64, True, 0.0)
    assert (spec.audio_mean, spec.audio_std, spec.crop_scale) == (cfg.data.audio_mean, cfg.data.audio_std, (0.2, 1.0))
    assert plan.windows == Windows(16000, 384, 4)
    assert plan.eval_set is None and plan.eval_spec is None
    assert plan.train_set.root is None and plan.train_set.synthetic["clips"] == cfg.data.synthetic_clips
    assert [plan.seed(index) for index in (0, 1, 5)] == [seed_for(cfg.train.seed, i) for i in (0, 1, 5)]


def test_a_finetuning_plan_adds_the_evaluation_set_and_the_magnitude_augmentation():
    plan = plan_finetuning(load_config(CONFIGS / "tiny" / "finetune.json", ["finetune.magnitude_db=3"]), world=1)
    ft = plan.cfg.finetune
    assert plan.train_spec.gain_db == 3.0 and plan.train_spec.train
    assert not plan.eval_spec.train and plan.eval_spec.eval_clips == 1  # evaluate asks for its windows per pass
    assert plan.eval_set.root is None
    assert plan.eval_set.synthetic["seed"] == ft.eval_synthetic_seed
    assert plan.eval_set.synthetic["clips"] == ft.eval_synthetic_clips


def test_seeds_follow_one_rule():
    assert [seed_for(3, index) for index in (0, 1, 999)] == [3000, 3001, 3999]


@pytest.mark.parametrize(
    "entry, overrides, named",
    [
        (plan_pretraining, ["model.stage=2", "model.teacher=/no/such/file.safetensors"], "model.teacher"),
        (plan_pretraining, ["data.root=/no/such/shards"], "data.root"),
        (plan_finetuning, ["finetune.init=/no/such/file.safetensors"], "finetune.init"),
        (plan_finetuning, ["finetune.eval_root=/no/such/shards"], "finetune.eval_root"),
    ],
)
def test_files_the_config_names_are_the_plans_to_check_not_the_schemas(entry, overrides, named):
    config = CONFIGS / "tiny" / ("finetune.json" if entry is plan_finetuning else "stage1.json")
    cfg = load_config(config, ["train.device=cpu", *overrides])  # the schema reads no file
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")) as refused:
        entry(cfg, 1)
    assert "no such file" in str(refused.value) or "no manifest.json there" in str(refused.value)


@pytest.mark.parametrize("world, accumulation", [(1, 64), (2, 32), (64, 1)])
def test_deepspeed_batch_fields_derive_from_train(world, accumulation):
    ds = deepspeed_config(load_config(CONFIGS / "stage1.json"), world)
    assert ds["train_batch_size"] == 512
    assert ds["train_micro_batch_size_per_gpu"] == 8
    assert ds["gradient_accumulation_steps"] == accumulation
    assert ds["zero_optimization"]["stage"] == 2


def test_deepspeed_batch_that_cannot_split_over_ranks_is_refused():
    with pytest.raises(ConfigError, match="not a multiple of train.micro_batch"):
        deepspeed_config(load_config(CONFIGS / "stage1.json"), 3)
    cfg = load_config(CONFIGS / "stage1.json", ["deepspeed.train_batch_size=256"])
    with pytest.raises(ConfigError, match="deepspeed.train_batch_size = 256 disagrees"):
        deepspeed_config(cfg, 1)
