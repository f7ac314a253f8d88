#!/usr/bin/env bash
# Short soak (issue 7): `scomo-ads up` (ADS + DMS) under a device fleet running flow 5.4.2
# (alternate download through the ADS) round after round, while wrk hammers a shared download
# URL, for a bounded time. Samples RSS, open file descriptors and open connections every
# SAMPLE seconds; at the end reports errors and whether descriptors came back to their
# starting level once the load stopped (no leak). Exit status 1 on errors or a leak.
#
#   bash bench/soak.sh                 # DURATION=120 FLEET=20 SAMPLE=5 TICKET_CACHE=100000
#
# A small TICKET_CACHE shows memory levelling off once the ticket cache is full.
#
# Needs: wrk, curl, python3 (installed if missing). Stops only what it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-120}
FLEET=${FLEET:-20}
SAMPLE=${SAMPLE:-5}

. bench/common.sh
bench_setup soak wrk:wrk curl:curl python3:python3

cat > "$WORK/soak.toml" <<TOML
[ads]
ticket_cache_entries = ${TICKET_CACHE:-100000}
[dms]
listen = "127.0.0.1:38445"
api_listen = "127.0.0.1:38446"
TOML
"$BIN" up --data "$WORK/data" --config "$WORK/soak.toml" \
  --listen 127.0.0.1:38443 --admin-listen 127.0.0.1:38444 > "$WORK/up.log" 2>&1 &
UP=$!; PIDS+=($UP)
for _ in $(seq 100); do
  curl -sk https://127.0.0.1:38446/healthz >/dev/null 2>&1 && break; sleep 0.1
done
ADS_CA="$WORK/data/ads/tls/cert.pem"; DMS_CA="$WORK/data/dms/tls/cert.pem"
ADS_TOKEN=$(cat "$WORK/data/ads/admin.token"); DMS_TOKEN=$(cat "$WORK/data/dms/api.token")
ads() { curl -sS --cacert "$ADS_CA" -H "Authorization: Bearer $ADS_TOKEN" "$@"; }
dms() { curl -sS --cacert "$DMS_CA" -H "Authorization: Bearer $DMS_TOKEN" "$@"; }

head -c $((512 * 1024)) /dev/urandom > "$WORK/fw.bin"
dms --data-binary @"$WORK/fw.bin" "https://127.0.0.1:38446/v1/components?name=fw&version=2.0" > /dev/null
head -c 1024 /dev/urandom > "$WORK/1k.bin"
id=$(ads --data-binary @"$WORK/1k.bin" "https://127.0.0.1:38444/v1/components?name=1k&version=1" \
     | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
URL=$(ads -H 'content-type: application/json' \
     -d "{\"component\":\"$id\",\"ttl_secs\":86400,\"max_deliveries\":4000000000}" \
     "https://127.0.0.1:38444/v1/tickets" | python3 -c 'import json,sys; print(json.load(sys.stdin)["url"])')

fds() { ls /proc/$UP/fd | wc -l; }
rss_mib() { awk '/VmRSS/ {printf "%.0f", $2/1024}' /proc/$UP/status; }
conns() { ads "https://127.0.0.1:38444/metrics" | awk '/^scomo_ads_open_connections\{listener="download"\}/ {print $2}'; }
cached() { ads "https://127.0.0.1:38444/metrics" | awk '/^scomo_ads_tickets_cached / {print $2}'; }

FD0=$(fds); RSS0=$(rss_mib)
echo "start: RSS ${RSS0} MiB, ${FD0} fds"
wrk -t1 -c16 -d${DURATION}s --latency "$URL" > "$WORK/wrk.out" 2>&1 &
WRK=$!; PIDS+=($WRK)

# The fleet, round after round, each round new device ids (a fresh job each).
(
  end=$(( $(date +%s) + DURATION ))
  round=0
  while [ "$(date +%s)" -lt "$end" ]; do
    round=$((round + 1))
    SCOMO_DMS_API_TOKEN=$DMS_TOKEN "$BIN" device --id "IMEI:soak-$round" --fleet "$FLEET" \
      --request fw --delivery alternate --once \
      --dms-url https://127.0.0.1:38445/dm --api-url https://127.0.0.1:38446 \
      --cacert "$DMS_CA" --cacert "$ADS_CA" --state "$WORK/fleet-$round/state.json" \
      --notify-listen 127.0.0.1:0 2>&1 | grep -E 'device\(s\):' || echo "round $round: fleet run failed"
  done
) > "$WORK/fleet.log" 2>&1 &
FLEET_PID=$!; PIDS+=($FLEET_PID)

echo "   t(s)  RSS(MiB)  fds  download-conns  tickets-cached"
t=0
while kill -0 $WRK 2>/dev/null; do
  sleep "$SAMPLE"; t=$((t + SAMPLE))
  printf "%7d %9s %4s %15s %15s\n" "$t" "$(rss_mib)" "$(fds)" "$(conns)" "$(cached)"
done
wait $FLEET_PID || true
sleep 3
FD1=$(fds); RSS1=$(rss_mib)

rounds=$(grep -c 'device(s):' "$WORK/fleet.log" || true)
ok=$(awk '/device\(s\):/ {s+=$3} END {print s+0}' "$WORK/fleet.log")
failed=$(awk '/device\(s\):/ {for (i=1;i<=NF;i++) if ($i=="failed") s+=$(i-1)} /fleet run failed/ {s+=1} END {print s+0}' "$WORK/fleet.log")
rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.out")
p99=$(awk '$1=="99%" {print $2}' "$WORK/wrk.out")
werr=$(awk '/Socket errors|Non-2xx/ {print}' "$WORK/wrk.out")
echo
echo "fleet: $rounds round(s) of $FLEET devices, $ok succeeded, $failed failed"
echo "wrk: ${rps} req/s, p99 ${p99}${werr:+, $werr}"
echo "end (3 s after the load): RSS ${RSS1} MiB, ${FD1} fds (start ${FD0})"
status=0
if [ "$failed" -gt 0 ] || [ -n "$werr" ]; then echo "ERRORS"; status=1; fi
if [ "$FD1" -gt $((FD0 + 16)) ]; then echo "FD LEAK: $FD0 -> $FD1"; status=1; fi
exit $status
