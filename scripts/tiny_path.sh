#!/usr/bin/env bash
# The whole path on the synthetic set with the tiny configs, two processes each: pre-training stage 1 and
# stage 2, then fine-tuning from the stage-2 export and, as the baseline, from random initialisation
# (audio, video, audio+video classification, and retrieval), each evaluated on the synthetic set of
# another seed; prints one results table (the README's). About ten minutes on two CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${OUT:-runs/tiny-path}
ds=(.venv/bin/deepspeed --num_gpus 2)
"${ds[@]}" engine/pretrain.py --config configs/tiny/stage1.json train.output_dir=$out/stage1 "$@"
"${ds[@]}" engine/pretrain.py --config configs/tiny/stage2.json train.output_dir=$out/stage2 \
    model.teacher=$out/stage1/model.safetensors "$@"
for mode in audio video audio+video retrieval; do
    name=${mode/+/-}
    "${ds[@]}" engine/finetune.py --config configs/tiny/finetune.json finetune.mode=$mode \
        train.output_dir=$out/$name-pretrained finetune.init=$out/stage2/model.safetensors "$@"
    "${ds[@]}" engine/finetune.py --config configs/tiny/finetune.json finetune.mode=$mode \
        train.output_dir=$out/$name-random "$@"
done
.venv/bin/python -m mavil.engine.report $out | tee $out/results.md
