"""Fine-tuning (§4.3, App. B, Table 10): audio, video or audio+video classification, or contrastive
audio-video retrieval, from a pre-training export (or from random initialisation, the baseline).

    deepspeed engine/finetune.py --config configs/finetune/as20k.json finetune.init=runs/stage2/model.safetensors
    python engine/finetune.py --config configs/tiny/finetune.json finetune.mode=video

Only the pre-trained encoders are kept; their tokens are average-pooled into a linear head (audio+video:
through a 3-layer Transformer over both first, the video encoder at half the lr). Training adds the
fine-tuning masking (audio: 20% of time rows and frequency columns of patches; video: 20% of tokens),
SpecAugment, mixup with BCE (or CE without mixup), noise where the config says, the magnitude augmentation
(a random waveform gain, `finetune.magnitude_db`), and the weighted sampler of App. B or, for SPC, the
repetition of small classes (Table 10's *, `finetune.balance_fraction`). The loop, checkpoints and resume
are `trainer.Trainer`'s; after the last epoch the model is exported and evaluated on the evaluation set
(`evaluate.py`), the scores written to RUN_DIR/eval.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (the deepspeed launcher does): import as the package
    __package__ = "mavil.engine"
    import mavil.engine  # noqa: F401

import torch
import torch.nn.functional as F

from ..config import ConfigError
from ..data.pipeline import Loader, LoaderSpec
from ..data.sampling import BalancedRepeats, WeightedDraws, clip_weights
from ..kernels import info_nce, info_nce_global
from ..model.classifier import Classifier, load_encoders
from ..model.masking import random_masking, time_frequency_keep
from ..model.pretrained import load_inits
from .augment import add_noise, mixup, spec_augment
from .evaluate import evaluate, eval_root
from .launch import checked_health, dataset_root
from .optim import param_groups
from .preflight import check_finetuning
from .trainer import Trainer, main


class Finetuner(Trainer):
    check_inputs = staticmethod(check_finetuning)

    def __init__(self, cfg, rank, world, device):
        self.root = dataset_root(cfg.data)
        self.health = checked_health(self.root, cfg.data)  # only usable clips are read; refused above the ceiling
        checked_health(eval_root(cfg), cfg.data)  # the evaluation set too: refused now rather than after training
        self.manifest = self.health.manifest
        self.num_classes = len(self.manifest["label_names"])
        self.mode = cfg.finetune.mode
        self.tokens_per_sample = (cfg.model.audio_tokens if self.mode != "video" else 0) + (
            cfg.model.video_tokens if self.mode != "audio" else 0
        )
        self.draws = self._sampler(cfg, rank, world)
        super().__init__(cfg, rank, world, device)

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
                f"{self.cfg.source}: finetune.balance_class = {name!r}: not a class of {self.root} "
                f"(its label names: {', '.join(names[:10])}{', ...' if len(names) > 10 else ''})"
            )
        return None if name is None else names.index(name)

    def build_model(self) -> torch.nn.Module:
        ft = self.cfg.finetune
        model = Classifier(self.cfg.model, self.mode, self.num_classes, ft.fusion_depth)
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
        spec = LoaderSpec.from_config(self.cfg, self.cfg.train.micro_batch, train=True)
        spec.gain_db = self.cfg.finetune.magnitude_db
        seed = self.cfg.train.seed * 1000 + epoch
        if self.draws is not None:
            return Loader(
                self.root,
                spec,
                self.rank,
                self.world,
                seed,
                self.device,
                clips=self.draws.epoch(epoch).tolist(),
                health=self.health,
            )
        return Loader(
            self.root,
            spec,
            rank=(self.rank + epoch) % self.world,
            world_size=self.world,
            seed=seed,
            device=self.device,
            health=self.health,
        )

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        batch = self.augment(batch)
        audio, video = batch["audio"].to(self.dtype), batch["video"].to(self.dtype)
        audio_keep, video_keep = self.keep_ids(audio.shape[0])
        if self.mode == "retrieval":
            a_emb, v_emb = self.engine(audio, video, audio_keep, video_keep)
            contrast = info_nce_global if self.cfg.model.global_negatives else info_nce
            return {"loss": contrast(a_emb, v_emb, self.cfg.finetune.tau, symmetric=True)}
        logits = self.engine(audio, video, audio_keep, video_keep).float()
        if self.cfg.finetune.loss == "bce":
            return {"loss": F.binary_cross_entropy_with_logits(logits, batch["label"])}
        return {"loss": F.cross_entropy(logits, batch["label"].argmax(dim=1))}

    def augment(self, batch: dict) -> dict:
        ft, data = self.cfg.finetune, self.cfg.data
        audio = batch["audio"]
        if ft.specaug_time or ft.specaug_freq:
            audio = spec_augment(audio, ft.specaug_time, ft.specaug_freq, fill=-data.audio_mean / (2 * data.audio_std))
        if ft.noise:
            audio = add_noise(audio)
        batch = {**batch, "audio": audio, "label": batch["label"].to(audio.device)}
        return mixup(batch, ft.mixup) if ft.mixup > 0 else batch

    def keep_ids(self, batch: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Fine-tuning masking: the tokens each encoder keeps (None: all)."""
        ft, m = self.cfg.finetune, self.cfg.model
        audio_keep = video_keep = None
        if self.mode != "video" and (ft.mask_time or ft.mask_freq):
            grid = (m.audio_frames // m.audio_patch[0], m.audio_mel_bins // m.audio_patch[1])
            audio_keep = time_frequency_keep(batch, grid, ft.mask_time, ft.mask_freq, self.device)
        if self.mode != "audio" and ft.mask_video:
            video_keep = random_masking(batch, m.video_tokens, ft.mask_video, self.device).ids_keep
        return audio_keep, video_keep

    def finish(self) -> Path:
        path = self.export()
        scores = evaluate(self.engine.module, self.cfg, eval_root(self.cfg), self.device)
        if self.rank == 0:
            (self.run_dir / "eval.json").write_text(json.dumps(scores, indent=1) + "\n")
            print(
                "evaluation: "
                + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in scores.items())
            )
        return path


if __name__ == "__main__":
    sys.exit(main(Finetuner, None, __doc__))
