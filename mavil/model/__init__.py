"""The MAViL network: patch embeddings, ViT encoders, fusion, decoders and the pre-training losses.

Imports `mavil.config` and `mavil.kernels`; knows no data pipeline and no engine.
"""

from .mavil import MAViL, Backbone
from .weights import build_model, load_teacher, read_weights, save_weights

__all__ = ["MAViL", "Backbone", "build_model", "load_teacher", "read_weights", "save_weights"]
