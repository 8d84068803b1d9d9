#!/usr/bin/env bash
# The GPU checks: what CI (which has no GPU) cannot run. On a machine with a
# CUDA device and this repository's packages (k2, or fast_rnnt built with CUDA):
#
#   bash scripts/check_cuda.sh [LOG_DIR]
#
# 1. tests/test_cuda.py: every CUDA code path (transducer losses and gradients,
#    each KD method and sampler, greedy and modified beam search, ScaledAdam,
#    bf16 autocast) against the same computation on the CPU, and the recipe
#    trained on the GPU (bf16 teacher, fp16 KD student) then decoded on the CPU;
# 2. the recipe's end-to-end tests (train.py picks the GPU when there is one):
#    resume, KD in the loop, Zipformer + ScaledAdam, the pruned-loss backend;
# 3. the GPU throughput benchmarks (figures, not pass/fail): training per preset
#    in bf16, and one KD step of a large teacher and a small student.
# LOG_DIR (default: ./cuda-check) gets the pytest report and the benchmark logs.
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
out=${1:-cuda-check}
mkdir -p "$out"
$py -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: nothing to check')" || exit 1
rc=0
$py -m pytest -q -p no:cacheprovider -rfE --durations=10 --junitxml="$out/pytest.xml" \
  tests/test_cuda.py tests/test_pruned_rnnt_backend.py tests/test_train.py \
  tests/test_train_kd.py tests/test_train_zipformer.py 2>&1 | tee "$out/pytest.log" || rc=1
cd egs/librispeech/ASR
$py ./spkd_transducer/benchmark_training.py --device cuda --autocast bf16 \
  --presets tiny small large zipformer-small zipformer-large \
  --max-duration-per-batch 600 --warmup-steps 3 --steps 30 --max-seconds-per-preset 10 \
  2>&1 | tee "$out/benchmark_training.log" || rc=1
$py ./spkd_transducer/benchmark_kd.py --device cuda --teacher-preset large --student-preset small \
  -B 16 -T 400 -U 60 -V 500 --num-samples 1 2 4 --warmup 2 --steps 10 --profile-steps 3 \
  2>&1 | tee "$out/benchmark_kd.log" || rc=1
exit $rc
