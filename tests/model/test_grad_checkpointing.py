"""Activation checkpointing (model.grad_checkpointing): per transformer block, the same losses and gradients as
without it, drop path included (the RNG state is restored for the recomputation), less activation memory, and
only while training with grad enabled; under torch.compile too."""

from __future__ import annotations

import pytest
import torch

from bench.train import activation_bytes
from mavil.model import vit
from mavil.model.classifier import Classifier
from mavil.model.vit import Block, resolve_attention, set_grad_checkpointing

from .test_compile import assert_same, inputs, losses_and_grads, tiny_model


def blocks(model):
    return [module for module in model.modules() if isinstance(module, Block)]


@pytest.mark.parametrize("stage", [1, 2])
def test_the_config_turns_it_on_for_every_block_of_encoders_fusion_and_decoders(stage):
    model = tiny_model(stage, grad_checkpointing=True)
    assert len(blocks(model)) == 2 * 2 + 2 + 2 * 2  # two encoders, fusion, two decoders; the teacher is no submodule
    assert all(block.grad_checkpointing for block in blocks(model))
    assert not any(block.grad_checkpointing for block in blocks(tiny_model(stage)))


@pytest.mark.parametrize("stage, fusion", [(1, "vanilla"), (1, "mbt"), (2, "vanilla")])
def test_the_same_losses_and_gradients_with_drop_path(stage, fusion):
    model = tiny_model(stage, drop_path=0.3, fusion=fusion)
    audio, video = inputs(model, batch=4)
    plain = losses_and_grads(model, model, audio, video)
    set_grad_checkpointing(model, True)
    checkpointed = losses_and_grads(model, model, audio, video)
    assert_same(plain, checkpointed, tol=1e-6)
    other_draws = losses_and_grads(model, model, audio, video, seed=5)  # drop path draws something: seeds matter
    assert not torch.allclose(other_draws[0]["loss"], plain[0]["loss"])


def test_less_activation_memory():
    model = tiny_model(1)
    audio, video = inputs(model, batch=4)
    without = activation_bytes(model, audio, video)
    with_checkpointing = activation_bytes(set_grad_checkpointing(model, True), audio, video)
    assert with_checkpointing < 0.6 * without, (with_checkpointing, without)


def test_only_while_training_with_grad(monkeypatch):
    calls = []
    monkeypatch.setattr(vit, "checkpoint", lambda fn, *args, **kwargs: calls.append(kwargs) or fn(*args))
    model = tiny_model(1, grad_checkpointing=True)
    audio, video = inputs(model)
    with torch.no_grad():
        model(audio, video)
    model.eval()(audio, video)
    assert calls == []
    model.train()(audio, video)
    assert len(calls) == len(blocks(model)) + 2 * 2  # the intra-modal loss encodes a second view
    assert all(kwargs == {"use_reentrant": False} for kwargs in calls)


def test_the_classifier_follows_the_config():
    model = Classifier(tiny_model(1, grad_checkpointing=True).cfg, "audio+video", num_classes=3)
    assert blocks(model) and all(block.grad_checkpointing for block in blocks(model))


def test_under_torch_compile_the_eager_losses_and_gradients():
    model = tiny_model(1, drop_path=0.3)
    audio, video = inputs(model)
    plain = losses_and_grads(model, model, audio, video)
    set_grad_checkpointing(model, True)
    resolve_attention(model, "cpu", torch.float32)
    model.compile(backend="aot_eager", fullgraph=True)
    assert_same(plain, losses_and_grads(model, model, audio, video))
