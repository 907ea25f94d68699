#!/usr/bin/env bash
# On the GPU device machine, from the repository root: the non-GEMM kernels of the GPU forward (paged attention,
# RMSNorm, q/k-norm + RoPE, embedding, sampling). Builds test_kernels_cuda and bench_cuda_ops (CMake, -j16, against
# the carried packages of deps.sh), runs these kernels' tests, then the binary's other tests, compute-sanitizer
# memcheck and racecheck on a subset, then bench_cuda_ops. Every step runs whatever the previous ones returned; logs
# and the benchmark table are tee'd into $OUT, and a summary of every step's exit status comes last.
# With --prebuilt DIR, DIR holds test_kernels_cuda and bench_cuda_ops built on the workstation and nothing is built.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/deps.sh"

OUT=${OUT:-/tmp/fp4serve-device-out}
BUILD=${BUILD:-build-device}
mkdir -p "$OUT"
start=$(date +%s)
stamp() { echo "[gpu_ops.sh +$(( $(date +%s) - start ))s] $*" | tee -a "$OUT/steps.log"; }
summary=()
record() { summary+=("$(printf '%-34s exit %s' "$1" "$2")"); }

print_device_environment "$OUT/env.log"
unpack_deps
if [ "${1:-}" = "--prebuilt" ]; then
  tests="$2/test_kernels_cuda" bench="$2/bench_cuda_ops"
  export LD_LIBRARY_PATH="$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
else
  stamp "configure and build"
  cmake -S . -B "$BUILD" -G Ninja -DFP4SERVE_CUDA=ON -DFP4SERVE_BUILD_BENCH=ON "${dep_flags[@]}" > "$OUT/build.log" 2>&1 &&
    cmake --build "$BUILD" --target test_kernels_cuda bench_cuda_ops -j16 -k 0 >> "$OUT/build.log" 2>&1
  build_status=$?
  record "build" "$build_status"
  [ "$build_status" -eq 0 ] || { grep -E "error|FAILED" "$OUT/build.log" | head -30; }
  echo "build warnings: $(grep -c -i "warning" "$OUT/build.log")"
  tests="$BUILD/tests/test_kernels_cuda" bench="$BUILD/bench/bench_cuda_ops"
fi

# compute-sanitizer TOOL on the tests matching FILTER within SECONDS; log in $OUT/TOOL.log (124: timed out).
sanitize() {
  stamp "compute-sanitizer $1"
  timeout "$3" compute-sanitizer --tool "$1" --error-exitcode 3 "$tests" --gtest_brief=1 --gtest_filter="$2" \
    > "$OUT/$1.log" 2>&1
  record "$1" "$?"
  tail -4 "$OUT/$1.log"
}

mine='AttentionCuda*:NormCuda*:QkNormRopeCuda*:EmbeddingCuda*:SamplingCuda*:CudaDevice*'
if [ -x "$tests" ]; then
  stamp "tests of these kernels"
  OMP_WAIT_POLICY=passive "$tests" --gtest_filter="$mine" 2>&1 | tee "$OUT/test.log" |
    grep -E "^\[ +(OK|FAILED|SKIPPED) +\]|Failure|error|PASSED|FAILED TEST" | tail -60
  record "tests (gpu ops)" "${PIPESTATUS[0]}"

  stamp "the binary's other tests (NVFP4 GEMM, MoE, ...), so that one failure does not hide another"
  OMP_WAIT_POLICY=passive "$tests" --gtest_brief=1 --gtest_filter="-$mine" > "$OUT/test_others.log" 2>&1
  record "tests (others in the binary)" "$?"
  tail -5 "$OUT/test_others.log"

  if command -v compute-sanitizer > /dev/null; then
    sanitize memcheck 'AttentionCuda.OtherHeadDims*:AttentionCuda.PrefillIsCausal:AttentionCuda.DecodeReadsExactly*:NormCuda.*:QkNormRopeCuda.*:EmbeddingCuda.*:SamplingCuda.Ties*:SamplingCuda.ManySortedRows*:SamplingCuda.Reports*' 150
    # Shared-memory tiles of attention, block reductions and scans of sampling and norms.
    sanitize racecheck 'AttentionCuda.PrefillIsCausal:SamplingCuda.Ties*:NormCuda.RmsnormMatchesCpu' 120
  else
    record "compute-sanitizer (not found)" "-"
  fi
else
  record "tests (no test binary)" 1
fi

if [ -x "$bench" ]; then
  stamp "benchmark"
  "$bench" 2> "$OUT/bench.err" | tee "$OUT/bench.md"
  record "bench_cuda_ops" "${PIPESTATUS[0]}"
  tail -3 "$OUT/bench.err"
else
  record "bench_cuda_ops (no binary)" 1
fi

stamp "done"
{
  echo "== gpu_ops.sh summary: $(nvidia-smi --query-gpu=name --format=csv,noheader 2> /dev/null | head -1), commit $(git rev-parse --short HEAD 2> /dev/null) =="
  printf '%s\n' "${summary[@]}"
  grep -E "^\[  FAILED  \]" "$OUT/test.log" "$OUT/test_others.log" 2> /dev/null | sort -u | head -40
} | tee "$OUT/summary.txt"
! grep -qvE "exit (0|-)$" <(printf '%s\n' "${summary[@]}")
