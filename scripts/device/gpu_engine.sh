#!/usr/bin/env bash
# On the GPU device machine, from the repository root: the GPU engine (--device cuda) of issue 8's first slice, from
# binaries built on the workstation (--prebuilt DIR). On the workstation, `gpu_engine.sh --pack BUILD DIR` fills DIR
# (git-ignored, e.g. .carry/gpu; pass it in `carry`) with bundle.tar.xz (stripped fp4serve, test_model,
# test_kernels_cuda, test_server, bench_cpu_generate, bench_bandwidth, bench_cuda_ops and bench_cuda_moe from the
# CUDA build BUILD, and lib/ with the shared libraries they link beyond glibc, the driver and the CUDA toolkit: a bare
# device machine lacks libfmt9 and the like) and source_dir.txt (the source path compiled into the tests, where they
# look for the bundled models).
# scripts/device/e2e_30b.sh runs from the same DIR.
# Steps on the device, each under `timeout`, the whole within about 400 s so that results come back in one call:
#   0. the NVFP4 GEMM kernel tests (device alphas under graph capture among them) and the GPU sampler's (SamplingCuda*);
#   1. the GPU forward tests (CudaForward*: against the CPU forward, reload, observers, refusals), the CLI
#      end-to-end test (CudaForwardCli*) and the engine's GPU sampling against its host sampling
#      (CudaEngineSampling*), with FP4SERVE_BIN pointing at the carried fp4serve;
#   1b. HTTP end to end: `serve --device cuda`, /generate, /update_weights_from_disk B -> A -> B: the same tokens as
#      `generate --device cpu`, and B again after the round trip;
#   2. throughput: bench_cpu_generate on the bundled model, cpu and cuda, decode at batch 1, 16, 64 and prefill;
#   3. compute-sanitizer memcheck on one mixed-step comparison;
#   4. throughput on a synthetic qwen3-30b-a3b preset with SYNTH_LAYERS layers, written in NVFP4 here by the carried
#      fp4serve (`synth --format nvfp4`; the full 48 layers are scripts/device/e2e_30b.sh's);
#      then decode with GPU sampling against host sampling (--gpu-sampling on,off) on its 151936-token vocabulary.
#   reload (only when GPU_ENGINE_STEPS names it; capped at 240 s): the server issue's reload-under-load tests against
#      `serve --device cuda --deterministic` on the bundled arithmetic pair (Devices/ReloadUnderLoad.*/cuda: 32
#      streaming clients while 20 reloads alternate A/B, and failed reloads under load), output in reload_tests.log.
# Writes to $OUT: summary.txt, tests.log, memcheck.log, bench.md, reload_tests.log and logs.tar (everything else).
set -uo pipefail
if [ "${1:-}" = "--pack" ] && [ -n "${2:-}" ] && [ -n "${3:-}" ]; then
  build=$2 dir=$3
  rm -rf "$dir" && mkdir -p "$dir/lib"
  binaries="fp4serve test_model test_kernels_cuda test_server bench_cpu_generate bench_bandwidth bench_cuda_ops bench_cuda_moe"
  for binary in fp4serve tests/test_model tests/test_kernels_cuda tests/test_server bench/bench_cpu_generate \
    bench/bench_bandwidth bench/bench_cuda_ops bench/bench_cuda_moe; do
    strip -o "$dir/$(basename "$binary")" "$build/$binary" || exit 1
  done
  # shellcheck disable=SC2086 # a list of file names
  (cd "$dir" && ldd $binaries) | awk '/=> \// {print $3}' | sort -u |
    grep -vE '/(libc|libm|libdl|librt|libpthread|ld-linux[^/]*|libcuda|libcudart|libcublas[^/]*|libnvrtc)\.so' |
    while read -r lib; do cp -L "$lib" "$dir/lib/"; done
  # Libraries every distribution has (and newer there): used on the device only where it lacks them, since
  # LD_LIBRARY_PATH would otherwise push these older copies onto the device's own tools (compute-sanitizer, curl).
  mkdir -p "$dir/lib/fallback"
  for lib in libstdc++ libgcc_s libgomp libssl libcrypto libz; do mv "$dir/lib/$lib".so.* "$dir/lib/fallback/"; done
  grep -m1 -o 'FP4SERVE_SOURCE_DIR=\\"[^\\]*' "$build/build.ninja" | sed 's/.*"//' > "$dir/source_dir.txt"
  # Compressed, the binaries and libraries travel in about a fifth of their 65 MB (libicudata alone is 31 MB).
  # shellcheck disable=SC2086 # a list of file names
  (cd "$dir" && tar -cf - $binaries lib | xz -6 -T2 > bundle.tar.xz && rm -rf $binaries lib) || exit 1
  ls -l "$dir" && cat "$dir/source_dir.txt"
  exit 0
