#!/usr/bin/env bash
# Quick start, command 1: set up .venv and run the main job on the embedded default data.
# For now the main job overfits one batch with the tiny model, stage 1 then stage 2 (engine/overfit.py);
# the DeepSpeed pre-training on the synthetic dataset replaces it once the data and engine land.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m mavil.model.summary --config configs/stage1.json
.venv/bin/python -m mavil.engine.overfit --stage1 configs/tiny/stage1.json --stage2 configs/tiny/stage2.json --out runs/overfit "$@"
