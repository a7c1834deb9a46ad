#!/usr/bin/env bash
# Compares spindle binaries (or runtime configs) on a hello component and
# auth's /validate: wrk -t2 -c32, the variants interleaved round by round,
# printing req/s, p50, p99 and the host's CPU time per request (from
# /proc/PID/stat, so the load generator sharing the cores does not blur it).
#
#   host/benches/compare.sh ROUNDS SECONDS NAME=BINARY[,RUNTIME_CONFIG] ...
#
# Serves the release components in target/wasm32-wasip2/release (WASM_DIR
# overrides): build them first with
#   cargo build --target wasm32-wasip2 --release -p auth -p testbed
# Needs wrk and curl. Port 18080 must be free.
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
rounds=$1 secs=$2
shift 2
root=$(cd "$(dirname "$0")/../.." && pwd)
wasm=${WASM_DIR:-$root/target/wasm32-wasip2/release}
for f in auth.wasm testbed.wasm; do
  [ -f "$wasm/$f" ] || { echo "missing $wasm/$f: build the components first" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sed "s#@WASM@#$wasm#g" "$root/host/benches/load.spin.toml" > "$work/spin.toml"
echo 'wrk.method = "POST"' > "$work/post.lua"
url=http://127.0.0.1:18080
clk=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

measure() { # NAME PID PATH [wrk args...]
  local name=$1 pid=$2 path=$3
  shift 3
  local before after out reqs
  before=$(cpu_ticks "$pid")
  out=$(wrk -t2 -c32 -d"${secs}s" --latency "$@" "$url$path")
  after=$(cpu_ticks "$pid")
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  printf '%-8s %-10s %10s req/s  p50 %8s  p99 %8s  %4d CPU us/request  non-2xx %s\n' \
    "$name" "$path" \
    "$(echo "$out" | awk '/Requests\/sec/ {print $2}')" \
    "$(echo "$out" | awk '$1 == "50%" {print $2}')" \
    "$(echo "$out" | awk '$1 == "99%" {print $2}')" \
    $(((after - before) * 1000000 / clk / reqs)) \
    "$(echo "$out" | awk '/Non-2xx/ {print $5}' | grep . || echo 0)"
}

for _ in $(seq 1 "$rounds"); do
  for variant in "$@"; do
    name=${variant%%=*} rest=${variant#*=}
    bin=${rest%%,*} config=()
    [ "$rest" != "$bin" ] && config=(--runtime-config-file "${rest#*,}")
    state=$(mktemp -d -p "$work")
    SPINDLE_LOG=warn "$bin" up --manifest "$work/spin.toml" --listen 127.0.0.1:18080 \
      --admin-listen 127.0.0.1:0 --state-dir "$state" --cache-dir "$work/cache-$name" \
      "${config[@]}" > "$state/out" 2>&1 &
    pid=$!
    for _ in $(seq 1 600); do
      grep -q '^Serving' "$state/out" && break
      sleep 0.1
    done
    curl -sf -o /dev/null -X POST -H 'content-type: application/json' \
      -d '{"email":"bench@example.com","password":"bench-password"}' "$url/signup"
    token=$(curl -sf -X POST -u bench@example.com:bench-password "$url/login")
    wrk -t2 -c32 -d2s "$url/hello" > /dev/null # warm-up
    measure "$name" "$pid" /hello
    measure "$name" "$pid" /validate -s "$work/post.lua" -H "Authorization: Bearer $token"
    kill "$pid"
    wait "$pid" 2> /dev/null || true
  done
done
