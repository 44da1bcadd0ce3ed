"""The run configuration's schema: one JSON file with `model`, `data`, `train`, `deepspeed` and `finetune` sections.

`model`, `data`, `train` and `finetune` are typed (the dataclasses below; defaults: the paper's stage-1 settings);
`deepspeed` is DeepSpeed's own section, its keys checked here and its batch fields derived by the run plan
(`mavil.engine.run`). Any value can be overridden as `section.key=value` (the value parsed as JSON where it parses).

A config that cannot run on its own terms (unknown key, wrong type, value out of range, contradicting values) raises
`ConfigError` naming the file, the key and the value. What needs more than the file (the files it names, the world
size, the machine) is the run plan's to check. A leaf: it imports only `mavil.constants`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from .constants import AUDIOSET_MEAN, AUDIOSET_STD

FUSIONS = ("vanilla", "mbt")
ATTENTION_BACKENDS = ("auto", "xformers", "sdpa", "math")
DEVICES = ("cuda", "cpu")
DEEPSPEED_BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


class ConfigError(ValueError):
    """A configuration that cannot run. The message names the key and the offending value."""


def num_visible(num_tokens: int, mask_ratio: float) -> int:
    """Tokens an encoder sees at `mask_ratio`: round(N * (1 - ratio)), halves rounded up.

    The paper's counts: 512 audio tokens at 80% -> 102 (103 with [CLS]), 784 video tokens -> 157 (158).
    """
    return int(math.floor(num_tokens * (1.0 - mask_ratio) + 0.5))


@dataclass
class ModelConfig:
    """The network and its losses (paper §3, §4.2, App. B). Defaults: stage-1 MAViL with ViT-B encoders."""

    stage: int = 1  # 1: raw targets (Eq. 4); 2: the frozen teacher's fusion outputs (Eq. 6)
    teacher: Optional[str] = None  # stage 2: consolidated .safetensors of a stage-1 model
    # inputs: spectrogram 1 x frames x mel bins, video 3 x frames x size x size
    audio_frames: int = 1024
    audio_mel_bins: int = 128
    audio_patch: list[int] = field(default_factory=lambda: [16, 16])  # time, frequency
    video_frames: int = 8
    video_size: int = 224
    video_patch: list[int] = field(default_factory=lambda: [2, 16, 16])  # time, height, width
    # fixed positions of the encoders (mavil.model.positions): video "3d" (channels split over time, height, width)
    # or "2d+t" (MAE's ImageNet 2-D table plus a time code, what MAE-initialised blocks know); audio "2d" (time, then
    # frequency channels) or "mae" (AudioMAE's table: frequency channels first)
    video_pos: str = "3d"
    audio_pos: str = "2d"
    # encoder initialisations (mavil.model.pretrained): MAE-layout .pth checkpoints ({'model': state dict}); the video
    # one is an ImageNet MAE whose 2-D patch projection is inflated over the tubelet's time extent. None: random.
    video_init: Optional[str] = None
    audio_init: Optional[str] = None
    # uni-modal encoders (one per modality) and the fusion encoder
    encoder_dim: int = 768
    encoder_depth: int = 12
    encoder_heads: int = 12
    fusion: str = "vanilla"  # "vanilla" (joint attention) or "mbt" (bottleneck tokens)
    fusion_depth: int = 2
    bottleneck_tokens: int = 4  # mbt only
    # False: the layout of the authors' ViT-MM code (what AV-SUPERB's MAViL expert runs): encoders without a final
    # LayerNorm, their raw block outputs into the fusion; the audio+video classifier fuses [CLS] and patch tokens
    # and pools each modality into a 2*dim fc_norm and head. True: MAE's pre-training encoder (final LayerNorm).
    encoder_norm: bool = True
    # decoders (one per modality)
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    mlp_ratio: float = 4.0
    drop_path: float = 0.0
    attention: str = "auto"  # "auto", "xformers", "sdpa" or "math"
    # masking and losses
    mask_ratio: float = 0.8
    norm_pix_loss: bool = True  # normalise each target token by its own mean and variance
    alpha: float = 0.1  # weight of the inter-modal InfoNCE
    tau_inter: float = 0.1
    beta: float = 0.01  # weight of the intra-modal InfoNCE
    tau_intra: float = 1.0
    contrastive_symmetric: bool = False  # Eq. 2 is one-directional; True averages both directions
    global_negatives: bool = False  # contrast against the embeddings of every data-parallel rank, not the local batch
    # clips per InfoNCE group (mavil.model.contrastive): 8, the paper's clips per GPU, on any number of GPUs; a larger
    # micro-batch splits into groups, smaller ones are gathered over ranks. None: the micro-batch (or all ranks' with
    # global_negatives, which excludes a group)
    contrastive_group: Optional[int] = 8
    grad_checkpointing: bool = False  # recompute each transformer block in backward: less memory, more compute

    @property
    def audio_tokens(self) -> int:
        return (self.audio_frames // self.audio_patch[0]) * (self.audio_mel_bins // self.audio_patch[1])

    @property
    def video_tokens(self) -> int:
        t, h, w = self.video_patch
        return (self.video_frames // t) * (self.video_size // h) * (self.video_size // w)

    def validate(self, check: Checker) -> None:
        check.choice("stage", self.stage, (1, 2))
        if self.stage == 2:
            check.that(
                "teacher", self.teacher, self.teacher is not None, "stage 2 needs the path of a stage-1 weights file"
            )
        for key in (
            "audio_frames",
            "audio_mel_bins",
            "video_frames",
            "video_size",
            "encoder_dim",
            "encoder_depth",
            "encoder_heads",
            "decoder_dim",
            "decoder_depth",
            "decoder_heads",
        ):
            check.positive(key, getattr(self, key))
        check.that("fusion_depth", self.fusion_depth, self.fusion_depth >= 0, "must be >= 0")
        check.length("audio_patch", self.audio_patch, 2)
        check.length("video_patch", self.video_patch, 3)
        for key in ("audio_patch", "video_patch"):
            check.that(key, getattr(self, key), all(p > 0 for p in getattr(self, key)), "patch sizes must be positive")
        inputs = {
            "audio_patch": (self.audio_frames, self.audio_mel_bins),
            "video_patch": (self.video_frames, self.video_size, self.video_size),
        }
        for key, size in inputs.items():
            patch = getattr(self, key)
            check.that(
                key,
                patch,
                all(s % p == 0 for s, p in zip(size, patch)),
                f"patch does not divide the input size {list(size)}",
            )
        for prefix in ("encoder", "decoder"):
            dim, heads = getattr(self, f"{prefix}_dim"), getattr(self, f"{prefix}_heads")
            check.that(f"{prefix}_heads", heads, dim % heads == 0, f"must divide {prefix}_dim={dim}")
            check.that(f"{prefix}_dim", dim, dim % 2 == 0, "must be even (sin-cos positions)")
        check.choice("fusion", self.fusion, FUSIONS)
        check.choice("video_pos", self.video_pos, ("3d", "2d+t"))
        check.choice("audio_pos", self.audio_pos, ("2d", "mae"))
        for key in ("video_pos", "audio_pos"):  # MAE's 2-D table splits the channels in halves of sin and cos
            check.that(
                key,
                getattr(self, key),
                getattr(self, key) in ("3d", "2d") or self.encoder_dim % 4 == 0,
                f"needs encoder_dim divisible by 4, got {self.encoder_dim}",
            )
        if self.fusion == "mbt":
            check.positive("bottleneck_tokens", self.bottleneck_tokens)
        check.choice("attention", self.attention, ATTENTION_BACKENDS)
        check.positive("mlp_ratio", self.mlp_ratio)
        check.that("drop_path", self.drop_path, 0.0 <= self.drop_path < 1.0, "must be in [0, 1)")
        check.that("mask_ratio", self.mask_ratio, 0.0 < self.mask_ratio < 1.0, "must be in (0, 1)")
        self._validate_visible(check)
        for key in ("alpha", "beta"):
            check.that(key, getattr(self, key), getattr(self, key) >= 0, "must be >= 0")
        for key in ("tau_inter", "tau_intra"):
            check.positive(key, getattr(self, key))
        if self.contrastive_group is not None:
            check.that(
                "contrastive_group",
                self.contrastive_group,
                self.contrastive_group >= 2,
                "must be >= 2 (a query needs a negative) or null",
            )
            check.that(
                "contrastive_group",
                self.contrastive_group,
                not self.global_negatives,
                "excludes model.global_negatives = true (every rank's clips, a number that depends on the "
                "GPUs): set model.contrastive_group=null to use those",
            )

    def _validate_visible(self, check: Checker) -> None:
        for name, tokens in (("audio", self.audio_tokens), ("video", self.video_tokens)):
            visible = num_visible(tokens, self.mask_ratio)
            check.that("mask_ratio", self.mask_ratio, visible >= 1, f"leaves no visible {name} token of {tokens}")
            if self.beta > 0:  # the intra-modal second view is drawn from the masked tokens, disjoint from the first
                check.that(
                    "mask_ratio",
                    self.mask_ratio,
                    2 * visible <= tokens,
                    f"two disjoint views of {visible} {name} tokens do not fit in {tokens} "
                    f"(needs mask_ratio >= 0.5 while beta > 0)",
                )


@dataclass
class DataConfig:
    """Where clips come from and how they are normalised and augmented (App. B, Table 10)."""

    root: Optional[str] = None  # shard directory; None: the embedded synthetic dataset
    audio_mean: float = AUDIOSET_MEAN  # fbank statistics; normalised as (x - mean) / (2 * std)
    audio_std: float = AUDIOSET_STD
    sample_rate: int = 16000
    video_fps: float = 2.0  # fixed: prepare stores every clip's video at 2 fps (the paper's rate)
    crop_scale: list[float] = field(default_factory=lambda: [0.2, 1.0])  # multi-scale random crop
    flip_prob: float = 0.5
    time_shift: bool = True  # "R": random start with cyclic rolling in time
    num_workers: int = 4  # DALI threads per rank
    max_bad_fraction: float = 0.05  # refuse a set with more unusable clips than this fraction (mavil.data.health)
    # the embedded synthetic dataset, used when root is None (generated once into the cache)
    synthetic_clips: int = 512
    synthetic_classes: int = 8
    synthetic_duration: int = 10  # seconds
    synthetic_seed: int = 0

    def validate(self, check: Checker) -> None:
        check.positive("audio_std", self.audio_std)
        check.positive("sample_rate", self.sample_rate)
        check.that(
            "video_fps",
            self.video_fps,
            self.video_fps == 2.0,
            "must be 2: the shards store video at 2 fps (python -m mavil.data.prepare), the paper's rate",
        )
        check.length("crop_scale", self.crop_scale, 2)
        low, high = self.crop_scale
        check.that("crop_scale", self.crop_scale, 0.0 < low <= high <= 1.0, "needs 0 < min <= max <= 1")
        check.that("flip_prob", self.flip_prob, 0.0 <= self.flip_prob <= 1.0, "must be in [0, 1]")
        check.that("num_workers", self.num_workers, self.num_workers >= 0, "must be >= 0")
        check.that("max_bad_fraction", self.max_bad_fraction, 0.0 <= self.max_bad_fraction <= 1.0, "must be in [0, 1]")
        for key in ("synthetic_clips", "synthetic_classes", "synthetic_duration"):
            check.positive(key, getattr(self, key))


@dataclass
class TrainConfig:
    """Optimisation (Table 10): AdamW, lr_eff = lr_base * global_batch / 256, warm-up then half-cycle cosine."""

    global_batch: int = 512
    micro_batch: int = 8  # per GPU and step; accumulation fills the rest of global_batch
    epochs: int = 20
    warmup_epochs: float = 4.0
    lr_base: float = 2e-4
    min_lr: float = 1e-6
    weight_decay: float = 1e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    seed: int = 0
    output_dir: str = "runs/stage1"
    log_every: int = 10  # optimizer steps between metrics lines
    checkpoint_every: int = 1000  # optimizer steps between checkpoints (0: only at epoch ends)
    max_steps: Optional[int] = None  # stop after this many optimizer steps (tests, benchmarks)
    max_bad_steps: int = 10  # optimizer steps in a row skipped for a non-finite loss or gradient before the run stops
    record_keys: bool = False  # append each rank's clip keys per epoch to keys-rank<r>.jsonl (audits of the data order)
    device: str = (
        "cuda"  # "cuda": one GPU per rank, refused where torch sees none; "cpu": train on the CPU (demo, tests)
    )
    compile: bool = False  # wrap the model in torch.compile (off until measured on a GPU)
    restart: bool = False  # start afresh in a run directory that holds a run: its checkpoints and logs are replaced

    @property
    def lr(self) -> float:
        return self.lr_base * self.global_batch / 256

    def validate(self, check: Checker) -> None:
        check.positive("global_batch", self.global_batch)
        check.positive("micro_batch", self.micro_batch)
        check.that(
            "micro_batch",
            self.micro_batch,
            self.global_batch % self.micro_batch == 0,
            f"must divide global_batch={self.global_batch}",
        )
        check.positive("epochs", self.epochs)
        check.that(
            "warmup_epochs",
            self.warmup_epochs,
            0 <= self.warmup_epochs <= self.epochs,
            f"must be in [0, epochs={self.epochs}]",
        )
        check.positive("lr_base", self.lr_base)
        check.that(
            "min_lr",
            self.min_lr,
            0 <= self.min_lr <= self.lr,
            f"must be in [0, lr_base * global_batch / 256 = {self.lr:g}]",
        )
        check.that("weight_decay", self.weight_decay, self.weight_decay >= 0, "must be >= 0")
        check.length("betas", self.betas, 2)
        check.that("betas", self.betas, all(0.0 <= b < 1.0 for b in self.betas), "each must be in [0, 1)")
        check.positive("log_every", self.log_every)
        check.that("checkpoint_every", self.checkpoint_every, self.checkpoint_every >= 0, "must be >= 0")
        if self.max_steps is not None:
            check.positive("max_steps", self.max_steps)
        check.positive("max_bad_steps", self.max_bad_steps)
        check.choice("device", self.device, DEVICES)
        check.that("output_dir", self.output_dir, self.output_dir.strip() != "", "must name a directory")


FINETUNE_MODES = ("audio", "video", "audio+video", "retrieval")


@dataclass
class FinetuneConfig:
    """Fine-tuning and evaluation (§4.3, App. B, Table 10); unused by pre-training. The optimiser, epochs, batch
    and lr are the `train` section's, drop path the model's, the dataset mean and std the data's."""

    mode: str = "audio"  # "audio", "video", "audio+video" (classification) or "retrieval" (contrastive pairs)
    init: Optional[str] = None  # a pre-training export (.safetensors); None: random initialisation
    loss: str = "bce"  # "bce" (multi-label, or with mixup) or "ce" (single-label, no mixup)
    mixup: float = 0.5  # Beta(mixup, mixup) mixing weight; 0: off
    specaug_time: int = 192  # SpecAugment: up to this many frames masked (one time mask)
    specaug_freq: int = 48  # and up to this many mel bins (one frequency mask)
    mask_time: float = 0.2  # fine-tuning masking: fraction of the audio's time patch-rows dropped
    mask_freq: float = 0.2  # and of its frequency patch-columns
    mask_video: float = 0.2  # fraction of the video tokens dropped (over space and time)
    noise: bool = False  # "N": random noise at 20 dB SNR added to the spectrograms
    magnitude_db: float = 6.0  # magnitude augmentation: a random waveform gain in [-x, x] dB (the paper names no range)
    weighted_sampling: bool = False  # App. B: draws with replacement, weights from label frequencies
    sampling_size: int = 200_000  # draws per epoch with weighted sampling
    balance_fraction: float = 0.0  # Table 10's * (SPC): classes repeated up to this fraction of the reference's size
    balance_class: Optional[str] = None  # the reference class by label name; None: the largest class
    fusion_depth: int = 3  # audio+video: vanilla Transformer layers over both encoders' tokens
    video_lr_scale: float = 0.5  # audio+video: the video encoder's lr factor
    eval_clips: int = 10  # multi-clip inference: uniformly spaced video windows, predictions averaged
    eval_root: Optional[str] = None  # evaluation shards; None: a synthetic set of another seed
    eval_synthetic_seed: int = 1
    eval_synthetic_clips: int = 128
    tau: float = 0.1  # retrieval: InfoNCE temperature

    def validate(self, check: Checker) -> None:
        check.choice("mode", self.mode, FINETUNE_MODES)
        check.choice("loss", self.loss, ("bce", "ce"))
        check.that("mixup", self.mixup, self.mixup >= 0, "must be >= 0")
        check.that(
            "loss",
            self.loss,
            self.loss == "bce" or self.mixup == 0,
            "mixed labels need BCE: use loss bce or finetune.mixup=0",
        )
        for key in ("specaug_time", "specaug_freq"):
            check.that(key, getattr(self, key), getattr(self, key) >= 0, "must be >= 0")
        for key in ("mask_time", "mask_freq", "mask_video"):
            check.that(key, getattr(self, key), 0.0 <= getattr(self, key) < 1.0, "must be in [0, 1)")
        check.that("magnitude_db", self.magnitude_db, self.magnitude_db >= 0, "must be >= 0")
        check.that("balance_fraction", self.balance_fraction, self.balance_fraction >= 0, "must be >= 0")
        check.that(
            "balance_fraction",
            self.balance_fraction,
            self.balance_fraction == 0 or not self.weighted_sampling,
            "class repetition and weighted sampling exclude each other: set one of them",
        )
        for key in ("sampling_size", "eval_clips", "eval_synthetic_clips"):
            check.positive(key, getattr(self, key))
        check.that("fusion_depth", self.fusion_depth, self.fusion_depth >= 0, "must be >= 0")
        check.positive("video_lr_scale", self.video_lr_scale)
        check.positive("tau", self.tau)


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "finetune": FinetuneConfig}


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    deepspeed: dict = field(default_factory=dict)
    source: str = "<defaults>"  # the file it came from, for messages

    def to_dict(self) -> dict:
        raw = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        raw["deepspeed"] = json.loads(json.dumps(self.deepspeed))
        return raw


