"""Each kernel against its PyTorch reference at MAViL's real sizes, measured side by side in one run.

    python -m bench.kernels [--repeats 10] [--all]

Per op and size: forward and forward+backward time on each path, the speed-up of Triton over the
reference, achieved GB/s of the memory-bound ops (the bytes an ideal implementation must move)
as a fraction of the device's measured copy bandwidth, and on CUDA the peak extra memory.
On CUDA both paths run in bf16 (the training dtype). Without CUDA only the reference runs (the
Triton interpreter measures nothing useful), in fp32, and the output says so; the 16k-row InfoNCE
is then skipped unless --all. Results: bench/results/kernels-<cpu|cuda>.json.
"""
from __future__ import annotations

import argparse
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch

from mavil.kernels import info_nce, masked_gather, masked_mse, masked_restore

from .common import copy_bandwidth, median_seconds, peak_extra_bytes, write_result

B = 64  # per-GPU batch of the throughput targets


@dataclass
class Case:
    op: str
    shape: dict
    forward: Callable[[], torch.Tensor]
    grad_output: torch.Tensor | None  # None for scalar losses
    bytes_forward: int | None = None  # None: compute-bound, no bandwidth figure
    bytes_backward: int | None = None

    def step(self) -> None:
        out = self.forward()
        out.backward(self.grad_output)


def _ids(batch, tokens, keep, device):
    shuffle = torch.rand(batch, tokens, device=device).argsort(dim=1)
    return shuffle[:, :keep], shuffle.argsort(dim=1)


def gather_case(tokens, keep, dim, device, dtype) -> Case:
    # as the encoders call it: the patch embedding's transposed output, a fixed position buffer
    x = torch.randn(B, dim, tokens, device=device, dtype=dtype).transpose(1, 2).requires_grad_()
    pos = torch.randn(tokens, dim, device=device)
    ids_keep, _ = _ids(B, tokens, keep, device)
    e = x.element_size()
    return Case("masked_gather", dict(B=B, N=tokens, K=keep, D=dim), lambda: masked_gather(x, ids_keep, pos),
                torch.randn(B, keep, dim, device=device, dtype=dtype),
                bytes_forward=2 * B * keep * dim * e + tokens * dim * 4, bytes_backward=(B * keep + B * tokens) * dim * e)


def restore_case(tokens, keep, dim, device, dtype) -> Case:
    x_vis = torch.randn(B, keep, dim, device=device, dtype=dtype, requires_grad=True)
    mask_token = torch.randn(dim, device=device, dtype=dtype, requires_grad=True)
    pos = torch.randn(tokens, dim, device=device)
    _, ids_restore = _ids(B, tokens, keep, device)
    e = x_vis.element_size()
    return Case("masked_restore", dict(B=B, N=tokens, K=keep, D=dim),
                lambda: masked_restore(x_vis, ids_restore, mask_token, pos),
                torch.randn(B, tokens, dim, device=device, dtype=dtype),
                bytes_forward=(B * keep + B * tokens) * dim * e + tokens * dim * 4,
                bytes_backward=(B * tokens + B * keep) * dim * e + tokens * dim * 4)


def mse_case(tokens, dim, norm_pix, device, dtype) -> Case:
    pred = torch.randn(B, tokens, dim, device=device, dtype=dtype, requires_grad=True)
    target = torch.randn(B, tokens, dim, device=device, dtype=dtype)
    mask = (torch.rand(B, tokens, device=device) < 0.8).float()
    e = pred.element_size()
    return Case("masked_mse", dict(B=B, N=tokens, D=dim, norm_pix=norm_pix), lambda: masked_mse(pred, target, mask, norm_pix),
                None, bytes_forward=2 * B * tokens * dim * e, bytes_backward=3 * B * tokens * dim * e)


def nce_case(rows, dim, device, dtype) -> Case:
    x = torch.randn(rows, dim, device=device, dtype=dtype, requires_grad=True)
    y = torch.randn(rows, dim, device=device, dtype=dtype, requires_grad=True)
    return Case("info_nce", dict(B=rows, H=dim, symmetric=False), lambda: info_nce(x, y, 0.1), None)


