"""Hot paths of MAViL, one file per op: the public function and the plain PyTorch reference it
must equal. The Triton kernels come behind these same functions; the model calls only these.

- masked_gather: keep each sample's visible tokens (+ their positions), before the encoders.
- masked_restore: put [MASK] tokens back in the original order (+ positions), before the decoders.
- info_nce: Eq. 2 of the paper, the contrastive loss on pooled embeddings.
- masked_mse: Eq. 1 / Eq. 5, the reconstruction loss over masked tokens, norm-pix targets optional.

Each public function runs Triton on CUDA tensors and the reference elsewhere; MAVIL_KERNELS=
reference|triton|auto (default auto) forces a path (see `_dispatch`). This package imports torch
and triton only and knows no model; the packages above it (`mavil.model`, `bench.kernels`) name triton's pip
requirement when it does not import.
"""

from . import _dispatch  # noqa: F401 (first: it prepares Triton's interpreter before any kernel is defined)
from .info_nce import info_nce, info_nce_global, info_nce_reference
from .masked_gather import masked_gather, masked_gather_reference
from .masked_mse import masked_mse, masked_mse_reference
from .masked_restore import masked_restore, masked_restore_reference

__all__ = [
    "info_nce",
    "info_nce_global",
    "info_nce_reference",
    "masked_gather",
    "masked_gather_reference",
    "masked_mse",
    "masked_mse_reference",
    "masked_restore",
    "masked_restore_reference",
]
