"""Compile every Triton kernel for the GPUs we train on, without a GPU: registers, spills, shared memory.

    python -m mavil.kernels.compile_targets [--capability 80 90] [--cases MODULE:FUNCTION] [--json PATH]

The public functions (masked_gather, masked_restore, info_nce, masked_mse) and their autograd backward run on CPU
tensors at the paper's sizes under `compile_only(capability)` (sm_80 = A100, sm_90 = H100/H200): each kernel launch
compiles what Triton would compile on that GPU instead of running, and the bundled ptxas -v reports registers and
spills. Nothing is launched, so outputs hold garbage and nothing is checked numerically (tests/kernels compare the
kernels with their references). Needs a process in which TRITON_INTERPRET is unset before triton is imported.
How it works: docs/kernels.md#compiling-for-sm_80-and-sm_90-without-a-gpu.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
from triton.compiler import ASTSource
from triton.runtime.driver import driver

from . import _dispatch
from .info_nce import info_nce
from .masked_gather import masked_gather
from .masked_mse import masked_mse
from .masked_restore import masked_restore

TARGETS = {80: "sm_80 (A100)", 90: "sm_90 (H100/H200)"}
B = 64  # per-GPU batch
AUDIO, VIDEO = (512, 102), (784, 157)  # (tokens N, kept K = round(0.2 N))
ENCODER_DIM, DECODER_DIM = 768, 512
DTYPES = {  # label -> (activation dtype, position buffer dtype)
    "fp32": (torch.float32, torch.float32),
    "bf16": (torch.bfloat16, torch.bfloat16),
    "bf16+fp32 pos": (torch.bfloat16, torch.float32),  # DeepSpeed bf16: activations bf16, sin-cos buffers fp32
}


@dataclass
class Case:
    """One call of a public function (forward, then backward through autograd) at one size and dtype."""

    op: str
    shape: str
    dtype: str
    run: Callable[[], None]


class _StandInDriver:
    """What Triton's JIT asks the active driver before a launch, answered for a GPU that is not there."""

    def __init__(self, target: GPUTarget):
        self.target = target

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_current_device(self) -> int:
        return self.target.arch  # one JIT cache per target

    def get_current_stream(self, device=None) -> int:
        return 0


def ptxas_usage(ptx: str, capability: int) -> dict:
    """Registers, spill bytes and static shared memory of the one kernel in `ptx`, from the bundled ptxas -v."""
    arch = sm_arch_from_capability(capability)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        done = subprocess.run(
            [get_ptxas(capability).path, "-v", f"--gpu-name={arch}", src, "-o", src + ".o"],
            capture_output=True,
            text=True,
        )
    log = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"ptxas failed for {arch}:\n{log}")

    def number(pattern: str) -> int:
        found = re.search(pattern, log)
        return int(found.group(1)) if found else 0

    return {
        "registers": number(r"Used (\d+) registers"),
        "spill_stores": number(r"(\d+) bytes spill stores"),
        "spill_loads": number(r"(\d+) bytes spill loads"),
        "static_smem": number(r"(\d+) bytes smem"),
    }


GLOBAL_LOAD = re.compile(r"\bld\.global\S*")


def global_loads(ptx: str) -> dict:
    """Global load instructions in the PTX: vector loads (ld.global...v2/.v4), scalar ones, and asynchronous copies
    to shared memory (cp.async, what the pipelined tl.dot loops use instead)."""
    ops = GLOBAL_LOAD.findall(ptx)
    vector = sum(1 for op in ops if re.search(r"\.v[248]\b", op))
    return {"vector": vector, "scalar": len(ops) - vector, "async": len(re.findall(r"\bcp\.async\.c[ag]\b", ptx))}


