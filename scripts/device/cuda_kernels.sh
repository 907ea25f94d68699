#!/usr/bin/env bash
# On the GPU device machine, from the repository root: configure and build test_kernels_cuda and
# bench_cuda_nvfp4_gemm (Ninja, -j16), run the tests, memcheck a subset, then the benchmark (--no-bench skips it);
# every log is tee'd into $OUT. With --prebuilt DIR, DIR holds test_kernels_cuda and bench_cuda_nvfp4_gemm built on
# the workstation and nothing is compiled here.
# The device image lacks the project's Debian -dev packages: deps.sh unpacks the carried ones (see there).
# If the whole library does not build (other engineers' unfinished files travel with the tree), only the sources
# these two programs need are compiled; --minimal goes there directly (after configuring, which checks the packages).
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/deps.sh"
if [ "${1:-}" = "--list-debs" ]; then echo "${fp4serve_debs[@]}"; exit 0; fi
minimal_only=0
run_bench=1
prebuilt=""
while [ $# -gt 0 ]; do
  case "$1" in
    --minimal) minimal_only=1 ;;
    --no-bench) run_bench=0 ;;
    --prebuilt) prebuilt=$2; shift ;;
  esac
  shift
done

start_device_script cuda_kernels.sh steps.log

# The fallback: only the sources these two programs need, with the flags CMake would use.
minimal_build() {
  local dir="$BUILD/minimal" cuda_lib
  cuda_lib="$(dirname "$(command -v nvcc)")/../lib64"
  mkdir -p "$dir"
  local cxx=(g++ -O2 -g -std=c++20 -fopenmp -Wall -Wextra -DFP4SERVE_HAVE_CUDA=1 -DSPDLOG_FMT_EXTERNAL
             -DFP4SERVE_SOURCE_DIR="\"$PWD\"" -DFP4SERVE_BINARY_DIR="\"$PWD/$BUILD\"" -Isrc -I. -I"$DEPS/usr/include"
             -I"$(dirname "$(command -v nvcc)")/../include")
  local nvcc=(nvcc -O2 -g -lineinfo -std=c++20 --expt-relaxed-constexpr -Xcompiler=-Wall,-Wextra
              -gencode=arch=compute_90a,code=sm_90a -DFP4SERVE_HAVE_CUDA=1 -Isrc)
  local pids=() objects=()
  for f in src/kernels/cuda/*.cu; do
    "${nvcc[@]}" -c "$f" -o "$dir/$(basename "$f").o" & pids+=($!); objects+=("$dir/$(basename "$f").o")
  done
  for f in src/kernels/cuda/*.cpp src/kernels/device.cpp src/format/nvfp4.cpp src/format/layout.cpp \
           src/format/act_quant.cpp src/format/e4m3.cpp src/quant/nvfp4_layout.cpp; do
    "${cxx[@]}" -c "$f" -o "$dir/$(basename "$f").o" & pids+=($!); objects+=("$dir/$(basename "$f").o")
  done
  local tests=()
  for f in tests/kernels_cuda/*.cpp; do
    "${cxx[@]}" -c "$f" -o "$dir/test_$(basename "$f").o" & pids+=($!); tests+=("$dir/test_$(basename "$f").o")
  done
  "${cxx[@]}" -c bench/cuda_nvfp4_gemm.cpp -o "$dir/bench.o" & pids+=($!)
  local failed=0
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
  [ "$failed" -eq 0 ] || return 1
  local libs=(-L"$LIBDIR" -Wl,-rpath,"$LIBDIR" -L"$cuda_lib" -Wl,-rpath,"$cuda_lib" -lfmt -lcublas -lcublasLt -lcudart
              -lpthread -ldl -lrt)
  mkdir -p "$BUILD/tests" "$BUILD/bench"
  g++ -fopenmp "${tests[@]}" "${objects[@]}" -lgtest_main -lgtest -lgmock "${libs[@]}" \
    -o "$BUILD/tests/test_kernels_cuda" &&
    g++ -fopenmp "$dir/bench.o" "${objects[@]}" "${libs[@]}" -o "$BUILD/bench/bench_cuda_nvfp4_gemm"
}

if [ -n "$prebuilt" ]; then
  tests="$prebuilt/test_kernels_cuda" bench="$prebuilt/bench_cuda_nvfp4_gemm"
  export LD_LIBRARY_PATH="$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
else
  stamp "configure"
  build_status=1
  if ! cmake -S . -B "$BUILD" -G Ninja -DFP4SERVE_CUDA=ON -DFP4SERVE_BUILD_BENCH=ON "${dep_flags[@]}" \
       > "$OUT/configure.log" 2>&1; then
    tail -20 "$OUT/configure.log"
  elif [ "$minimal_only" -eq 0 ]; then
    stamp "build"
    cmake --build "$BUILD" --target test_kernels_cuda bench_cuda_nvfp4_gemm -j16 > "$OUT/build.log" 2>&1
    build_status=$?
  fi
  if [ "$build_status" -ne 0 ]; then
    grep -E "error|FAILED" "$OUT/build.log" 2> /dev/null | head -20
    stamp "no full build; building only the NVFP4 kernels, their test and benchmark"
    minimal_build >> "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; stamp "minimal build FAILED"; exit 1; }
  fi
  echo "build warnings: $(grep -c -i "warning" "$OUT/build.log")"

  tests="$BUILD/tests/test_kernels_cuda" bench="$BUILD/bench/bench_cuda_nvfp4_gemm"
fi

stamp "tests"
"$tests" --gtest_brief=1 2>&1 | tee "$OUT/test.log" | tail -30
test_status=${PIPESTATUS[0]}

if command -v compute-sanitizer > /dev/null; then
  stamp "memcheck on the padded and odd-K shapes, every fused tile shape, the grouped kernel"
  timeout 150 compute-sanitizer --tool memcheck --error-exitcode 3 "$tests" --gtest_brief=1 \
    --gtest_filter='*odd_m3_*:*odd_m100_*:*down_m16_*:*_gated-*DequantCublas*:*odd200_m5_Fused*:*odd_m*_Fused*:*odd_uneven*:*w13_decode*:*many_experts*' \
    > "$OUT/memcheck.log" 2>&1
  echo "memcheck exit status $? (0 = clean)" | tee -a "$OUT/memcheck.log"
  tail -5 "$OUT/memcheck.log"
fi

bench_status=0
if [ "$run_bench" -eq 1 ]; then
  stamp "benchmark"
  "$bench" 2> "$OUT/bench.err" | tee "$OUT/bench.md"
  bench_status=${PIPESTATUS[0]}
fi
stamp "done: tests exit $test_status, bench exit $bench_status"
[ "$test_status" -eq 0 ] && [ "$bench_status" -eq 0 ]
