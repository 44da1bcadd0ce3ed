"""torch.compile of the pre-training model: one graph (fullgraph=True), the eager losses and gradients.

On the CPU the kernels run their PyTorch references (MAVIL_KERNELS=auto on CPU tensors) and the backend is
aot_eager: Dynamo and AOTAutograd trace forward and backward exactly as for inductor, without inductor's C++
code generation (a minute per model on 2 cores). The Triton path can be traced only on a GPU: under
TRITON_INTERPRET=1 a kernel is a Python interpreter, not a Triton kernel Dynamo can capture, so that test is
marked `gpu`. The random masks: the RNG seeded identically before the eager and the compiled call.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from mavil.config import model_config_from_dict
from mavil.model import MAViL, Backbone
from mavil.model import attention
from mavil.model.vit import resolve_attention

from mavil.engine.launch import free_port

from ..conftest import CONFIGS, REPO

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def tiny_model(stage: int, **values) -> MAViL:
    """The model section of configs/tiny/stage<stage>.json with `values` replaced; stage 2 with a random
    stage-1 backbone as its teacher."""
    section = json.loads((CONFIGS / "tiny" / f"stage{stage}.json").read_text())["model"]
    cfg = model_config_from_dict({**section, **values, "stage": 1, "teacher": None})  # checked as stage 1: no file
    torch.manual_seed(0)
    if stage == 1:
        return MAViL(cfg)
    teacher = Backbone(cfg)  # a random stage-1 backbone, in memory
    return MAViL(dataclasses.replace(cfg, stage=2), teacher=teacher)


def inputs(model: MAViL, batch: int = 2, device: str = "cpu"):
    cfg, gen = model.cfg, torch.Generator().manual_seed(1)
    audio = torch.randn(batch, 1, cfg.audio_frames, cfg.audio_mel_bins, generator=gen)
    video = torch.randn(batch, 3, cfg.video_frames, cfg.video_size, cfg.video_size, generator=gen)
    return audio.to(device), video.to(device)


def losses_and_grads(call, model: MAViL, audio, video, seed: int = 3):
    """One forward (masks drawn after seeding) and the gradients of its loss for every trainable parameter."""
    torch.manual_seed(seed)
    out = call(audio, video)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out["loss"], params, allow_unused=True)
    return {k: v.detach() for k, v in out.items()}, grads


def assert_same(eager, compiled, tol=1e-4):
    (out_e, grads_e), (out_c, grads_c) = eager, compiled
    assert out_e.keys() == out_c.keys()
    for name in out_e:
        torch.testing.assert_close(out_c[name], out_e[name], rtol=tol, atol=tol, msg=name)
    for index, (g_e, g_c) in enumerate(zip(grads_e, grads_c)):
        assert (g_e is None) == (g_c is None), index
        if g_e is not None:
            torch.testing.assert_close(g_c, g_e, rtol=tol, atol=tol)


@pytest.mark.parametrize("stage", [1, 2])
def test_compiles_as_one_graph_and_gives_the_eager_losses_and_gradients(stage, monkeypatch):
    model = tiny_model(stage, drop_path=0.1)
    audio, video = inputs(model)
    keys = list(model.state_dict())
    assert resolve_attention(model, "cpu", torch.float32) == {"sdpa"}
    eager = losses_and_grads(model.forward, model, audio, video)
    called = []
    monkeypatch.setattr(attention, "resolve_backend", lambda *args: called.append(args))  # must not run traced
    model.compile(backend="aot_eager", fullgraph=True)  # in place: no graph break allowed, or this fails
    compiled = losses_and_grads(model, model, audio, video)
    assert_same(eager, compiled)
    assert called == [] and list(model.state_dict()) == keys  # state_dict keys as before: checkpoints unchanged
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    losses_and_grads(model, model, audio, video, seed=4)  # a new step: new masks, the same graph
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


def test_the_model_traces_as_one_graph_without_graph_breaks():
    model = tiny_model(1, fusion="mbt")
    resolve_attention(model, "cpu", torch.float32)
    explained = torch._dynamo.explain(model)(*inputs(model))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_an_unresolved_attention_is_resolved_at_the_first_eager_call_not_in_the_trace():
    model = tiny_model(1)
    assert all(module.attend is None for module in model.modules() if hasattr(module, "attend"))
    model(*inputs(model))  # eager: each attention resolves once here
    assert {module.attend for module in model.modules() if hasattr(module, "attend")} == {attention.attention_sdpa}
    model.to(torch.float64)  # another dtype: resolved again at the next call
    assert all(module.attend is None for module in model.modules() if hasattr(module, "attend"))


@pytest.mark.gpu
@pytest.mark.parametrize("stage", [1, 2])
def test_the_triton_path_traces_as_one_graph_on_cuda(stage, monkeypatch):
    """MAVIL_KERNELS=triton: the kernels captured as user-defined Triton kernels, fullgraph, the eager results."""
    monkeypatch.setenv("MAVIL_KERNELS", "triton")
    model = tiny_model(stage).to(DEVICE)
    audio, video = inputs(model, device=DEVICE)
    resolve_attention(model, DEVICE, torch.float32)
    eager = losses_and_grads(model.forward, model, audio, video)
    explained = torch._dynamo.explain(model.forward)(audio, video)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    model.compile(backend="aot_eager", fullgraph=True)
    assert_same(eager, losses_and_grads(model, model, audio, video), tol=1e-3)


ENGINE = """
import os, sys, tempfile, torch
import deepspeed
from pathlib import Path
from deepspeed.runtime.engine import DeepSpeedEngine
from mavil.config import load_config
from mavil.engine.optim import param_groups
from mavil.engine.run import plan_pretraining
from mavil.engine.trainer import Trainer
from mavil.model import MAViL

