#!/usr/bin/env bash
# Soak: ragscope under steady mixed load for SOAK_SECONDS (default 600) while its collector is
# killed (SIGKILL) and restarted every minute and Redis is restarted once, half-way.
#   upstream  - `ragscope demo-upstream` (JSON chat and SSE streams, ~40 ms between chunks)
#   collector - rotel-agent (blackhole exporter, debug log counting what it decoded)
#   redis     - redis-server, the shared rate-limit store (RAGSCOPE_RATE_LIMIT_REDIS)
#   ragscope  - release build: rate limit 50/s per x-api-key on Redis, feedback, the ring of
#               recent traces, OTLP/gRPC export of traces and metrics
#   load      - benches/soak_load.py: paced clients (JSON chat, SSE, feedback, malformed
#               feedback -> 400, oversized body -> 413) and one key at HOG_RATE that gets 429s
# Prints requests, failures (must be 0: only the intended 4xx are allowed), ragscope's RSS after
# warm-up, half-way and at the end (growth after warm-up must stay under 5%), spans exported
# (decoded by rotel) and dropped (ragscope_telemetry_spans_dropped_total). Exits 1 when a goal
# is missed. Knobs: SOAK_SECONDS, CLIENTS (paced clients, default 6), RATE (req/s per paced
# client, default 20), HOG_RATE (req/s of the 429 key, default 200), KILL_EVERY (seconds between collector kills, default 60), KEEP_TMP=1,
# RAGSCOPE_BIN (a built binary to use instead of building target/release/ragscope).
# Needs redis-server, python3 and rotel==0.0.1a15 (tests/install-deps.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

SOAK_SECONDS=${SOAK_SECONDS:-600} CLIENTS=${CLIENTS:-6} RATE=${RATE:-20} HOG_RATE=${HOG_RATE:-200}
KILL_EVERY=${KILL_EVERY:-60}
for v in SOAK_SECONDS CLIENTS RATE HOG_RATE KILL_EVERY; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "soak.sh: $v must be a positive integer (got '${!v}')" >&2; exit 2; }
done
command -v redis-server >/dev/null || { echo "soak.sh: needs redis-server (bash tests/install-deps.sh)" >&2; exit 1; }
ROTEL=${ROTEL_AGENT:-$(python3 -c 'import rotel, os; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))' 2>/dev/null || true)}
[[ -x $ROTEL ]] || { echo "soak.sh: needs rotel-agent (pip install rotel==0.0.1a15, or set ROTEL_AGENT)" >&2; exit 1; }

if [[ -n ${RAGSCOPE_BIN:-} ]]; then BIN=$RAGSCOPE_BIN; else
  cargo build --release --bin ragscope >&2
  BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/ragscope
