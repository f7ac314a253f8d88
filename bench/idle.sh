#!/usr/bin/env bash
# What 10 000 idle keep-alive TLS connections cost in RSS, per protocol: HTTP/1.1 and HTTP/2
# (ALPN h2), scomo-ads against nginx. Every measurement gets freshly started servers: nginx
# keeps what it once allocated, so a second measurement on the same nginx would start from a
# baseline that already holds the first one's memory.
#
#   bash bench/idle.sh            # RUNS=3, N=10000
#
# Each row is the RSS growth (MiB) once all N connections are open and have been idle for 3 s,
# medians over RUNS; the connections then make a second request (200 of them) to show that an
# idle connection still serves. Needs: nginx, curl, openssl, python3. Stops only what it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
N=${N:-10000}
. bench/common.sh
bench_setup idle nginx:nginx curl:curl openssl:openssl python3:python3
mkdir -p "$WORK/www/files"
head -c 1024 /dev/urandom > "$WORK/www/files/1k.bin"
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

# ours_start: a fresh node serving the 1 KiB object; sets OURS_PID, OURS_PATH, CA.
ours_start() {
  bench_node ours "$BIN" 32443
  OURS_PID=$NODE_PID; OURS_PATH="/d/${NODE_URL##*/d/}"; CA="$WORK/ours/tls/cert.pem"
  cp "$WORK/ours/tls/cert.pem" "$WORK/cert.pem"; cp "$WORK/ours/tls/key.pem" "$WORK/key.pem"
}
nginx_rss() {
  local t=0 p
  for p in $(pgrep -f "nginx: worker process"; pgrep -f "nginx -c $WORK"); do t=$((t + $(rss_kib "$p"))); done
  echo "$t"
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# measure RSS_FN PORT PATH PROTO: "growth_mib open served_again"
measure() {
  local before during out="$WORK/idle.out" err="$WORK/idle.err"
  before=$($1); : > "$out"
  python3 bench/idle_conns.py 127.0.0.1 "$2" "$CA" "$3" "$N" 6 "$4" > "$out" 2> "$err" & local ip=$!
  for _ in $(seq 600); do [ -s "$out" ] && break; sleep 0.2; done
  sleep 3; during=$($1); wait $ip || true
  echo "$(( (during - before) / 1024 )) $(cat "$out") $(awk '{print $1}' "$err")"
}

declare -A GROWTH
for run in $(seq "$RUNS"); do
  for proto in h1 h2; do
    ours_start
    read -r g open again < <(measure "rss_kib $OURS_PID" 32443 "$OURS_PATH" "$proto")
    echo "run $run $proto ours: +$g MiB, $open open, $again/200 served again"
    GROWTH[ours.$proto]+="$g "
    stop "$OURS_PID"
    bench_nginx 127.0.0.1:32643 127.0.0.1:32680 bench-secret
    read -r g open again < <(measure nginx_rss 32643 "/files/1k.bin?md5=$(ng_sign /files/1k.bin)&expires=$NG_EXPIRES" "$proto")
    echo "run $run $proto nginx: +$g MiB, $open open, $again/200 served again"
    GROWTH[nginx.$proto]+="$g "
    stop "$NG_PID"
  done
done
echo
echo "| $N idle TLS connections, RSS growth (MiB, median of $RUNS) | scomo-ads | nginx |"
echo "|---|---|---|"
for proto in h1 h2; do
  label=HTTP/1.1; [ $proto = h2 ] && label=HTTP/2
  echo "| $label | $(tr ' ' '\n' <<< "${GROWTH[ours.$proto]}" | grep . | median) | $(tr ' ' '\n' <<< "${GROWTH[nginx.$proto]}" | grep . | median) |"
done
