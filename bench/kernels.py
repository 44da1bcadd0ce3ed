"""Each kernel against its PyTorch reference at MAViL's real sizes, measured side by side in one run.

    python -m bench.kernels [--repeats 10] [--all]
    python -m bench.kernels --compile-only

Per op and size: time on each path, Triton's speed-up, GB/s against the measured copy bandwidth, peak extra memory;
bf16 on CUDA, reference only (fp32) without it. --compile-only compiles every Triton kernel for sm_80 and sm_90
without a GPU and records registers, spills and shared memory (bench/results/kernels-sm80-sm90.json).
Results: bench/results/kernels-<cpu|cuda>.json. Details: docs/bench.md, docs/kernels.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from mavil.deps import require

from .common import RESULTS, copy_bandwidth, git_commit, median_seconds, peak_extra_bytes, write_result

require("triton")  # named with its pip requirement where it does not import

from mavil.kernels import info_nce, masked_gather, masked_mse, masked_restore  # noqa: E402

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


def gather_case(tokens, keep, dim, device, dtype, batch: int = B) -> Case:
    # as the encoders call it: the patch embedding's (batch, N, D) tokens, a fixed position buffer
    x = torch.randn(batch, tokens, dim, device=device, dtype=dtype, requires_grad=True)
    pos = torch.randn(tokens, dim, device=device)
    ids_keep, _ = _ids(batch, tokens, keep, device)
    e = x.element_size()
    return Case(
        "masked_gather",
        dict(B=batch, N=tokens, K=keep, D=dim),
        lambda: masked_gather(x, ids_keep, pos),
        torch.randn(batch, keep, dim, device=device, dtype=dtype),
        bytes_forward=2 * batch * keep * dim * e + tokens * dim * 4,
        bytes_backward=(batch * keep + batch * tokens) * dim * e,
    )


def restore_case(tokens, keep, dim, device, dtype, batch: int = B) -> Case:
    x_vis = torch.randn(batch, keep, dim, device=device, dtype=dtype, requires_grad=True)
    mask_token = torch.randn(dim, device=device, dtype=dtype, requires_grad=True)
    pos = torch.randn(tokens, dim, device=device)
    _, ids_restore = _ids(batch, tokens, keep, device)
    e = x_vis.element_size()
    return Case(
        "masked_restore",
        dict(B=batch, N=tokens, K=keep, D=dim),
        lambda: masked_restore(x_vis, ids_restore, mask_token, pos),
        torch.randn(batch, tokens, dim, device=device, dtype=dtype),
        bytes_forward=(batch * keep + batch * tokens) * dim * e + tokens * dim * 4,
        bytes_backward=(batch * tokens + batch * keep) * dim * e + tokens * dim * 4,
    )


def mse_case(tokens, dim, norm_pix, device, dtype, batch: int = B) -> Case:
    pred = torch.randn(batch, tokens, dim, device=device, dtype=dtype, requires_grad=True)
    target = torch.randn(batch, tokens, dim, device=device, dtype=dtype)
    mask = (torch.rand(batch, tokens, device=device) < 0.8).float()
    e = pred.element_size()
    return Case(
        "masked_mse",
        dict(B=batch, N=tokens, D=dim, norm_pix=norm_pix),
        lambda: masked_mse(pred, target, mask, norm_pix),
        None,
        bytes_forward=2 * batch * tokens * dim * e,
        bytes_backward=3 * batch * tokens * dim * e,
    )


def nce_case(rows, dim, device, dtype) -> Case:
    x = torch.randn(rows, dim, device=device, dtype=dtype, requires_grad=True)
    y = torch.randn(rows, dim, device=device, dtype=dtype, requires_grad=True)
    return Case("info_nce", dict(B=rows, H=dim, symmetric=False), lambda: info_nce(x, y, 0.1), None)


def cases(device, dtype, include_16k: bool) -> list[Case]:
    built = [
        gather_case(512, 102, 768, device, dtype),
        gather_case(784, 157, 768, device, dtype),
        restore_case(512, 102, 512, device, dtype),
        restore_case(784, 157, 512, device, dtype),
        restore_case(784, 157, 768, device, dtype),
        mse_case(512, 256, True, device, dtype),
        mse_case(784, 1536, True, device, dtype),
        mse_case(784, 768, False, device, dtype),
        nce_case(512, 768, device, dtype),
    ]
    if include_16k:
        built.append(nce_case(16384, 768, device, dtype))
    return built


def tiny_cases(device, dtype) -> list[Case]:
    """One small case per op: the GPU check's dry run on the CPU."""
    return [
        gather_case(16, 4, 32, device, dtype, batch=2),
        restore_case(16, 4, 32, device, dtype, batch=2),
        mse_case(16, 32, True, device, dtype, batch=2),
        nce_case(8, 32, device, dtype),
    ]


MODEL_BATCH = 2  # the model path's batch: its conv and blocks run on the CPU


