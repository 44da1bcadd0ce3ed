"""The run plan: what a run needs, resolved once from its config before the process group starts.

    plan = plan_pretraining(cfg, world)    # or plan_finetuning(cfg, world), plan_evaluation(cfg, run_dir, data)

A plan holds the DeepSpeed dict (batch fields derived for `world` ranks), the training and evaluation sets (shards
or the embedded synthetic set; `DataSet.open` checks their health once, split over the ranks), the loader specs,
the windows the health tally counts with, and the seed rule. Building it refuses, in one line (ConfigError naming
file, key and value, or MissingDependency naming the pip requirement; exit status 2), what cannot run: the files the
config names, the machine, the batch, the run directory. The checks, one by one: docs/training.md#the-run-plan.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist

from ..config import DEEPSPEED_BATCH_KEYS, Checker, Config, ConfigError
from ..data.health import DataHealth, Windows, ensure_health
from ..data.pipeline import LoaderSpec
from ..data.shards import read_manifest
from ..data.synthetic import ensure_synthetic
from ..deps import require
from ..model.attention import why_xformers_unavailable
from ..model.classifier import encoder_names
from ..model.contrastive import check_groups
from ..model.pretrained import SOURCES, check_init
from ..model.weights import architecture_differences, read_header, stored_architecture
from ..seeds import seed_for
from .launch import rank_zero_first, why_no_cuda
from .numerics import check_deepspeed

TEACHER_PARTS = ("audio_encoder", "video_encoder", "fusion")  # what stage 2 rebuilds of its teacher
RUN_PACKAGES = ("nvidia.dali.plugin.pytorch", "deepspeed")  # DALI first: DeepSpeed takes seconds to import


@dataclass(frozen=True)
class DataSet:
    """A set a run reads: the shards at `root`, or (root None) the embedded synthetic set `synthetic` describes."""

    root: Path | None
    synthetic: dict  # ensure_synthetic's clips, classes, seed, duration
    max_bad_fraction: float  # data.max_bad_fraction: the health ceiling

    def path(self) -> Path:
        """The shard directory; the synthetic set is generated once into the cache, rank 0 first."""
        return self.root if self.root is not None else rank_zero_first(lambda: ensure_synthetic(**self.synthetic))

    def open(self) -> DataHealth:
        """The set's health (`mavil.data.health`), what its cached report does not cover checked with the shards split
        over the ranks, rank 0 showing progress; refused above the ceiling (UnusableData, a ConfigError)."""
        first = not dist.is_initialized() or dist.get_rank() == 0
        health = ensure_health(self.path(), progress=first, distributed=True)
        health.check_ceiling(self.max_bad_fraction)
        return health


@dataclass(frozen=True)
class Plan:
    """Everything a run resolves from its config before it starts; see the module's docstring."""

    cfg: Config
    deepspeed: dict | None  # deepspeed.initialize's config; None: evaluation
    train_set: DataSet | None  # None: evaluation
    eval_set: DataSet | None  # None: pre-training
    train_spec: LoaderSpec | None
    eval_spec: LoaderSpec | None
    windows: Windows  # what the model reads of a clip, for the health tally

    def seed(self, index: int) -> int:
        """The seed of stream `index` (an epoch, a rank) of this run: `mavil.seeds.seed_for`."""
        return seed_for(self.cfg.train.seed, index)


def plan_pretraining(cfg: Config, world: int) -> Plan:
    _check_files(cfg, ("teacher", "data.root"))
    deepspeed = _check_run(cfg, world)
    _training_shards(cfg)
    if cfg.model.stage == 2:
        _check_weights(cfg, Checker(cfg.source, "model"), "teacher", cfg.model.teacher, TEACHER_PARTS, same_grid=True)
    _check_inits(cfg, ("audio_encoder", "video_encoder"))
    try:  # InfoNCE groups of model.contrastive_group clips from this micro-batch and world size
        check_groups(cfg.model.contrastive_group, cfg.train.micro_batch, world)
    except ValueError as err:
        Checker(cfg.source, "model").fail("contrastive_group", cfg.model.contrastive_group, str(err).split(": ", 1)[1])
    _check_contrastive_clips(cfg, world)
    _check_packages()
    return Plan(
        cfg, deepspeed, training_set(cfg), None, loader_spec(cfg, cfg.train.micro_batch, True), None, windows(cfg)
    )


