"""Bad inputs are refused before any work, each with a message naming the file, the key and the value.

CASES is the table: one bad input per row (a config, an override, a path, a file, a missing package), what is
wrong with it and what its message must name. Each runs the entry point's own refusal path in a scratch
directory holding the inputs under relative paths, so that every message reads the same on every machine:

- in-process, the function `main` calls before the process group: `trainer.checked_plan` (pretrain.py,
  finetune.py) or `evaluate.checked_run`;
- a few as the real command (`python engine/pretrain.py ...`, `python -m mavil.engine.evaluate ...`), some with a
  package made absent (`absent.py`), asserting exit status 2 and one error line.

A GPU run on a machine without one is refused with torch's reason, whatever the machine: the cases that set
`cuda` make torch see no device and make `torch.cuda.init()` raise that text, as torch does there ("Found no
NVIDIA driver ...", "No CUDA GPUs are available", "The NVIDIA driver on your system is too old ...").

Every case also asserts that nothing was made: no run directory, no synthetic set in the cache. The test writes
the table to docs/bad_inputs.md and fails where the committed file differs; refresh it with

    MAVIL_UPDATE_DOCS=1 .venv/bin/python -m pytest tests/reliability/test_bad_inputs.py
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mavil.config import ConfigError
from mavil.data.shards import write_manifest
from mavil.deps import MissingDependency
from mavil.engine.evaluate import checked_run, parse_args as evaluate_args
from mavil.engine.finetune import Finetuner
from mavil.engine.pretrain import Pretrainer
from mavil.engine.trainer import checked_plan, parse_args as trainer_args
from mavil.model import MAViL, save_weights
from mavil.model.classifier import Classifier

from ..conftest import CONFIGS, REPO, tiny_config
from .absent import run_without

DOC = REPO / "docs" / "bad_inputs.md"
SCRIPTS = {"pretrain": "engine/pretrain.py", "finetune": "engine/finetune.py", "evaluate": "mavil.engine.evaluate"}
LABELS = [f"class-{k}" for k in range(8)]


@dataclass(frozen=True)
class Case:
    entry: str  # "pretrain", "finetune" or "evaluate"
    args: tuple[str, ...]  # its command line after the script name
    wrong: str  # what is wrong, for the table
    names: tuple[str, ...]  # what the message must name
    how: str = "in-process"  # or "command": the real command line in a subprocess (exit status 2)
    absent: tuple[str, ...] = ()  # packages that do not import (command only)
    ranks: int = 0  # launched on this many ranks (RANK and WORLD_SIZE set); 0: a plain run
    cuda: str = ""  # a machine of CUDA_ERRORS: torch sees no CUDA device, torch.cuda.init() raises its error
    env: tuple[tuple[str, str], ...] = ()  # environment variables set for the case


def pre(*args, **kw) -> Case:
    return Case("pretrain", ("--config", "cfg/stage1.json", *args), **kw)


def stage2(*args, **kw) -> Case:
    return Case("pretrain", ("--config", "cfg/stage2.json", *args), **kw)


def fine(*args, **kw) -> Case:
    return Case("finetune", ("--config", "cfg/finetune.json", *args), **kw)


# torch's CUDA initialisation errors (c10/cuda/CUDAFunctions.cpp), for the cases of a GPU run without a GPU
NO_DRIVER = (
    "Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU and installed a driver "
    "from http://www.nvidia.com/Download/index.aspx"
)
NO_DEVICE = "No CUDA GPUs are available"
OLD_DRIVER = (
    "The NVIDIA driver on your system is too old (found version 12040). Please update your GPU driver by "
    "downloading and installing a new version from the URL: http://www.nvidia.com/Download/index.aspx "
    "Alternatively, go to: https://pytorch.org to install a PyTorch version that has been compiled with your "
    "version of the CUDA driver."
)
CUDA_ERRORS = {"no NVIDIA driver": NO_DRIVER, "no GPU visible": NO_DEVICE, "driver 12040, too old": OLD_DRIVER}
TORCH = f"torch {torch.__version__} (built for CUDA {torch.version.cuda})"


CASES = [
    # the config file and the command line
    Case(
        "pretrain",
        ("--config", "cfg/missing.json"),
        wrong="the config file does not exist",
        names=("cfg/missing.json", "No such file"),
    ),
    Case(
        "pretrain",
        ("--config", "cfg/trailing-comma.json"),
        wrong="not valid JSON (a trailing comma)",
        names=("cfg/trailing-comma.json", "line 3, column 1"),
    ),
    Case(
        "pretrain",
        ("--config", "cfg/list.json"),
        wrong="JSON, but a list, not an object",
        names=("cfg/list.json", "must be a JSON object"),
    ),
    Case(
        "pretrain",
        ("--config", "cfg/unknown-section.json"),
        wrong="a section the schema does not have",
        names=("cfg/unknown-section.json", "'optimiser'"),
    ),
    pre(
        "model.mask_ration=0.7", wrong="a misspelt key on the command line", names=("'model.mask_ration'", "mask_ratio")
    ),
    pre("model.mask_ratio", wrong="an override without '='", names=("'model.mask_ratio'", "section.key=value")),
    pre("optim.lr=0.001", wrong="an override of an unknown section", names=("'optim'",)),
    pre("model.encoder_dim=big", wrong="a string where an int belongs", names=("model.encoder_dim", '"big"', "int")),
    pre(
        "model.norm_pix_loss=yes", wrong="a string where a bool belongs", names=("model.norm_pix_loss", '"yes"', "bool")
    ),
    pre("model.mask_ratio=1.5", wrong="a ratio out of range", names=("model.mask_ratio = 1.5", "(0, 1)")),
    pre(
        "model.audio_patch=[16,15]",
        wrong="a patch that does not tile the spectrogram",
        names=("model.audio_patch = [16, 15]", "[384, 64]"),
    ),
    pre("model.encoder_heads=5", wrong="heads that do not divide the width", names=("model.encoder_heads = 5", "64")),
    pre(
        "model.attention=xformers",
        wrong="xformers attention on a machine without a GPU",
        names=("model.attention", "xformers", "cpu", "sdpa"),
    ),
    pre(
        "train.output_dir=cfg/stage1.json",
        wrong="the run directory is an existing file",
        names=("train.output_dir", "cfg/stage1.json", "not a directory"),
    ),
    # batch sizes
    pre(
        "train.micro_batch=3",
        wrong="a micro-batch that does not divide the global batch",
        names=("cfg/stage1.json", "train.micro_batch = 3", "16"),
        how="command",
    ),
    pre(
        wrong="a global batch that 4 ranks of 8 clips cannot make",
        ranks=4,
        names=("train.global_batch = 16", "train.micro_batch * world size = 8 * 4"),
    ),
    pre(
        "deepspeed.train_batch_size=32",
        wrong="a DeepSpeed batch field that disagrees with train",
        names=("deepspeed.train_batch_size = 32", "16"),
    ),
    pre(
        "deepspeed.zero_optimization.stage=3",
        wrong="a ZeRO stage that would apply a step with NaN gradients",
        names=("deepspeed.zero_optimization.stage = 3", "must be 1 or 2"),
    ),
    pre(
        "deepspeed.zero_optimization=2",
        wrong="a DeepSpeed section that must be an object given a number",
        names=("deepspeed.zero_optimization = 2", "must be a JSON object"),
    ),
    pre(
        "deepspeed.zero_optimizaton.stage=2", wrong="a misspelt DeepSpeed key", names=("'deepspeed.zero_optimizaton'",)
    ),
    pre(
        "deepspeed.optimizer.type=Adam",
        wrong="a DeepSpeed optimizer section (the engine owns the optimizer)",
        names=("deepspeed.optimizer", "train.lr_base"),
    ),
    pre(
        "deepspeed.scheduler.type=WarmupLR",
        wrong="a DeepSpeed scheduler section (the engine owns the schedule)",
        names=("deepspeed.scheduler", "train.warmup_epochs"),
    ),
    pre("deepspeed.fp16.enabled=true", wrong="fp16 on the CPU", names=("deepspeed.fp16.enabled", "CPU")),
    pre(
        "train.seed=99999999999999", wrong="a seed beyond 32 bits", names=("train.seed = 99999999999999", "4294967295")
    ),
    pre("model.mlp_ratio=Infinity", wrong="a float that is not finite", names=("model.mlp_ratio = Infinity", "finite")),
    pre("train.output_dir=", wrong="an empty run directory name", names=("train.output_dir", "must name a directory")),
    Case(
        "pretrain",
        ("--config", "cfg/latin1.json"),
        wrong="a config file that is not UTF-8",
        names=("cfg/latin1.json", "UTF-8"),
    ),
    pre(
        "train.grad_clip=1.0",
        wrong="gradient clipping through a key that never clipped (retired)",
        names=("train.grad_clip = 1.0", "deepspeed.gradient_clipping"),
    ),
    pre("data.video_fps=4", wrong="a video rate the shards do not store", names=("data.video_fps = 4.0", "2 fps")),
    pre(
        "model.contrastive_group=null",
        "train.micro_batch=1",
        "train.global_batch=1",
        wrong="InfoNCE over micro-batches of one clip (always 0)",
        names=("train.micro_batch = 1", "InfoNCE"),
    ),
    pre("train.max_bad_steps=0", wrong="no skipped step allowed before stopping", names=("train.max_bad_steps = 0",)),
    pre(
        "data.max_bad_fraction=1.5",
        wrong="a fraction of unusable clips above 1",
        names=("data.max_bad_fraction = 1.5",),
    ),
    # shard directories
    pre(
        "data.root=shards/no-manifest",
        wrong="a data directory without a manifest",
        names=("data.root", "shards/no-manifest", "manifest.json"),
    ),
    pre(
        "data.root=shards/no-shards",
        wrong="a manifest that lists no shards",
        names=("data.root", "shards/no-shards", "no shards"),
    ),
    pre(
        "data.root=shards/missing-shard",
        wrong="a manifest that lists a shard that is not there",
        names=("data.root", "shards/missing-shard", "shard-000001.tar"),
    ),
    pre(
        "data.root=shards/broken-manifest",
        wrong="a manifest that is not valid JSON",
        names=("data.root", "shards/broken-manifest", "line 1"),
    ),
    # the stage-2 teacher
    pre("model.stage=2", wrong="stage 2 without a teacher", names=("model.teacher = null", "stage 2")),
    stage2(
        "model.teacher=files/nowhere.safetensors",
        wrong="a teacher file that does not exist",
        names=("model.teacher", "files/nowhere.safetensors", "no such file"),
    ),
    stage2(
        "model.teacher=files/text.safetensors",
        wrong="a teacher that is not a safetensors file",
        names=("model.teacher", "files/text.safetensors", "safetensors"),
    ),
    stage2(
        "model.teacher=files/truncated.safetensors",
        wrong="a teacher cut short (a copy that died mid-file)",
        names=("model.teacher", "files/truncated.safetensors", "not fully covered"),
    ),
    stage2(
        "model.teacher=files/plain.safetensors",
        wrong="a safetensors file without a MAViL config",
        names=("model.teacher", "files/plain.safetensors", "not a MAViL weights file"),
    ),
    stage2(
        "model.teacher=files/narrow.safetensors",
        wrong="a teacher of another width and depth",
        names=("model.teacher", "model.encoder_dim = 32 there, 64 here", "model.encoder_depth = 1 there, 2 here"),
    ),
    stage2(
        "model.teacher=files/short-audio.safetensors",
        wrong="a teacher for 256-frame spectrograms",
        names=("model.teacher", "model.audio_frames = 256 there, 384 here"),
    ),
    stage2(
        "model.teacher=files/mbt.safetensors",
        wrong="a teacher with bottleneck fusion",
        names=("model.teacher", 'model.fusion = "mbt" there, "vanilla" here'),
    ),
    stage2(
        "model.teacher=files/finetuned.safetensors",
        wrong="a fine-tuned classifier as the teacher",
        names=("model.teacher", "files/finetuned.safetensors", "backbone.audio_encoder"),
    ),
    stage2(
        "model.teacher=files/narrow.safetensors",
        wrong="the same, as the real command",
        names=("cfg/stage2.json", "model.encoder_dim = 32 there"),
        how="command",
    ),
    # fine-tuning
    fine(
        "finetune.init=files/narrow.safetensors",
        wrong="an initialisation of another width and depth",
        names=("finetune.init", "files/narrow.safetensors", "model.encoder_dim = 32 there, 64 here"),
    ),
    fine(
        "finetune.init=files/finetuned.safetensors",
        wrong="a fine-tuned model as the initialisation",
        names=("finetune.init", "backbone.audio_encoder", "pre-training export"),
    ),
    fine(
        "data.root=shards/good",
        "finetune.eval_root=shards/other-labels",
        wrong="evaluation shards of other classes",
        names=("finetune.eval_root", "shards/other-labels", "class 0"),
    ),
    fine(
        "data.root=shards/no-labels",
        wrong="classification on shards without classes",
        names=("data.root", "shards/no-labels", "no classes"),
    ),
    fine(
        "finetune.eval_root=shards/missing-shard",
        wrong="evaluation shards with a shard missing",
        names=("finetune.eval_root", "shards/missing-shard", "shard-000001.tar"),
    ),
    fine(
        "finetune.weighted_sampling=true",
        "finetune.balance_fraction=0.5",
        wrong="two samplers at once",
        names=("finetune.balance_fraction = 0.5", "weighted sampling"),
    ),
    # evaluation
    Case(
        "evaluate",
        ("--run", "runs/empty"),
        wrong="a run directory without config.json",
        names=("runs/empty/config.json", "No such file"),
    ),
    Case(
        "evaluate",
        ("--run", "runs/pretrained"),
        wrong="a pre-training run given to evaluation",
        names=("runs/pretrained", "audio_encoder.*", "finetune.mode"),
    ),
    Case(
        "evaluate",
        ("--run", "runs/finetuned", "--data", "shards/no-shards"),
        wrong="evaluation shards listing no shards",
        names=("--data shards/no-shards", "no shards"),
        how="command",
    ),
    # missing packages
    pre(
        wrong="DeepSpeed is not installed",
        names=("deepspeed==0.19.8", "pip install --no-build-isolation"),
        how="command",
        absent=("deepspeed",),
    ),
    pre(
        wrong="DALI is not installed",
        names=("nvidia-dali-cuda130==2.4.0", "pip install nvidia-dali-cuda130==2.4.0"),
        how="command",
        absent=("nvidia.dali",),
    ),
    # the device: a GPU run where torch sees none
    pre(
        "train.device=cuda",
        wrong="a GPU run on a machine without an NVIDIA driver",
        cuda="no NVIDIA driver",
        how="command",
        names=('train.device = "cuda"', "no CUDA device visible", TORCH, "Found no NVIDIA driver", "train.device=cpu"),
    ),
    Case(
        "pretrain",
        ("--config", "cfg/default-device.json"),
        wrong="a config that leaves train.device at its default (cuda), on a machine without an NVIDIA driver",
        cuda="no NVIDIA driver",
        names=("cfg/default-device.json", 'train.device = "cuda"', "no CUDA device visible", "train.device=cpu"),
    ),
    stage2(
        "train.device=cuda",
        "deepspeed.bf16.enabled=true",
        wrong="a bf16 GPU run with every GPU hidden",
        cuda="no GPU visible",
        env=(("CUDA_VISIBLE_DEVICES", ""),),
        names=('train.device = "cuda"', "No CUDA GPUs are available", "CUDA_VISIBLE_DEVICES=''"),
    ),
    pre(
        "train.device=cuda",
        wrong="a GPU run where the NVIDIA driver is too old for this torch build",
        cuda="driver 12040, too old",
        names=('train.device = "cuda"', "driver is too old", TORCH, "found version 12040", "train.device=cpu"),
    ),
    fine(
        "train.device=cuda",
        wrong="GPU fine-tuning on a machine without an NVIDIA driver",
        cuda="no NVIDIA driver",
        names=("cfg/finetune.json", 'train.device = "cuda"', "train.device=cpu"),
    ),
    Case(
        "evaluate",
        ("--run", "runs/finetuned", "--device", "cuda"),
        wrong="GPU evaluation on a machine without an NVIDIA driver",
        cuda="no NVIDIA driver",
        how="command",
        names=('train.device = "cuda"', "--device cpu"),
    ),
]


# the scratch directory: cfg/ configs, files/ weights files, shards/ shard directories, runs/ run directories
def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def tiny_raw(name: str) -> dict:
    raw = json.loads((CONFIGS / "tiny" / name).read_text())
    raw["train"]["output_dir"] = "run"
    return raw


def make_configs(cfg: Path) -> None:
    write_json(cfg / "stage1.json", tiny_raw("stage1.json"))
    stage2 = tiny_raw("stage2.json")
    stage2["model"]["teacher"] = "files/teacher.safetensors"
    write_json(cfg / "stage2.json", stage2)
    write_json(cfg / "finetune.json", tiny_raw("finetune.json"))
    default_device = tiny_raw("stage1.json")
    del default_device["train"]["device"]
    write_json(cfg / "default-device.json", default_device)
    (cfg / "trailing-comma.json").write_text('{\n  "model": {"mask_ratio": 0.8},\n}\n')
    (cfg / "latin1.json").write_bytes('{"train": {"output_dir": "run-\u00e9t\u00e9"}}\n'.encode("latin-1"))
    (cfg / "list.json").write_text("[1, 2]\n")
    write_json(cfg / "unknown-section.json", {"optimiser": {"lr": 1e-3}})


def make_weights(files: Path) -> None:
    files.mkdir()
    save_weights(MAViL(tiny_config().model), files / "teacher.safetensors")
    for name, overrides in {
        "narrow": ("model.encoder_dim=32", "model.encoder_depth=1"),
        "short-audio": ("model.audio_frames=256",),
        "mbt": ("model.fusion=mbt",),
    }.items():
        save_weights(MAViL(tiny_config(*overrides).model), files / f"{name}.safetensors")
    save_weights(Classifier(tiny_config().model, "audio", len(LABELS)), files / "finetuned.safetensors")
    teacher = (files / "teacher.safetensors").read_bytes()
    (files / "truncated.safetensors").write_bytes(teacher[: len(teacher) // 2])
    (files / "text.safetensors").write_text("these are not weights\n")
    save_file({"weight": torch.zeros(2)}, str(files / "plain.safetensors"))


def make_shards(root: Path, labels: list[str] = LABELS, listed: int = 1, present: int = 1) -> None:
    """A shard directory as the checks see it: a manifest listing `listed` shards, `present` of them on disk
    (empty files: no check before work reads a tar)."""
    root.mkdir(parents=True)
    names = [f"shard-{n:06d}" for n in range(listed)]
    for name in names[:present]:
        (root / f"{name}.tar").touch()
        (root / f"{name}.idx").touch()
    write_manifest(root, [{"tar": f"{n}.tar", "index": f"{n}.idx", "clips": 4} for n in names], labels, {}, [])


def make_runs(runs: Path, files: Path) -> None:
    (runs / "empty").mkdir(parents=True)
    for name, config, weights in (
        ("pretrained", "stage1.json", "teacher"),
        ("finetuned", "finetune.json", "finetuned"),
    ):
        write_json(runs / name / "config.json", tiny_raw(config))
        (runs / name / "model.safetensors").write_bytes((files / f"{weights}.safetensors").read_bytes())


def build_scratch(root: Path) -> None:
    make_configs(root / "cfg")
    make_weights(root / "files")
    make_shards(root / "shards" / "good")
    make_shards(root / "shards" / "other-labels", labels=[f"other-{k}" for k in range(8)])
    make_shards(root / "shards" / "no-labels", labels=[])
    make_shards(root / "shards" / "no-shards", listed=0, present=0)
    make_shards(root / "shards" / "missing-shard", listed=2, present=1)
    (root / "shards" / "no-manifest").mkdir()
    (root / "shards" / "broken-manifest").mkdir()
    (root / "shards" / "broken-manifest" / "manifest.json").write_text("{")
    make_runs(root / "runs", root / "files")


# running a case
@dataclass
class Outcome:
    message: str | None  # the refusal's message; None: not refused
    detail: str  # what happened instead
    made: list[str]  # what the case created: the run directory, the synthetic set's cache


TRAINERS = {"pretrain": Pretrainer, "finetune": Finetuner}


def refuse_in_process(case: Case) -> str:
    """The refusal `main` prints, from the function it calls before the process group."""
    if case.entry == "evaluate":
        args = evaluate_args(list(case.args))
        checked_run(args.run, args.data, args.device)
    else:
        args = trainer_args(list(case.args), "")
        checked_plan(TRAINERS[case.entry], args.config, args.overrides)
    raise AssertionError("not refused")


# `python -c` code: torch sees no CUDA device and torch.cuda.init() raises argv[1], then runs argv[2] (a script
# path, or -m and a module) with the rest as its arguments
WITHOUT_CUDA = """
import runpy, sys, torch
def init(error=sys.argv[1]):
    raise RuntimeError(error)
