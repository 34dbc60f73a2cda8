#!/usr/bin/env bash
# The prepared GPU check (issue 18), one call: bash bench/gpu_check.sh OUT [--cpu-smoke]
# Untried on a GPU so far. On the GPU box torch/torchvision are there but not open_clip, SQLAlchemy,
# Alembic or pydantic: carry them as wheels in .whl/ (bench/gpu_wheels.sh makes them here) and name
# .whl in the device tool's `carry`. Writes OUT/gpu_check.json and OUT/gpu_check.log.
set -uo pipefail
OUT=${1:?usage: bash bench/gpu_check.sh OUT [--cpu-smoke]}
shift
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY=${PY:-python3}
if ! "$PY" -c "import open_clip, sqlalchemy, alembic, pydantic_settings" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_check: installing the carried wheels failed"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore::DeprecationWarning
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 470 "$PY" bench/gpu_check.py "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
