#!/usr/bin/env bash
# The GPU check of the speed issue, prepared to run unattended in under 8 minutes on one GPU
# (an H200 here) and to write one report: $OUT/gpu_report.md (also printed), with
# gpu_report.json and gpu_check_log.txt beside it. See benchmarks/gpu_check.py for the steps.
#
# Before carrying the tree to the GPU machine, once, where the offline DINOv2 weights exist:
#   PYTHONPATH=src python3 benchmarks/gpu_check.py --export-weights
#   echo /benchmarks/.weights/ >> .git/info/exclude      # 45 MB, not for the repository
# then carry benchmarks/.weights (without it the recipe trains from random init).
# Run from the repository root:  bash benchmarks/gpu_check.sh [extra gpu_check.py flags]
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
if ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA GPU visible to PyTorch: nothing to check" | tee "$OUT/gpu_report.md"
    exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout --signal=TERM --kill-after=20 470 python3 benchmarks/gpu_check.py --out "$OUT" "$@"
