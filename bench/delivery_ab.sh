#!/usr/bin/env bash
# A/B of two scomo-ads builds on the scenarios that acknowledged delivery touches: one-time
# tickets (a fresh URL per request, 1 KiB and 1 MiB) and a multi-use URL (1 KiB), over HTTPS.
# Runs alternate (A, B, A, B, ...); each reports req/s and the server's CPU per request
# (utime + stime from /proc over the run, divided by the requests wrk completed). Medians.
#
#   OTHER=/path/to/old/scomo-ads bash bench/delivery_ab.sh      # RUNS=3 DURATION=4
#
# "ours" is this tree's release build, "other" the build named by OTHER.
# Needs: wrk, curl, python3 (installed if missing). Stops only what it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-4}
CONNS=${CONNS:-64}
: "${OTHER:?OTHER=/path/to/the/other/scomo-ads build}"
. bench/common.sh
bench_setup delivery-ab wrk:wrk curl:curl python3:python3

mkdir -p "$WORK/www/files"
head -c 1024 /dev/urandom > "$WORK/www/files/1k.bin"
head -c 1048576 /dev/urandom > "$WORK/www/files/1m.bin"
declare -A PID ADMIN TOKEN SHARED ID1K ID1M PORT
PORT[ours]=38443; PORT[other]=38543
for name in ours other; do
  bin=$BIN; [ "$name" = other ] && bin=$OTHER
  bench_node "$name" "$bin" "${PORT[$name]}"
  PID[$name]=$NODE_PID; SHARED[$name]=$NODE_URL
  ADMIN[$name]="https://127.0.0.1:$((PORT[$name] + 1))"
  TOKEN[$name]=$(cat "$WORK/$name/admin.token")
  ID1K[$name]=$(curl -sS --cacert "$WORK/$name/tls/cert.pem" -H "Authorization: Bearer ${TOKEN[$name]}" \
    "${ADMIN[$name]}/v1/components" | python3 -c 'import json,sys; print(json.load(sys.stdin)["components"][0]["id"])')
  ID1M[$name]=$(curl -sS --cacert "$WORK/$name/tls/cert.pem" -H "Authorization: Bearer ${TOKEN[$name]}" \
    --data-binary @"$WORK/www/files/1m.bin" "${ADMIN[$name]}/v1/components?name=1m&version=1" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
done

# mint NAME COMPONENT SECONDS: one-time URL paths minted for that long, in $WORK/NAME.paths.
mint() {
  rm -f "$WORK"/once.*.part
  bench_mint_lua "$WORK/mint.lua" "$2" "${TOKEN[$1]}"
  wrk -t2 -c32 -d"$3"s -s "$WORK/mint.lua" "${ADMIN[$1]}/v1/tickets" > /dev/null 2>&1
  cat "$WORK"/once.*.part > "$WORK/$1.paths"
}
bench_walk_lua "$WORK/walk.lua"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# measure NAME WRK_ARGS...: "req/s cpu_us_per_request"; non-2xx answers are reported.
measure() {
  local name=$1; shift
  local before after out reqs rps
  before=$(cpu_ticks "${PID[$name]}")
  out=$(wrk -t2 -c"$CONNS" "$@" 2>&1)
  after=$(cpu_ticks "${PID[$name]}")
  echo "$out" | grep 'Non-2xx' >&2 || true
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  awk -v r="$reqs" -v rps="$rps" -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" \
    'BEGIN {printf "%.0f %.1f\n", rps, (r > 0 ? t * 1e6 / hz / r : 0)}'
}
shared_1k() { measure "$1" -d"${DURATION}"s "${SHARED[$1]}"; }
once_1k() { mint "$1" "${ID1K[$1]}" "${MINT_SECONDS:-6}"; measure "$1" -d2s -s "$WORK/walk.lua" "https://127.0.0.1:${PORT[$1]}" -- "$WORK/$1.paths"; }
once_1m() { mint "$1" "${ID1M[$1]}" 2; measure "$1" -d2s -s "$WORK/walk.lua" "https://127.0.0.1:${PORT[$1]}" -- "$WORK/$1.paths"; }

echo "| scenario | ours req/s | other req/s | ratio | ours CPU µs/req | other CPU µs/req |"
echo "|---|---|---|---|---|---|"
for scenario in shared_1k once_1k once_1m; do
  : > "$WORK/r.ours"; : > "$WORK/r.other"
  for _ in $(seq "$RUNS"); do
    for name in ours other; do "$scenario" "$name" >> "$WORK/r.$name"; done
  done
  o_rps=$(awk '{print $1}' "$WORK/r.ours" | median); x_rps=$(awk '{print $1}' "$WORK/r.other" | median)
  o_cpu=$(awk '{print $2}' "$WORK/r.ours" | median); x_cpu=$(awk '{print $2}' "$WORK/r.other" | median)
  ratio=$(awk -v a="$o_rps" -v b="$x_rps" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}')
  echo "| $scenario | $o_rps | $x_rps | ${ratio}x | $o_cpu | $x_cpu |"
done
