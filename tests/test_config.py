import pytest

from mavil.config import ConfigError, apply_overrides, config_from_dict, load_config, parse_override

from .conftest import CONFIGS


def test_stage1_config_carries_the_paper_settings():
    cfg = load_config(CONFIGS / "stage1.json")
    m, t, d = cfg.model, cfg.train, cfg.data
    assert (m.stage, m.fusion, m.fusion_depth, m.mask_ratio) == (1, "vanilla", 2, 0.8)
    assert (m.encoder_dim, m.encoder_depth, m.encoder_heads) == (768, 12, 12)
    assert (m.decoder_dim, m.decoder_depth, m.decoder_heads) == (512, 8, 16)
    assert (m.audio_frames, m.audio_mel_bins, m.audio_patch) == (1024, 128, [16, 16])
    assert (m.video_frames, m.video_size, m.video_patch) == (8, 224, [2, 16, 16])
    assert (m.alpha, m.tau_inter, m.beta, m.tau_intra) == (0.1, 0.1, 0.01, 1.0)
    assert m.norm_pix_loss and not m.contrastive_symmetric and m.drop_path == 0.0
    assert (t.global_batch, t.epochs, t.warmup_epochs, t.lr_base, t.min_lr) == (512, 20, 4, 2e-4, 1e-6)
    assert (t.weight_decay, t.betas) == (1e-5, [0.9, 0.95])
    assert t.lr == pytest.approx(4e-4)  # lr_eff = lr_base * 512 / 256
    assert (d.audio_mean, d.audio_std, d.crop_scale, d.flip_prob) == (-4.2677, 4.569, [0.2, 1.0], 0.5)


def test_stage2_config_differs_from_stage1_only_in_stage_teacher_targets_and_output():
    one = load_config(CONFIGS / "stage1.json").to_dict()
    two = load_config(CONFIGS / "stage2.json").to_dict()  # the schema reads no file: the teacher need not exist
    assert (two["model"]["stage"], two["model"]["norm_pix_loss"]) == (2, False)
    for section in ("model", "train"):
        for key in ("stage", "teacher", "norm_pix_loss", "output_dir"):
            one[section].pop(key, None), two[section].pop(key, None)
    assert one == two


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.json")), ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_every_shipped_config_loads(path):
    load_config(path)


def test_overrides_parse_json_values_and_reach_nested_keys():
    raw = apply_overrides(
        {"model": {}},
        ["model.mask_ratio=0.7", "model.fusion=mbt", "deepspeed.zero_optimization.stage=1", "train.betas=[0.9, 0.99]"],
    )
    assert raw == {
        "model": {"mask_ratio": 0.7, "fusion": "mbt"},
        "deepspeed": {"zero_optimization": {"stage": 1}},
        "train": {"betas": [0.9, 0.99]},
    }
    cfg = config_from_dict(raw)
    assert (cfg.model.mask_ratio, cfg.model.fusion, cfg.train.betas) == (0.7, "mbt", [0.9, 0.99])


def test_an_int_is_accepted_where_a_float_is_expected():
    assert config_from_dict({"model": {"tau_intra": 1}}).model.tau_intra == 1.0


