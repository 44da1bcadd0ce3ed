"""pytest-benchmark entry points for the kernels: `pytest tests/bench --benchmark-enable --benchmark-only` times them;
in the test run (pytest.ini's --benchmark-disable) each runs once, untimed. Speed is measured by
`python -m bench.kernels`.

Each op at one real MAViL size, forward and backward, on the path MAVIL_KERNELS selects (Triton on
CUDA, the reference on the CPU by default).
"""

import pytest
import torch

from bench.kernels import gather_case, mse_case, nce_case, restore_case

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPE = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32
CASES = {
    "masked_gather": lambda: gather_case(784, 157, 768, DEVICE, DTYPE),
    "masked_restore": lambda: restore_case(784, 157, 512, DEVICE, DTYPE),
    "masked_mse": lambda: mse_case(512, 256, True, DEVICE, DTYPE),
    "info_nce": lambda: nce_case(512, 768, DEVICE, DTYPE),
}


@pytest.mark.parametrize("op", list(CASES))
def test_forward_backward(benchmark, op):
    case = CASES[op]()

    def step():
        case.step()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    benchmark(step)
