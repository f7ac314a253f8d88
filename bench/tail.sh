#!/usr/bin/env bash
# The 1 KiB tail at saturation, looked at closely: scomo-ads and nginx served alternately
# (and, with OTHER=path, a second scomo-ads build beside them for an A/B), each run reporting
# wrk's fine percentiles (from its done() hook) and the scheduler counters of wrk's threads
# and the server's over the run (/proc/PID/task/*/schedstat and status): CPU time, run-queue
# wait, time slices, voluntary and involuntary switches.
#
#   bash bench/tail.sh                        # RUNS=3 DURATION=6
#   OTHER=/path/to/scomo-ads bash bench/tail.sh   # also an alternative build, as "other"
#   PIN=1 bash bench/tail.sh                  # wrk on CPU 0, the servers on CPU 1
#
# Needs: wrk, nginx, curl, openssl, python3 (installed if missing). Stops only what it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-6}
. bench/common.sh
bench_setup tail wrk:wrk nginx:nginx curl:curl openssl:openssl python3:python3
SRV=""; WRK=""
if [ -n "${PIN:-}" ]; then SRV="taskset -c 1"; WRK="taskset -c 0"; fi

mkdir -p "$WORK/www/files"
head -c 1024 /dev/urandom > "$WORK/www/files/1k.bin"
declare -A URL SERVER_PID
# start_node NAME BINARY PORT: a node serving the 1 KiB object through a reusable ticket.
start_node() {
  bench_node "$1" "$2" "$3" "$SRV"
  SERVER_PID[$1]=$NODE_PID; URL[$1]=$NODE_URL
}
start_node ours "$BIN" 28443
ORDER=(ours nginx)
if [ -n "${OTHER:-}" ]; then start_node other "$OTHER" 28543; ORDER=(ours other nginx); fi

cp "$WORK/ours/tls/cert.pem" "$WORK/cert.pem"; cp "$WORK/ours/tls/key.pem" "$WORK/key.pem"
bench_nginx 127.0.0.1:28643 127.0.0.1:28680 bench-secret "$SRV"
SERVER_PID[nginx]=$NG_PID
URL[nginx]="https://127.0.0.1:28643/files/1k.bin?md5=$(ng_sign /files/1k.bin)&expires=$NG_EXPIRES"

for name in "${ORDER[@]}"; do
  code=$(curl -sk -o /dev/null -w '%{http_code}' "${URL[$name]}")
  [ "$code" = 200 ] || { echo "$name answered $code to its URL; stopping" >&2; exit 1; }
done

cat > "$WORK/pct.lua" <<'LUA'
done = function(summary, latency, requests)
  local t = { string.format("req/s=%.0f", summary.requests / (summary.duration / 1e6)) }
  for _, p in ipairs({50, 90, 95, 98, 99, 99.5, 99.9}) do
    t[#t + 1] = string.format("p%s=%.2f", p, latency:percentile(p) / 1000)
  end
  t[#t + 1] = string.format("max=%.2f", latency.max / 1000)
  io.write(table.concat(t, " "), " (ms)\n")
end
LUA
# sched_counters WRK_PID SERVER_PIDS SECONDS: counter deltas over SECONDS, from 0.5 s in.
cat > "$WORK/sched.py" <<'PY'
import glob, sys, time
def sample(pids):
    run = wait = slices = vol = invol = 0
    for p in pids:
        for task in glob.glob(f"/proc/{p}/task/*"):
            try:
                a, b, c = open(f"{task}/schedstat").read().split()
                for line in open(f"{task}/status"):
                    if line.startswith("voluntary_ctxt_switches"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        invol += int(line.split()[1])
            except (OSError, ValueError):
                continue
            run += int(a); wait += int(b); slices += int(c)
    return run, wait, slices, vol, invol
wrk = [sys.argv[1]]; server = sys.argv[2].split(","); secs = float(sys.argv[3])
time.sleep(0.5)
w0, s0 = sample(wrk), sample(server)
time.sleep(secs)
w1, s1 = sample(wrk), sample(server)
def show(name, a, b):
    d = [y - x for x, y in zip(a, b)]
    return (f"{name}: cpu {d[0] / 1e9:.2f} s, run-queue wait {d[1] / 1e9:.2f} s, "
            f"{d[2]} slices, {d[3]} voluntary / {d[4]} involuntary switches")
print(f"  {show('wrk', w0, w1)}\n  {show('server', s0, s1)}")
PY

echo "1 KiB over HTTPS, wrk -t2 -c64 -d${DURATION}s, counters over $((DURATION - 1)) s${PIN:+; wrk on CPU 0, servers on CPU 1}"
for run in $(seq "$RUNS"); do
  for name in "${ORDER[@]}"; do
    pids=${SERVER_PID[$name]}
    if [ "$name" = nginx ]; then pids="$pids,$(pgrep -P "${SERVER_PID[nginx]}" | paste -sd, || true)"; fi
    $WRK wrk -t2 -c64 -d"${DURATION}s" -s "$WORK/pct.lua" "${URL[$name]}" > "$WORK/wrk.out" 2>&1 &
    wrk_pid=$!
    counters=$(python3 "$WORK/sched.py" "$wrk_pid" "$pids" "$((DURATION - 1))")
    wait "$wrk_pid"
    echo "run $run $name: $(tail -1 "$WORK/wrk.out")"
    echo "$counters"
  done
done
