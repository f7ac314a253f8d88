# Sourced by the bench scripts: installs missing tools, builds the release binary, and sets up
# a work directory and a cleanup that stops only the processes the script started.
#
#   bench_setup NAME TOOL:PACKAGE ...    -> BIN, WORK, PIDS (append every started PID)

bench_setup() {
  local name=$1; shift
  local need=() t
  for t in "$@"; do
    command -v "${t%%:*}" >/dev/null 2>&1 || need+=("${t##*:}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
  fi
  cargo build --release --quiet
  BIN=$PWD/target/release/scomo-ads
  WORK=$(mktemp -d "/tmp/scomo-$name.XXXXXX")
  PIDS=()
  trap bench_cleanup EXIT
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
}

bench_cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}

# median: one number per input line -> the median
median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) {print 0} else if (NR%2) {print a[(NR+1)/2]} else {print (a[NR/2]+a[NR/2+1])/2}}'; }
# to_ms: wrk's latency with its unit -> milliseconds
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v); print v} else {sub(/s/,"",v); print v*1000}}'; }
