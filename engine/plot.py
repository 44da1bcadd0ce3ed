"""Training curves from runs' metrics.jsonl: every loss part, the learning rate and clips/s against the step.

    python -m mavil.engine.plot RUN_DIR [RUN_DIR ...] [--out curves.png] [--labels a b ...]

One subplot per quantity (the keys starting with "loss", then lr and samples_per_s), the runs overlaid
with a legend (e.g. stage 1 and stage 2). A quantity one run did not log is simply absent from that
run's lines.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from matplotlib.figure import Figure

from ..cli import refuse

LOSS_PREFIX = "loss"
OTHER_QUANTITIES = ("lr", "samples_per_s")
COLUMNS = 3
PANEL_INCHES = (3.6, 2.5)


def read_metrics(run_dir: Path) -> list[dict]:
    """RUN_DIR/metrics.jsonl -> its lines, one dict per logging step."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (not a run directory?)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def quantities(runs: list[list[dict]]) -> list[str]:
    """The quantities any run logged: "loss" first, the other loss parts by name, then lr and samples_per_s."""
    keys = {key for lines in runs for line in lines for key in line}
    losses = sorted((k for k in keys if k.startswith(LOSS_PREFIX)), key=lambda k: (k != LOSS_PREFIX, k))
    return losses + [k for k in OTHER_QUANTITIES if k in keys]


def draw_curves(runs: dict[str, list[dict]]) -> Figure:
    """{label: metrics lines} -> a figure of one subplot per quantity, every run that logged it overlaid."""
    names = quantities(list(runs.values()))
    rows = max(1, math.ceil(len(names) / COLUMNS))
    fig = Figure(figsize=(PANEL_INCHES[0] * COLUMNS, PANEL_INCHES[1] * rows), layout="constrained")
    for index, name in enumerate(names):
        ax = fig.add_subplot(rows, COLUMNS, index + 1)
        for label, lines in runs.items():
            points = [(line["step"], line[name]) for line in lines if name in line]
            if points:
                ax.plot(*zip(*points), label=label, linewidth=1.2)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mavil.engine.plot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run directories holding metrics.jsonl")
    parser.add_argument("--out", type=Path, default=Path("curves.png"), help="the PNG to write (default curves.png)")
    parser.add_argument("--labels", nargs="+", help="one legend label per run (default: the run directories)")
    args = parser.parse_args(argv)
    labels = args.labels or [str(run) for run in args.runs]
    if len(labels) != len(args.runs) or len(set(labels)) != len(labels):
        parser.error(f"--labels: {len(args.runs)} distinct labels needed, one per run, got {labels}")
    try:
        runs = {label: read_metrics(run) for label, run in zip(labels, args.runs)}
    except (FileNotFoundError, json.JSONDecodeError) as err:
        return refuse(err)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    draw_curves(runs).savefig(args.out, dpi=100)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
