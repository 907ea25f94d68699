#!/usr/bin/env bash
# On the GPU device machine, from the repository root: every CUDA test, sanitizer pass and benchmark in one call, from
# binaries built on the workstation (--prebuilt DIR: test_kernels_cuda, bench_cuda_nvfp4_gemm, bench_cuda_moe,
# bench_cuda_ops). Runs cuda_kernels.sh, gpu_ops.sh and cuda_moe.sh in turn, each into its own folder, whatever the
# previous one returned; the device tool brings back at most 8 files, so the folders travel as $OUT/logs.tar beside
# the three benchmark tables and a summary.
set -uo pipefail
[ "${1:-}" = "--prebuilt" ] && [ -n "${2:-}" ] || { echo "usage: $0 --prebuilt DIR" >&2; exit 2; }
prebuilt=$(cd "$2" && pwd)
root=${OUT:-/tmp/fp4serve-device-out}
mkdir -p "$root"
status=0
for script in cuda_kernels gpu_ops cuda_moe; do
  start=$(date +%s)
  OUT="$root/$script" bash "scripts/device/$script.sh" --prebuilt "$prebuilt" > "$root/$script.console" 2>&1
  code=$?
  [ "$code" -eq 0 ] || status=1
  echo "$script.sh: exit $code in $(( $(date +%s) - start ))s" | tee -a "$root/summary.txt"
  grep -h -E "^\[  FAILED  \]|memcheck exit|racecheck|ERROR SUMMARY" "$root/$script.console" "$root/$script"/*.log \
    2> /dev/null | sort -u | head -20 | tee -a "$root/summary.txt"
done
cp "$root/cuda_kernels/bench.md" "$root/bench_gemm.md" 2> /dev/null
cp "$root/gpu_ops/bench.md" "$root/bench_ops.md" 2> /dev/null
cp "$root/cuda_moe/bench.md" "$root/bench_moe.md" 2> /dev/null
tar -cf "$root/logs.tar" -C "$root" cuda_kernels gpu_ops cuda_moe cuda_kernels.console gpu_ops.console cuda_moe.console
rm -rf "$root/cuda_kernels" "$root/gpu_ops" "$root/cuda_moe" "$root"/*.console
ls -l "$root"
exit "$status"
