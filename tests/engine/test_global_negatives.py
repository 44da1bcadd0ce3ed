"""Negatives gathered across data-parallel ranks: the loss of the whole global batch, with its gradient."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from mavil.engine.launch import free_port
from mavil.kernels import info_nce, info_nce_global

ROWS = (5, 3)  # rank 0 holds 5 queries, rank 1 holds 3 (a partial last batch)


def full_batch():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(sum(ROWS), 16, generator=gen), torch.randn(sum(ROWS), 16, generator=gen)


def worker(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    x, y = full_batch()
    start = sum(ROWS[:rank])
    mine = slice(start, start + ROWS[rank])
    x_local, y_local = x[mine].clone().requires_grad_(), y[mine].clone().requires_grad_()
    loss = info_nce_global(x_local, y_local, 0.1, symmetric=True)
    loss.backward()
    results[rank] = (loss.detach(), x_local.grad, y_local.grad)
    dist.destroy_process_group()


def test_world_of_one_is_the_local_loss():
    x, y = full_batch()
    torch.testing.assert_close(info_nce_global(x, y, 0.1), info_nce(x, y, 0.1))


def test_two_ranks_give_the_loss_and_gradients_of_the_concatenated_batch():
    results = mp.Manager().dict()
    mp.spawn(worker, args=(free_port(), results), nprocs=2, join=True)
    x, y = (t.clone().requires_grad_() for t in full_batch())
    xn, yn = F.normalize(x, dim=1), F.normalize(y, dim=1)
    logits = xn @ yn.T / 0.1
    labels = torch.arange(sum(ROWS))
    per_row = (
        F.cross_entropy(logits, labels, reduction="none") + F.cross_entropy(logits.T, labels, reduction="none")
    ) / 2
    for rank in (0, 1):
        start = sum(ROWS[:rank])
        torch.testing.assert_close(results[rank][0], per_row[start : start + ROWS[rank]].mean())
    # data-parallel training averages the ranks' gradients: that is the gradient of the mean of the ranks' losses
    objective = sum(per_row[sum(ROWS[:r]) : sum(ROWS[: r + 1])].mean() for r in (0, 1)) / 2
    objective.backward()
    got_x = torch.cat([results[r][1] for r in (0, 1)]) / 2
    got_y = torch.cat([results[r][2] for r in (0, 1)]) / 2
    torch.testing.assert_close(got_x, x.grad)
    torch.testing.assert_close(got_y, y.grad)
