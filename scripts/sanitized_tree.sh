#!/usr/bin/env bash
# Configures a clang build tree with AddressSanitizer + UndefinedBehaviorSanitizer and the libFuzzer targets
# (CPU only, no benchmarks): `bash scripts/sanitized_tree.sh DIR`. .ci/run tests in one (build-asan) and
# scripts/fuzz.sh fuzzes in one (build-fuzz); the flags are the same, so ccache shares their objects.
# -O1 with line tables only: sanitizer reports keep file:line stacks while the tree compiles in less time than
# with -O2 -g on the 2-core CI machine. -O1 runs no loop vectorizer, so clang would warn (-Wpass-failed) at every
# `omp simd` loop it leaves scalar; that says nothing about the code.
set -euo pipefail
dir=${1:?usage: sanitized_tree.sh BUILD_DIR}
cd "$(dirname "$0")/.."
launcher=()
command -v ccache > /dev/null 2>&1 && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S . -B "$dir" -G Ninja -DCMAKE_CXX_COMPILER=clang++ "${launcher[@]}" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -gline-tables-only -DNDEBUG -Wno-pass-failed" \
  -DFP4SERVE_CUDA=OFF -DFP4SERVE_BUILD_BENCH=OFF -DFP4SERVE_SANITIZE=address,undefined -DFP4SERVE_FUZZ=ON > /dev/null
