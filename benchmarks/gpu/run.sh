#!/usr/bin/env bash
# The GPU validation suite of rlentropy (issue #15): one command, at most 8 minutes on one H200.
#
#   bash benchmarks/gpu/run.sh OUT             # on a CUDA machine: everything under OUT, table at the end
#   bash benchmarks/gpu/run.sh --dry-run OUT   # the same code at toy sizes on the CPU (< 1 minute)
#   bash benchmarks/gpu/run.sh OUT --only correctness,speed     # further options go to suite.py
#
# Set-up only; the suite is benchmarks/gpu/suite.py. Wheels in .whl/ at the repository root (made by
# benchmarks/gpu/fetch_wheels.sh on a networked machine) are installed into a temporary folder first,
# for machines that lack some of rlentropy's dependencies. PYTHON selects the interpreter (python3).
# docs/gpu.md explains the output.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PYTHON:-python3}"
OUT=""
ARGS=()
for a in "$@"; do
  case "$a" in
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    --dry-run) ARGS+=("$a") ;;
    -*) ARGS+=("$a") ;;
    *) if [ -z "$OUT" ]; then OUT="$a"; else ARGS+=("$a"); fi ;;
  esac
done
if [ -z "$OUT" ]; then
  echo "usage: bash benchmarks/gpu/run.sh [--dry-run] OUT [suite.py options]" >&2
  exit 2
fi
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/rlentropy-gpu-work.XXXXXX")"
SITE=""
cleanup() { rm -rf "$WORK" ${SITE:+"$SITE"}; }
trap cleanup EXIT

export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export HF_HUB_DISABLE_TELEMETRY=1 PYTHONDONTWRITEBYTECODE=1
# torch.cuda.is_available() through NVML: a parent that only asks does not initialise CUDA, so the
# suite's forked sections can still use it (suite.py checks, and falls back to spawn if not)
export PYTORCH_NVML_BASED_CUDA_CHECK=1

if compgen -G "$ROOT/.whl/*.whl" > /dev/null; then
  SITE="$(mktemp -d "${TMPDIR:-/tmp}/rlentropy-gpu-site.XXXXXX")"
  ok=0
  if "$PY" -m pip --version > /dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$ROOT"/.whl/*.whl && ok=1
  else  # no pip: a wheel is a zip archive laid out for site-packages (no compatibility check)
    "$PY" - "$SITE" "$ROOT"/.whl/*.whl <<'PYEOF' && ok=1
import sys, zipfile
for wheel in sys.argv[2:]:
    zipfile.ZipFile(wheel).extractall(sys.argv[1])
PYEOF
  fi
  if [ "$ok" = 1 ]; then
    export PYTHONPATH="$SITE:$PYTHONPATH"
    RLENTROPY_GPU_WHEELS="$(cd "$ROOT/.whl" && ls -- *.whl | tr '\n' ' ')"
    export RLENTROPY_GPU_WHEELS
    echo "installed $(echo "$RLENTROPY_GPU_WHEELS" | wc -w) carried wheels from .whl/ into $SITE"
  else  # all or nothing: half a pydantic (without its pinned pydantic-core) is worse than none
    echo "warning: the wheels in .whl/ do not install on $("$PY" -V 2>&1) (they are for CPython 3.12," \
         "manylinux x86_64); running with what is installed (the env section lists what is missing)" >&2
  fi
fi

cd "$ROOT"
"$PY" benchmarks/gpu/suite.py "$OUT" --work "$WORK" ${ARGS[@]+"${ARGS[@]}"}
