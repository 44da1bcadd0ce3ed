"""Checks before any work: what a run needs of its config, the files the config names and the installed packages.

`mavil.config` validates a config on its own (keys, types, ranges, combinations); it is a leaf and reads no
file beyond the config. What needs more is checked here, by each entry point right after its config loads
and before the process group, the model, DeepSpeed or the data start (`trainer.main`, `evaluate.main`):

- the device: train.device = "cuda" where torch sees no GPU, with why (no device visible, a driver too old for
  this torch build) and how to run on the CPU instead (`launch.why_no_cuda`): never a silent CPU run;
- the batch: train.global_batch a multiple of train.micro_batch x the launcher's world size (`deepspeed_config`),
  and ZeRO settings under which DeepSpeed skips a non-finite step (`numerics.check_deepspeed`);
- train.output_dir: a directory, or nothing yet;
- data.root and finetune.eval_root: shard directories whose manifest lists shards that exist (`read_manifest`);
  for classification, with classes, the same ones in both;
- model.teacher (stage 2) and finetune.init: MAViL weights files, read from the header alone (no tensor is
  loaded), holding the parts the run takes from them (teacher: encoders and fusion; init: the mode's
  encoders) in this config's architecture; every key that differs is named with both values. Input sizes
  (frames, mel bins, frame size) are compared for a teacher only: an init loads into any grid;
- model.video_init / audio_init: MAE-layout checkpoints whose tensors fit this config's encoders (shapes only);
- model.attention = "xformers": a GPU and an xformers that imports;
- the packages the run imports later (DALI, DeepSpeed): importable, else named with their install command.

A refusal is a ConfigError naming the config file, the key and the value, as the config's own are, or a
MissingDependency naming the pip requirement; the entry points print it and exit with status 2.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import Config, ConfigError, Checker, deepspeed_config
from ..data.shards import read_manifest
from ..deps import require
from ..model.attention import why_xformers_unavailable
from ..model.classifier import encoder_names
from ..model.contrastive import check_groups
from ..model.pretrained import SOURCES, check_init
from ..model.weights import architecture_differences, read_header, stored_architecture
from .launch import why_no_cuda
from .numerics import check_deepspeed

TEACHER_PARTS = ("audio_encoder", "video_encoder", "fusion")  # what stage 2 rebuilds of its teacher
RUN_PACKAGES = ("nvidia.dali.plugin.pytorch", "deepspeed")  # DALI first: DeepSpeed takes seconds to import


def check_pretraining(cfg: Config, world: int) -> None:
    _check_run(cfg, world)
    if cfg.model.stage == 2:
        _check_weights(cfg, Checker(cfg.source, "model"), "teacher", cfg.model.teacher, TEACHER_PARTS, same_grid=True)
    _check_inits(cfg, ("audio_encoder", "video_encoder"))
    try:  # InfoNCE groups of model.contrastive_group clips from this micro-batch and world size
        check_groups(cfg.model.contrastive_group, cfg.train.micro_batch, world)
    except ValueError as err:
        Checker(cfg.source, "model").fail("contrastive_group", cfg.model.contrastive_group, str(err).split(": ", 1)[1])
    _check_contrastive_clips(cfg, world)
    _check_packages()


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


def check_finetuning(cfg: Config, world: int) -> None:
    train_manifest = _check_run(cfg, world)
    ft, check = cfg.finetune, Checker(cfg.source, "finetune")
    _check_inits(cfg, encoder_names(ft.mode))
    if ft.init is not None:
        _check_weights(cfg, check, "init", ft.init, encoder_names(ft.mode))
    eval_manifest = _shards(check, "eval_root", ft.eval_root) if ft.eval_root is not None else None
    if ft.mode != "retrieval":
        _check_classes(cfg, train_manifest, eval_manifest)
    _check_packages()


def check_evaluation(cfg: Config, run_dir: Path, data: Path | None) -> None:
    """A fine-tuning run directory (`cfg` is its config, as `evaluate.run_config` reads it): its weights hold the
    mode's model, and the evaluation shards (`--data`, or the run's finetune.eval_root) are usable."""
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
        _shards(Checker(cfg.source, "finetune"), "eval_root", cfg.finetune.eval_root)
    _check_device(cfg, "to evaluate on the CPU, add --device cpu")
    _check_packages()


def _check_run(cfg: Config, world: int) -> dict | None:
    """What pre-training and fine-tuning share: batch, output directory, data, attention backend; -> the
    manifest of data.root (None: the synthetic set)."""
    _check_device(cfg, "to train on the CPU, set train.device=cpu")
    check_deepspeed(deepspeed_config(cfg, world), cfg.source)  # ZeRO settings that skip non-finite steps
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
    return _shards(Checker(cfg.source, "data"), "root", cfg.data.root) if cfg.data.root is not None else None


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
