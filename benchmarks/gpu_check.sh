#!/usr/bin/env bash
# Every GPU check in one go, in under 8 minutes on one GPU: the gpu-marked tests, then one table of
# torch fp16/bf16 eager vs torch.compile vs CUDA graphs vs TensorRT at batch 1 and 32 (p99 latency),
# a simulation of 64 camera streams at 15 fps each and the shipped pcb-template detector per precision.
#   benchmarks/gpu_check.sh                  on a CUDA machine
#   benchmarks/gpu_check.sh --device cpu     CPU dry run of the same code paths (tiny model, seconds)
# Extra arguments go to benchmarks/gpu_check.py (e.g. --model vit-b32).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [[ "${1:-}" == "--device" && "${2:-}" == "cpu" ]]; then
  shift 2
  exec timeout 120 "$PYTHON" benchmarks/gpu_check.py --device cpu --dry "$@"
fi
started=$(date +%s)
# The gpu tests (TensorRT engine builds included) get at most 3 minutes; the table gets the rest of 8.
timeout 180 "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu tests/runtime tests/detection -rs || echo "gpu_check: gpu tests failed or timed out (above)"
left=$(( 470 - ($(date +%s) - started) ))
timeout "$left" "$PYTHON" benchmarks/gpu_check.py --device cuda --budget $(( left - 90 )) "$@"
