"""Training throughput of the real step, the engine's path against the reference path, side by side in one run.

    python -m bench.train --config configs/stage1.json [--stages 1,2] [--batch B] [--steps N] [--warmup W]
                          [--repeats R] [--modes model,end_to_end] [--sweep 1,2,4,8] [--profile] [--root DIR]
                          [--workers N] [--compile] [--grad-checkpointing] [--fresh] [section.key=value ...]
    python bench/train.py ...                                     # the same, as a script from the repository root

Times forward, backward and a torch AdamW step (no DeepSpeed) per stage, on random tensors (model) or fed from
shards (end_to_end), for the engine path (Triton kernels, the config's attention, DALI) and the reference path
(PyTorch references, math attention, the reference loader); --compile and --grad-checkpointing add variants.
Reports samples/s, tokens/s, TFLOP/s, MFU, memory and ratios to bench/results/train-<cpu|cuda>.json, .md and
train-sweep-<cpu|cuda>.png. What exactly is timed and reported: docs/bench.md.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import math
import os
import statistics
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root on the path, not bench/; import as the package
    sys.path[0] = str(Path(__file__).resolve().parents[1])
    __package__ = "bench"
    import bench  # noqa: F401

import torch

from mavil.cli import refuse
from mavil.config import Config, ConfigError, ModelConfig, load_config
from mavil.engine.optim import param_groups
from mavil.engine.run import loader_spec
from mavil.model import MAViL, Backbone
from mavil.model.attention import resolve_backend
from mavil.model.vit import resolve_attention
from mavil.model.flops import step_flops

from .common import RESULTS, device_name, device_suffix, git_commit, median_seconds, synchronize, write_result
from .kernels import kernels_mode
from .train_report import merge, read_previous, write_markdown, write_plot

PATHS = {  # what each path runs: MAVIL_KERNELS, attention (None: the config's), loader; the engine path's variants
    "engine": {"kernels": "auto", "attention": None, "loader": "dali"},
    "reference": {"kernels": "reference", "attention": "math", "loader": "reference"},
    "compiled": {"kernels": "auto", "attention": None, "loader": "dali", "compile": True},  # --compile
    "checkpointed": {"kernels": "auto", "attention": None, "loader": "dali", "grad_checkpointing": True},
}
BASE_PATHS = ("engine", "reference")
CPU_NOTE = (
    "CPU: the engine path runs the kernels' PyTorch references too (MAVIL_KERNELS=auto dispatches Triton only "
    "for CUDA tensors) and sdpa attention, so engine / reference shows mostly sdpa against math attention and, "
    "end to end, DALI's CPU pipeline against the reference loader; fp32, no GPU measured here. A shared "
    "machine: rounds of one path vary by 20% and more (each round's samples/s is in the JSON)."
)
CUDA_NOTE = (
    "CUDA: the engine path runs the Triton kernels, the config's attention and DALI's GPU decoding; the "
    "reference path the PyTorch references, math attention and the reference loader; both in bf16."
)


def model_for(cfg: ModelConfig, stage: int, attention: str, grad_checkpointing: bool = False) -> MAViL:
    """A stage-1 model, or a stage-2 student with a random stage-1 backbone as its frozen teacher; seeded."""
    cfg = dataclasses.replace(cfg, stage=1, teacher=None, attention=attention, grad_checkpointing=grad_checkpointing)
    torch.manual_seed(0)
    if stage == 1:
        return MAViL(cfg)
    teacher = Backbone(cfg)
    return MAViL(dataclasses.replace(cfg, stage=2, norm_pix_loss=False), teacher=teacher)


def training_step(model: MAViL, cfg: Config):
    """The step as the engine runs it, with a plain AdamW over the engine's parameter groups."""
    train = cfg.train
    optimizer = torch.optim.AdamW(param_groups(model, train.weight_decay), lr=train.lr, betas=tuple(train.betas))

    def step(audio: torch.Tensor, video: torch.Tensor) -> None:
        model(audio, video)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def random_batches(cfg: ModelConfig, batch: int, device, dtype):
    """The same random (audio, video) on the device, forever."""
    audio = torch.randn(batch, 1, cfg.audio_frames, cfg.audio_mel_bins, device=device, dtype=dtype)
    video = torch.randn(batch, 3, cfg.video_frames, cfg.video_size, cfg.video_size, device=device, dtype=dtype)
    while True:
        yield audio, video


