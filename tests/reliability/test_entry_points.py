"""Every entry point given a bad argument answers with one error line and exit status 2, never a traceback.

Each runs as the user runs it (`python -m ...`, from the repository root) with a path that does not exist or a
config that is not UTF-8; argparse's usage line may precede the error line. Pre-training, fine-tuning and
evaluation have their own table (test_bad_inputs.py, docs/bad_inputs.md). Two commands at a time."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from ..conftest import REPO

MISSING = "/nonexistent/mavil-test"
ENTRIES = {
    "export": ["mavil.engine.export", MISSING],
    "visualize": ["mavil.engine.visualize", "--run", MISSING],
    "plot": ["mavil.engine.plot", MISSING],
    "report": ["mavil.engine.report", MISSING],
    "overfit": ["mavil.engine.overfit", "--bogus"],
    "prepare": ["mavil.data.prepare", MISSING, "--out", f"{MISSING}-out"],
    "health": ["mavil.data.health", MISSING],
    "summary": ["mavil.model.summary", "--config", "{latin1}"],
    "flops": ["mavil.model.flops", "--config", f"{MISSING}.json"],
    "bench.train": ["bench.train", "--config", f"{MISSING}.json"],
    "bench.data": ["bench.data", "--config", f"{MISSING}.json"],
    "bench.health": ["bench.health", MISSING],
    "bench.prepare": ["bench.prepare", MISSING],
    "bench.kernels": ["bench.kernels", "--bogus"],
}


@pytest.fixture(scope="module")
def answers(tmp_path_factory):
    latin1 = tmp_path_factory.mktemp("entry") / "latin1.json"
    latin1.write_bytes('{"train": {"output_dir": "\u00e9t\u00e9"}}'.encode("latin-1"))

    def run(argv):
        argv = [arg.format(latin1=latin1) for arg in argv]
        return subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(2) as pool:
        return dict(zip(ENTRIES, pool.map(run, ENTRIES.values())))


@pytest.mark.parametrize("entry", ENTRIES)
def test_a_bad_argument_is_one_line_and_exit_status_2(answers, entry):
    result = answers[entry]
    said = result.stdout + result.stderr
    errors = [line for line in said.splitlines() if "error:" in line]
    assert result.returncode == 2 and "Traceback" not in said and len(errors) == 1, said[-2000:]
