#!/usr/bin/env bash
# On the GPU device machine, from the repository root: Nsight Compute profiles of the NVFP4 GEMM kernels, one launch
# per case (bench_cuda_nvfp4_gemm --profile; grouped: the w13 launch), as text reports in $OUT/ncu.tgz (details, raw metrics, per-SASS source
# counters) and a summary in $OUT/profile.log. --prebuilt DIR: DIR holds bench_cuda_nvfp4_gemm built on the
# workstation (it needs only libfmt from the carried packages, deps.sh); otherwise CMake builds it here (-j16).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/deps.sh"

start_device_script gemm_profile.sh profile.log > /dev/null
mkdir -p "$OUT/ncu"
if [ "${1:-}" = "--prebuilt" ]; then
  bench="$2/bench_cuda_nvfp4_gemm"
  export LD_LIBRARY_PATH="$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
else
  stamp "configure and build"
  cmake -S . -B "$BUILD" -G Ninja -DFP4SERVE_CUDA=ON -DFP4SERVE_BUILD_BENCH=ON "${dep_flags[@]}" > "$OUT/build.log" 2>&1 &&
    cmake --build "$BUILD" --target bench_cuda_nvfp4_gemm -j16 >> "$OUT/build.log" 2>&1 ||
    { tail -30 "$OUT/build.log"; stamp "build FAILED"; exit 1; }
  bench="$BUILD/bench/bench_cuda_nvfp4_gemm"
fi

# name | kernel regex | launches to profile | bench --profile arguments
cases=(
  "fused_8192_m1|nvfp4_fused|1|fused 8192 8192 1"
  "fused_8192_m64|nvfp4_fused|1|fused 8192 8192 64"
  "grouped_16|nvfp4_fused|1|grouped 16"
  "fused_8192_m16|nvfp4_fused|1|fused 8192 8192 16"
  "streaming_8192_m1|nvfp4_streaming|1|streaming 8192 8192 1"
  "fused_8192_m1_w2r2|nvfp4_fused|1|fused 8192 8192 1 1 2 1 2"
  "fused_8192_m64_w4r2|nvfp4_fused|1|fused 8192 8192 64 8 4 2 2"
)
for entry in "${cases[@]}"; do
  IFS='|' read -r name kernel count arguments <<< "$entry"
  stamp "$name: $arguments"
  # shellcheck disable=SC2086
  "$bench" --profile $arguments 2>&1 | tee -a "$OUT/profile.log"
  # shellcheck disable=SC2086
  timeout 120 ncu --set full --import-source yes --clock-control none -k "regex:$kernel" --launch-skip 2 \
    --launch-count "$count" -f -o "$OUT/ncu/$name" "$bench" --profile $arguments > "$OUT/ncu/$name.run.log" 2>&1 ||
    { stamp "ncu failed on $name"; tail -5 "$OUT/ncu/$name.run.log"; continue; }
  ncu --import "$OUT/ncu/$name.ncu-rep" --page details > "$OUT/ncu/$name.details.txt" 2>&1
  ncu --import "$OUT/ncu/$name.ncu-rep" --page raw --csv > "$OUT/ncu/$name.raw.csv" 2>&1
  ncu --import "$OUT/ncu/$name.ncu-rep" --page source --csv --print-source sass > "$OUT/ncu/$name.sass.csv" 2>&1
  grep -E "^  [a-z_]|Duration|Memory Throughput|DRAM Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Issued Ipc|No Eligible|Registers Per|Stall|L1/TEX Hit|Shared" \
    "$OUT/ncu/$name.details.txt" | head -40 | tee -a "$OUT/profile.log"
done
stamp "packing"
rm -f "$OUT"/ncu/*.ncu-rep  # no Nsight Compute on the workstation: the text pages come back
tar -czf "$OUT/ncu.tgz" -C "$OUT" ncu && rm -rf "$OUT/ncu"
ls -la "$OUT"
stamp "done"
