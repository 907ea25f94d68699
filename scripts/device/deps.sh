# Sourced by the device scripts (cuda_kernels.sh, cuda_moe.sh): the project's Debian -dev packages for a device machine
# that lacks them. They travel as .deb files in .deps-cuda/ (git-ignored, listed in .git/info/exclude; pass it in
# `carry`), fetched on the workstation with
#   mkdir -p .deps-cuda && (cd .deps-cuda && apt-get download $(bash scripts/device/cuda_kernels.sh --list-debs))
# and unpacked into a private prefix (never into /); binaries find their libraries through an rpath.
# Defines: fp4serve_debs, DEPS, LIBDIR, print_device_environment FILE, unpack_deps (sets dep_flags for CMake),
# start_device_script NAME LOG and stamp MESSAGE.

fp4serve_debs=(nlohmann-json3-dev libcli11-dev libfmt-dev libfmt9 libspdlog-dev libspdlog1.10 libcpp-httplib-dev
      libcpp-httplib0.11 libgtest-dev libgmock-dev libbenchmark-dev libbenchmark1debian libpcre2-dev libpcre2-8-0
      libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 libicu-dev libicu72 pkgconf pkgconf-bin libpkgconf3 pkg-config
      libbrotli1 libbrotli-dev libssl-dev libssl3 zlib1g-dev zlib1g)
DEPS=/tmp/fp4serve-deps
LIBDIR=$DEPS/usr/lib/x86_64-linux-gnu

print_device_environment() {
  {
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
    nvcc --version | tail -1
    cmake --version | head -1
    g++ --version | head -1
    grep PRETTY_NAME /etc/os-release
    ldd --version | head -1
  } > "$1" 2>&1
  cat "$1"
}

# The common start of a device script: OUT and BUILD defaults, the environment log, the carried packages unpacked;
# afterwards `stamp MESSAGE` prints and appends to $OUT/LOG the message with the seconds since the start.
start_device_script() {
  OUT=${OUT:-/tmp/fp4serve-device-out}
  BUILD=${BUILD:-build-device}
  mkdir -p "$OUT"
  device_script_name=$1 device_script_log=$OUT/$2 device_script_start=$(date +%s)
  print_device_environment "$OUT/env.log"
  unpack_deps
}
stamp() {
  echo "[$device_script_name +$(( $(date +%s) - device_script_start ))s] $*" | tee -a "$device_script_log"
}

# Unpacks the carried packages into $DEPS and makes their pkg-config files point there.
unpack_deps() {
  if [ ! -d .deps-cuda ]; then
    echo "no .deps-cuda folder: using the system's packages"
    dep_flags=()
    return
  fi
  echo "unpacking $(ls .deps-cuda/*.deb | wc -l) packages into $DEPS"
  rm -rf "$DEPS" && mkdir -p "$DEPS"
  for f in .deps-cuda/*.deb; do
    if command -v dpkg-deb > /dev/null; then
      dpkg-deb -x "$f" "$DEPS"
    else
      (tmp=$(mktemp -d) && cd "$tmp" && ar x "$OLDPWD/$f" && tar -xf data.tar.* -C "$DEPS" && rm -rf "$tmp")
    fi
  done
  sed -i -E "s#^(prefix|exec_prefix|libdir|includedir) *= */usr#\1=$DEPS/usr#" \
    "$LIBDIR"/pkgconfig/*.pc "$DEPS"/usr/share/pkgconfig/*.pc
  export PKG_CONFIG_PATH="$LIBDIR/pkgconfig:$DEPS/usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
  if ! command -v pkg-config > /dev/null; then
    mkdir -p "$DEPS/bin"
    printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s/usr/bin/pkgconf "$@"\n' "$LIBDIR" "$DEPS" > "$DEPS/bin/pkg-config"
    chmod +x "$DEPS/bin/pkg-config"
    export PATH="$DEPS/bin:$PATH"
  fi
  dep_flags=(-DCMAKE_PREFIX_PATH="$DEPS/usr"
             -Dfmt_DIR="$LIBDIR/cmake/fmt" -Dspdlog_DIR="$LIBDIR/cmake/spdlog" -DGTest_DIR="$LIBDIR/cmake/GTest"
             -Dbenchmark_DIR="$LIBDIR/cmake/benchmark" -DCLI11_DIR="$DEPS/usr/share/cmake/CLI11"
             -Dnlohmann_json_DIR="$DEPS/usr/share/cmake/nlohmann_json"
             -DCMAKE_EXE_LINKER_FLAGS="-Wl,-rpath-link,$LIBDIR -Wl,-rpath,$LIBDIR")
}