def model_cases() -> list:
    """The stage-1 model at the paper's widths and sizes, one block per stack, forward and backward, in fp32 and in
    DeepSpeed's bf16 (parameters cast one by one, buffers such as the sin-cos positions left fp32): each kernel
    launched the way the model launches it, e.g. masked_gather on the patch embedding's own tokens."""
    from mavil.config import load_config
    from mavil.kernels.compile_targets import Case
    from mavil.model import MAViL

    configs = Path(__file__).resolve().parents[1] / "configs"
    cfg = load_config(
        configs / "stage1.json",
        [
            "model.encoder_depth=1",
            "model.fusion_depth=1",
            "model.decoder_depth=1",
            "model.contrastive_group=null",
            "model.video_init=null",
        ],
    ).model

    def run(dtype):
        torch.manual_seed(0)
        model = MAViL(cfg)
        for p in model.parameters():
            p.data = p.data.to(dtype)
        audio = torch.zeros(MODEL_BATCH, 1, cfg.audio_frames, cfg.audio_mel_bins, dtype=dtype)
        video = torch.zeros(MODEL_BATCH, 3, cfg.video_frames, cfg.video_size, cfg.video_size, dtype=dtype)
        model(audio, video)["loss"].backward()

    shape = f"stage 1, B={MODEL_BATCH}, 1 block per stack"
    return [
        Case("MAViL", shape, "fp32", lambda: run(torch.float32)),
        Case("MAViL", shape, "bf16+fp32 pos", lambda: run(torch.bfloat16)),
    ]


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
    result = {
        "forward_ms": forward * 1e3,
        "forward_backward_ms": step * 1e3,
        "peak_extra_MiB": memory and memory / 2**20,
    }
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


def _spill(row: dict) -> str:
    return "0" if not (row["spill_stores"] or row["spill_loads"]) else f"{row['spill_stores']}/{row['spill_loads']}"


def compile_table(rows: list[dict]) -> str:
    """Markdown: one line per kernel, dtype and result, the cases that share it listed together."""
    targets = sorted({row["capability"] for row in rows})
    by_case: dict[tuple, dict] = {}
    for row in rows:
        by_case.setdefault((row["kernel"], row["dtype"], f"{row['op']} {row['shape']}"), {})[row["capability"]] = row
    groups: dict[tuple, list[str]] = {}
    for (kernel, dtype, case), per_target in by_case.items():
        cells = tuple(
            f"{r['registers']} / {_spill(r)} / {r['shared']}" if "error" not in r else "error"
            for r in (per_target.get(t) for t in targets)
            if r is not None
        )
        groups.setdefault((kernel, dtype, cells), []).append(case)
    head = "| kernel | dtype | cases | " + " | ".join(f"sm_{t}: regs / spill B / smem B" for t in targets) + " |"
    lines = [head, "|" + "---|" * (3 + len(targets))]
    for (kernel, dtype, cells), cases in groups.items():
        lines.append(f"| `{kernel}` | {dtype} | {'; '.join(cases)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compile_only() -> int:
    """--compile-only: every kernel compiled for sm_80 and sm_90 without a GPU; results/kernels-sm80-sm90.json."""
    import triton

    from mavil.kernels.compile_targets import TARGETS, compile_in_subprocess

    repo = Path(__file__).resolve().parents[1]
    start = time.perf_counter()
    result = compile_in_subprocess(tuple(TARGETS), cases="bench.kernels:model_cases", cwd=str(repo))
    wall = time.perf_counter() - start
    compiled = {row["ptx_key"]: row["compile_s"] for row in result["rows"] if "ptx_key" in row}  # once per kernel
    rows = [{k: v for k, v in row.items() if k not in ("ptx_key", "compile_s")} for row in result["rows"]]
    record = {
        "device": "none: compiled for " + ", ".join(TARGETS.values()),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "commit": git_commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(wall, 1),
        "compile_s": round(sum(compiled.values()), 1),
        "columns": {
            "registers": "per thread (ptxas -v)",
            "spill_stores/spill_loads": "bytes per thread",
            "shared": "bytes of shared memory per program (Triton's launch request)",
        },
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "kernels-sm80-sm90.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(compile_table(rows))
    failed = [row for row in rows if "error" in row or row["spill_stores"] or row["spill_loads"]]
    for row in failed:
        print(
            f"FAILED: sm_{row['capability']} {row['kernel']} {row['op']} {row['shape']} {row['dtype']}: "
            f"{row.get('error') or 'spills ' + _spill(row)}"
        )
    print(f"results: {path}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--all", action="store_true", help="also the 16k-row InfoNCE on the CPU")
    parser.add_argument("--tiny", action="store_true", help="one small case per op (the GPU check's dry run)")
    parser.add_argument(
        "--compile-only",
        action="store_true",
        help="no timing: compile every kernel for sm_80 and sm_90, report registers and spills",
    )
    args = parser.parse_args(argv)
    if args.compile_only:
        return compile_only()
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    dtype = torch.bfloat16 if on_gpu else torch.float32
    modes = ["triton", "reference"] if on_gpu else ["reference"]
    if not on_gpu:
        print("no CUDA device: measuring the PyTorch reference path only (fp32, CPU); Triton needs a GPU to be timed")
    torch.manual_seed(0)
    bandwidth = copy_bandwidth(device, megabytes=8 if args.tiny else 256)
    print(f"measured copy bandwidth: {bandwidth:.1f} GB/s")
    records = []
    chosen = tiny_cases(device, dtype) if args.tiny else cases(device, dtype, include_16k=on_gpu or args.all)
    for case in chosen:
        records.append(run_case(case, modes, device, dtype, args.repeats, bandwidth))
        print(format_row(records[-1]), flush=True)
    path = write_result("kernels", device, {"copy_bandwidth_GBps": bandwidth, "paths": modes, "cases": records})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