class Recorder:
    """The jit cache hook of `compile_only`: compiles each launched specialisation for the target once and notes
    which case launched which kernel."""

    def __init__(self, capability: int):
        self.capability = capability
        self.target = GPUTarget("cuda", capability, 32)
        self.compiled: dict[tuple, dict] = {}  # (kernel, JIT key) -> record
        self.ptx: dict[str, str] = {}  # record["ptx_key"] -> PTX
        self.launches: list[dict] = []  # one per launch: case, kernel, record key
        self.case: Case | None = None

    def __call__(self, *, key, repr, fn, compile, is_manual_warmup, already_compiled) -> bool:
        ident = (fn.name, str(key))
        if ident not in self.compiled:
            self.compiled[ident] = self._compile(fn, compile)
        case = self.case
        self.launches.append(
            {
                "op": case and case.op,
                "shape": case and case.shape,
                "dtype": case and case.dtype,
                "kernel": fn.name,
                "ident": ident,
            }
        )
        return True  # handled: the JIT launches nothing

    def _compile(self, fn, compile: dict) -> dict:
        spec = json.loads(compile["specialization_data"])
        options = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["options"].items()}
        constexprs = {fn.jit_function.arg_names[path[0]]: value for path, value in compile["constants"].items()}
        record = {
            "kernel": fn.name,
            "capability": self.capability,
            "signature": compile["signature"],
            "constexprs": {k: str(v) for k, v in constexprs.items()},
            "num_warps": options["num_warps"],
            "num_stages": options["num_stages"],
        }
        start = time.perf_counter()
        try:
            src = ASTSource(fn.jit_function, compile["signature"], compile["constants"], compile["configs"][0])
            kernel = triton.compile(src, target=self.target, options=options)
            ptx = kernel.asm["ptx"]
            record.update(ptxas_usage(ptx, self.capability), shared=kernel.metadata.shared, loads=global_loads(ptx))
            record["ptx_key"] = f"{fn.name} sm{self.capability} #{len(self.ptx)}"
            self.ptx[record["ptx_key"]] = ptx
        except Exception as error:  # noqa: BLE001 - reported per kernel, the run goes on
            record["error"] = f"{type(error).__name__}: {error}"[:4000]
        record["compile_s"] = round(time.perf_counter() - start, 3)
        return record

    def rows(self) -> list[dict]:
        """One row per (case, kernel specialisation) in launch order: the case and the compiled record."""
        seen, rows = set(), []
        for launch in self.launches:
            mark = (launch["op"], launch["shape"], launch["dtype"], launch["ident"])
            if mark not in seen:
                seen.add(mark)
                rows.append({k: launch[k] for k in ("op", "shape", "dtype")} | self.compiled[launch["ident"]])
        return rows


@contextmanager
def compile_only(capability: int) -> Iterator[Recorder]:
    """Within: calls of the public functions on CPU tensors compile their kernels for sm_<capability>."""
    if _dispatch.interpreted():
        raise RuntimeError(
            "compile_only needs TRITON_INTERPRET unset before triton is imported "
            "(the kernels are interpreted functions here): run it in a fresh process"
        )
    recorder = Recorder(capability)
    saved = driver.active if driver._active is not None else None
    saved_hook = knobs.runtime.jit_cache_hook
    driver.set_active(_StandInDriver(recorder.target))
    knobs.runtime.jit_cache_hook = recorder
    _dispatch.COMPILE_ONLY = True
    try:
        yield recorder
    finally:
        _dispatch.COMPILE_ONLY = False
        knobs.runtime.jit_cache_hook = saved_hook
        driver._active = saved