def loader_batches(kind: str, cfg: Config, root: Path, batch: int, workers: int, device, dtype):
    """(audio, video) from the DALI pipeline or the reference loader, epoch after epoch, full batches only."""
    from mavil.data.pipeline import Loader  # here: model-only runs need neither DALI nor PyAV
    from mavil.data.reference import reference_loader

    spec = loader_spec(cfg, batch, True, num_threads=workers)
    loader = Loader(root, spec, device=device) if kind == "dali" else reference_loader(root, spec, num_workers=workers)
    while True:
        for clips in loader:
            if len(clips["key"]) == batch:
                yield clips["audio"].to(device, dtype), clips["video"].to(device, dtype)


def time_steps(step, batches, warmup: int, steps: int, device) -> tuple[float | None, list[float]]:
    """-> (seconds of the first warmup step: torch.compile's compilation, if any; seconds of each of `steps`
    steps after `warmup`), getting the batch included."""
    first = None
    for index in range(warmup):
        start = time.perf_counter()
        step(*next(batches))
        synchronize(device)
        first = time.perf_counter() - start if index == 0 else first
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        step(*next(batches))
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return first, seconds


def activation_bytes(model: torch.nn.Module, audio: torch.Tensor, video: torch.Tensor) -> int:
    """Activation memory of one training forward, on any device: the bytes of the distinct storages autograd keeps
    for backward when the forward ends (gathered by saved-tensor hooks; parameters and buffers excluded). With
    activation checkpointing that is each checkpointed block's input instead of everything inside it."""
    weights = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    kept: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights and tensor.device.type != "meta":
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(audio, video)["loss"]
    del loss
    return sum(kept.values())


def resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


class PeakMemory:
    """Peak memory over a `with` block: CUDA max_memory_allocated, or on the CPU the resident set's growth
    sampled every 20 ms (None where /proc is missing). `.mib` after the block."""

    def __init__(self, device: torch.device):
        self.device, self.mib = device, None
        self._stop = threading.Event()

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._start = self._peak = resident_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            if self._start is not None:
                self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self._peak = max(self._peak, resident_bytes() or 0)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._start is not None:
            self._stop.set()
            self._thread.join()
            self.mib = (max(self._peak, resident_bytes()) - self._start) / 2**20


def release_memory(device: torch.device) -> None:
    """Frees what the last measurement left, back to the device or the OS (glibc keeps freed heap otherwise, and
    the next measurement's resident-set growth would read too low)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def profile_step(step, batch, device) -> str:
    """The top operators of one step by their own time (device time on CUDA)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step(*batch)
        synchronize(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=15)


@dataclasses.dataclass
class Run:
    """What every measurement of one invocation shares."""

    cfg: Config
    device: torch.device
    dtype: torch.dtype
    warmup: int
    steps: int
    workers: int
    repeats: int = 1
    root: Path | None = None
    profile: bool = False
    paths: tuple[str, ...] = BASE_PATHS  # and "compiled" (--compile), "checkpointed" (--grad-checkpointing)