fi
TMP=$(mktemp -d "${TMPDIR:-/tmp}/ragscope-soak.XXXXXX")
declare -A PID=()
cleanup() {
  for p in "${PID[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ ${KEEP_TMP:-0} == 1 ]]; then echo "soak.sh: kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "soak.sh: port $1 never opened" >&2; exit 1; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/${PID[ragscope]}/status"; }
log() { printf '[soak %4ds] %s\n' $(( $(date +%s) - T0 )) "$*" >&2; }

UP=$(free_port) REDIS=$(free_port) GRPC=$(free_port) OTLP_HTTP=$(free_port) RS=$(free_port) ADMIN=$(free_port)

start_collector() {
  "$ROTEL" start --exporter blackhole --otlp-grpc-endpoint "127.0.0.1:$GRPC" \
    --otlp-http-endpoint "127.0.0.1:$OTLP_HTTP" --debug-log traces --debug-log-verbosity basic \
    --pid-file "$TMP/rotel.pid" --log-file "$TMP/rotel.log" >>"$TMP/rotel.out" 2>&1 &
  PID[rotel]=$!; wait_port "$GRPC"
}
start_redis() {
  redis-server --port "$REDIS" --bind 127.0.0.1 --save '' --appendonly no >>"$TMP/redis.log" 2>&1 &
  PID[redis]=$!; wait_port "$REDIS"
}
stop() { kill "-$2" "${PID[$1]}" 2>/dev/null || true; wait "${PID[$1]}" 2>/dev/null || true; unset "PID[$1]"; }

T0=$(date +%s)
RAGSCOPE_DEMO_UPSTREAM_LISTEN="127.0.0.1:$UP" "$BIN" demo-upstream >"$TMP/upstream.log" 2>&1 &
PID[upstream]=$!; wait_port "$UP"
start_redis
start_collector
env -i PATH="$PATH" RAGSCOPE_LISTEN="127.0.0.1:$RS" RAGSCOPE_UPSTREAM="http://127.0.0.1:$UP" \
  RAGSCOPE_ADMIN_LISTEN="127.0.0.1:$ADMIN" RAGSCOPE_LOG=warn RAGSCOPE_MAX_REQUEST_BODY=65536 \
  RAGSCOPE_RATE_LIMIT=50/s RAGSCOPE_RATE_KEY=header:x-api-key \
  RAGSCOPE_RATE_LIMIT_REDIS="redis://127.0.0.1:$REDIS/0" RAGSCOPE_RECENT_TRACES=1000 \
  OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$GRPC" OTEL_EXPORTER_OTLP_PROTOCOL=grpc \
  OTEL_METRIC_EXPORT_INTERVAL=5000 OTEL_SERVICE_NAME=ragscope-soak \
  "$BIN" >"$TMP/ragscope.log" 2>&1 &
PID[ragscope]=$!; wait_port "$RS"; wait_port "$ADMIN"

python3 benches/soak_load.py --port "$RS" --seconds "$SOAK_SECONDS" --clients "$CLIENTS" \
  --rate "$RATE" --hog-rate "$HOG_RATE" >"$TMP/load.json" &
PID[load]=$!
log "load started: $CLIENTS clients x $RATE req/s + one 429 key at $HOG_RATE req/s, for ${SOAK_SECONDS}s"

# Warm-up: a tenth of the run, at least 30 s (capped by the run), before the first RSS sample.
WARM=$(( SOAK_SECONDS / 10 > 30 ? SOAK_SECONDS / 10 : 30 )); (( WARM < SOAK_SECONDS )) || WARM=$(( SOAK_SECONDS / 3 ))
MID=$(( (WARM + SOAK_SECONDS) / 2 )) REDIS_AT=$(( SOAK_SECONDS / 2 ))
rss_start="" rss_mid="" kills=0 redis_restarted=0 next_kill=$KILL_EVERY
while kill -0 "${PID[load]}" 2>/dev/null; do
  t=$(( $(date +%s) - T0 ))
  if [[ -z $rss_start ]] && (( t >= WARM )); then rss_start=$(rss_kb); log "RSS after warm-up ${rss_start} kB"; fi
  if [[ -z $rss_mid ]] && (( t >= MID )); then rss_mid=$(rss_kb); log "RSS half-way ${rss_mid} kB"; fi
  if (( t >= next_kill && t + 15 < SOAK_SECONDS )); then
    stop rotel KILL; kills=$(( kills + 1 )); log "collector killed ($kills)"
    sleep 10; start_collector; log "collector restarted"
    next_kill=$(( next_kill + KILL_EVERY ))
  fi
  if (( !redis_restarted && t >= REDIS_AT )); then
    stop redis TERM; log "redis stopped"; sleep 3; start_redis; redis_restarted=1; log "redis restarted"
  fi
  sleep 1
done
wait "${PID[load]}"; unset 'PID[load]'
rss_end=$(rss_kb)
# Let the last batch go out (OTEL_BSP_SCHEDULE_DELAY is 5 s), then read both counters.
sleep 7
dropped=$(curl -fsS "http://127.0.0.1:$ADMIN/metrics" | awk '/^ragscope_telemetry_spans_dropped_total/ {s += $NF} END {print s + 0}')
# rotel logs one "Received traces ... spans=N" line per batch it decoded (ANSI colours stripped).
exported=$(sed 's/\x1b\[[0-9;]*m//g' "$TMP/rotel.out" | awk '/Received traces/ { for (i = 1; i <= NF; i++) if ($i ~ /^spans=/) { sub(/^spans=/, "", $i); s += $i } } END {print s + 0}')
kill -0 "${PID[ragscope]}" || { echo "soak.sh: ragscope exited during the soak" >&2; exit 1; }

python3 - "$TMP/load.json" "$rss_start" "${rss_mid:-$rss_end}" "$rss_end" "$exported" "$dropped" "$kills" "$redis_restarted" "$SOAK_SECONDS" <<'PY'
import json, sys
load = json.load(open(sys.argv[1]))
start, mid, end, exported, dropped, kills, redis, secs = map(int, sys.argv[2:10])
growth = (end - start) / start * 100
print(f"ragscope soak: {secs}s, {kills} collector kills, redis restarted {redis}x")
print(f"requests   {load['requests']}  ({load['requests'] / secs:.0f}/s)")
for kind, statuses in sorted(load["by_kind"].items()):
    print(f"  {kind:<13} " + "  ".join(f"{s}: {n}" for s, n in sorted(statuses.items())))
print(f"failures   {load['failures']}" + "".join(f"\n  {f}" for f in load["first_failures"]))
print(f"RSS kB     after warm-up {start}, half-way {mid}, end {end}  (growth {growth:+.1f}%, goal < 5%)")
print(f"spans      exported (decoded by rotel) {exported}, dropped (ragscope counter) {dropped}")
ok = load["failures"] == 0 and growth < 5
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY
