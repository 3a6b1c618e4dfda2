#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py) from a fresh copy of the tree on the GPU machine: installs the
# carried wheels in .whl/ (faiss-cpu and the web stack, docs/PERFORMANCE.md "GPU path") into
# /tmp/site when there are any, then runs the check inside 470 s; the report goes to $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
exec timeout 470 python3 -m bench.gpu_check --out "${OUT:-var/gpu_check}" "$@"