def measure(run: Run, stage: int, mode: str, path: str, batch: int, profile: bool = False) -> dict:
    """One path's step, timed: its settings, per-step seconds, samples/s, peak and activation memory."""
    setting = PATHS[path]
    attention = setting["attention"] or run.cfg.model.attention
    compiled, checkpointed = setting.get("compile", False), setting.get("grad_checkpointing", False)
    with kernels_mode(setting["kernels"]), PeakMemory(run.device) as memory:
        model = model_for(run.cfg.model, stage, attention, checkpointed).to(run.device, run.dtype)
        if compiled:  # in place, as the engine does (train.compile); attention resolved before the trace
            resolve_attention(model, run.device, run.dtype)
            model.compile()
        step = training_step(model, run.cfg)
        batches = (
            random_batches(run.cfg.model, batch, run.device, run.dtype)
            if mode == "model"
            else loader_batches(setting["loader"], run.cfg, run.root, batch, run.workers, run.device, run.dtype)
        )
        warmup = max(run.warmup, 1) if compiled else run.warmup  # compilation is never timed
        first_s, seconds = time_steps(step, batches, warmup, run.steps, run.device)
    with kernels_mode(setting["kernels"]):
        table = profile_step(step, next(batches), run.device) if profile else None
        activations = activation_bytes(model, *next(batches)) if mode == "model" else None
    batches.close()
    del model, step, batches
    release_memory(run.device)
    head_dim = run.cfg.model.encoder_dim // run.cfg.model.encoder_heads
    result = {
        "kernels": setting["kernels"],
        "attention": resolve_backend(attention, run.device.type, run.dtype, head_dim),
        "loader": setting["loader"] if mode == "end_to_end" else None,
        "step_s": seconds,
        "step_median_s": statistics.median(seconds),
        "samples_per_s": batch * len(seconds) / sum(seconds),
        "first_step_s": first_s,
        "peak_memory_MiB": memory.mib,
        "activation_MiB": None if activations is None else activations / 2**20,
        "compiled": compiled,
        "grad_checkpointing": checkpointed,
    }
    if table:
        print(f"--- stage {stage}, {path} path: top operators of one step\n{table}", flush=True)
    return result


def fastest_rounds(
    run: Run, stage: int, mode: str, batch: int, paths: tuple[str, ...] | None = None
) -> dict[str, dict]:
    """Each path's (default: run.paths) fastest of run.repeats rounds, the paths alternating (other load on the
    machine only slows a round down); every round's samples/s kept beside it."""
    rounds: dict[str, list[dict]] = {path: [] for path in paths or run.paths}
    for index in range(run.repeats):
        for path in rounds:
            profile = run.profile and mode == "model" and index == 0
            rounds[path].append(measure(run, stage, mode, path, batch, profile))
    return {
        path: {
            **max(results, key=lambda r: r["samples_per_s"]),
            "rounds_samples_per_s": [r["samples_per_s"] for r in results],
            "first_step_s": results[0]["first_step_s"],
        }  # the first round's: later ones reuse its compilation
        for path, results in rounds.items()
    }


def add_rates(result: dict, flops: dict, tokens_per_sample: int, matmul_tflops: float) -> dict:
    tflops = result["samples_per_s"] * flops["step_per_sample"] / 1e12
    return {
        **result,
        "tokens_per_s": result["samples_per_s"] * tokens_per_sample,
        "model_tflops": tflops,
        "mfu": tflops / matmul_tflops,
    }


def record(
    run: Run, source: str, stage: int, mode: str, batch: int, matmul_tflops: float, model_only: dict | None
) -> dict:
    """Both paths of one (stage, mode) measured side by side, with their rates and ratios; `model_only`, this
    run's model-only record of the stage, gives end to end as a fraction of it."""
    cfg = run.cfg.model
    flops = step_flops(dataclasses.replace(cfg, stage=stage), batch)
    tokens = cfg.audio_tokens + cfg.video_tokens
    paths = {
        path: add_rates(result, flops, tokens, matmul_tflops)
        for path, result in fastest_rounds(run, stage, mode, batch).items()
    }
    entry = {
        "config": source,
        "stage": stage,
        "mode": mode,
        "batch": batch,
        "warmup": run.warmup,
        "steps": run.steps,
        "repeats": run.repeats,
        "dtype": str(run.dtype).removeprefix("torch."),
        "device": device_name(run.device),
        "flops_per_step": flops["step"],
        "tokens_per_sample": tokens,
        "matmul_tflops": matmul_tflops,
        "paths": paths,
        "speedup": paths["engine"]["samples_per_s"] / paths["reference"]["samples_per_s"],
    }
    if "compiled" in paths:  # compiled / eager, the same engine path otherwise
        entry["compiled_speedup"] = paths["compiled"]["samples_per_s"] / paths["engine"]["samples_per_s"]
    if "checkpointed" in paths:  # with / without activation checkpointing
        entry["checkpointing"] = {
            "speed": paths["checkpointed"]["samples_per_s"] / paths["engine"]["samples_per_s"],
            **{
                key: _ratio(paths["checkpointed"][key], paths["engine"][key])
                for key in ("activation_MiB", "peak_memory_MiB")
            },
        }
    if model_only:
        entry["of_model_only"] = {
            p: paths[p]["samples_per_s"] / model_only["paths"][p]["samples_per_s"]
            for p in paths
            if p in model_only["paths"]
        }
    return entry


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator


