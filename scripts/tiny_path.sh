#!/usr/bin/env bash
# The whole path on the synthetic set with the tiny configs, two processes each: pre-training stage 1 and
# stage 2, then fine-tuning from the stage-2 export and, as the baseline, from random initialisation
# (audio, video, audio+video classification, and retrieval), each evaluated on the synthetic set of
# another seed; prints one results table (the README's). About fifteen minutes on two CPU cores.
#
# As in the paper, pre-training sees many more (unlabeled) clips than fine-tuning: 512 clips of seed 0
# for 20 epochs per stage, where fine-tuning (configs/tiny/finetune.json) has 64 labeled clips, which are
# the first 64 of those 512 (as AS-20K lies inside AS-2M). configs/tiny/stage1.json and stage2.json keep
# 64 clips and 10 epochs for the one-minute demo and the tests; the pre-training scale is set here.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${OUT:-runs/tiny-path}
ds=(.venv/bin/deepspeed --num_gpus 2)
pretraining=(data.synthetic_clips=512 train.epochs=20 train.warmup_epochs=2 train.checkpoint_every=0 train.log_every=8)
"${ds[@]}" engine/pretrain.py --config configs/tiny/stage1.json train.output_dir=$out/stage1 "${pretraining[@]}" "$@"
"${ds[@]}" engine/pretrain.py --config configs/tiny/stage2.json train.output_dir=$out/stage2 \
    model.teacher=$out/stage1/model.safetensors "${pretraining[@]}" "$@"
for mode in audio video audio+video retrieval; do
    name=${mode/+/-}
    "${ds[@]}" engine/finetune.py --config configs/tiny/finetune.json finetune.mode=$mode \
        train.output_dir=$out/$name-pretrained finetune.init=$out/stage2/model.safetensors "$@"
    "${ds[@]}" engine/finetune.py --config configs/tiny/finetune.json finetune.mode=$mode \
        train.output_dir=$out/$name-random "$@"
done
.venv/bin/python -m mavil.engine.report $out | tee $out/results.md
