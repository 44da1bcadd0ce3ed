"""The one-shot GPU check: everything the CPU cannot prove, in one call of a few minutes on a lent GPU machine.

    bash bench/gpu_check.sh              # on the GPU machine (the shell script makes `mavil` importable first)
    python -m bench.gpu_check --dry-run  # the same parts at tiny sizes on the CPU: proves the script runs

Parts (tests on CUDA, bench.kernels, bench.train), each a subprocess with its own time budget; missing packages are
named in the summary. gpu-check-<gpu>.json (each part's status and seconds) is rewritten after every part; results
land in bench/results/ (a dry run: a temporary directory) and are copied to $OUT when set. Details: docs/bench.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .common import RESULTS, slug

REPO = Path(__file__).resolve().parents[1]
OPTIONAL = ("deepspeed", "xformers", "av", "nvidia.dali", "sklearn")  # what the GPU machine may lack
TEST_PATHS = (
    "tests/kernels",
    "tests/model",
    "tests/data/test_fbank.py",
)


@dataclass
class Part:
    name: str
    budget_s: int
    argv: list[str]
    outputs: list[str] = field(default_factory=list)  # result file names (in the results directory) it writes


def parts(dry: bool) -> list[Part]:
    """What runs, with the budget of each; on the GPU the budgets add up to under 8 minutes."""
    py = [sys.executable]
    tests = [path for path in TEST_PATHS if (REPO / path).exists()]
    test_args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors", "-rfEs"]
    if dry:
        return [
            Part("tests", 120, [*py, *test_args, "-m", "gpu", *tests]),
            Part("kernels", 120, [*py, "-m", "bench.kernels", "--repeats", "1", "--tiny"], ["kernels"]),
            Part(
                "train",
                240,
                [
                    *py,
                    "-m",
                    "bench.train",
                    "--config",
                    "configs/tiny/stage1.json",
                    "--modes",
                    "model",
                    "--batch",
                    "2",
                    "--steps",
                    "1",
                    "--warmup",
                    "0",
                    "--compile",
                    "--grad-checkpointing",
                    "--fresh",
                ],
                ["train"],
            ),
        ]
    return [
        Part("tests", 150, [*py, *test_args, *tests]),
        Part("kernels", 90, [*py, "-m", "bench.kernels", "--repeats", "10"], ["kernels"]),
        Part(
            "train",
            220,
            [
                *py,
                "-m",
                "bench.train",
                "--config",
                "configs/stage1.json",
                "--modes",
                "model",
                "--batch",
                "64",
                "--steps",
                "10",
                "--warmup",
                "3",
                "--compile",
                "--grad-checkpointing",
                "--fresh",
            ],
            ["train"],
        ),
    ]


def environment() -> dict:
    """The machine: GPU, versions, and which optional packages import."""
    import torch
    import triton

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "gpu": gpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton.__version__,
        "python": sys.version.split()[0],
        "packages": {
            name: importlib.util.find_spec(name.split(".")[0]) is not None and _imports(name) for name in OPTIONAL
        },
    }


def _imports(name: str) -> bool:
    try:
        __import__(name)
    except Exception:  # any failure to import: the package is not usable here
        return False
    return True


class Log:
    """Lines to the terminal and to the log file at once."""

    def __init__(self, path: Path):
        self.file = path.open("a")

    def __call__(self, line: str) -> None:
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()


def run_part(part: Part, log: Log, env: dict) -> dict:
    """Runs one part within its budget, its output streamed line by line; -> its status record."""
    log(f"=== {part.name}: {' '.join(part.argv[1:])} (budget {part.budget_s} s)")
    start = time.monotonic()
    process = subprocess.Popen(
        part.argv,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    tail: list[str] = []

    def pump() -> None:
        for line in process.stdout:
            log(f"[{part.name}] {line.rstrip()}")
            tail[:] = [*tail[-19:], line.rstrip()]

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = process.wait(timeout=part.budget_s)
        status = "ok" if code == 0 else f"failed (exit {code})"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        status = f"stopped at its {part.budget_s} s budget"
    reader.join(timeout=5)
    seconds = time.monotonic() - start
    log(f"=== {part.name}: {status} after {seconds:.0f} s")
    return {
        "part": part.name,
        "status": status,
        "seconds": round(seconds, 1),
        "budget_s": part.budget_s,
        "last_lines": tail,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on whatever device is here (CI)")
    parser.add_argument("--only", default="", help="comma-separated part names (default: all)")
    parser.add_argument(
        "--results", type=Path, help="where results go (default: bench/results; a dry run: a temporary folder)"
    )
    args = parser.parse_args(argv)
    facts = environment()
    if facts["gpu"] is None and not args.dry_run:
        print(
            "error: no CUDA device visible to torch: the GPU check needs one (--dry-run runs it on the CPU)",
            file=sys.stderr,
        )
        return 2
    results = args.results or (Path(tempfile.mkdtemp(prefix="gpu-check-")) if args.dry_run else RESULTS)
    env = {**os.environ, "MAVIL_BENCH_RESULTS": str(results), "PYTHONUNBUFFERED": "1"}
    name = slug(facts["gpu"]) if facts["gpu"] else "cpu"  # the suffix of the result files
    results.mkdir(parents=True, exist_ok=True)
    log = Log(results / f"gpu-check-{name}.log")
    summary_path = results / f"gpu-check-{name}.json"
    log(f"GPU check{' (dry run)' if args.dry_run else ''}: {json.dumps(facts)}")
    missing = [p for p, ok in facts["packages"].items() if not ok]
    if missing:
        log(f"absent here, their tests and paths skipped or not collected: {', '.join(missing)}")
    chosen = [p for p in parts(args.dry_run) if not args.only or p.name in args.only.split(",")]
    summary = {**facts, "dry_run": args.dry_run, "budget_s": sum(p.budget_s for p in chosen), "parts": []}
    for part in chosen:
        summary["parts"].append(run_part(part, log, env))
        summary_path.write_text(json.dumps(summary, indent=1) + "\n")
        hand_back(results, name)
    failed = [p["part"] for p in summary["parts"] if p["status"] != "ok"]
    log(
        f"GPU check done: {len(chosen) - len(failed)} of {len(chosen)} parts ok"
        + (f"; not ok: {', '.join(failed)}" if failed else "")
        + f"; results in {results}"
    )
    hand_back(results, name)
    return 1 if failed else 0


def hand_back(results: Path, name: str) -> None:
    """Copies this machine's result files to $OUT, where the device tool collects them (nothing without $OUT)."""
    out = os.environ.get("OUT")
    if not out:
        return
    for path in results.glob(f"*-{name}.*"):
        shutil.copy2(path, Path(out) / path.name)


if __name__ == "__main__":
    raise SystemExit(main())
