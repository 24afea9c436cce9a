#!/usr/bin/env bash
# Download, on a networked machine, the wheels the GPU suite needs that the GPU machine lacks, for
# CPython 3.12 on manylinux x86_64, into .whl/ at the repository root (git-ignored; carried with
# the working tree, then installed by run.sh into a temporary folder).
#
#   bash benchmarks/gpu/fetch_wheels.sh [DEST]              # DEST defaults to .whl/ (about 3.6 MiB)
#   bash benchmarks/gpu/fetch_wheels.sh --with-4bit [DEST]  # + bitsandbytes (41 MiB) for the 4-bit section
#
# The GPU machine has torch, transformers, peft, accelerate, triton, numpy and pytest, and with them
# their own requirements (pyyaml, safetensors, tokenizers, huggingface-hub, packaging, ...). Of
# rlentropy's runtime dependencies (pyproject.toml) the suite imports only pydantic beyond those
# (rlentropy.train.config, .models.loading, .data.tasks); the others are imported lazily by code the
# suite does not run: typer (+rich) by the CLI, tensorboard by logging.tensorboard=true (the suite
# sets false), matplotlib by the report, math-verify by the math tasks, gguf by GGUF models, pyarrow
# by parquet datasets. So: pydantic with its requirements (pydantic-core is pinned by pydantic,
# annotated-types, typing-inspection, typing-extensions), plus liger-kernel (pure Python + Triton),
# the speed section's optional anchor. See docs/gpu.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PYTHON:-python3}"
LIMIT_MIB=40
WITH_4BIT=0
if [ "${1:-}" = "--with-4bit" ]; then
  WITH_4BIT=1
  LIMIT_MIB=48  # the working tree (~13 MiB) + wheels must stay under the 64 MiB a device run carries
  shift
fi
DEST="${1:-$ROOT/.whl}"

rm -rf "$DEST"
mkdir -p "$DEST"
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 -d "$DEST")
"$PY" -m pip download -q "${TARGET[@]}" "pydantic>=2.7"   # resolves the exact pydantic-core it pins
"$PY" -m pip download -q "${TARGET[@]}" --no-deps "liger-kernel"
if [ "$WITH_4BIT" = 1 ]; then  # its requirements (torch, numpy, packaging) are on the machine
  "$PY" -m pip download -q "${TARGET[@]}" --platform manylinux_2_24_x86_64 --no-deps "bitsandbytes"
fi

ls -l "$DEST"
TOTAL=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
echo "total: $TOTAL bytes ($((TOTAL / 1048576)) MiB; limit $LIMIT_MIB MiB)"
if [ "$TOTAL" -gt $((LIMIT_MIB * 1048576)) ]; then
  echo "error: the wheels exceed $LIMIT_MIB MiB (the working tree travels with a 64 MiB limit)" >&2
  exit 1
fi
