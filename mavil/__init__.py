"""MAViL: Masked Audio-Video Learners, a training engine.

Subpackages: `mavil.config` (run configuration), `mavil.model` (the network and its losses),
`mavil.kernels` (hot paths: PyTorch references now, Triton kernels behind the same functions),
`mavil.engine` (entry points and training loops).
"""

__version__ = "0.1.0"
