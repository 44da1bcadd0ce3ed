"""Installs the import package `mavil`.

The folders `kernels/` and `engine/` stay at the top of the repository but import as
`mavil.kernels` and `mavil.engine` (a top-level `kernels` collides with a PyPI package).
Pinned versions live in constraints.txt, the one list that scripts/setup.sh also uses.
"""

from pathlib import Path

from setuptools import setup

# scikit-learn: the tests' oracle for mAP and accuracy; timm (with its torchvision): the reference ViT that
# tests/model/test_pretrained.py loads MAE-layout checkpoints against; ruff: formatter and linter (scripts/lint.sh)
DEV = {"pytest", "pytest-benchmark", "ruff", "scikit-learn", "timm", "torchvision"}


def pinned_requirements():
    lines = Path(__file__).with_name("constraints.txt").read_text().splitlines()
    pins = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    runtime = [pin for pin in pins if pin.split("==")[0] not in DEV]
    dev = [pin for pin in pins if pin.split("==")[0] in DEV]
    return runtime, dev


RUNTIME, DEV_PINS = pinned_requirements()

setup(
    name="mavil",
    version="0.1.0",
    description="Training engine for MAViL (Masked Audio-Video Learners)",
    python_requires=">=3.10",
    packages=["mavil", "mavil.model", "mavil.data", "mavil.kernels", "mavil.engine"],
    package_dir={"mavil": "mavil", "mavil.kernels": "kernels", "mavil.engine": "engine"},
    install_requires=RUNTIME,
    extras_require={"dev": DEV_PINS},
)
