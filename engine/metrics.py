"""Training metrics: loss parts averaged over a logging window across ranks, one JSON line per window.

`metrics.jsonl` in the run directory holds, per logging step: step, epoch, lr, skipped_steps (optimizer
steps skipped so far for a non-finite loss or gradient, see `numerics`), every loss part, samples/s and
tokens/s (input tokens of both modalities, global over ranks), and, where the model's FLOPs are counted
(pre-training: `mavil.model.flops`), model_tflops: the achieved model TFLOP/s of all ranks together. Only
rank 0 writes. Skipped steps add nothing to the loss means. A run that resumes first cuts its logs back to
the checkpoint's step (`rewind`), so a crash leaves neither repeated steps nor a half-written line behind.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ..files import atomic_write
from .checkpoint import DiskFull, out_of_space


class Metrics:
    def __init__(self, path: Path, tokens_per_sample: int, device: torch.device, flops_per_sample: float = 0.0):
        self.path, self.tokens_per_sample, self.device = path, tokens_per_sample, device
        self.flops_per_sample = flops_per_sample  # one training step's model FLOPs per clip (0: not known)
        self._reset()

    def _reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.micro_steps, self.samples, self.start = 0, 0, time.perf_counter()

    def add(self, losses: dict[str, float], samples: int) -> None:
        for name, value in losses.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value)
        self.micro_steps += 1
        self.samples += samples

    def flush(self, **fields) -> dict:
        """Means over the window and all ranks; appends a line to metrics.jsonl on rank 0. -> the line."""
        names = sorted(self.sums)
        totals = torch.tensor(
            [self.sums[n] for n in names] + [self.micro_steps, self.samples], dtype=torch.float64, device=self.device
        )
        dist.all_reduce(totals)
        seconds = time.perf_counter() - self.start
        *sums, micro_steps, samples = totals.tolist()
        line = {
            **fields,
            **{n: s / micro_steps for n, s in zip(names, sums)},
            "samples_per_s": samples / seconds,
            "tokens_per_s": samples * self.tokens_per_sample / seconds,
        }
        if self.flops_per_sample:
            line["model_tflops"] = samples * self.flops_per_sample / seconds / 1e12
        self._append(line)
        self._reset()
        return line

    def event(self, name: str, **fields) -> dict:
        """A line that is no logging window, {"event": name, **fields}, e.g. the data health at each epoch end
        (readers of the loss curves skip lines with an "event"). -> the line."""
        line = {"event": name, **fields}
        self._append(line)
        return line

    def _append(self, line: dict) -> None:
        if dist.get_rank() == 0:
            with open(self.path, "a") as f:
                f.write(json.dumps(line) + "\n")


def rewind(path: Path, keep) -> None:
    """Rewrites the JSON-lines file `path` (if any) with only its complete lines for which keep(line) holds."""
    if not path.is_file():
        return
    kept = []
    for text in path.read_text().splitlines():
        try:
            line = json.loads(text)
        except json.JSONDecodeError:  # cut short by a crash mid-write
            continue
        if keep(line):
            kept.append(text + "\n")
    if "".join(kept) == path.read_text():
        return  # nothing to cut: no rewrite (a relaunch on a full disk gets as far as the checkpoint's check)
    try:
        atomic_write(path, "".join(kept))  # a failed write leaves the file as it was
    except OSError as err:
        if out_of_space(err):
            raise DiskFull(
                f"{path.parent}: no room to cut {path.name} back to the resumed step ({err.strerror}); "
                f"free space and relaunch the same command",
                local=True,
            ) from None
        raise