fi
[ "${1:-}" = "--prebuilt" ] && [ -n "${2:-}" ] || { echo "usage: $0 --prebuilt DIR" >&2; exit 2; }
start=$(date +%s)
source "$(dirname "$0")/prebuilt.sh"
use_prebuilt "$2" || exit 1
prebuilt=$PREBUILT source_dir=$SOURCE_DIR
OUT=${OUT:-/tmp/fp4serve-device-out}
mkdir -p "$OUT/logs"
deadline=$((start + ${GPU_ENGINE_SECONDS:-400}))
summary=()
stamp() { echo "[gpu_engine.sh +$(( $(date +%s) - start ))s] $*" | tee -a "$OUT/logs/steps.log"; }
record() { summary+=("$(printf '%-44s exit %s' "$1" "$2")"); }
# Seconds left for a step: its own cap, or less when the overall deadline is nearer (at least 5).
budget() { local left=$((deadline - $(date +%s))); [ "$left" -lt "$1" ] && echo $((left > 5 ? left : 5)) || echo "$1"; }

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  echo "commit $(git rev-parse --short HEAD 2> /dev/null)"
  nproc
  ldd "$prebuilt/test_model" | grep -i "not found"
} > "$OUT/logs/env.log" 2>&1
cat "$OUT/logs/env.log"

# The test binary looks for the bundled models under the workstation's source path; point that path here.
if [ -n "$source_dir" ] && [ ! -e "$source_dir" ]; then
  mkdir -p "$(dirname "$source_dir")" && ln -s "$PWD" "$source_dir"
fi
stamp "sources at ${source_dir:-?} -> $PWD"

# GPU_ENGINE_STEPS picks steps (default all): e.g. GPU_ENGINE_STEPS="4" runs only the 30B benchmark; BENCH_30B_MODES
# overrides its --device/--deterministic lists.
source "$(dirname "$0")/serve_util.sh"
export -f serve_on_free_port
want() { [[ " ${GPU_ENGINE_STEPS:-0 1 1b 1c 2 3 4} " == *" $1 "* ]]; }
bench="$prebuilt/bench_cpu_generate"

if want 0; then
stamp "0. kernel tests: NVFP4 GEMM (host and device alphas, graph capture), normalizer, memory release, attention, sampling"
timeout "$(budget 60)" "$prebuilt/test_kernels_cuda" \
  --gtest_filter='Nvfp4Gemm*:LogitsNormalizer*:CudaMemoryRelease*:AttentionCuda*:SamplingCuda*' \
  > "$OUT/logs/gemm_tests.log" 2>&1
record "tests Nvfp4Gemm*, LogitsNormalizer*, CudaMemoryRelease*, AttentionCuda*, SamplingCuda*" "$?"
tail -3 "$OUT/logs/gemm_tests.log"; grep -E "^\[  FAILED  \]" "$OUT/logs/gemm_tests.log" | head
fi

if want 1; then
stamp "1. GPU forward tests and the CLI end-to-end test"
timeout "$(budget 170)" "$prebuilt/test_model" \
  --gtest_filter='CudaForward*:CudaGraphs*:CudaDeterministic*:CudaEngineSampling*' > "$OUT/tests.log" 2>&1
record "tests CudaForward*, CudaForwardCli*, CudaEngineSampling*" "$?"
grep -E "^\[ +(OK|FAILED|SKIPPED) +\]|measured|Failure|PASSED|FAILED TEST" "$OUT/tests.log" | head -60
fi

if want 1b; then
stamp "1b. HTTP end to end: serve --device cuda, /generate, reload B -> A -> B, against generate --device cpu"
http_e2e() {
  local b=models/qwen3-moe-arith-b-nvfp4 a=models/qwen3-moe-arith-a-nvfp4 ids=3,14,15,92,65,35,89,79
  local request='{"input_ids": [3,14,15,92,65,35,89,79], "sampling_params": {"temperature": 0, "max_new_tokens": 16}}'
  "$FP4SERVE_BIN" generate --model-path "$b" --device cpu --act-quant none --input-ids $ids --max-new-tokens 16 \
    --json > "$OUT/logs/http_cpu.json" || return 1
  serve_on_free_port "$FP4SERVE_BIN" "$OUT/logs/serve.log" 30 --model-path "$b" --device cuda --act-quant none || return 1
  local url=$SERVER_URL server=$SERVER_PID status=0
  generate() { curl -s -X POST "$url/generate" -H 'Content-Type: application/json' -d "$request"; }
  reload() { curl -s -X POST "$url/update_weights_from_disk" -H 'Content-Type: application/json' -d "{\"model_path\": \"$1\"}"; }
  generate > "$OUT/logs/http_b1.json"
  reload "$PWD/$a" > "$OUT/logs/http_reload_a.json"
  generate > "$OUT/logs/http_a.json"
  reload "$PWD/$b" > "$OUT/logs/http_reload_b.json"
  generate > "$OUT/logs/http_b2.json"
  kill "$server"
  wait "$server" 2> /dev/null
  python3 - "$OUT/logs" << 'PY' || status=1
import json, sys
d = sys.argv[1]
ids = {n: json.load(open(f"{d}/http_{n}.json"))["output_ids"] for n in ("cpu", "b1", "a", "b2")}
print("cpu", ids["cpu"], "\ngpu B", ids["b1"], "\ngpu A", ids["a"], "\ngpu B again", ids["b2"])
# The CLI stops at config.json's EOS ids as well as the tokenizer's, the server at the tokenizer's: compare the
# common length.
n = min(len(ids["b1"]), len(ids["cpu"]))
ok = n > 0 and ids["b1"][:n] == ids["cpu"][:n] and ids["b2"] == ids["b1"]
print("HTTP e2e:", "equal to the cpu, reload back to B reproduces B" if ok else "MISMATCH")
sys.exit(0 if ok else 1)
PY
  cat "$OUT/logs/http_reload_a.json" "$OUT/logs/http_reload_b.json"; echo
  return "$status"
}
export -f http_e2e
export OUT
timeout "$(budget 60)" bash -c http_e2e 2>&1 | tee "$OUT/logs/http_e2e.log"
record "HTTP e2e (serve --device cuda, reload)" "${PIPESTATUS[0]}"
fi

if want 1c; then
stamp "1c. memory release over HTTP on the GPU: release all, resume weights, reload, resume kv_cache"
memory_e2e() {
  local b=models/qwen3-moe-arith-b-nvfp4
  local request='{"input_ids": [3,14,15,92,65,35,89,79], "sampling_params": {"temperature": 0, "max_new_tokens": 16}, "return_logprob": true}'
  serve_on_free_port "$FP4SERVE_BIN" "$OUT/logs/memory_serve.log" 30 --model-path "$b" --device cuda \
    --act-quant none --max-total-tokens 200000 || return 1
  local url=$SERVER_URL server=$SERVER_PID
  post() { curl -s -X POST "$url/$1" -H 'Content-Type: application/json' -d "$2"; echo; }
  used() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1; }
  post generate "$request" > "$OUT/logs/mem_before.json"
  echo "GPU memory used (MiB): serving $(used)"
  curl -s "$url/get_server_info" | python3 -c 'import json, sys; m = json.load(sys.stdin)["memory"]
print("get_server_info memory:", {k: m[k] for k in ("weights_bytes", "kv_cache_bytes", "workspace_bytes", "staging_bytes")})'
  post release_memory_occupation '{"tags": null}'
  echo "GPU memory used (MiB): released $(used)"
  post resume_memory_occupation '{"tags": ["weights"]}'
  post update_weights_from_disk "{\"model_path\": \"$PWD/$b\"}"
  post resume_memory_occupation '{"tags": ["kv_cache"]}'
  echo "GPU memory used (MiB): resumed $(used)"
  post generate "$request" > "$OUT/logs/mem_after.json"
  kill "$server"
  wait "$server" 2> /dev/null
  python3 - "$OUT/logs" << 'PY'
import json, sys
d = sys.argv[1]
before, after = (json.load(open(f"{d}/mem_{n}.json")) for n in ("before", "after"))
lp = lambda r: [t[0] for t in r["meta_info"]["output_token_logprobs"]]
ok = before["output_ids"] == after["output_ids"] and lp(before) == lp(after)
print("memory release e2e:", "tokens and logprobs bitwise equal to before" if ok else f"MISMATCH {before} {after}")
sys.exit(0 if ok else 1)
PY
}
export -f memory_e2e
timeout "$(budget 60)" bash -c memory_e2e 2>&1 | tee "$OUT/logs/memory_e2e.log"
record "HTTP memory release e2e (cuda)" "${PIPESTATUS[0]}"
fi

