# Sourced by the bench scripts: installs missing tools, builds the release binary, and sets up
# a work directory and a cleanup that stops only the processes the script started.
#
#   bench_setup NAME TOOL:PACKAGE ...    -> BIN, WORK, PIDS (append every started PID)
#   bench_node, bench_nginx, ng_sign     -> a node or nginx serving the same 1 KiB object (below)

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

# bench_node NAME BINARY PORT [PREFIX]: a fresh scomo-ads node in $WORK/NAME on 127.0.0.1:PORT
# (admin API on PORT+1), per-IP limits lifted (every load comes from 127.0.0.1), serving
# $WORK/www/files/1k.bin through a reusable ticket. PREFIX (say `taskset -c 1`) runs it under
# another command. Sets NODE_PID and NODE_URL; its certificate is $WORK/NAME/tls/cert.pem.
bench_node() {
  local name=$1 bin=$2 port=$3 prefix=${4:-}
  local admin="https://127.0.0.1:$((port + 1))" ca="$WORK/$name/tls/cert.pem" token id
  printf '[ads]\nmax_connections_per_ip = 0\n[ads.admin_limits]\nrequests_per_sec = 0\n' > "$WORK/node.toml"
  rm -rf "${WORK:?}/$name"
  $prefix "$bin" serve --data "$WORK/$name" --config "$WORK/node.toml" --listen "127.0.0.1:$port" \
    --admin-listen "127.0.0.1:$((port + 1))" --cache-mb 512 > "$WORK/$name.log" 2>&1 &
  NODE_PID=$!; PIDS+=($!)
  for _ in $(seq 100); do grep -q '^ready' "$WORK/$name.log" && break; sleep 0.1; done
  token=$(cat "$WORK/$name/admin.token")
  id=$(curl -sS --cacert "$ca" -H "Authorization: Bearer $token" \
    --data-binary @"$WORK/www/files/1k.bin" "$admin/v1/components?name=1k&version=1" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  NODE_URL=$(curl -sS --cacert "$ca" -H "Authorization: Bearer $token" -H 'content-type: application/json' \
    -d "{\"component\":\"$id\",\"ttl_secs\":86400,\"max_deliveries\":4000000000}" "$admin/v1/tickets" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["url"])')
}

# bench_nginx TLS_ADDR HTTP_ADDR SECRET [PREFIX]: nginx serving $WORK/www over TLS 1.3 (X25519,
# HTTP/1.1 and HTTP/2) and plain HTTP, with the node's certificate ($WORK/cert.pem and
# $WORK/key.pem), sendfile, and secure_link (MD5 of expiry, URI and SECRET) guarding /files/,
# so that it checks a signed URL per request as the node does. PREFIX (say `taskset -c 1`)
# runs it under another command. Sets NG_PID, NG_EXPIRES and ng_sign PATH (the md5 argument).
bench_nginx() {
  local tls=$1 http=$2 secret=$3 prefix=${4:-}
  cat > "$WORK/nginx.conf" <<NGINX
user root;
worker_processes $(nproc);
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 20000; }
http {
  access_log off;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_requests 1000000; keepalive_timeout 60s;
  types { application/octet-stream bin; }
  server {
    listen $tls ssl http2; listen $http;
    ssl_certificate $WORK/cert.pem; ssl_certificate_key $WORK/key.pem;
    ssl_protocols TLSv1.3; ssl_ecdh_curve X25519;
    root $WORK/www;
    location /files/ {
      secure_link \$arg_md5,\$arg_expires;
      secure_link_md5 "\$secure_link_expires\$uri $secret";
      if (\$secure_link = "") { return 403; }
      if (\$secure_link = "0") { return 410; }
    }
  }
}
NGINX
  $prefix nginx -c "$WORK/nginx.conf" -g 'daemon off;' &
  NG_PID=$!; PIDS+=($NG_PID)
  NG_SECRET=$secret
  NG_EXPIRES=$(( $(date +%s) + 86400 ))
  sleep 0.5
}
ng_sign() { echo -n "$NG_EXPIRES$1 $NG_SECRET" | openssl md5 -binary | openssl base64 | tr +/ -_ | tr -d =; }

# bench_mint_lua FILE COMPONENT TOKEN: a wrk script POSTing mint requests for COMPONENT, each
# thread writing the minted URL paths to $WORK/once.<random>.part (cat them together after).
bench_mint_lua() {
  cat > "$1" <<LUA
wrk.method = "POST"
wrk.body = '{"component":"$2","ttl_secs":3600}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $3"
local f
init = function() f = io.open("$WORK/once." .. tostring(math.random(1, 1e9)) .. ".part", "w") end
response = function(status, headers, body)
  local path = body:match('"url":"https://[^/]+(/d/[^"]+)"')
  if path then f:write(path, "\n"); f:flush() end
end
LUA
}

# bench_walk_lua FILE: a wrk script GETting the paths listed in its argument file, each of
# wrk's two threads walking its own half (their Lua states share one random seed, so random
# starting points would make both walk the same tickets and half the requests would be cheap
# 410s).
bench_walk_lua() {
  cat > "$1" <<'LUA'
local threads = 0
setup = function(thread) thread:set("id", threads); threads = threads + 1 end
local paths, i = {}, 0
init = function(args)
  for l in io.lines(args[1]) do paths[#paths + 1] = l end
  i = id * math.floor(#paths / 2)
end
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
LUA
}
