"""Run by test_nonfinite.py under the `deepspeed` launcher (two ranks): DeepSpeed's ZeRO optimizer, stage 1 and
stage 2, skips an optimizer step whose loss or gradient is not finite on one rank, on every rank, when the loss
goes through the engine's `loss_to_backward`.

    deepspeed --num_gpus 2 tests/reliability/zero_skip.py STAGE:DTYPE ...     (e.g. 1:fp32 2:fp32 2:bf16)

A small MLP, AdamW, two micro-batches per optimizer step. Steps: clean; NaN loss on rank 1's second
micro-batch (NaN added: the gradient alone stays finite); +inf loss on rank 0's first; a finite loss with a
NaN gradient on rank 1; clean again. After each poisoned step, on every rank: DeepSpeed reports it not
applied, engine.skipped_steps counts it, and the module's weights, this rank's fp32 partition and AdamW's
state (moments, step count) equal those after the last clean step, bit for bit; the clean steps change them.
Prints "ok" per rank and case, exits non-zero on the first failure.
"""

from __future__ import annotations

import copy
import math
import sys

import deepspeed
import torch
import torch.distributed as dist

from mavil.engine.numerics import check_deepspeed, loss_to_backward

MICRO, ACCUMULATION = 4, 2


def poisoned_loss(model: torch.nn.Module, x: torch.Tensor, poison: str) -> torch.Tensor:
    loss = model(x).square().mean()
    if poison == "nan":
        return loss + math.nan
    if poison == "inf":
        return loss + math.inf
    if poison == "nan_grad":  # sqrt has an infinite slope at 0: the loss stays finite, the gradient is NaN
        return loss + torch.sqrt(model[0].weight * 0.0).sum()
    return loss


def state(engine) -> dict:
    """Everything an optimizer step changes, copied: weights, this rank's fp32 partition, AdamW's state."""
    inner = engine.optimizer.optimizer  # the torch AdamW over this rank's partition
    return copy.deepcopy(
        {
            "module": engine.module.state_dict(),
            "fp32": engine.optimizer.single_partition_of_fp32_groups,
            "adam": inner.state_dict()["state"],
        }
    )


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def optimizer_step(engine, poison: dict[tuple[int, int], str], generator: torch.Generator) -> None:
    """One optimizer step of ACCUMULATION micro-batches; `poison` maps (rank, micro-batch) to a poison."""
    dtype = torch.bfloat16 if engine.bfloat16_enabled() else torch.float32
    for micro in range(ACCUMULATION):
        x = torch.randn(MICRO, 8, generator=generator).to(dtype)  # the same draws on every rank; fine here
        loss = poisoned_loss(engine.module, x, poison.get((dist.get_rank(), micro), ""))
        engine.backward(loss_to_backward(loss))
        engine.step()


def check(stage: int, dtype: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    config = {
        "train_batch_size": MICRO * ACCUMULATION * dist.get_world_size(),
        "gradient_accumulation_steps": ACCUMULATION,
        "train_micro_batch_size_per_gpu": MICRO,
        "zero_optimization": {"stage": stage},
        "bf16": {"enabled": dtype == "bf16"},
        "zero_allow_untested_optimizer": True,
    }
    check_deepspeed(config, "zero_skip")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95))
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    generator = torch.Generator().manual_seed(1)
    cases = [({}, True), ({(1, 1): "nan"}, False), ({(0, 0): "inf"}, False), ({(1, 0): "nan_grad"}, False), ({}, True)]
    for number, (poison, applied) in enumerate(cases, start=1):
        before, skipped = state(engine), engine.skipped_steps
        optimizer_step(engine, poison, generator)
        after = state(engine)
        where = f"stage {stage} {dtype} rank {dist.get_rank()} step {number} {poison}"
        assert engine.was_step_applied() == applied, f"{where}: applied {engine.was_step_applied()}"
        assert engine.skipped_steps == skipped + (not applied), f"{where}: skipped_steps {engine.skipped_steps}"
        assert same(before, after) != applied, f"{where}: state {'unchanged' if applied else 'changed'}"
    print(f"ok stage {stage} {dtype} rank {dist.get_rank()}", flush=True)


def main(argv: list[str]) -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    for case in (arg for arg in argv if not arg.startswith("--local_rank")):
        stage, dtype = case.split(":")
        check(int(stage), dtype)


if __name__ == "__main__":
    main(sys.argv[1:])
