"""The packages a run imports on demand, and what to tell the user when one does not import.

`require("nvidia.dali.plugin.pytorch")` imports a module or raises `MissingDependency`, whose message names
the pip requirement and the command that installs it, e.g.

    nvidia-dali-cuda130 is needed: import nvidia.dali.plugin.pytorch failed (No module named 'nvidia.dali');
    install it with: pip install nvidia-dali-cuda130==2.4.0

Pinned versions come from constraints.txt beside the package in a checkout (the one list of versions), else from
the installed distribution's requirements; `DISTRIBUTIONS` only maps import names to pip distributions.
A leaf like `mavil.config`: it imports nothing of ours, so every part (kernels, model, data, engine) may use it.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import types
from pathlib import Path

# import name -> pip distribution name. DALI's distribution carries its CUDA build in the name
# (nvidia-dali-cuda130): a name here matches a pin of that name or of that name plus a "-suffix",
# so constraints.txt alone picks the build.
DISTRIBUTIONS = {
    "xformers": "xformers",
    "nvidia.dali": "nvidia-dali",
    "deepspeed": "deepspeed",
    "av": "av",
    "torchaudio": "torchaudio",
    "triton": "triton",
}
# pip options a distribution needs (constraints.txt says why: DeepSpeed builds against the installed torch)
PIP_OPTIONS = {"deepspeed": "--no-build-isolation "}
CONSTRAINTS = Path(__file__).resolve().parents[1] / "constraints.txt"


class MissingDependency(ImportError):
    """A package the run needs does not import; the message names the pip requirement and the install command."""


@functools.lru_cache(maxsize=None)
def pins() -> tuple[str, ...]:
    """Every pinned requirement ("name==version"): constraints.txt's lines, or the installed mavil's requirements."""
    if CONSTRAINTS.is_file():
        lines = CONSTRAINTS.read_text().splitlines()
    else:
        try:
            lines = importlib.metadata.requires("mavil") or []
        except importlib.metadata.PackageNotFoundError:
            lines = []
    lines = [line.split(";")[0].strip() for line in lines]  # drop environment markers ('; extra == "dev"')
    return tuple(line for line in lines if line and not line.startswith("#"))


def distribution(module: str) -> str:
    """The pip distribution name that provides `module` (a submodule resolves to its package's)."""
    for prefix in sorted(DISTRIBUTIONS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return DISTRIBUTIONS[prefix]
    return module.split(".")[0]


def requirement(module: str) -> str:
    """The pinned requirement line for the package of `module`, e.g. "nvidia-dali-cuda130==2.4.0"."""
    name = distribution(module)
    for pin in pins():
        pinned_name = pin.split("==")[0].strip()
        if pinned_name == name or pinned_name.startswith(name + "-"):
            return pin
    return name


def install_command(module: str) -> str:
    name = distribution(module)
    return f"pip install {PIP_OPTIONS.get(name, '')}{requirement(module)}"


def require(module: str) -> types.ModuleType:
    """`importlib.import_module(module)`, or MissingDependency naming the package and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependency(
            f"{requirement(module).split('==')[0]} is needed: import {module} failed ({err}); "
            f"install it with: {install_command(module)}"
        ) from err
