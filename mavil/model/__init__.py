"""The MAViL network: patch embeddings, ViT encoders, fusion, decoders and the pre-training losses.

Imports `mavil.config` and `mavil.kernels`; knows no data pipeline and no engine.
"""

from ..deps import require

require("triton")  # the kernels import it: a missing triton is named with its pip requirement, before they load

from .mavil import MAViL, Backbone  # noqa: E402
from .weights import build_model, load_teacher, read_weights, save_weights  # noqa: E402

__all__ = ["MAViL", "Backbone", "build_model", "load_teacher", "read_weights", "save_weights"]