class Checker:
    """Raises ConfigError for the first failed check, naming `source`, `section.key` and the value."""

    def __init__(self, source: str, section: str):
        self.source, self.section = source, section

    def fail(self, key: str, value: Any, why: str) -> typing.NoReturn:
        raise ConfigError(f"{self.source}: {self.section}.{key} = {json.dumps(value)}: {why}")

    def that(self, key: str, value: Any, ok: bool, why: str) -> None:
        if not ok:
            self.fail(key, value, why)

    def positive(self, key: str, value: Any) -> None:
        self.that(key, value, value > 0, "must be > 0")

    def choice(self, key: str, value: Any, allowed: tuple) -> None:
        self.that(key, value, value in allowed, f"must be one of {list(allowed)}")

    def length(self, key: str, value: list, n: int) -> None:
        self.that(key, value, len(value) == n, f"must be a list of {n} numbers")


def _coerce(value: Any, hint: Any, check: Checker, key: str) -> Any:
    """Returns `value` as type `hint` (int is accepted for float), or fails naming the key."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, check, key)
    if origin is list:
        if not isinstance(value, list):
            check.fail(key, value, f"must be a list, got {type(value).__name__}")
        return [_coerce(v, args[0], check, key) for v in value]
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        check.that(key, value, math.isfinite(value), "must be a finite number")
        return float(value)
    if hint in (int, bool, str) and type(value) is hint:
        if hint is int and key.endswith("seed"):  # seeds feed NumPy and DALI: 32 bits
            check.that(key, value, 0 <= value < 2**32, f"must be in [0, {2**32 - 1}]")
        return value
    if hint is dict and isinstance(value, dict):
        return value
    check.fail(key, value, f"must be {hint.__name__}, got {type(value).__name__}")


RETIRED_KEYS = {  # keys that did nothing, accepted as null only (configs and run directories that still hold them)
    "train.grad_clip": "no longer a key: the paper clips no gradients; deepspeed.gradient_clipping clips if you must"
}


def _section_from_dict(cls: type, raw: Any, source: str, section: str):
    check = Checker(source, section)
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: section '{section}' must be a JSON object, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    for key in list(raw):
        if f"{section}.{key}" in RETIRED_KEYS and raw[key] is None:  # older files and run directories say null
            raw = {k: v for k, v in raw.items() if k != key}
        elif f"{section}.{key}" in RETIRED_KEYS:
            check.fail(key, raw[key], RETIRED_KEYS[f"{section}.{key}"])
        elif key not in known:
            raise ConfigError(f"{source}: unknown key '{section}.{key}' (known keys: {', '.join(known)})")
    values = {key: _coerce(value, hints[key], check, key) for key, value in raw.items()}
    obj = cls(**values)
    obj.validate(check)
    return obj


def model_config_from_dict(raw: Any, source: str = "<dict>") -> ModelConfig:
    """Builds and validates the `model` section alone (as stored beside exported weights)."""
    return _section_from_dict(ModelConfig, raw, source, "model")


def config_from_dict(raw: Any, source: str = "<dict>") -> Config:
    """Builds and validates a Config from parsed JSON; missing sections and keys take their defaults."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the config must be a JSON object with sections {[*SECTIONS, 'deepspeed']}")
    for name in raw:
        if name not in (*SECTIONS, "deepspeed"):
            raise ConfigError(
                f"{source}: unknown section '{name}' (known sections: {', '.join([*SECTIONS, 'deepspeed'])})"
            )
    sections = {name: _section_from_dict(cls, raw.get(name, {}), source, name) for name, cls in SECTIONS.items()}
    deepspeed = raw.get("deepspeed", {})
    if not isinstance(deepspeed, dict):
        raise ConfigError(f"{source}: section 'deepspeed' must be a JSON object, got {type(deepspeed).__name__}")
    check_deepspeed_keys(deepspeed, source, sections["train"].device)
    return Config(**sections, deepspeed=deepspeed, source=source)


