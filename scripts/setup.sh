#!/usr/bin/env bash
# Creates the virtual environment .venv in the repository and installs the pinned stack into it.
# Idempotent: it reinstalls only when constraints.txt or setup.py changed since the last install.
# Order matters: torch first, then DeepSpeed without build isolation (it builds against the installed torch).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
venv=.venv
stamp="$venv/.installed-$(cat constraints.txt setup.py | sha256sum | cut -c1-16)"
[ -f "$stamp" ] && exit 0

"$python" -c 'import sys; assert sys.version_info >= (3, 10), "MAViL needs Python >= 3.10, found " + sys.version' 
echo "setting up $venv (torch, torchaudio, triton, xformers, deepspeed, DALI): about two minutes on a fresh machine"
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check --constraint constraints.txt)
"${pip[@]}" --upgrade pip setuptools wheel
"${pip[@]}" torch torchaudio
"${pip[@]}" --no-build-isolation deepspeed
"${pip[@]}" --no-build-isolation --editable '.[dev]'
rm -f "$venv"/.installed-*
touch "$stamp"
