#!/usr/bin/env bash
# The one-shot GPU check (bench/gpu_check.py says what runs, with each part's budget), for a lent GPU machine
# that has torch and triton but nothing else of ours installed and no network:
#   bash bench/gpu_check.sh            # results in bench/results/*-<gpu>.json, copied to $OUT when set
#   bash bench/gpu_check.sh --dry-run  # tiny sizes on the CPU (CI runs this)
# Wheels found in .whl/ (DeepSpeed, PyAV, ...: see the device tool's README) are installed into a temporary
# folder first. Where `mavil` is not installed, a folder of links lays the checkout out as the package.
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
[ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && py=.venv/bin/python
if compgen -G ".whl/*.whl" >/dev/null; then
    site=$(mktemp -d)
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl \
        && export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$py" -c 'import mavil.kernels, mavil.engine' 2>/dev/null; then
    farm=$(mktemp -d)
    mkdir "$farm/mavil"
    ln -s "$PWD"/mavil/* "$farm/mavil/"
    ln -s "$PWD/kernels" "$farm/mavil/kernels"
    ln -s "$PWD/engine" "$farm/mavil/engine"
    export PYTHONPATH="$farm:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$py" -m bench.gpu_check "$@"
