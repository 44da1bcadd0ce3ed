"""mavil.model.weights: stage 2 learns from a frozen teacher read from a weights file; weights round-trip."""

import pytest
import torch

from mavil.config import ConfigError, load_config
from mavil.engine.overfit import example_batch
from mavil.engine.run import plan_pretraining
from mavil.model import MAViL, build_model, load_teacher, read_weights, save_weights

from ..conftest import CONFIGS, tiny_config


def stage2_config(teacher_path, *overrides):
    return load_config(CONFIGS / "tiny" / "stage2.json", [f"model.teacher={teacher_path}", *overrides])


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "stage1.safetensors"
    return save_weights(MAViL(tiny_config().model), path)


def test_stage2_trains_every_student_parameter_and_never_the_teacher(teacher_file):
    cfg = stage2_config(teacher_file)
    torch.manual_seed(1)
    model = build_model(cfg.model)
    teacher = model.teacher
    before = {name: p.clone() for name, p in teacher.state_dict().items()}
    assert all(not p.requires_grad for p in teacher.parameters()) and not teacher.training
    # the teacher is invisible to optimisers and checkpoints
    assert not any(name.startswith("teacher") for name, _ in model.named_parameters())
    assert not any(name.startswith("teacher") for name in model.state_dict())
    batch = example_batch(cfg.model, 4, 0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        optimizer.zero_grad()
        model(batch["audio"], batch["video"])["loss"].backward()
        missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, f"no gradient reaches {missing}"
        optimizer.step()
    assert all(p.grad is None for p in teacher.parameters())
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, before[name]), f"teacher {name} changed"


def test_stage2_targets_are_the_teachers_fusion_outputs_on_the_full_view(teacher_file):
    cfg = stage2_config(teacher_file)
    model = build_model(cfg.model)
    batch = example_batch(cfg.model, 2, 3)
    a_target, v_target = model.targets(batch["audio"], batch["video"])
    reference = load_teacher(teacher_file)
    a_um, v_um = reference.encode(*reference.embed(batch["audio"], batch["video"]))
    a_mm, v_mm = reference.fusion(a_um, v_um)
    torch.testing.assert_close(a_target, a_mm[:, 1:])
    torch.testing.assert_close(v_target, v_mm[:, 1:])
    assert a_target.shape == (2, 96, 64) and not a_target.requires_grad


def test_teacher_follows_the_student_across_dtypes(teacher_file):
    model = build_model(stage2_config(teacher_file).model)
    model.to(torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.teacher.parameters())


def test_weights_round_trip(tmp_path, teacher_file):
    state, raw_cfg = read_weights(teacher_file)
    assert raw_cfg["encoder_dim"] == 64 and all(t.dtype == torch.float32 for t in state.values())
    torch.manual_seed(0)
    model = MAViL(tiny_config().model)
    model.load_state_dict(state)
    path = save_weights(model, tmp_path / "again.safetensors")
    again, _ = read_weights(path)
    assert all(torch.equal(again[k], state[k]) for k in state)


def test_teacher_problems_are_named(tmp_path, teacher_file):
    not_weights = tmp_path / "junk.safetensors"
    not_weights.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="junk.safetensors: cannot read"):
        build_model(stage2_config(not_weights).model)
    other_grid = stage2_config(teacher_file, "model.audio_frames=256").model
    with pytest.raises(ValueError, match="teacher audio_encoder: input .* grid"):
        build_model(other_grid)
    with pytest.raises(ConfigError, match="model.teacher"):  # the run plan's check: the schema reads no file
        plan_pretraining(stage2_config(tmp_path / "absent.safetensors"), 1)
