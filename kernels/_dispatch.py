"""Which implementation an op runs, and output allocation shared by the Triton launchers.

MAVIL_KERNELS=auto (default): Triton for CUDA tensors, the PyTorch reference otherwise.
MAVIL_KERNELS=reference: always the reference. MAVIL_KERNELS=triton: always Triton; CPU tensors
then run in Triton's interpreter, which decides at kernel definition time, so TRITON_INTERPRET=1
must be set before the kernels are defined. Importing mavil.kernels with MAVIL_KERNELS=triton on a
machine without CUDA sets it.
"""

from __future__ import annotations

import os

import torch

MODES = ("auto", "reference", "triton")
# Set by tests: Triton outputs start as NaN instead of uninitialised memory, so an element a kernel
# fails to write shows up as a mismatch.
POISON_OUTPUTS = False
# Set by `compile_targets.compile_only`: CPU tensors take the Triton path, whose launches then compile for a GPU
# target (Triton's active driver is a stand-in) instead of running.
COMPILE_ONLY = False


def prepare_interpreter() -> None:
    if os.environ.get("MAVIL_KERNELS") == "triton" and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def use_triton(tensor: torch.Tensor) -> bool:
    mode = os.environ.get("MAVIL_KERNELS", "auto")
    if mode not in MODES:
        raise ValueError(f"MAVIL_KERNELS={mode!r}: must be one of {list(MODES)}")
    if COMPILE_ONLY:
        return True
    if mode == "reference":
        return False
    if mode == "auto":
        return tensor.is_cuda
    if not tensor.is_cuda and not INTERPRETED_AT_IMPORT:
        raise RuntimeError(
            "MAVIL_KERNELS=triton with CPU tensors runs Triton's interpreter: set TRITON_INTERPRET=1 "
            "before mavil.kernels is imported"
        )
    return True


def new_output(shape: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An output buffer for a kernel to fill completely (NaN-filled when POISON_OUTPUTS is set)."""
    if POISON_OUTPUTS and dtype.is_floating_point:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def block_size(n: int, cap: int = 1024) -> int:
    """The power of two covering n, at least 16 and at most `cap`."""
    return max(16, min(cap, 1 << (max(n, 1) - 1).bit_length()))


prepare_interpreter()
INTERPRETED_AT_IMPORT = interpreted()
