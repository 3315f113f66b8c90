#!/usr/bin/env bash
# The GPU check, for a machine with CUDA and the packages of pyproject.toml already there
# (selfsup itself from src/, not installed): the engine, methods, ViT and runtime tests with
# device auto-selection picking CUDA (bf16 autocast, fused optimizers, pinned memory), then
# the throughput benchmark on the GPU.  OUT is where the log and JSON go.
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/selfsup-gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch, torchvision, timm, transformers; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
timeout 300 python3 -m pytest -p no:cacheprovider -o addopts="" -q -n 8 -m "not slow" --timeout 120 \
  tests/test_engine.py tests/test_contracts.py tests/test_vit.py tests/test_runtime.py tests/test_mae.py \
  tests/test_dino.py tests/test_byol.py tests/test_moco.py tests/test_losses.py 2>&1 | tail -40 | tee "$OUT/tests.log"
timeout 200 python3 benchmarks/bench_throughput.py --repeats 3 --out "$OUT/throughput_gpu.json" 2>&1 | tail -30 \
  | tee "$OUT/throughput.log"