def matmul_tflops(device: torch.device, dtype: torch.dtype, repeats: int = 10) -> float:
    """The device's dense matmul rate in `dtype`, measured: the reference for MFU. The fastest of `repeats`
    runs, the rate the device reaches when nothing else runs on it."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    seconds = min(median_seconds(lambda: a @ b, device, warmup=3 if i == 0 else 0, repeats=1) for i in range(repeats))
    return 2 * n**3 / seconds / 1e12


def format_record(entry: dict) -> str:
    eng, ref = entry["paths"]["engine"], entry["paths"]["reference"]
    text = (
        f"stage {entry['stage']} {entry['mode']:<10} batch {entry['batch']}: engine {eng['samples_per_s']:.2f} "
        f"samples/s ({eng['tokens_per_s']:,.0f} tokens/s, {eng['model_tflops']:.3f} TFLOP/s, MFU {eng['mfu']:.1%}, "
        f"{_mib(eng['peak_memory_MiB'])}), reference {ref['samples_per_s']:.2f} samples/s "
        f"({_mib(ref['peak_memory_MiB'])}): engine / reference x{entry['speedup']:.2f}"
    )
    if "of_model_only" in entry:
        share = entry["of_model_only"]
        text += f"; of model only: engine {share['engine']:.0%}, reference {share['reference']:.0%}"
    if "compiled_speedup" in entry:
        comp = entry["paths"]["compiled"]
        text += (
            f"\n  torch.compile: compiled {comp['samples_per_s']:.2f} samples/s (first step, compiling: "
            f"{comp['first_step_s']:.1f} s): compiled / eager x{entry['compiled_speedup']:.2f}"
        )
    if "checkpointing" in entry:
        ckpt, ratios = entry["paths"]["checkpointed"], entry["checkpointing"]
        text += (
            f"\n  activation checkpointing: {ckpt['samples_per_s']:.2f} samples/s (x{ratios['speed']:.2f}), "
            f"activations {_mib(eng['activation_MiB'], '')} -> {_mib(ckpt['activation_MiB'], '')}"
            f"{_times(ratios['activation_MiB'])}, peak {_mib(eng['peak_memory_MiB'], '')} -> "
            f"{_mib(ckpt['peak_memory_MiB'], '')}{_times(ratios['peak_memory_MiB'])}"
        )
    return text


def _times(ratio: float | None) -> str:
    return "" if ratio is None else f" (x{ratio:.2f})"


def _mib(value: float | None, what: str = "peak ") -> str:
    return "memory n/a" if value is None else f"{what}{value:,.1f} MiB"


def sweep(run: Run, source: str, batches: list[int]) -> list[dict]:
    """Stage-1 samples/s, model only, per path and per-device batch."""
    points = []
    for batch in batches:
        for path, result in fastest_rounds(
            dataclasses.replace(run, profile=False), 1, "model", batch, BASE_PATHS
        ).items():
            points.append(
                {
                    "config": source,
                    "stage": 1,
                    "path": path,
                    "attention": result["attention"],
                    "batch": batch,
                    "samples_per_s": result["samples_per_s"],
                    "steps": run.steps,
                    "repeats": run.repeats,
                }
            )
            print(f"sweep batch {batch:>4} {path:<10}: {result['samples_per_s']:.2f} samples/s", flush=True)
    return points


def synthetic_root(cfg: Config, clips_needed: int) -> Path:
    """The synthetic set in the config's clip duration, big enough for the run's batches (64 to 1024 clips)."""
    from mavil.data.synthetic import ensure_synthetic

    clips = min(1024, 64 * math.ceil(max(clips_needed, 64) / 64))
    data = cfg.data
    return ensure_synthetic(
        clips=clips, classes=data.synthetic_classes, seed=data.synthetic_seed, duration=data.synthetic_duration
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ints = lambda text: [int(v) for v in text.split(",") if v]  # noqa: E731
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config", required=True, help="a run config (JSON); its model.stage and model.teacher are ignored"
    )
    parser.add_argument("--stages", type=ints, default=[1, 2], help="comma-separated (default 1,2)")
    parser.add_argument(
        "--modes",
        type=lambda t: [m for m in t.split(",") if m],
        default=["model", "end_to_end"],
        help="comma-separated from model,end_to_end (default both; empty with --sweep: the sweep only)",
    )
    parser.add_argument("--batch", type=int, default=None, help="per-device batch (default: 64 on CUDA, 8 on the CPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 on CUDA, 5 on the CPU)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps first (default: 5 on CUDA, 2 on the CPU)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="rounds per path, the paths alternating; each reports its fastest (default 1)",
    )
    parser.add_argument("--sweep", type=ints, default=[], help="per-device batches for the stage-1 plot, e.g. 1,2,4,8")
    parser.add_argument(
        "--profile", action="store_true", help="print the top operators of one model-only step per path"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also the engine path under torch.compile (in place, inductor): compiled / eager",
    )
    parser.add_argument(
        "--grad-checkpointing",
        action="store_true",
        help="also the engine path with activation checkpointing: activation and peak memory, speed",
    )
    parser.add_argument("--root", type=Path, help="a shard directory for end to end (default: the synthetic set)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DALI threads and reference workers (default: data.num_workers, at most the CPU count)",
    )
    parser.add_argument("--fresh", action="store_true", help="drop the records of earlier runs from the result files")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    args = parser.parse_args(argv)
    unknown = set(args.modes) - {"model", "end_to_end"} or set(args.stages) - {1, 2}
    if unknown:
        parser.error(f"unknown mode or stage: {sorted(map(str, unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)  # its model.stage and model.teacher: see model_for
    except ConfigError as err:
        return refuse(err)
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    dtype = torch.bfloat16 if on_gpu else torch.float32
    batch = args.batch or (64 if on_gpu else 8)
    workers = args.workers or max(min(cfg.data.num_workers, os.cpu_count() or 1), 1)
    run = Run(
        cfg,
        device,
        dtype,
        warmup=args.warmup if args.warmup is not None else (5 if on_gpu else 2),
        steps=args.steps or (20 if on_gpu else 5),
        workers=workers,
        repeats=args.repeats,
        profile=args.profile,
        paths=BASE_PATHS + ("compiled",) * args.compile + ("checkpointed",) * args.grad_checkpointing,
    )
    if "end_to_end" in args.modes:
        run.root = args.root or synthetic_root(cfg, batch * (run.warmup + run.steps + 1))
    note = CUDA_NOTE if on_gpu else CPU_NOTE
    print(note)
    peak = matmul_tflops(device, dtype)
    print(
        f"{device_name(device)}: dense {str(dtype).removeprefix('torch.')} matmul {peak:.3f} TFLOP/s "
        "(the MFU reference)"
    )
    records = []
    for stage in args.stages:
        model_only = None
        for mode in ("model", "end_to_end"):
            if mode in args.modes:
                records.append(record(run, args.config, stage, mode, batch, peak, model_only))
                model_only = records[-1] if mode == "model" else model_only
                print(format_record(records[-1]), flush=True)
    sweeps = sweep(run, args.config, args.sweep) if args.sweep else []
    save(device, note, records, sweeps, fresh=args.fresh)
    return 0


def save(device: torch.device, note: str, records: list[dict], sweeps: list[dict], fresh: bool) -> None:
    previous = {} if fresh else read_previous(RESULTS / f"train-{device_suffix(device)}.json", device_name(device))
    stamp = {"commit": git_commit(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    payload = {"note": note, **merge(previous, [{**r, **stamp} for r in records], [{**p, **stamp} for p in sweeps])}
    json_path = write_result("train", device, payload)
    md_path = write_markdown(json_path)
    png_path = write_plot(json_path)
    print(f"results: {json_path}, {md_path}" + (f", {png_path}" if png_path else ""))


if __name__ == "__main__":
    raise SystemExit(main())
