#!/usr/bin/env bash
# The GPU checks as one short run (under 10 minutes on an H100) for a session
# lent a GPU. On simulated data: the core on the GPU against the CPU (seed
# determinism), torch.compile against eager, simulated cohorts with tree-based
# UniFrac. With oral-dev present (../shared/data/oral-dev or $ORAL_DEV):
# pretraining samples/s and host time per step at the default size, with and
# without deterministic kernels. Results go to $RESULTS (default: the device
# tool's $OUT, else bench/out/gpu).
#
#   PYTHON=python3 bench/gpu_session.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
RESULTS=${RESULTS:-${OUT:-bench/out/gpu}}
mkdir -p "$RESULTS"
export PYTHONPATH=.

"$PYTHON" bench/cuda_check.py --epochs 5 --out "$RESULTS/cuda_check.json"
"$PYTHON" bench/compile_trial.py --device cuda --steps 10 --rounds 2 \
    --out "$RESULTS/compile_trial.json"
"$PYTHON" bench/cohort_scaling.py --device cuda --sizes 2000 20000 --batches 10 \
    --time-limit 60 --out "$RESULTS/cohort_scaling.json"
if [ -d "${ORAL_DEV:-../shared/data/oral-dev}" ]; then
    "$PYTHON" bench/pretrain_throughput.py --device cuda --steps 20 \
        --out "$RESULTS/throughput.json"
    "$PYTHON" bench/pretrain_throughput.py --device cuda --steps 20 --deterministic \
        --out "$RESULTS/throughput-deterministic.json"
else
    echo "oral-dev not found: the throughput rows are left out" >&2
fi