torch.cuda.is_available, torch.cuda.init = (lambda: False), init
if sys.argv[2] == "-m":
    sys.argv = sys.argv[3:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    sys.argv = sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name="__main__")
"""


def refuse_by_command(case: Case, root: Path) -> str:
    """The real command's stderr 'error: ...' line, the only one; its exit status must be 2."""
    mode, target = "-m", SCRIPTS[case.entry]
    if case.entry != "evaluate":
        mode, target = "script", str(REPO / SCRIPTS[case.entry])
    if case.cuda:
        script = [mode, target] if mode == "-m" else [target]
        result = run_without(case.absent, "-c", WITHOUT_CUDA, [CUDA_ERRORS[case.cuda], *script, *case.args], root)
    else:
        result = run_without(case.absent, mode, target, list(case.args), root)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and len(errors) == 1, f"exit status {result.returncode}: {result.stderr[-2000:]}"
    return errors[-1].removeprefix("error: ")


def run_case(case: Case, root: Path) -> Outcome:
    with pytest.MonkeyPatch.context() as patch:
        if case.ranks:
            patch.setenv("RANK", "0")
            patch.setenv("WORLD_SIZE", str(case.ranks))
        for name, value in case.env:
            patch.setenv(name, value)
        if case.cuda and case.how != "command":
            patch.setattr(torch.cuda, "is_available", lambda: False)
            patch.setattr(torch.cuda, "init", lambda: (_ for _ in ()).throw(RuntimeError(CUDA_ERRORS[case.cuda])))
        try:
            if case.how == "command":
                message, detail = refuse_by_command(case, root), ""
            else:
                message, detail = None, "not refused"
                refuse_in_process(case)
        except (ConfigError, MissingDependency) as err:
            message, detail = str(err), ""
        except Exception as err:  # anything else is a failure of the case, reported by its test
            message, detail = None, f"{type(err).__name__}: {err}"
    made = [name for name in ("run", "cache") if (root / name).exists()]
    return Outcome(message, detail, made)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> list[Outcome]:
    root = tmp_path_factory.mktemp("bad-inputs")
    build_scratch(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # relative paths: the messages are the same on every machine
        patch.setenv("MAVIL_CACHE", str(root / "cache"))
        patch.delenv("RANK", raising=False)
        patch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # named in the messages of a GPU run without a GPU
        if torch.cuda.is_available():  # the table is a CPU machine's (xformers attention is refused there)
            patch.setattr(torch.cuda, "is_available", lambda: False)
        return [run_case(case, root) for case in CASES]


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{i:02d}-{c.entry}" for i, c in enumerate(CASES)])
def test_a_bad_input_is_refused_before_any_work_naming_what_is_wrong(outcomes, index):
    case, outcome = CASES[index], outcomes[index]
    assert outcome.message is not None, f"{command(case)}: {outcome.detail}"
    for fragment in case.names:
        assert fragment in outcome.message, f"{fragment!r} not in {outcome.message!r}"
    if case.args[:1] == ("--config",) and " = " in outcome.message:  # a key = value message names the file first
        assert outcome.message.startswith(f"{case.args[1]}: "), outcome.message
    assert not outcome.made, f"{command(case)} made {outcome.made}"


# the table
def command(case: Case) -> str:
    script = {"pretrain": "pretrain.py", "finetune": "finetune.py", "evaluate": "evaluate"}[case.entry]
    where = f"on {case.ranks} ranks: " if case.ranks else ""
    env = "".join(f"{name}={value} " for name, value in case.env)
    without = f" (without {', '.join(case.absent)})" if case.absent else ""
    cuda = f" (on a machine with {case.cuda})" if case.cuda else ""
    return f"{where}{env}{script} {' '.join(case.args)}{without}{cuda}"


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(outcomes: list[Outcome]) -> str:
    rows = [
        f"| {n} | `{cell(command(case))}` | {cell(case.wrong)} | {cell(outcome.message or 'NOT REFUSED')} |"
        for n, (case, outcome) in enumerate(zip(CASES, outcomes), start=1)
    ]
    return "\n".join(
        [
            "# Bad inputs and what they get",
            "",
            "Generated by `tests/reliability/test_bad_inputs.py`, which fails when this file differs from what the",
            "entry points print; refresh it with `MAVIL_UPDATE_DOCS=1 .venv/bin/python -m pytest "
            "tests/reliability/test_bad_inputs.py`.",
            "",
            "Each input is refused before any work (no process group, model, DeepSpeed engine, data or run directory):",
            "the command prints `error: <message>` and exits with status 2. `pretrain.py` and `finetune.py` are",
            "`engine/pretrain.py` and `engine/finetune.py`, `evaluate` is `python -m mavil.engine.evaluate`. Paths are",
            "relative to a scratch directory: `cfg/` holds the tiny configs (`configs/tiny/`, run directory `run`,",
            "the stage-2 teacher `files/teacher.safetensors`), `files/` weights files (the teacher; tiny models of",
            "another width, input size or fusion; a fine-tuned classifier; a truncated copy; text; a safetensors",
            "file without MAViL metadata), `shards/` shard directories, `runs/` run directories;",
            '`cfg/default-device.json` is the tiny stage-1 config without train.device (so "cuda", the default). A',
            'machine "with no NVIDIA driver" (no GPU visible, a driver too old) is one where torch sees no CUDA device',
            "and `torch.cuda.init()` raises torch's error for that case, made so by the test on any machine.",
            "",
            "| # | command | what is wrong | message |",
            "|---|---|---|---|",
            *rows,
            "",
        ]
    )


def test_the_table_in_docs_is_what_the_entry_points_print(outcomes):
    text = table(outcomes)
    if os.environ.get("MAVIL_UPDATE_DOCS") == "1":
        DOC.write_text(text)
    assert DOC.is_file() and DOC.read_text() == text, (
        "docs/bad_inputs.md is out of date: "
        "MAVIL_UPDATE_DOCS=1 .venv/bin/python -m pytest tests/reliability/test_bad_inputs.py"
    )


def test_good_inputs_pass_the_same_checks(tmp_path, monkeypatch):
    """The checks refuse only what cannot run: the tiny stage-2 config with its own teacher, video fine-tuning
    from a teacher whose audio input differs (only the encoders the mode keeps are compared), and a run trained
    on a GPU evaluated with --device cpu on a machine without one."""
    build_scratch(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RANK", raising=False)
    assert checked_plan(Pretrainer, "cfg/stage2.json", []).cfg.model.teacher == "files/teacher.safetensors"
    cfg = checked_plan(
        Finetuner,
        "cfg/finetune.json",
        [
            "finetune.mode=video",
            "finetune.init=files/short-audio.safetensors",
            "data.root=shards/good",
            "finetune.eval_root=shards/good",
        ],
    )
    assert cfg.cfg.finetune.init == "files/short-audio.safetensors"
    assert checked_run(Path("runs/finetuned"), Path("shards/good")).cfg.finetune.mode == "audio"
    on_gpu = json.loads(Path("runs/finetuned/config.json").read_text())
    on_gpu["train"]["device"] = "cuda"
    write_json(Path("runs/gpu/config.json"), on_gpu)
    Path("runs/gpu/model.safetensors").write_bytes(Path("runs/finetuned/model.safetensors").read_bytes())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert checked_run(Path("runs/gpu"), Path("shards/good"), "cpu").cfg.train.device == "cpu"
    assert not (tmp_path / "run").exists()
