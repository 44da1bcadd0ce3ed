"""InfoNCE over groups of a fixed number of clips (model.contrastive_group), whatever the cluster's shape.

A group is `group` consecutive clips of one micro-step's batch, taken over the ranks in rank order: a micro-batch
that is a multiple of `group` splits into groups; a micro-batch that divides it joins group / micro_batch
consecutive ranks, their embeddings gathered with gradient. Each query is contrasted with its group's keys, so the
loss is the same on 1, 8 or 64 GPUs. group = None: the rank's micro-batch, or every rank's with
model.global_negatives. Why groups (the paper's 7 negatives per query): docs/model.md#contrastive-groups.
"""

from __future__ import annotations

import torch

from ..kernels import info_nce, info_nce_global


def _gather_group(t: torch.Tensor, ranks_per_group: int) -> tuple[torch.Tensor, int]:
    """The rows of t on every rank of this rank's group (`ranks_per_group` consecutive ranks), with gradient, and
    the offset of this rank's rows among them. Gathered over all ranks, then sliced: process subgroups would gather
    less, but the gloo backend's backward of torch.distributed.nn's all_gather fails on a subgroup (torch 2.11), and
    the tensors are a few embeddings per clip."""
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.distributed.nn.functional import all_gather

    world, rank = dist.get_world_size(), dist.get_rank()
    counts = [torch.zeros(1, dtype=torch.long, device=t.device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([t.shape[0]], device=t.device))
    counts = [int(c) for c in counts]
    parts = all_gather(F.pad(t, (0, 0, 0, max(counts) - t.shape[0])))  # all_gather needs one shape
    first = rank - rank % ranks_per_group
    mine = range(first, first + ranks_per_group)
    rows = torch.cat([parts[r][: counts[r]] for r in mine])
    return rows, sum(counts[first:rank])


def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def check_groups(group: int | None, micro_batch: int, world: int) -> None:
    """ValueError unless groups of `group` clips form from micro-batches of `micro_batch` clips on `world` ranks."""
    if group is None or (micro_batch >= group and micro_batch % group == 0):
        return
    if micro_batch < group and group % micro_batch == 0 and world % (group // micro_batch) == 0:
        return
    raise ValueError(
        f"model.contrastive_group = {group}: groups of {group} clips cannot be formed from micro-batches "
        f"of {micro_batch} clips (train.micro_batch) on {world} rank(s): the micro-batch must be a "
        f"multiple of the group, or divide it with world size x micro-batch a multiple of it"
    )


def grouped_info_nce(
    x: torch.Tensor,
    y: torch.Tensor,
    tau: float,
    symmetric: bool = False,
    group: int | None = 8,
    global_negatives: bool = False,
    micro_batch: int | None = None,
) -> torch.Tensor:
    """Eq. 2 per group of `group` clips: x (B, H) queries, y (B, H) keys of this rank's micro-batch -> 0-dim fp32,
    the mean over this rank's queries. group=None: the micro-batch (or all ranks' with global_negatives).

    `micro_batch` is the configured clips per rank (train.micro_batch; None: this batch's size): every rank takes
    the same path from it, also on a partial last batch, whose last local group is smaller (or, gathered, whose
    group holds fewer clips)."""
    if group is None:
        return (info_nce_global if global_negatives else info_nce)(x, y, tau, symmetric)
    batch = x.shape[0]
    nominal = micro_batch or batch
    check_groups(group, nominal, _world())
    if nominal >= group:
        chunks = list(zip(x.split(group), y.split(group)))
        losses = torch.stack([info_nce(xs, ys, tau, symmetric) * xs.shape[0] for xs, ys in chunks])
        return losses.sum() / batch  # the mean over queries (over groups where all are full)
    keys, offset = _gather_group(y, group // nominal)  # this rank's queries against its group's keys
    loss = info_nce(x, keys, tau, offset=offset)
    if symmetric:
        queries, _ = _gather_group(x, group // nominal)
        loss = 0.5 * (loss + info_nce(y, queries, tau, offset=offset))
    return loss
