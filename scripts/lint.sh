#!/usr/bin/env bash
# The repository's formatter and linter (settings in ruff.toml): fails on unformatted code or a lint finding.
# `bash scripts/lint.sh --fix` formats and fixes what ruff can instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${1:-}" = "--fix" ]; then
    .venv/bin/ruff format .
    .venv/bin/ruff check --fix .
else
    .venv/bin/ruff format --check .
    .venv/bin/ruff check .
fi