# inductor is a minute per model on two cores; what is tested here is the wrapping, so DeepSpeed's default backend
# (bound when DeepSpeed is imported) becomes aot_eager
DeepSpeedEngine.compile.__defaults__ = ("aot_eager", *DeepSpeedEngine.compile.__defaults__[1:])

class Plain(Trainer):
    def param_groups(self, model):
        return param_groups(model, self.cfg.train.weight_decay)

os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
deepspeed.init_distributed(dist_backend="gloo", verbose=False)  # one process on the CPU
rank, world, device = 0, 1, torch.device("cpu")
cfg = load_config("configs/tiny/stage1.json", ["train.compile=true", "train.global_batch=2", "train.micro_batch=2"])
trainer = object.__new__(Plain)  # the trainer's DeepSpeed set-up alone: no data, no run directory
trainer.cfg, trainer.rank, trainer.world, trainer.device = cfg, rank, world, device
trainer.plan = plan_pretraining(cfg, world)
torch.manual_seed(0)
model = MAViL(cfg.model)
keys = list(model.state_dict())
eager = MAViL(cfg.model)
eager.load_state_dict(model.state_dict())
engine = trainer._deepspeed(model)
assert engine.is_compiled and engine.module is model, "compiled in place"
m = cfg.model
audio, video = torch.randn(2, 1, m.audio_frames, m.audio_mel_bins), torch.randn(2, 3, 4, 64, 64)
for step in range(2):
    torch.manual_seed(step)
    out = engine(audio, video)
    engine.backward(out["loss"])
    engine.step()
    if step == 0:
        torch.manual_seed(step)
        torch.testing.assert_close(out["loss"], eager(audio, video)["loss"], rtol=1e-5, atol=1e-5)
assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1, dict(torch._dynamo.utils.counters["stats"])
with tempfile.TemporaryDirectory() as tmp:
    engine.save_checkpoint(tmp, tag="t")
    saved = torch.load(Path(tmp) / "t" / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    assert list(saved) == keys, "checkpoint keys as without compile"
print("ok")
"""


def test_train_compile_compiles_the_deepspeed_engine_module_in_place():
    """train.compile through the trainer's DeepSpeed set-up: the module compiled in place, one graph over steps,
    the eager loss, checkpoints with the state_dict keys of an uncompiled model."""
    pytest.importorskip("deepspeed")
    result = subprocess.run(
        [sys.executable, "-c", ENGINE],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MASTER_PORT": str(free_port())},
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), (result.stdout + result.stderr)[-4000:]
