#!/usr/bin/env bash
# Quick start, command 2: set up .venv and run the test suite (CPU; tests marked gpu skip without CUDA).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k masking`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