def plan_finetuning(cfg: Config, world: int) -> Plan:
    _check_files(cfg, ("data.root", "finetune.init", "finetune.eval_root"))
    deepspeed = _check_run(cfg, world)
    train_manifest = _training_shards(cfg)
    ft, check = cfg.finetune, Checker(cfg.source, "finetune")
    _check_inits(cfg, encoder_names(ft.mode))
    if ft.init is not None:
        _check_weights(cfg, check, "init", ft.init, encoder_names(ft.mode))
    eval_manifest = _shards(check, "eval_root", ft.eval_root) if ft.eval_root is not None else None
    if ft.mode != "retrieval":
        _check_classes(cfg, train_manifest, eval_manifest)
    _check_packages()
    train_spec = loader_spec(cfg, cfg.train.micro_batch, True, gain_db=ft.magnitude_db)
    return Plan(
        cfg, deepspeed, training_set(cfg), _evaluation_set(cfg, None), train_spec, _eval_spec(cfg), windows(cfg)
    )


def plan_evaluation(cfg: Config, run_dir: Path, data: Path | None) -> Plan:
    """A fine-tuning run directory (`cfg` is its config, as `evaluate.run_config` reads it): its weights hold the
    mode's model, and the evaluation shards (`data`: --data, else the run's finetune.eval_root) are usable."""
    weights = run_dir / "model.safetensors"
    try:
        names = read_header(weights)[0]
    except ValueError as err:
        raise ConfigError(f"--run {run_dir}: {err}") from None
    expected = [*encoder_names(cfg.finetune.mode), *(["head"] if cfg.finetune.mode != "retrieval" else [])]
    for part in expected:
        if not any(name.startswith(f"{part}.") for name in names):
            raise ConfigError(
                f"--run {run_dir}: {weights} holds no {part}.* tensors: not the fine-tuned model of "
                f"finetune.mode = {json.dumps(cfg.finetune.mode)}"
            )
    if data is not None:
        try:
            read_manifest(data)
        except (OSError, ValueError) as err:
            raise ConfigError(f"--data {data}: {_reason(err, data)}") from None
    elif cfg.finetune.eval_root is not None:
        _check_files(cfg, ("finetune.eval_root",))
        _shards(Checker(cfg.source, "finetune"), "eval_root", cfg.finetune.eval_root)
    _check_device(cfg, "to evaluate on the CPU, add --device cpu")
    _check_packages()
    return Plan(cfg, None, None, _evaluation_set(cfg, data), None, _eval_spec(cfg), windows(cfg))


def loader_spec(cfg: Config, batch_size: int, train: bool, **values) -> LoaderSpec:
    """The loader's spec from the config's model and data sections; `values` set other fields (eval_clips, ...)."""
    m, d = cfg.model, cfg.data
    spec = LoaderSpec(
        batch_size, m.audio_frames, m.audio_mel_bins, m.video_frames, m.video_size, train, d.audio_mean, d.audio_std,
        d.sample_rate, tuple(d.crop_scale), d.flip_prob, d.time_shift, max(d.num_workers, 1),
    )  # fmt: skip
    return dataclasses.replace(spec, **values)


def windows(cfg: Config) -> Windows:
    """What the model reads of each clip, as the health tally counts it."""
    return Windows(cfg.data.sample_rate, cfg.model.audio_frames, cfg.model.video_frames)


def _eval_spec(cfg: Config) -> LoaderSpec:
    return loader_spec(cfg, cfg.train.micro_batch, False)


def training_set(cfg: Config) -> DataSet:
    d = cfg.data
    synthetic = dict(clips=d.synthetic_clips, classes=d.synthetic_classes, seed=d.synthetic_seed,
                     duration=d.synthetic_duration)  # fmt: skip
    return DataSet(Path(d.root) if d.root is not None else None, synthetic, d.max_bad_fraction)


