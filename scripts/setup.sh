#!/usr/bin/env bash
# Installs the Debian packages fp4serve builds with (Debian 12, as root or with sudo). Idempotent: installs only
# what is missing and prints it. CUDA is never installed here: the build uses /usr/local/cuda when it exists.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git
  nlohmann-json3-dev libcpp-httplib-dev libcli11-dev libspdlog-dev libfmt-dev
  libgtest-dev libgmock-dev libbenchmark-dev libpcre2-dev libicu-dev
  python3 curl
  clang libclang-rt-dev libomp-dev  # the sanitizer and fuzzing tree (.ci/run, scripts/fuzz.sh)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node and npm run the tokenizer oracle (tests/tokenizer_oracle). Debian's packages only when a command is absent,
# so a node installed some other way is never replaced.
command -v node > /dev/null 2>&1 || missing+=(nodejs)
command -v npm > /dev/null 2>&1 || missing+=(npm)

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} packages already installed"
  exit 0
fi

echo "setup: installing ${missing[*]}"
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "setup: done"
