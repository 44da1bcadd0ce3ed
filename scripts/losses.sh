#!/usr/bin/env bash
# Prints the losses of seeded two-rank tiny runs (stage 1, then fine-tuning, 6 steps each, on the synthetic set) and
# the fine-tuning's evaluation: run it before and after a change that must not change behaviour, and diff the two.
#   bash scripts/losses.sh OUT_DIR > before.txt     (about a minute on two CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${1:?usage: bash scripts/losses.sh OUT_DIR}
rm -rf "$out/s1" "$out/ft"
mkdir -p "$out"
export MAVIL_CACHE=$out/cache
ds=(.venv/bin/deepspeed --num_gpus 2 --master_port $((29700 + RANDOM % 250)))
common=(train.log_every=1 train.max_steps=6)
"${ds[@]}" engine/pretrain.py --config configs/tiny/stage1.json train.output_dir="$out/s1" "${common[@]}" \
    > "$out/s1.log" 2>&1
"${ds[@]}" engine/finetune.py --config configs/tiny/finetune.json train.output_dir="$out/ft" "${common[@]}" \
    > "$out/ft.log" 2>&1
.venv/bin/python - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for run in ("s1", "ft"):
    for line in (out / run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        print(run, {k: v for k, v in record.items() if "loss" in k or k in ("step", "event", "lr")})
print("ft eval", (out / "ft" / "eval.json").read_text().strip().replace("\n", ""))
PY