def _evaluation_set(cfg: Config, data: Path | None) -> DataSet:
    """`data`, else finetune.eval_root, else the synthetic set of the evaluation seed and size."""
    ft, train_set = cfg.finetune, training_set(cfg)
    root = data or (Path(ft.eval_root) if ft.eval_root is not None else None)
    synthetic = {**train_set.synthetic, "seed": ft.eval_synthetic_seed, "clips": ft.eval_synthetic_clips}
    return DataSet(root, synthetic, train_set.max_bad_fraction)


NO_SHARDS = "no manifest.json there: not a shard directory"
FILES = {  # key: (section, field, a shard directory (else a file), why a path is refused that holds no such thing)
    "teacher": ("model", "teacher", False, "no such file"),
    "finetune.init": ("finetune", "init", False, "no such file"),
    "data.root": ("data", "root", True, f"{NO_SHARDS} (make one with python -m mavil.data.prepare)"),
    "finetune.eval_root": ("finetune", "eval_root", True, NO_SHARDS),
}


def _check_files(cfg: Config, keys: tuple[str, ...]) -> None:
    """The files and shard directories the config names exist (their contents are checked later)."""
    for key in keys:
        section, name, shards, why = FILES[key]
        path = getattr(getattr(cfg, section), name)
        if path is None or (section == "model" and cfg.model.stage != 2):
            continue
        is_there = (Path(path) / "manifest.json").is_file() if shards else Path(path).is_file()
        Checker(cfg.source, section).that(name, path, is_there, why)


def _check_contrastive_clips(cfg: Config, world: int) -> None:
    """InfoNCE over one clip is exactly 0: a contrastive term (alpha or beta > 0) needs at least 2 clips to contrast."""
    model = cfg.model
    if (model.alpha == 0 and model.beta == 0) or model.contrastive_group is not None:  # groups are >= 2 (config)
        return
    clips = cfg.train.micro_batch * (world if model.global_negatives else 1)
    if clips < 2:
        why = (
            f"InfoNCE over {clips} clip is 0 (model.alpha = {model.alpha:g}, model.beta = {model.beta:g}): use 2 "
            f"or more clips per micro-batch, model.global_negatives on several ranks, or model.alpha=0 model.beta=0"
        )
        Checker(cfg.source, "train").fail("micro_batch", cfg.train.micro_batch, why)


def _check_run(cfg: Config, world: int) -> dict:
    """What pre-training and fine-tuning share: device, batch, output directory, attention backend; -> the
    DeepSpeed dict."""
    _check_device(cfg, "to train on the CPU, set train.device=cpu")
    ds_config = {**deepspeed_config(cfg, world), "zero_allow_untested_optimizer": True}  # our AdamW, its groups
    check_deepspeed(ds_config, cfg.source)  # ZeRO settings that skip non-finite steps
    output_dir = Path(cfg.train.output_dir)
    Checker(cfg.source, "train").that(
        "output_dir",
        cfg.train.output_dir,
        output_dir.is_dir() or not output_dir.exists(),
        "exists and is not a directory",
    )
    if cfg.model.attention == "xformers":
        reason = why_xformers_unavailable(cfg.train.device)
        Checker(cfg.source, "model").that("attention", "xformers", reason is None, f"{reason}; use auto or sdpa")
    return ds_config


