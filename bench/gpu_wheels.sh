#!/usr/bin/env bash
# Wheels the GPU box lacks for bench/gpu_check.sh (it has torch, torchvision, numpy, pillow, timm,
# huggingface_hub, tqdm, regex, jinja2, typer …; see /work/.library/device/KINDS.md), fetched here into
# .whl/ for Python 3.12 on x86-64, at the versions of this project's venv. About 10 MB. Ray (about 70 MB)
# does not fit the 64 MB carry limit: the check's Ray section then says it was skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
EXCLUDE="$(git rev-parse --git-common-dir)/info/exclude"
grep -qx '/.whl/' "$EXCLUDE" 2>/dev/null || echo /.whl/ >> "$EXCLUDE"
PKGS="open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 SQLAlchemy==2.1.9 greenlet==3.5.6 alembic==1.20.1 Mako==1.4.3
pydantic==2.14.4 pydantic_core==2.50.5 pydantic-settings==2.16.3 python-dotenv==1.2.4 annotated-types==0.8.0
typing-inspection==0.4.5 defusedxml"
"${PY:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $PKGS
du -sh .whl
