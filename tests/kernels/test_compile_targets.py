"""Every Triton kernel compiles for the GPUs we train on, sm_80 (A100) and sm_90 (H100/H200), without a GPU.

mavil.kernels.compile_targets drives the real launchers (the public functions and their autograd backward)
at the paper's sizes in fp32, bf16 and DeepSpeed's mix, plus the stage-1 model's own calls
(bench.kernels.model_cases); each launch compiles for the target instead of running, and ptxas -v reads
registers and spills. It runs in fresh interpreters, one per target: this session has TRITON_INTERPRET=1
(tests/conftest.py), under which the kernels are interpreted functions that cannot be compiled.
"""

import ast
from pathlib import Path

import pytest

from mavil.kernels.compile_targets import TARGETS, compile_in_subprocess

REPO = Path(__file__).resolve().parents[2]
CAPABILITIES = pytest.mark.parametrize("capability", list(TARGETS), ids=[f"sm{c}" for c in TARGETS])


def launched_kernels() -> set[str]:
    """The name of every kernel a launcher in kernels/ launches, `name[grid](...)`."""
    names = set()
    for path in (REPO / "kernels").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            launch = isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript)
            if launch and isinstance(node.func.value, ast.Name):
                names.add(node.func.value.id)
    return names


@pytest.fixture(scope="module")
def compiled() -> dict:
    return compile_in_subprocess(tuple(TARGETS), cases="bench.kernels:model_cases", with_ptx=True, cwd=str(REPO))


def describe(row: dict) -> str:
    return f"sm_{row['capability']} {row['kernel']} [{row['op']} {row['shape']} {row['dtype']}]"


def test_the_launchers_launch_the_kernels_we_know():
    assert launched_kernels() >= {
        "_gather_fwd",
        "_gather_bwd",
        "_restore_fwd",
        "_restore_bwd",
        "_nce_fwd",
        "_nce_bwd_queries",
        "_nce_bwd_keys",
        "_mse_fwd",
        "_mse_bwd",
    }


@CAPABILITIES
def test_every_kernel_compiles_in_every_dtype_without_spills(compiled, capability):
    rows = [row for row in compiled["rows"] if row["capability"] == capability]
    errors = [f"{describe(row)}: {row['error']}" for row in rows if "error" in row]
    assert not errors, "\n".join(errors)
    spills = [
        f"{describe(row)}: {row['registers']} registers, spill stores {row['spill_stores']} B, loads "
        f"{row['spill_loads']} B"
        for row in rows
        if row["spill_stores"] or row["spill_loads"]
    ]
    assert not spills, "\n".join(spills)
    for dtype in ("fp32", "bf16", "bf16+fp32 pos"):
        compiled_here = {row["kernel"] for row in rows if row["dtype"] == dtype}
        expected = (
            launched_kernels()
            if dtype != "bf16+fp32 pos"
            else {"_gather_fwd", "_gather_bwd", "_restore_fwd", "_restore_bwd"}
        )
        assert expected <= compiled_here, f"{dtype}: not compiled: {sorted(expected - compiled_here)}"


@CAPABILITIES
def test_gather_reads_the_patch_embedding_tokens_with_vector_loads(compiled, capability):
    # the model path: PatchEmbed's tokens into masked_gather; a transposed view (stride_xd = N) would leave
    # one scalar load per element
    rows = [
        row
        for row in compiled["rows"]
        if row["capability"] == capability and row["op"] == "MAViL" and row["kernel"] == "_gather_fwd"
    ]
    assert {row["dtype"] for row in rows} == {"fp32", "bf16+fp32 pos"}
    for row in rows:
        assert row["constexprs"].get("stride_xd") == "1", describe(row)
        ptx = compiled["ptx"][row["ptx_key"]]
        assert "ld.global.v4" in ptx or "ld.global.v2" in ptx, describe(row)
        assert row["loads"]["scalar"] == 1, f"{describe(row)}: {row['loads']} (only the token id may be scalar)"
