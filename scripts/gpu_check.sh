#!/usr/bin/env bash
# The one-command GPU check: on a CUDA machine, in under 8 minutes, build the
# extension for this device's architecture, check that the native CUDA backend is
# the one dispatched, run every test that needs CUDA (kernels, Triton on the GPU,
# CUDA-graph replay == eager bit for bit), compute-sanitizer (memcheck, racecheck,
# initcheck) over every kernel on tiny shapes, N x V > 2^31 and > 65535 rows
# against fp64, a short FSDP2 training run and its export, and the GPU benchmarks (log-prob forward against a measured copy
# bandwidth; the bench/ suites on cuda). Writes $OUT/gpu_check.md (a table of
# steps, PASS/FAIL, seconds) and one log per step; exits non-zero if a step failed.
#
#     bash scripts/gpu_check.sh            # OUT defaults to ./gpu_check_out
#
# Needs no network: the package is built with the machine's own torch, pybind11,
# cmake and ninja (--no-build-isolation --no-deps).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
REPORT="$OUT/gpu_check.md"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
failed=0

step() {  # step NAME TIMEOUT_S COMMAND...: run, log to $OUT/NAME.log, one table row
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  local status=PASS
  if [ $rc -ne 0 ]; then status="FAIL (exit $rc$([ $rc -eq 124 ] && echo ', timed out'))"; failed=1; fi
  echo "| $name | $status | $(( $(date +%s) - start )) |" >>"$REPORT"
  echo "$name: $status"
}

{
  echo "# GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1
  $PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "capability", torch.cuda.get_device_capability())' 2>&1
  nvcc --version 2>&1 | tail -1
  echo '```'
  echo
  echo "| step | result | seconds |"
  echo "|---|---|---:|"
} >"$REPORT"

ARCH=$($PY -c 'import torch; m, n = torch.cuda.get_device_capability(); print(f"{m}{n}")')
step build 300 env UNIGRPO_CUDA_ARCHS="$ARCH" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
  $PY -m pip install --no-build-isolation --no-deps --force-reinstall -q .
step dispatch 60 $PY scripts/gpu_check.py dispatch
step tests 240 $PY -m pytest -q -x -p no:cacheprovider \
  tests/ops/test_cuda_backend.py tests/ops/test_triton_backend.py tests/ops/test_fuzzed_inputs.py \
  tests/ops/test_backend_contract.py tests/rollout/test_rollout.py tests/shapes/model/test_generation.py \
  "tests/train/test_train.py::test_first_inner_update_has_ratio_one"
if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck initcheck; do
    step "sanitizer-$tool" 180 compute-sanitizer --tool "$tool" --error-exitcode 1 $PY scripts/gpu_check.py tiny
  done
else
  echo "| sanitizer | SKIPPED (no compute-sanitizer) | 0 |" >>"$REPORT"
fi
# FSDP2 on the device (NCCL, one process: the sharding hooks, bf16 mixed precision, CUDA-graph
# rollouts over gathered weights, a DCP checkpoint), then its export in one plain process
FSDP_RUN="$OUT/fsdp-run"
rm -rf "$FSDP_RUN"
step fsdp 240 bash -c "torchrun --standalone --nproc-per-node 1 -m unigrpo.train parallel.strategy=fsdp \
  train.iterations=2 train.prompts_per_iteration=4 train.minibatch_size=16 train.eval_every=2 task.eval_size=4 \
  train.output_dir='$FSDP_RUN' --no-progress && test -d '$FSDP_RUN/checkpoint-000002/state' && \
  $PY -m unigrpo.export '$FSDP_RUN' '$OUT/fsdp-export'"
step large 120 $PY scripts/gpu_check.py large
step bandwidth 120 $PY scripts/gpu_check.py bandwidth
step bench 240 $PY -m pytest bench/ --benchmark-only -q -p no:cacheprovider --benchmark-json="$OUT/bench.json"
$PY bench/report.py "$OUT/bench.json" >"$OUT/bench.md" 2>&1 || true

{
  echo
  echo "## Result lines"
  echo '```'
  grep -h -E ': (PASS|FAIL)' "$OUT"/dispatch.log "$OUT"/large.log "$OUT"/bandwidth.log 2>/dev/null
  echo '```'
} >>"$REPORT"
echo "wrote $REPORT"
exit $failed
