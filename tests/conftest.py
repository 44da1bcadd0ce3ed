"""Shared fixtures. Every test runs on the CPU unless marked `gpu`; those skip cleanly without CUDA."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():  # Triton kernels run in its interpreter; must be set before they are defined
    os.environ.setdefault("TRITON_INTERPRET", "1")

from mavil.config import Config, load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def tiny_config(*overrides: str) -> Config:
    """configs/tiny/stage1.json with `section.key=value` overrides."""
    return load_config(CONFIGS / "tiny" / "stage1.json", overrides)


@pytest.fixture
def tiny() -> Config:
    return tiny_config()
