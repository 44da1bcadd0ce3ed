#!/usr/bin/env bash
# Quick start, command 1: set up .venv, then the main job on the embedded default data: the synthetic
# dataset is generated once into the cache (~/.cache/mavil, or $MAVIL_CACHE), tiny stage 1 and then
# tiny stage 2 pre-train under the deepspeed launcher with two processes (CPU or GPU), then the
# pictures: stage 1's reconstructions and both stages' training curves. Relaunching resumes; extra
# arguments (section.key=value) go to both stages.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m mavil.model.summary --config configs/stage1.json
.venv/bin/deepspeed --num_gpus 2 engine/pretrain.py --config configs/tiny/stage1.json "$@"
.venv/bin/deepspeed --num_gpus 2 engine/pretrain.py --config configs/tiny/stage2.json \
    model.teacher=runs/tiny/stage1/model.safetensors "$@"
echo
echo "outputs: runs/tiny/stage1 and runs/tiny/stage2 (config.json, metrics.jsonl, checkpoints/, model.safetensors)"
.venv/bin/python -m mavil.engine.visualize --run runs/tiny/stage1 --out runs/tiny/recon.png --mask-ratio 0.7 --clips 4
.venv/bin/python -m mavil.engine.plot runs/tiny/stage1 runs/tiny/stage2 --labels "stage 1" "stage 2" \
    --out runs/tiny/curves.png
echo "pictures: runs/tiny/recon.png (stage-1 reconstructions at 70% masking) and runs/tiny/curves.png (training curves)"
