# Sourced by the device scripts that run binaries packed on the workstation by `gpu_engine.sh --pack BUILD DIR`.
# use_prebuilt DIR: unpacks DIR/bundle.tar.xz (when there) into /tmp/fp4serve-prebuilt, adds the fallback libraries
# this machine lacks, and sets PREBUILT (the folder of the binaries), SOURCE_DIR (the workstation source path compiled
# into the tests, from DIR/source_dir.txt), LD_LIBRARY_PATH, OMP_WAIT_POLICY=passive and FP4SERVE_BIN.
use_prebuilt() {
  PREBUILT=$(cd "$1" && pwd) || return 1
  SOURCE_DIR=$(cat "$PREBUILT/source_dir.txt" 2> /dev/null)
  if [ -f "$PREBUILT/bundle.tar.xz" ]; then
    mkdir -p /tmp/fp4serve-prebuilt && tar -xJf "$PREBUILT/bundle.tar.xz" -C /tmp/fp4serve-prebuilt || return 1
    PREBUILT=/tmp/fp4serve-prebuilt
  fi
  local lib
  for lib in "$PREBUILT"/lib/fallback/*; do
    ldconfig -p | grep -q "$(basename "$lib")" || cp "$lib" "$PREBUILT/lib/"
  done
  export LD_LIBRARY_PATH="$PREBUILT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export OMP_WAIT_POLICY=passive FP4SERVE_BIN="$PREBUILT/fp4serve"
}
