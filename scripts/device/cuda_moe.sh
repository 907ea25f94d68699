#!/usr/bin/env bash
# On the GPU device machine, from the repository root: the MoE layer, activation-quantization and post-processing
# kernels' tests, compute-sanitizer memcheck on a subset, then bench_cuda_moe; logs and the table go to $OUT.
# With --prebuilt DIR, DIR holds test_kernels_cuda and bench_cuda_moe built on the workstation (x86-64, nvcc 13,
# sm_90a; they need only libfmt from the carried packages) and nothing is compiled here; otherwise both are built
# with CMake (-j16) against the carried packages (deps.sh).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/deps.sh"

OUT=${OUT:-/tmp/fp4serve-device-out}
BUILD=${BUILD:-build-device}
mkdir -p "$OUT"
start=$(date +%s)
stamp() { echo "[cuda_moe.sh +$(( $(date +%s) - start ))s] $*" | tee -a "$OUT/steps.log"; }

print_device_environment "$OUT/env.log"
unpack_deps
if [ "${1:-}" = "--prebuilt" ]; then
  tests="$2/test_kernels_cuda" bench="$2/bench_cuda_moe"
  export LD_LIBRARY_PATH="$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
else
  stamp "configure and build"
  cmake -S . -B "$BUILD" -G Ninja -DFP4SERVE_CUDA=ON -DFP4SERVE_BUILD_BENCH=ON "${dep_flags[@]}" > "$OUT/build.log" 2>&1 &&
    cmake --build "$BUILD" --target test_kernels_cuda bench_cuda_moe -j16 >> "$OUT/build.log" 2>&1 ||
    { tail -30 "$OUT/build.log"; stamp "build FAILED"; exit 1; }
  echo "build warnings: $(grep -c -i "warning" "$OUT/build.log")"
  tests="$BUILD/tests/test_kernels_cuda" bench="$BUILD/bench/bench_cuda_moe"
fi

mine='ActQuantCuda*:PostprocessCuda*:Layouts/*:Shapes/*:MoeLayerCuda*:CudaDevice*'
stamp "tests"
OMP_WAIT_POLICY=passive "$tests" --gtest_brief=1 --gtest_filter="$mine" 2>&1 | tee "$OUT/test.log" | tail -40
test_status=${PIPESTATUS[0]}
grep "\[ moe \]" "$OUT/test.log"

stamp "memcheck on the odd shapes"
timeout 150 compute-sanitizer --tool memcheck --error-exitcode 3 "$tests" --gtest_brief=1 \
  --gtest_filter='ActQuantCuda*:Layouts/*padded*:Layouts/*w13_trtllm*:PostprocessCuda*Alphas*:Shapes/*odd*:Shapes/ties*:Shapes/max_experts*:Shapes/single_expert*' \
  > "$OUT/memcheck.log" 2>&1
echo "memcheck exit status $? (0 = clean)" | tee -a "$OUT/memcheck.log"
tail -4 "$OUT/memcheck.log"

if command -v ncu > /dev/null; then
  # Each case runs the layer twice on each expert path (layer kernels, grouped GEMM, auto): 6 forwards.
  stamp "ncu: every MoE kernel at m = 1 and m = 16 (Qwen3-30B-A3B shapes; 2 forwards per expert path)"
  for case in qwen3_m1 qwen3_m16_trtllm; do
    timeout 150 ncu --kernel-name regex:'moe_|nvfp4_' \
      --metrics gpu__time_duration.sum,dram__bytes_read.sum,sm__warps_active.avg.pct_of_peak_sustained_active \
      "$tests" --gtest_filter="Shapes/MoeLayerTest.*/$case" > "$OUT/ncu_$case.log" 2>&1
    grep -E "^  [a-zA-Z_].*\(|gpu__time_duration|dram__bytes_read|warps_active" "$OUT/ncu_$case.log" | head -100
  done
fi

stamp "benchmark"
"$bench" 2> "$OUT/bench.err" | tee "$OUT/bench.md"
bench_status=${PIPESTATUS[0]}
tail -3 "$OUT/bench.err"
stamp "done: tests exit $test_status, bench exit $bench_status"
[ "$test_status" -eq 0 ] && [ "$bench_status" -eq 0 ]
