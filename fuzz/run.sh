#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 600 s each) with cargo-fuzz and prints
# the inputs tried and crashes found per target. Not part of CI's test time.
#   bash fuzz/run.sh            # 10 minutes per target
#   SECONDS_PER_TARGET=60 bash fuzz/run.sh
set -euo pipefail
cd "$(dirname "$0")"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz
# cargo-fuzz's sanitizer flags are nightly-only; the machine has one stable toolchain.
export RUSTC_BOOTSTRAP=1
T=${SECONDS_PER_TARGET:-600}
for target in range token syncml wbxml pkg0 large_object; do
  mkdir -p corpus/$target
  log=$(mktemp)
  if cargo fuzz run "$target" corpus/$target -- -max_total_time="$T" -rss_limit_mb=2048 > "$log" 2>&1; then
    status=ok
  else
    status=CRASH
  fi
  runs=$(grep -oE '#[0-9]+' "$log" | tail -1 | tr -d '#')
  echo "$target: $status, ${runs:-0} inputs in ${T}s"
  [ "$status" = ok ] || tail -30 "$log"
done
