#!/usr/bin/env bash
# Run the benchmark table on a CUDA machine that has torch but no package index.
#
# Beforehand, on a machine with pip access, in the repository root:
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl pyro-ppl pyro-api
#   (pyro-ppl is pure Python; also fetch opt_einsum and numpy if the GPU image lacks them)
# Then on the GPU machine, from the repository root:
#   bash benchmarks/gpu.sh            # writes benchmarks/results/gpu.json
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import pyro" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 benchmarks/run.py --device cuda --threads 4 --repeats 30 \
    --workloads mlp conv tiny --samples 1 10 50 --estimators reparam local auto --compile --predict \
    --reference "${REFERENCE:-../shared/bench/reference.py}" \
    --out "${OUT:-benchmarks/results}/gpu.json"