def cases(device, dtype, include_16k: bool) -> list[Case]:
    built = [
        gather_case(512, 102, 768, device, dtype), gather_case(784, 157, 768, device, dtype),
        restore_case(512, 102, 512, device, dtype), restore_case(784, 157, 512, device, dtype),
        restore_case(784, 157, 768, device, dtype),
        mse_case(512, 256, True, device, dtype), mse_case(784, 1536, True, device, dtype), mse_case(784, 768, False, device, dtype),
        nce_case(512, 768, device, dtype),
    ]
    if include_16k:
        built.append(nce_case(16384, 768, device, dtype))
    return built


@contextmanager
def kernels_mode(mode: str):
    previous = os.environ.get("MAVIL_KERNELS")
    os.environ["MAVIL_KERNELS"] = mode
    try:
        yield
    finally:
        if previous is None:
            del os.environ["MAVIL_KERNELS"]
        else:
            os.environ["MAVIL_KERNELS"] = previous


def measure(case: Case, mode: str, device, repeats: int, bandwidth: float) -> dict:
    with kernels_mode(mode):
        forward = median_seconds(case.forward, device, repeats=repeats)
        step = median_seconds(case.step, device, repeats=repeats)
        memory = peak_extra_bytes(case.step, device)
    result = {"forward_ms": forward * 1e3, "forward_backward_ms": step * 1e3, "peak_extra_MiB": memory and memory / 2**20}
    if case.bytes_forward:
        backward = max(step - forward, 1e-9)
        result["forward_GBps"] = case.bytes_forward / forward / 1e9
        result["backward_GBps"] = case.bytes_backward / backward / 1e9
        result["forward_of_copy_bandwidth"] = result["forward_GBps"] / bandwidth
        result["backward_of_copy_bandwidth"] = result["backward_GBps"] / bandwidth
    return result


def format_row(record: dict) -> str:
    shape = " ".join(f"{k}={v}" for k, v in record["shape"].items())
    cells = []
    for mode, r in record["results"].items():
        text = f"{mode}: fwd {r['forward_ms']:.3f} ms, fwd+bwd {r['forward_backward_ms']:.3f} ms"
        if "forward_GBps" in r:
            text += f", {r['forward_GBps']:.0f}/{r['backward_GBps']:.0f} GB/s"
        cells.append(text)
    if "speedup_forward_backward" in record:
        cells.append(f"speed-up x{record['speedup_forward_backward']:.2f}")
    return f"{record['op']:<15}{shape:<40}" + " | ".join(cells)


def run_case(case: Case, modes: list[str], device, dtype, repeats: int, bandwidth: float) -> dict:
    results = {mode: measure(case, mode, device, repeats, bandwidth) for mode in modes}
    record = {"op": case.op, "shape": case.shape, "dtype": str(dtype).removeprefix("torch."), "results": results}
    if "triton" in results:
        ref, tri = results["reference"], results["triton"]
        record["speedup_forward"] = ref["forward_ms"] / tri["forward_ms"]
        record["speedup_forward_backward"] = ref["forward_backward_ms"] / tri["forward_backward_ms"]
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--all", action="store_true", help="also the 16k-row InfoNCE on the CPU")
    args = parser.parse_args(argv)
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    dtype = torch.bfloat16 if on_gpu else torch.float32
    modes = ["triton", "reference"] if on_gpu else ["reference"]
    if not on_gpu:
        print("no CUDA device: measuring the PyTorch reference path only (fp32, CPU); Triton needs a GPU to be timed")
    torch.manual_seed(0)
    bandwidth = copy_bandwidth(device)
    print(f"measured copy bandwidth: {bandwidth:.1f} GB/s")
    records = []
    for case in cases(device, dtype, include_16k=on_gpu or args.all):
        records.append(run_case(case, modes, device, dtype, args.repeats, bandwidth))
        print(format_row(records[-1]), flush=True)
    path = write_result("kernels", device, {"copy_bandwidth_GBps": bandwidth, "paths": modes, "cases": records})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