DEEPSPEED_KEYS = (  # the top-level keys of DeepSpeed's config that a run may set here
    *DEEPSPEED_BATCH_KEYS,
    "fp16",
    "bf16",
    "amp",
    "gradient_clipping",
    "prescale_gradients",
    "gradient_predivide_factor",
    "sparse_gradients",
    "zero_optimization",
    "zero_allow_untested_optimizer",
    "zero_force_ds_cpu_optimizer",
    "steps_per_print",
    "wall_clock_breakdown",
    "dump_state",
    "memory_breakdown",
    "flops_profiler",
    "activation_checkpointing",
    "comms_logger",
    "tensorboard",
    "wandb",
    "csv_monitor",
    "comet",
    "communication_data_type",
    "checkpoint",
    "data_types",
    "aio",
    "timers",
    "torch_autocast",
    "compile",
)
DEEPSPEED_OBJECTS = (
    "fp16",
    "bf16",
    "amp",
    "zero_optimization",
    "flops_profiler",
    "activation_checkpointing",
    "comms_logger",
    "tensorboard",
    "wandb",
    "csv_monitor",
    "comet",
    "checkpoint",
    "data_types",
    "aio",
    "timers",
    "torch_autocast",
    "compile",
)
DEEPSPEED_OWNED = {
    "optimizer": "train.lr_base, train.betas and train.weight_decay (AdamW)",
    "scheduler": "train.lr_base, train.min_lr, train.warmup_epochs and train.epochs (warm-up, cosine)",
}


