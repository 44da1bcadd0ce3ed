"""The tiny model gives the same loss and gradients on the reference and the Triton path."""

import pytest
import torch

from mavil.engine.overfit import example_batch
from mavil.model import MAViL

from ..conftest import tiny_config
from .conftest import DEVICE


@pytest.mark.parametrize("fusion", ["vanilla", "mbt"])
def test_tiny_model_loss_and_gradients_match_across_paths(monkeypatch, fusion):
    cfg = tiny_config(f"model.fusion={fusion}")
    torch.manual_seed(0)
    model = MAViL(cfg.model).to(DEVICE)
    batch = {k: v.to(DEVICE) for k, v in example_batch(cfg.model, 4, 0).items()}

    def run(mode):
        monkeypatch.setenv("MAVIL_KERNELS", mode)
        model.zero_grad()
        torch.manual_seed(1)  # the same masks on both paths
        losses = model(batch["audio"], batch["video"])
        losses["loss"].backward()
        return losses, {name: p.grad.clone() for name, p in model.named_parameters()}

    ref_losses, ref_grads = run("reference")
    tri_losses, tri_grads = run("triton")
    for name in ref_losses:
        torch.testing.assert_close(tri_losses[name], ref_losses[name], rtol=1e-5, atol=1e-6)
    for name in ref_grads:
        torch.testing.assert_close(tri_grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
