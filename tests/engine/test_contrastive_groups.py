"""model.contrastive_group: InfoNCE over groups of a fixed number of clips, the same loss and gradients on 1 or 2
ranks, against one single-process computation over the same groups."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from mavil.config import ConfigError
from mavil.engine.launch import free_port
from mavil.kernels import info_nce
from mavil.model.contrastive import check_groups, grouped_info_nce

from ..conftest import tiny_config

CLIPS, GROUP, TAU = 16, 8, 0.1  # the global micro-step batch: two groups of 8


def clips():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(CLIPS, 12, generator=gen), torch.randn(CLIPS, 12, generator=gen)


def reference(x, y, symmetric):
    """Per-query losses, each query against the keys of its own group of GROUP consecutive clips (one process)."""
    rows = []
    for start in range(0, x.shape[0], GROUP):
        xs, ys = F.normalize(x[start : start + GROUP], dim=1), F.normalize(y[start : start + GROUP], dim=1)
        logits, labels = xs @ ys.T / TAU, torch.arange(GROUP)
        loss = F.cross_entropy(logits, labels, reduction="none")
        if symmetric:
            loss = (loss + F.cross_entropy(logits.T, labels, reduction="none")) / 2
        rows.append(loss)
    return torch.cat(rows)


def run_ranks(world: int, symmetric: bool, total: int):
    """Each rank holds total / world consecutive clips of the first `total`; -> the mean of the ranks' losses and
    the data-parallel gradients (the ranks' gradients averaged), as DeepSpeed would combine them."""
    x, y = (t[:total].clone().requires_grad_() for t in clips())
    if world == 1:
        loss = grouped_info_nce(x, y, TAU, symmetric, group=GROUP, micro_batch=total)
        loss.backward()
        return loss.detach(), x.grad, y.grad
    results = mp.Manager().dict()
    mp.spawn(worker, args=(free_port(), world, symmetric, total, results), nprocs=world, join=True)
    loss = sum(results[r][0] for r in range(world)) / world
    return (
        loss,
        torch.cat([results[r][1] for r in range(world)]) / world,
        torch.cat([results[r][2] for r in range(world)]) / world,
    )


def worker(rank, port, world, symmetric, total, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    x, y = clips()
    share = total // world
    mine = slice(rank * share, (rank + 1) * share)
    x_local, y_local = x[mine].clone().requires_grad_(), y[mine].clone().requires_grad_()
    loss = grouped_info_nce(x_local, y_local, TAU, symmetric, group=GROUP, micro_batch=share)
    loss.backward()
    results[rank] = (loss.detach(), x_local.grad, y_local.grad)
    dist.destroy_process_group()


@pytest.mark.parametrize("symmetric", [False, True])
def test_one_rank_splits_its_micro_batch_into_groups(symmetric):
    x, y = (t.clone().requires_grad_() for t in clips())
    loss = grouped_info_nce(x, y, TAU, symmetric, group=GROUP)
    per_query = reference(*(t.detach().clone().requires_grad_() for t in clips()), symmetric)
    torch.testing.assert_close(loss, per_query.mean())
    # not the micro-batch's 15 negatives: that is group None, the former behaviour
    assert not torch.allclose(loss, info_nce(x, y, TAU, symmetric))
    torch.testing.assert_close(grouped_info_nce(x, y, TAU, symmetric, group=None), info_nce(x, y, TAU, symmetric))


# 2 ranks of 8 clips: each splits its own group; 2 ranks of 4 clips: the two form one group, gathered
@pytest.mark.parametrize("total,symmetric", [(16, True), (8, False)])
def test_two_ranks_give_the_loss_and_gradients_of_one_process(total, symmetric):
    x, y = (t[:total].clone().requires_grad_() for t in clips())
    objective = reference(x, y, symmetric).mean()
    objective.backward()
    loss, grad_x, grad_y = run_ranks(2, symmetric, total)
    one, one_x, one_y = run_ranks(1, symmetric, total)
    for got in (loss, one):
        torch.testing.assert_close(got, objective.detach())
    for got_x, got_y in ((grad_x, grad_y), (one_x, one_y)):
        torch.testing.assert_close(got_x, x.grad)
        torch.testing.assert_close(got_y, y.grad)


def test_a_partial_last_batch_keeps_its_groups():
    x, y = clips()
    loss = grouped_info_nce(x[:11], y[:11], TAU, group=GROUP, micro_batch=CLIPS)  # groups of 8 and 3 clips
    expected = torch.cat(
        [torch.full((8,), info_nce(x[:8], y[:8], TAU).item()), torch.full((3,), info_nce(x[8:11], y[8:11], TAU).item())]
    ).mean()
    torch.testing.assert_close(loss, expected)


def test_groups_that_cannot_form_are_refused():
    check_groups(8, 64, 8)  # 8 groups per rank
    check_groups(8, 4, 2)  # pairs of ranks
    check_groups(None, 3, 5)
    with pytest.raises(
        ValueError, match="contrastive_group = 8: groups of 8 clips cannot be formed from micro-batches of 4 clips"
    ):
        check_groups(8, 4, 3)  # 3 ranks of 4 clips: no whole groups of 8
    with pytest.raises(ValueError, match="micro-batches of 12 clips"):
        check_groups(8, 12, 1)
    with pytest.raises(ConfigError, match="contrastive_group = 8: excludes model.global_negatives"):
        tiny_config("model.contrastive_group=8", "model.global_negatives=true")
    with pytest.raises(ConfigError, match="must be >= 2"):
        tiny_config("model.contrastive_group=1")


def test_the_model_contrasts_within_groups():
    cfg = tiny_config("model.beta=0")  # tiny: contrastive_group null, micro-batch 8: the micro-batch, as before
    from mavil.model import MAViL

    losses = {}
    for group in (None, 8, 4):
        torch.manual_seed(0)
        model = MAViL(tiny_config("model.beta=0", f"model.contrastive_group={group or 'null'}").model)
        torch.manual_seed(1)
        audio = torch.randn(8, 1, cfg.model.audio_frames, cfg.model.audio_mel_bins)
        video = torch.randn(8, 3, cfg.model.video_frames, cfg.model.video_size, cfg.model.video_size)
        losses[group] = model(audio, video)["loss_inter"].item()
    assert losses[None] == losses[8] != losses[4]  # a group of the whole micro-batch is the micro-batch