def check_deepspeed_keys(deepspeed: dict, source: str, device: str) -> None:
    """The `deepspeed` section's keys: known to DeepSpeed, not the optimizer or schedule (the engine owns them), the
    sections that are objects objects, and no fp16 on a CPU (DeepSpeed's CPU accelerator has no fp16 optimizer)."""
    for key, value in deepspeed.items():
        if key in DEEPSPEED_OWNED:
            raise ConfigError(
                f"{source}: deepspeed.{key}: the engine sets the optimizer and its schedule itself "
                f"(AdamW, warm-up then half-cycle cosine); set {DEEPSPEED_OWNED[key]} instead"
            )
        if key not in DEEPSPEED_KEYS:
            raise ConfigError(f"{source}: unknown key 'deepspeed.{key}' (known keys: {', '.join(DEEPSPEED_KEYS)})")
        if key in DEEPSPEED_OBJECTS and not isinstance(value, dict):
            raise ConfigError(
                f"{source}: deepspeed.{key} = {json.dumps(value)}: must be a JSON object (for "
                f'example {{"{"stage" if key == "zero_optimization" else "enabled"}": ...}})'
            )
    if device == "cpu" and deepspeed.get("fp16", {}).get("enabled", False):
        raise ConfigError(
            f"{source}: deepspeed.fp16.enabled = true: fp16 does not train on the CPU "
            f'(train.device = "cpu"); use deepspeed.bf16.enabled or fp32'
        )


def parse_override(text: str) -> tuple[list[str], Any]:
    """'section.key=value' -> (['section', 'key'], value); the value is JSON where it parses, else a string."""
    path, sep, value_text = text.partition("=")
    keys = path.strip().split(".")
    if not sep or len(keys) < 2 or not all(keys):
        raise ConfigError(f"override '{text}': expected section.key=value (for example model.mask_ratio=0.7)")
    try:
        value = json.loads(value_text)
    except json.JSONDecodeError:
        value = value_text
    return keys, value


def apply_overrides(raw: dict, overrides: typing.Iterable[str]) -> dict:
    """Returns a copy of `raw` with each 'section.key=value' set; unknown keys are caught by validation."""
    raw = json.loads(json.dumps(raw))
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{key}' holds {json.dumps(child)}, not an object")
            node = child
        node[keys[-1]] = value
    return raw


def load_config(path: str | os.PathLike, overrides: typing.Iterable[str] = ()) -> Config:
    """Reads a JSON config, applies command-line overrides, validates; raises ConfigError naming the problem."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {err.start}); a config is JSON text") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    return config_from_dict(apply_overrides(raw, overrides), source=str(path))
