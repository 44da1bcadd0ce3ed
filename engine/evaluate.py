"""Evaluation of a fine-tuned model: mAP and top-1 accuracy (1-clip and multi-clip), or audio-video retrieval.

    python -m mavil.engine.evaluate --run RUN_DIR [--data DIR] [--device cpu]   # one process
    deepspeed --num_gpus 8 engine/evaluate.py --run RUN_DIR              # ranks split the set, scores gathered

Classification: every clip of the evaluation set once (each rank a contiguous part, predictions gathered
in rank order, the loader's last batch partial, never padded, so no clip counts twice); the 1-clip
prediction uses the centre 4-s window; the multi-clip one (video modes) averages the probabilities of
`finetune.eval_clips` uniformly spaced windows with the same audio (App. B "Inference", Table 11).
mAP is the mean over classes with at least one positive of the average precision (`scores.py`); accuracy
is top-1 against the first label. Retrieval: audio-to-video (and video-to-audio) R@1/5/10 and median rank
over the evaluation pairs, one similarity matrix product (`scores.retrieval_metrics`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

# absolute imports: the deepspeed launcher runs this file as a script
from mavil.cli import refuse
from mavil.config import DEVICES, Config, ConfigError, load_config
from mavil.data.health import DataHealth
from mavil.data.pipeline import Loader, model_inputs
from mavil.deps import MissingDependency
from mavil.model.classifier import Classifier
from mavil.model.weights import read_weights
from mavil.engine.launch import init_distributed
from mavil.engine.run import Plan, plan_evaluation
from mavil.engine.scores import accuracy, chance_recall, gather_predictions, mean_average_precision, retrieval_metrics


def _rank_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _loader(plan: Plan, health: DataHealth, device: torch.device, eval_clips: int) -> Loader:
    spec = dataclasses.replace(plan.eval_spec, eval_clips=eval_clips)
    rank, world = _rank_world()
    return Loader(health.root, spec, rank=rank, world_size=world, seed=plan.cfg.train.seed, device=device,
                  health=health)  # fmt: skip


@torch.no_grad()
def class_scores(model: Classifier, loader: Loader, multi_label: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (N, C) probabilities (averaged over a batch's video windows) and (N, C) labels, gathered over ranks."""
    dtype = next(model.parameters()).dtype
    probabilities, labels = [], []
    multi_clip = loader.spec.eval_clips > 1  # video (B, clips, 3, T, S, S): the Batch contract
    for batch in loader:
        audio, video, label = model_inputs(batch, dtype)
        logits = [model.predict(audio, window).float() for window in (video.unbind(1) if multi_clip else (video,))]
        probs = [clip.sigmoid() if multi_label else clip.softmax(dim=-1) for clip in logits]
        probabilities.append(torch.stack(probs).mean(dim=0))
        labels.append(label)
    return gather_predictions(torch.cat(probabilities)), gather_predictions(torch.cat(labels))


@torch.no_grad()
def retrieval_embeddings(model: Classifier, loader: Loader) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = next(model.parameters()).dtype
    pairs = [model.predict(*model_inputs(batch, dtype)[:2]) for batch in loader]
    return (
        gather_predictions(torch.cat([a for a, _ in pairs]).float()),
        gather_predictions(torch.cat([v for _, v in pairs]).float()),
    )


def evaluate(model: Classifier, plan: Plan, health: DataHealth, device: torch.device) -> dict:
    """Scores of `model` on the usable clips of the evaluation set `health` opened (every rank calls it; all get the
    same dict), with the clips skipped and repaired per kind (data_skipped, data_<kind>, ...: `mavil.data.health`)."""
    cfg = plan.cfg
    was_training = model.training
    model.eval()
    mode, ft = cfg.finetune.mode, cfg.finetune
    if mode == "retrieval":
        audio_emb, video_emb = retrieval_embeddings(model, _loader(plan, health, device, 1))
        result = {
            "pairs": len(audio_emb),
            **retrieval_metrics(audio_emb, video_emb, both_directions=True),
            "chance_R@1": chance_recall(len(audio_emb), 1),
        }
    else:
        multi_label = ft.loss == "bce"
        scores, labels = class_scores(model, _loader(plan, health, device, 1), multi_label)
        result = {
            "clips": len(scores),
            "mAP": mean_average_precision(scores, labels)[0],
            "accuracy": accuracy(scores, labels),
        }
        if mode != "audio" and ft.eval_clips > 1:
            scores, labels = class_scores(model, _loader(plan, health, device, ft.eval_clips), multi_label)
            result.update(
                {
                    f"mAP_{ft.eval_clips}clips": mean_average_precision(scores, labels)[0],
                    f"accuracy_{ft.eval_clips}clips": accuracy(scores, labels),
                }
            )
    model.train(was_training)
    return {**result, **health.tally(plan.windows).fields()}


def run_config(run_dir: Path, device: str | None = None) -> Config:
    """The config of a fine-tuning run directory (its config.json); `device` replaces its train.device (None: the
    run's)."""
    return load_config(run_dir / "config.json", [f"train.device={device}"] if device else [])


def load_run(run_dir: Path, device: torch.device, cfg: Config | None = None) -> tuple[Classifier, Config]:
    """The fine-tuned model of a run directory (its config.json and model.safetensors)."""
    cfg = cfg or run_config(run_dir)
    state, _ = read_weights(run_dir / "model.safetensors")
    classes = state["head.weight"].shape[0] if "head.weight" in state else 0
    model = Classifier(cfg.model, cfg.finetune.mode, classes, cfg.finetune.fusion_depth)
    model.load_state_dict(state)
    return model.to(device), cfg


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="a fine-tuning run directory")
    parser.add_argument(
        "--data", type=Path, help="evaluation shards (default: the run's finetune.eval_root or synthetic)"
    )
    parser.add_argument("--device", choices=DEVICES, help="cuda or cpu (default: the run's train.device)")
    parser.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher")
    return parser.parse_args(argv)


def checked_run(run_dir: Path, data: Path | None, device: str | None = None) -> Plan:
    """The evaluation's plan (`device` replacing the run's train.device), with the run's weights, the evaluation
    shards and the device checked; raises ConfigError or MissingDependency naming the problem. Nothing is started."""
    return plan_evaluation(run_config(run_dir, device), run_dir, data)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:  # refused before any work when the run directory or the shards cannot be evaluated: exit status 2
        plan = checked_run(args.run, args.data, args.device)
    except (ConfigError, MissingDependency) as err:
        return refuse(err)
    rank, _, device = init_distributed(plan.cfg.train.device)
    model, _ = load_run(args.run, device, plan.cfg)
    try:
        scores = evaluate(model, plan, plan.eval_set.open(), device)
    except ConfigError as err:  # UnusableData: more bad clips than data.max_bad_fraction (mavil.data.health)
        return refuse(err, show=rank == 0)
    if rank == 0:
        print(json.dumps(scores, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