BAD_CONFIGS = [
    # (what is wrong, the config or override, text the message must contain)
    ("unknown section", {"optimizer": {}}, "unknown section 'optimizer'"),
    ("unknown model key", {"model": {"mask_ration": 0.8}}, "model.mask_ration"),
    ("unknown train key", {"train": {"learning_rate": 1e-3}}, "train.learning_rate"),
    ("string for int", {"model": {"encoder_dim": "768"}}, "model.encoder_dim"),
    ("bool for int", {"model": {"encoder_depth": True}}, "model.encoder_depth"),
    ("int for bool", {"model": {"norm_pix_loss": 1}}, "model.norm_pix_loss"),
    ("mask ratio 1.5", {"model": {"mask_ratio": 1.5}}, "model.mask_ratio = 1.5"),
    ("mask ratio 0", {"model": {"mask_ratio": 0.0}}, "model.mask_ratio = 0.0"),
    ("audio patch does not divide", {"model": {"audio_patch": [16, 15]}}, "model.audio_patch = [16, 15]"),
    ("video tubelet does not divide", {"model": {"video_patch": [3, 16, 16]}}, "model.video_patch = [3, 16, 16]"),
    ("heads do not divide dim", {"model": {"encoder_heads": 7}}, "model.encoder_heads = 7"),
    ("unknown fusion", {"model": {"fusion": "concat"}}, 'model.fusion = "concat"'),
    ("unknown attention", {"model": {"attention": "flash"}}, 'model.attention = "flash"'),
    ("zero temperature", {"model": {"tau_inter": 0}}, "model.tau_inter = 0"),
    ("negative weight", {"model": {"alpha": -0.1}}, "model.alpha = -0.1"),
    ("stage 3", {"model": {"stage": 3}}, "model.stage = 3"),
    ("stage 2 without teacher", {"model": {"stage": 2}}, "model.teacher = null"),
    ("two views do not fit", {"model": {"mask_ratio": 0.4}}, "model.mask_ratio = 0.4"),
    ("patch list too short", {"model": {"video_patch": [16, 16]}}, "model.video_patch"),
    ("micro batch does not divide", {"train": {"global_batch": 512, "micro_batch": 24}}, "train.micro_batch = 24"),
    ("warm-up longer than training", {"train": {"epochs": 2, "warmup_epochs": 4}}, "train.warmup_epochs = 4"),
    ("negative learning rate", {"train": {"lr_base": -1e-4}}, "train.lr_base"),
    ("betas out of range", {"train": {"betas": [0.9, 1.0]}}, "train.betas"),
    ("crop scale reversed", {"data": {"crop_scale": [1.0, 0.2]}}, "data.crop_scale"),
    ("flip probability 2", {"data": {"flip_prob": 2}}, "data.flip_prob = 2"),
    ("section not an object", {"model": [1, 2]}, "section 'model'"),
    ("deepspeed not an object", {"deepspeed": "zero2"}, "section 'deepspeed'"),
]


@pytest.mark.parametrize("why, raw, expected", BAD_CONFIGS, ids=[case[0] for case in BAD_CONFIGS])
def test_bad_config_is_refused_naming_the_key(why, raw, expected):
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw, source="bad.json")
    assert expected in str(err.value)
    assert str(err.value).startswith("bad.json: ")


def test_bad_file_is_refused_naming_file_and_position(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"model": {"mask_ratio": 0.8,}}')
    with pytest.raises(ConfigError, match=r"broken.json: invalid JSON at line 1"):
        load_config(broken)
    with pytest.raises(ConfigError, match=r"missing.json: cannot read"):
        load_config(tmp_path / "missing.json")


@pytest.mark.parametrize("text", ["model.mask_ratio", "mask_ratio=0.7", ".x=1"])
def test_malformed_override_is_refused(text):
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_override(text)


def test_override_of_unknown_key_is_refused():
    with pytest.raises(ConfigError, match="unknown key 'model.depth'"):
        load_config(CONFIGS / "stage1.json", ["model.depth=2"])


TABLE_10 = {  # lr_base, warm-up, epochs, batch, weighted, noise, SpecAug t/f, mixup, loss, mean, std
    "as2m": (2e-4, 20, 100, 512, True, False, (192, 48), 0.5, "bce", -4.268, 4.569),
    "as20k": (1e-3, 4, 60, 64, False, False, (192, 48), 0.5, "bce", -4.268, 4.569),
    "vggsound": (2e-4, 4, 60, 256, True, True, (192, 48), 0.5, "bce", -5.189, 3.260),
    "esc50": (1e-3, 4, 60, 64, False, False, (96, 24), 0.0, "ce", -6.627, 5.359),
    "spc1": (1e-3, 1, 10, 256, False, True, (48, 48), 0.5, "bce", -6.702, 5.448),
}


@pytest.mark.parametrize("name", sorted(TABLE_10))
def test_finetune_configs_carry_table_10(name):
    cfg = load_config(CONFIGS / "finetune" / f"{name}.json")
    t, ft = cfg.train, cfg.finetune
    actual = (
        t.lr_base,
        t.warmup_epochs,
        t.epochs,
        t.global_batch,
        ft.weighted_sampling,
        ft.noise,
        (ft.specaug_time, ft.specaug_freq),
        ft.mixup,
        ft.loss,
        cfg.data.audio_mean,
        cfg.data.audio_std,
    )
    assert actual == TABLE_10[name]
    assert (t.weight_decay, t.betas, t.min_lr, cfg.model.drop_path) == (1e-5, [0.9, 0.95], 1e-6, 0.1)
    assert ft.sampling_size == 200_000 and (ft.mask_time, ft.mask_freq, ft.mask_video) == (0.2, 0.2, 0.2)
    assert ft.balance_fraction == (0.5 if name == "spc1" else 0.0)  # Table 10's *: SPC's classes repeated
