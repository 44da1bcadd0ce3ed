"""Training metrics: loss parts averaged over a logging window across ranks, one JSON line per window.

`metrics.jsonl` in the run directory holds, per logging step: step, epoch, lr, every loss part,
samples/s and tokens/s (input tokens of both modalities, global over ranks). Only rank 0 writes.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.distributed as dist


class Metrics:
    def __init__(self, path: Path, tokens_per_sample: int, device: torch.device):
        self.path, self.tokens_per_sample, self.device = path, tokens_per_sample, device
        self._reset()

    def _reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.micro_steps, self.samples, self.start = 0, 0, time.perf_counter()

    def add(self, losses: dict[str, torch.Tensor], samples: int) -> None:
        for name, value in losses.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value.detach())
        self.micro_steps += 1
        self.samples += samples

    def flush(self, **fields) -> dict:
        """Means over the window and all ranks; appends a line to metrics.jsonl on rank 0. -> the line."""
        names = sorted(self.sums)
        totals = torch.tensor([self.sums[n] for n in names] + [self.micro_steps, self.samples], dtype=torch.float64,
                              device=self.device)
        dist.all_reduce(totals)
        seconds = time.perf_counter() - self.start
        *sums, micro_steps, samples = totals.tolist()
        line = {**fields, **{n: s / micro_steps for n, s in zip(names, sums)}, "samples_per_s": samples / seconds,
                "tokens_per_s": samples * self.tokens_per_sample / seconds}
        if dist.get_rank() == 0:
            with open(self.path, "a") as f:
                f.write(json.dumps(line) + "\n")
        self._reset()
        return line