if want 2; then
stamp "2. throughput on the bundled model, cpu and cuda"
{
  echo "## bundled model (qwen3-moe-arith-b-nvfp4), prompt 128, 32 new tokens, W4A16"
  for batch in 1 16 64; do
    timeout "$(budget 40)" "$bench" --device cpu,cuda-eager,cuda --batch "$batch" --prompt-tokens 128 --new-tokens 32 \
      models/qwen3-moe-arith-b-nvfp4 2>> "$OUT/logs/bench.err"
  done
} | awk '!seen[$0]++' | tee "$OUT/bench.md"
record "bench bundled" "$?"
fi

if want 3; then
stamp "3. compute-sanitizer memcheck"
if command -v compute-sanitizer > /dev/null; then
  timeout "$(budget 50)" compute-sanitizer --tool memcheck --error-exitcode 3 "$prebuilt/test_model" \
    --gtest_filter='CudaForward.BundledModelMatchesCpuOverMixedStepsTrtllm' > "$OUT/memcheck.log" 2>&1
  record "memcheck (mixed steps, trtllm)" "$?"
  tail -3 "$OUT/memcheck.log"
else
  record "memcheck (compute-sanitizer not found)" "-"
fi
fi

if want 4; then
layers=${SYNTH_LAYERS:-8}
stamp "4. synthetic qwen3-30b-a3b, $layers layers: synth NVFP4, bench on cuda (graphs, eager, deterministic)"
quantized=/tmp/fp4serve-q30-nvfp4
rm -rf "$quantized"
timeout "$(budget 120)" "$FP4SERVE_BIN" synth --preset qwen3-30b-a3b --layers "$layers" --format nvfp4 --seed 1 \
  --out "$quantized" > "$OUT/logs/synth.log" 2>&1
record "synth --format nvfp4 30b-a3b ($layers layers)" "$?"
stamp "synth done"
if [ -f "$quantized/config.json" ]; then
  {
    echo
    echo "## qwen3-30b-a3b sizes, $layers layers, NVFP4 W4A16, prompt 512, 64 new tokens, cuda"
    # shellcheck disable=SC2086 # BENCH_30B_MODES is a list of flags
    timeout "$(budget 240)" "$bench" ${BENCH_30B_MODES:---device cuda,cuda-eager --deterministic off,on} \
      --batch 1,16,64,256 --prompt-tokens 512 --new-tokens 64 "$quantized" 2>> "$OUT/logs/bench.err"
  } | awk '!seen[$0]++' | tee -a "$OUT/bench.md"
  record "bench 30b-a3b ($layers layers)" "$?"
  {
    echo
    echo "## qwen3-30b-a3b sizes, $layers layers: GPU sampling vs host sampling, temperature 0.8 top_p 0.95, cuda"
    for batch in 1 64 256; do
      timeout "$(budget 60)" "$bench" --device cuda --gpu-sampling on,off --temperature 0.8 --top-p 0.95 \
        --batch "$batch" --prompt-tokens 512 --new-tokens 64 "$quantized" 2>> "$OUT/logs/bench.err"
    done
  } | awk '!seen[$0]++' | tee -a "$OUT/bench.md"
  record "bench 30b-a3b gpu vs host sampling" "$?"
fi
tail -5 "$OUT/logs/bench.err"
fi

if want reload; then
stamp "reload. reload under load over HTTP on serve --device cuda --deterministic (bundled pair A/B)"
timeout "$(budget 240)" "$prebuilt/test_server" --gtest_filter='Devices/ReloadUnderLoad.*/cuda' \
  > "$OUT/reload_tests.log" 2>&1
record "tests Devices/ReloadUnderLoad.*/cuda" "$?"
grep -E "^\[ +(OK|FAILED|SKIPPED) +\]|requests:|Failure|PASSED|FAILED TEST" "$OUT/reload_tests.log" | head -40
fi

stamp "done"
{
  echo "== gpu_engine.sh: $(nvidia-smi --query-gpu=name --format=csv,noheader 2> /dev/null | head -1), commit $(git rev-parse --short HEAD 2> /dev/null), $(( $(date +%s) - start )) s =="
  printf '%s\n' "${summary[@]}"
  grep -E "^\[  FAILED  \]|measured" "$OUT/tests.log" 2> /dev/null | sort -u | head -40
  grep -E "^\[  FAILED  \]|requests:" "$OUT/reload_tests.log" 2> /dev/null | sort -u | head -10
  grep -E "ERROR SUMMARY" "$OUT/memcheck.log" 2> /dev/null
} | tee "$OUT/summary.txt"
tar -cf "$OUT/logs.tar" -C "$OUT" logs && rm -rf "$OUT/logs"
! grep -qvE "exit (0|-)$" <(printf '%s\n' "${summary[@]}")
