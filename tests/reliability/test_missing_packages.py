"""A package that does not import is named with its pip requirement and install command, or is done without.

Each case runs in a fresh interpreter where the package is absent for real (`absent.py`: its import raises
"No module named ...", as for a package never installed); the engine's own import and fallback code runs.
The refusals of the entry points without DeepSpeed or DALI are rows of docs/bad_inputs.md
(`test_bad_inputs.py`). Versions come from constraints.txt through `mavil.deps`, checked here against the file.
"""

from __future__ import annotations

import json

import pytest

from mavil import deps

from ..conftest import REPO
from .absent import run_without

FALLBACK = """
import json, logging, sys, torch
records = []
class Keep(logging.Handler):
    def emit(self, record): records.append((record.levelname, record.getMessage()))
logging.getLogger("mavil.model.attention").addHandler(Keep())
logging.getLogger("mavil.model.attention").setLevel(logging.INFO)
from mavil.model.attention import resolve_backend, why_xformers_unavailable
# a GPU run's choices, resolved without touching a device: xformers fails at its import, before any probe
chosen = [resolve_backend("auto", "cuda", torch.bfloat16, head) for head in (64, 32, 64, 32)]
try:
    resolve_backend("xformers", "cuda", torch.bfloat16, 64)
    refused = None
except RuntimeError as err:
    refused = str(err)
print(json.dumps({"chosen": chosen, "records": records, "refused": refused,
                  "preflight": why_xformers_unavailable("cuda")}))
"""


def run_code(absent: tuple[str, ...], code: str):
    return run_without(absent, "-c", code, [], REPO)


def test_auto_attention_falls_back_to_sdpa_without_xformers_and_says_so_once():
    result = run_code(("xformers",), FALLBACK)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["chosen"] == ["sdpa"] * 4
    warnings = [message for level, message in out["records"] if level == "WARNING"]
    assert len(warnings) == 1 and "pip install xformers==0.0.35" in warnings[0], out["records"]
    assert sum(level == "INFO" for level, _ in out["records"]) == 2  # one per (dtype, head size), resolved once each
    for message in (out["refused"], out["preflight"]):
        assert "No module named 'xformers'" in message and "pip install xformers==0.0.35" in message


IMPORTS = [  # (absent package, code that needs it, the pinned requirement the message names)
    (
        "av",
        "import numpy; from mavil.data.encode import encode_audio; encode_audio(numpy.zeros(160))",
        "pip install av==18.1.0",
    ),
    ("torchaudio", "import mavil.data.reference", "pip install torchaudio==2.11.0"),
    ("triton", "import mavil.model", "pip install triton==3.6.0"),
    (
        "nvidia.dali",
        "from mavil.data.pipeline import Loader, LoaderSpec; Loader('nowhere', LoaderSpec(batch_size=2))",
        "pip install nvidia-dali-cuda130==2.4.0",
    ),
]


@pytest.mark.parametrize("absent, code, install", IMPORTS, ids=[case[0] for case in IMPORTS])
def test_a_missing_package_is_named_with_its_install_command(absent, code, install):
    result = run_code((absent,), code)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and last.startswith("mavil.deps.MissingDependency: "), result.stderr[-2000:]
    assert f"No module named '{absent}'" in last and install in last


def test_every_install_command_pins_the_version_of_constraints_txt():
    lines = [line.strip() for line in (REPO / "constraints.txt").read_text().splitlines()]
    for module in deps.DISTRIBUTIONS:
        assert deps.requirement(module) in lines, module
    assert deps.install_command("deepspeed") == "pip install --no-build-isolation deepspeed==0.19.8"


def test_an_installed_package_without_its_checkout_reads_the_same_pins(monkeypatch):
    """Installed without the repository (no constraints.txt beside it), the pins come from the package metadata,
    which setup.py made from the same file."""
    from_file = {module: deps.requirement(module) for module in deps.DISTRIBUTIONS}
    monkeypatch.setattr(deps, "CONSTRAINTS", REPO / "no-such-constraints.txt")
    deps.pins.cache_clear()
    try:
        assert {module: deps.requirement(module) for module in deps.DISTRIBUTIONS} == from_file
    finally:
        deps.pins.cache_clear()