def _ids(tokens: int, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids_keep (B, K) and ids_restore (B, N) as random_masking makes them: int64, ids_keep a slice of the shuffle."""
    shuffle = torch.rand(B, tokens).argsort(dim=1)
    return shuffle[:, :keep], shuffle.argsort(dim=1)


def _position_buffer(tokens: int, dim: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(1 + tokens, dim, dtype=dtype)[1:]  # the (1 + N, dim) sin-cos buffer after [CLS], as passed


def gather_case(tokens: int, keep: int, dtype: str) -> Case:
    def run():
        act, pos_dtype = DTYPES[dtype]
        x = torch.empty(B, tokens, ENCODER_DIM, dtype=act, requires_grad=True)  # patch tokens (B, N, D), contiguous
        ids_keep, _ = _ids(tokens, keep)
        out = masked_gather(x, ids_keep, _position_buffer(tokens, ENCODER_DIM, pos_dtype))
        out.backward(torch.empty_like(out))

    return Case("masked_gather", f"B={B} N={tokens} K={keep} D={ENCODER_DIM}", dtype, run)


def restore_case(tokens: int, keep: int, dim: int, dtype: str) -> Case:
    def run():
        act, pos_dtype = DTYPES[dtype]
        fused = torch.empty(B, 1 + keep, dim, dtype=act, requires_grad=True)  # decoder embedding, [CLS] first
        mask_token = torch.empty(dim, dtype=act, requires_grad=True)
        _, ids_restore = _ids(tokens, keep)
        out = masked_restore(fused[:, 1:], ids_restore, mask_token, _position_buffer(tokens, dim, pos_dtype))
        out.backward(torch.empty_like(out))

    return Case("masked_restore", f"B={B} N={tokens} K={keep} D={dim}", dtype, run)


def nce_case(queries: int, keys: int, dtype: str, offset: int = 0) -> Case:
    def run():
        act, _ = DTYPES[dtype]
        x = torch.empty(queries, ENCODER_DIM, dtype=act, requires_grad=True)
        y = torch.empty(keys, ENCODER_DIM, dtype=act, requires_grad=True)
        info_nce(x, y, 0.1, offset=offset).backward()

    shape = f"M={queries}" if queries == keys else f"M={queries} Nk={keys} offset={offset}"
    shape += f" H={ENCODER_DIM}"
    return Case("info_nce", shape, dtype, run)


def mse_case(tokens: int, dim: int, norm_pix: bool, dtype: str, teacher: bool = False) -> Case:
    def run():
        act, _ = DTYPES[dtype]
        pred = torch.empty(B, tokens, dim, dtype=act, requires_grad=True)
        # stage 1: raw patches (patchify copies, contiguous); stage 2: teacher fusion outputs after [CLS]
        after_cls = torch.empty(B, 1 + tokens, dim, dtype=act)[:, 1:]
        target = after_cls if teacher else torch.empty(B, tokens, dim, dtype=act)
        mask = torch.zeros(B, tokens)
        masked_mse(pred, target, mask, norm_pix).backward()

    return Case("masked_mse", f"B={B} N={tokens} P={dim}" + (" norm_pix" if norm_pix else ""), dtype, run)


def paper_cases() -> list[Case]:
    """Every public function at the sizes the paper's model calls it with, in fp32, bf16 and DeepSpeed's mix."""
    built = []
    for dtype in DTYPES:
        for tokens, keep in (AUDIO, VIDEO):
            built.append(gather_case(tokens, keep, dtype))
            built.append(restore_case(tokens, keep, DECODER_DIM, dtype))
    for dtype in ("fp32", "bf16"):  # no position buffers: the mix is bf16
        for rows in (8, 64, 512, 16384):  # 8: the paper's run, global batch 512 over 64 GPUs
            built.append(nce_case(rows, rows, dtype))
        built.append(nce_case(8, 512, dtype, offset=8))  # global negatives: rank 1 of 64, 8 queries each
        built.append(nce_case(64, 512, dtype, offset=64))  # rank 1 of 8, 64 queries each
        built.append(mse_case(AUDIO[0], 256, True, dtype))  # stage 1 audio: 16 x 16 patch values
        built.append(mse_case(VIDEO[0], 1536, True, dtype))  # stage 1 video: 2 x 16 x 16 x 3 tubelet values
        for tokens, _ in (AUDIO, VIDEO):  # stage 2: the teacher's fused features
            built.append(mse_case(tokens, ENCODER_DIM, False, dtype, teacher=True))
    return built


def compile_cases(capability: int, cases: list[Case]) -> tuple[list[dict], dict]:
    """Runs each case under compile_only(capability): its rows (see Recorder.rows) and the PTX by row["ptx_key"]."""
    torch.manual_seed(0)
    with compile_only(capability) as recorder:
        for case in cases:
            recorder.case = case
            try:
                case.run()
            except Exception as error:  # noqa: BLE001 - a launcher that fails is a row too
                recorder.launches.append(
                    {
                        "op": case.op,
                        "shape": case.shape,
                        "dtype": case.dtype,
                        "kernel": None,
                        "ident": ("launcher", case.op, case.shape, case.dtype),
                    }
                )
                recorder.compiled[recorder.launches[-1]["ident"]] = {
                    "kernel": None,
                    "capability": capability,
                    "error": f"{type(error).__name__}: {error}",
                }
    return recorder.rows(), recorder.ptx


def load_cases(spec: str) -> list[Case]:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)()


def compile_in_subprocess(
    capabilities=tuple(TARGETS),
    cases: str | None = None,
    with_ptx: bool = False,
    cwd: str | None = None,
    timeout: float = 600,
) -> dict:
    """Runs this module in a fresh interpreter, without TRITON_INTERPRET, one process per target in parallel (in
    `cwd`, where the module of `cases` imports from); returns {"rows": [...], "ptx": {row["ptx_key"]: PTX}} (the
    PTX only with_ptx)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MAVIL_KERNELS")}
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for capability in capabilities:
            out = os.path.join(tmp, f"sm{capability}.json")
            command = (
                [sys.executable, "-m", "mavil.kernels.compile_targets", "--capability", str(capability), "--json", out]
                + (["--cases", cases] if cases else [])
                + (["--ptx"] if with_ptx else [])
            )
            runs.append(
                (
                    out,
                    subprocess.Popen(
                        command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
                    ),
                )
            )
        result = {"rows": [], "ptx": {}}
        for out, process in runs:
            log, _ = process.communicate(timeout=timeout)
            if process.returncode != 0:
                raise RuntimeError(f"compile run failed ({process.returncode}):\n{log[-4000:]}")
            with open(out) as f:
                part = json.load(f)
            result["rows"] += part["rows"]
            result["ptx"].update(part.get("ptx", {}))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capability", type=int, nargs="+", default=list(TARGETS))
    parser.add_argument("--cases", help="MODULE:FUNCTION returning more Cases, run after the paper's")
    parser.add_argument("--json", help="write {'rows': [...]} here (stdout otherwise)")
    parser.add_argument("--ptx", action="store_true", help="also the PTX of each row, by its ptx_key")
    args = parser.parse_args(argv)
    cases = paper_cases() + (load_cases(args.cases) if args.cases else [])
    result = {"rows": [], "ptx": {}}
    for capability in args.capability:
        rows, ptx = compile_cases(capability, cases)
        result["rows"] += rows
        if args.ptx:
            result["ptx"].update(ptx)
    text = json.dumps(result, indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
