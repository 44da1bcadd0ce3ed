"""One results table from the eval.json files of fine-tuning runs.

    python -m mavil.engine.report RUN_ROOT          # a Markdown table on stdout

Finds RUN_ROOT/*/eval.json (each written by engine/finetune.py) and prints a row per run: its mode,
its initialisation (a pre-training export or random) and its scores.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli import refuse

COLUMNS = ("accuracy", "mAP", "a2v_R@1", "a2v_R@5", "a2v_median_rank", "chance_R@1")


def rows(root: Path) -> list[dict]:
    found = []
    for path in sorted(root.glob("*/eval.json")):
        finetune = json.loads((path.parent / "config.json").read_text())["finetune"]
        scores = json.loads(path.read_text())
        found.append(
            {
                "run": path.parent.name,
                "mode": finetune["mode"],
                "init": finetune["init"] or "random",
                **{c: scores.get(c) for c in COLUMNS},
                "accuracy multi-clip": multi_clip(scores, "accuracy"),
                "mAP multi-clip": multi_clip(scores, "mAP"),
            }
        )
    return found


def multi_clip(scores: dict, metric: str) -> float | None:
    """The multi-clip inference score of `metric` (eval.json's "<metric>_<n>clips"), or None without one."""
    return next((v for k, v in scores.items() if k.startswith(f"{metric}_") and k.endswith("clips")), None)


def table(found: list[dict]) -> str:
    columns = [
        "run",
        "mode",
        "init",
        "accuracy",
        "accuracy multi-clip",
        "mAP",
        "mAP multi-clip",
        "a2v_R@1",
        "a2v_R@5",
        "a2v_median_rank",
        "chance_R@1",
    ]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in found:
        cells = [
            f"{row[c]:.3f}" if isinstance(row[c], float) else ("" if row[c] is None else str(row[c])) for c in columns
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    args = parser.parse_args(argv)
    found = rows(args.root)
    if not found:
        return refuse(f"no */eval.json under {args.root}")
    print(table(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
