"""Fine-tuning (§4.3, App. B, Table 10): audio, video or audio+video classification, or contrastive
audio-video retrieval, from a pre-training export (or from random initialisation, the baseline).

    deepspeed engine/finetune.py --config configs/finetune/as20k.json finetune.init=runs/stage2/model.safetensors
    python engine/finetune.py --config configs/tiny/finetune.json finetune.mode=video

Only the pre-trained encoders are kept (`mavil.model.classifier`); training adds the fine-tuning masking and
augmentations the config names. The loop, checkpoints and resume are `trainer.Trainer`'s; after the last epoch the
model is exported and evaluated (`evaluate.py`), the scores written to RUN_DIR/eval.json. Details:
docs/training.md#fine-tuning.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

# absolute imports: the deepspeed launcher runs this file as a script
from mavil.config import ConfigError
from mavil.data.pipeline import Loader, model_inputs
from mavil.data.sampling import BalancedRepeats, WeightedDraws, clip_weights
from mavil.model.classifier import Classifier, load_encoders
from mavil.model.pretrained import load_inits
from mavil.engine.augment import add_noise, mixup, spec_augment
from mavil.engine.evaluate import evaluate
from mavil.engine.optim import param_groups
from mavil.engine.run import plan_finetuning
from mavil.engine.trainer import Trainer, main


class Finetuner(Trainer):
    make_plan = staticmethod(plan_finetuning)

    def __init__(self, plan, rank, world, device):
        super().__init__(plan, rank, world, device)
        self.eval_health = plan.eval_set.open()  # the evaluation set too: refused now rather than after training
        cfg = self.cfg
        self.manifest = self.health.manifest
        self.num_classes = len(self.manifest["label_names"])
        self.mode = cfg.finetune.mode
        self.tokens_per_sample = (cfg.model.audio_tokens if self.mode != "video" else 0) + (
            cfg.model.video_tokens if self.mode != "audio" else 0
        )
        self.draws = self._sampler(cfg, rank, world)

    def _sampler(self, cfg, rank: int, world: int) -> WeightedDraws | BalancedRepeats | None:
        """Each epoch's clips for this rank: weighted draws (App. B), classes repeated (SPC), or None (every clip
        once)."""
        ft, labels = cfg.finetune, self.health.labels()
        if ft.weighted_sampling:
            return WeightedDraws(clip_weights(labels, self.num_classes), ft.sampling_size, rank, world, cfg.train.seed)
        if ft.balance_fraction > 0:
            return BalancedRepeats(labels, ft.balance_fraction, self._balance_reference(), rank, world, cfg.train.seed)
        return None

    def _balance_reference(self) -> int | None:
        name, names = self.cfg.finetune.balance_class, self.manifest["label_names"]
        if name is not None and name not in names:
            raise ConfigError(
                f"{self.cfg.source}: finetune.balance_class = {name!r}: not a class of {self.health.root} "
                f"(its label names: {', '.join(names[:10])}{', ...' if len(names) > 10 else ''})"
            )
        return None if name is None else names.index(name)

    def build_model(self) -> torch.nn.Module:
        ft = self.cfg.finetune
        model = Classifier(
            self.cfg.model,
            self.mode,
            self.num_classes,
            ft.fusion_depth,
            mask_time=ft.mask_time,
            mask_freq=ft.mask_freq,
            mask_video=ft.mask_video,
            loss=ft.loss,
            tau=ft.tau,
        )
        for report in load_inits(model, self.cfg.model):  # model.video_init / audio_init; finetune.init then wins
            if self.rank == 0:
                print(report)
        if ft.init is not None:
            loaded = load_encoders(model, ft.init)
            if self.rank == 0:
                print(f"initialised {', '.join(loaded)} from {ft.init}")
        return model

    def param_groups(self, model: torch.nn.Module) -> list[dict]:
        scales = {"video_encoder.": self.cfg.finetune.video_lr_scale} if self.mode == "audio+video" else None
        return param_groups(model, self.cfg.train.weight_decay, scales)

    def epoch_loader(self, epoch: int) -> Loader:
        spec, seed = self.plan.train_spec, self.plan.seed(epoch)
        if self.draws is not None:
            return Loader(
                self.health.root,
                spec,
                self.rank,
                self.world,
                seed,
                self.device,
                clips=self.draws.epoch(epoch).tolist(),
                health=self.health,
            )
        return Loader(
            self.health.root,
            spec,
            rank=(self.rank + epoch) % self.world,
            world_size=self.world,
            seed=seed,
            device=self.device,
            health=self.health,
        )

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """Data augmentation here; the fine-tuning masking and the loss are the model's (`Classifier.forward`)."""
        return self.engine(*model_inputs(self.augment(batch), self.dtype))

    def augment(self, batch: dict) -> dict:
        ft, data = self.cfg.finetune, self.cfg.data
        audio = batch["audio"]
        if ft.specaug_time or ft.specaug_freq:
            audio = spec_augment(audio, ft.specaug_time, ft.specaug_freq, fill=-data.audio_mean / (2 * data.audio_std))
        if ft.noise:
            audio = add_noise(audio)
        batch = {**batch, "audio": audio, "label": batch["label"].to(audio.device)}
        return mixup(batch, ft.mixup) if ft.mixup > 0 else batch

    def finish(self) -> Path:
        path = self.export()
        scores = evaluate(self.engine.module, self.plan, self.eval_health, self.device)
        if self.rank == 0:
            (self.run_dir / "eval.json").write_text(json.dumps(scores, indent=1) + "\n")
            print(
                "evaluation: "
                + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in scores.items())
            )
        return path


if __name__ == "__main__":
    sys.exit(main(Finetuner, None, __doc__))
