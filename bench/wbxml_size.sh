#!/usr/bin/env bash
# SyncML bytes on the wire per flow, XML vs WBXML: runs `scomo-ads demo` (every flow variant,
# once with XML devices, once with WBXML devices) and prints, per flow, the bytes both ways of
# its DM sessions in each encoding and their ratio. No network beyond loopback, no tools.
#
#   bash bench/wbxml_size.sh            # builds the release binary if needed
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/scomo-ads}
[ -x "$BIN" ] || cargo build --release --quiet
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
"$BIN" demo --data "$DIR/demo" > "$DIR/table.txt"
python3 - "$DIR/table.txt" <<'PY'
import re, sys
rows = {}
for line in open(sys.argv[1]):
    # flow, encoding, mechanism, steps, result, time, DM bytes
    m = re.match(r"^(.{20}) (xml|wbxml)\s+\S+\s+\S+\s+(pass|FAIL)\s+\d+ms\s+(\d+)", line)
    if m:
        rows.setdefault(m.group(1).strip(), {})[m.group(2)] = int(m.group(4))
print(f"{'flow':<22}{'XML bytes':>11}{'WBXML bytes':>13}{'WBXML/XML':>11}")
tx = tw = 0
for flow, b in rows.items():
    x, w = b.get("xml", 0), b.get("wbxml", 0)
    tx += x; tw += w
    print(f"{flow:<22}{x:>11}{w:>13}{(w / x if x else 0):>11.2f}")
print(f"{'all flows':<22}{tx:>11}{tw:>13}{(tw / tx if tx else 0):>11.2f}")
PY