def deepspeed_config(config: Config, world_size: int) -> dict:
    """The `deepspeed` section with its batch fields derived from `train` for `world_size` ranks:
    train_batch_size = global_batch, train_micro_batch_size_per_gpu = micro_batch, gradient_accumulation_steps =
    global_batch / (micro_batch * world_size); fields the file sets itself must agree. Our AdamW with its parameter
    groups is allowed under ZeRO by `_check_run`."""
    train = config.train
    per_step = train.micro_batch * world_size
    if train.global_batch % per_step:
        raise ConfigError(
            f"{config.source}: train.global_batch = {train.global_batch} is not a multiple of "
            f"train.micro_batch * world size = {train.micro_batch} * {world_size}"
        )
    derived = dict(zip(DEEPSPEED_BATCH_KEYS, (train.global_batch, train.micro_batch, train.global_batch // per_step)))
    result = json.loads(json.dumps(config.deepspeed))
    for key, value in derived.items():
        if key in result and result[key] != value:
            raise ConfigError(
                f"{config.source}: deepspeed.{key} = {json.dumps(result[key])} disagrees with "
                f"{value} derived from train.global_batch, train.micro_batch and world size {world_size}"
            )
        result[key] = value
    return result


def _check_device(cfg: Config, cpu_hint: str) -> None:
    """train.device = "cuda" where torch sees no GPU: refused with why, and `cpu_hint`."""
    if cfg.train.device == "cuda":
        reason = why_no_cuda()
        Checker(cfg.source, "train").that("device", "cuda", reason is None, f"{reason}; {cpu_hint}")


def _check_classes(cfg: Config, train_manifest: dict | None, eval_manifest: dict | None) -> None:
    """Classification: the training shards name classes, and the evaluation shards the same ones."""
    if train_manifest is None:
        return
    train_labels, mode = train_manifest["label_names"], cfg.finetune.mode
    Checker(cfg.source, "data").that(
        "root",
        cfg.data.root,
        bool(train_labels),
        f"its manifest names no classes (label_names is empty), and finetune.mode = {json.dumps(mode)} classifies",
    )
    if eval_manifest is not None and eval_manifest["label_names"] != train_labels:
        eval_labels = eval_manifest["label_names"]
        Checker(cfg.source, "finetune").fail(
            "eval_root",
            cfg.finetune.eval_root,
            f"its {len(eval_labels)} label names are not data.root's {len(train_labels)} "
            f"({_first_difference(eval_labels, train_labels)}): the classifier's outputs would mean other classes",
        )


def _training_shards(cfg: Config) -> dict | None:
    """The manifest of data.root (None: the synthetic set), refused when its shards are not usable."""
    return _shards(Checker(cfg.source, "data"), "root", cfg.data.root) if cfg.data.root is not None else None


def _first_difference(ours: list, theirs: list) -> str:
    for index, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            return f"class {index}: {json.dumps(a)} against {json.dumps(b)}"
    return f"class {min(len(ours), len(theirs))} is missing from one of them"


def _shards(check: Checker, key: str, root: str) -> dict:
    try:
        return read_manifest(root)
    except (OSError, ValueError) as err:
        check.fail(key, root, _reason(err, root))


def _check_inits(cfg: Config, encoders: tuple[str, ...]) -> None:
    """model.video_init / audio_init (for the encoders the run builds): an MAE-layout checkpoint that fits this
    config's encoder, shapes read from the file without its tensors; a missing file says where it comes from."""
    check = Checker(cfg.source, "model")
    for key, encoder in (("video_init", "video_encoder"), ("audio_init", "audio_encoder")):
        path = getattr(cfg.model, key)
        if path is None or encoder not in encoders:
            continue
        check.that(
            key,
            path,
            Path(path).is_file(),
            f"no such file; {SOURCES[key]}; to run without it (random initialisation) set model.{key}=null",
        )
        try:
            check_init(cfg.model, key, path)
        except ValueError as err:
            check.fail(key, path, _reason(err, path))


def _check_weights(
    cfg: Config, check: Checker, key: str, path: str, parts: tuple[str, ...], same_grid: bool = False
) -> None:
    try:
        stored = stored_architecture(path, parts)
    except ValueError as err:  # ConfigError included: the file's own stored config is invalid
        check.fail(key, path, _reason(err, path))
    differences = architecture_differences(stored, cfg.model, parts, same_grid)
    if differences:
        listed = "; ".join(
            f"model.{name} = {json.dumps(theirs)} there, {json.dumps(ours)} here" for name, theirs, ours in differences
        )
        check.fail(key, path, f"the architecture of its {', '.join(parts)} differs from this config's: {listed}")


def _check_packages() -> None:
    for module in RUN_PACKAGES:
        require(module)


def _reason(err: Exception, path: str | Path) -> str:
    """The message of an error from read_manifest or the weights readers, without the path they start with
    (the refusal names it as the key's value)."""
    return str(err).removeprefix(f"{path}: ")
