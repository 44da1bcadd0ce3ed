"""Class predictions of a fine-tuned run on video files.

    python -m mavil.engine.predict --run runs/as20k a.mp4 b.mkv [--top-k 5] [--json] [--device cpu]

Each file goes through evaluation's preprocessing (`extract.file_features`: the clip `prepare` would store,
read back by the reference loader with train=False). Video modes average the probabilities of the run's
finetune.eval_clips uniformly spaced 4-s windows with the same audio, as evaluation's multi-clip score does;
probabilities are sigmoids for a BCE run, a softmax for a CE run. Class names come from --labels (a JSON list or
one name a line), else from the manifest of the run's training or evaluation shards (the synthetic set when the
run used it), else "class <i>". Bad inputs (a missing or undecodable file, a run directory without a fine-tuned
classifier) give one line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..cli import refuse
from ..config import ConfigError
from ..data.synthetic import synthetic_dir
from ..model.weights import read_header
from .evaluate import load_run
from .run import loader_spec
from .extract import BadInput, file_features


def check_run(run_dir: Path) -> None:
    """BadInput unless `run_dir` holds a fine-tuned classifier (config.json and model.safetensors with a head)."""
    if not (run_dir / "config.json").is_file():
        raise BadInput(f"{run_dir}: not a run directory (no config.json)")
    if not (run_dir / "model.safetensors").is_file():
        raise BadInput(f"{run_dir}: no fine-tuned model (model.safetensors is missing: did the run finish?)")
    shapes, _ = read_header(run_dir / "model.safetensors")
    if "head.weight" not in shapes:
        raise BadInput(
            f"{run_dir}/model.safetensors: not a fine-tuned classifier (no head; a retrieval or "
            "pre-training model has no classes)"
        )


def class_names(run_dir: Path, classes: int, labels: Path | None = None) -> list[str]:
    """The names of the run's classes (see the module docstring), never generating a data set to find them."""
    if labels is not None:
        text = labels.read_text()
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        names = json.loads(text) if text.lstrip().startswith("[") else lines
        if len(names) != classes:
            raise BadInput(f"{labels}: {len(names)} names for a model of {classes} classes")
        return [str(name) for name in names]
    raw = json.loads((run_dir / "config.json").read_text())
    data, ft = raw.get("data", {}), raw.get("finetune", {})
    roots = [data.get("root"), ft.get("eval_root")]
    try:
        duration = data["synthetic_duration"]
        roots += [
            synthetic_dir(data["synthetic_clips"], data["synthetic_classes"], data["synthetic_seed"], duration),
            synthetic_dir(ft["eval_synthetic_clips"], data["synthetic_classes"], ft["eval_synthetic_seed"], duration),
        ]
    except (KeyError, ValueError):  # an older config, or a duration no synthetic set has
        pass
    for root in roots:
        manifest = Path(root) / "manifest.json" if root else None
        if manifest is not None and manifest.is_file():
            names = json.loads(manifest.read_text()).get("label_names", [])
            if len(names) == classes:
                return list(names)
    return [f"class {i}" for i in range(classes)]


@torch.no_grad()
def predict(
    run_dir: Path, files: list[Path], top_k: int = 5, device: str = "cpu", labels: Path | None = None
) -> list[dict]:
    """-> per file {"file", "windows", "top": [{"class", "index", "score"}, ...]}, best first."""
    check_run(run_dir)
    missing = [path for path in files if not path.is_file()]
    if missing:
        raise BadInput(f"{missing[0]}: no such file")
    model, cfg = load_run(run_dir, torch.device(device))
    model.eval()
    if cfg.finetune.mode not in ("audio", "video", "audio+video"):
        raise BadInput(f"{run_dir}: a {cfg.finetune.mode} model gives no classes")
    names = class_names(run_dir, model.head.out_features, labels)
    spec = loader_spec(cfg, 1, False, eval_clips=1 if cfg.finetune.mode == "audio" else cfg.finetune.eval_clips)
    dtype = next(model.parameters()).dtype
    results = []
    for path in files:
        audio, video = file_features(path, spec)
        windows = video.unbind(0) if video.dim() == 5 else (video,)
        audio = audio[None].to(device, dtype)
        logits = torch.cat([model.predict(audio, w[None].to(device, dtype)).float() for w in windows])  # (windows, C)
        probs = logits.sigmoid() if cfg.finetune.loss == "bce" else logits.softmax(dim=-1)
        scores, order = probs.mean(dim=0).topk(min(top_k, len(names)))
        results.append(
            {
                "file": str(path),
                "windows": len(windows),
                "top": [
                    {"class": names[i], "index": int(i), "score": round(float(s), 6)}
                    for s, i in zip(scores.tolist(), order.tolist())
                ],
            }
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mavil.engine.predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, required=True, help="a fine-tuning run directory")
    parser.add_argument("files", nargs="+", type=Path, help="video files with sound")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--labels", type=Path, help="class names: a JSON list or one name a line")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error("--top-k must be at least 1")
    try:
        if args.device == "cuda" and not torch.cuda.is_available():
            raise BadInput("--device cuda, but no CUDA device is available")
        results = predict(args.run, args.files, args.top_k, args.device, args.labels)
    except (BadInput, ConfigError, ValueError, OSError) as err:
        return refuse(err)
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    for result in results:
        print(f"{result['file']} ({result['windows']} window{'s' * (result['windows'] > 1)})")
        for entry in result["top"]:
            print(f"  {entry['score']:.3f}  {entry['class']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
