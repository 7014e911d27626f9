#!/usr/bin/env bash
# Rate limiter cost: the same wrk load through ragscope three ways, with a limit that never
# triggers, reported as throughput ratios to the run without a limit:
#   none   - RAGSCOPE_RATE_LIMIT unset
#   local  - RAGSCOPE_RATE_LIMIT set, in-memory governor limiter
#   redis  - the same limit shared through a local redis-server (one EVALSHA per request)
# Knobs: DURATION (s, default 10), WARMUP (s, default 2), CONNECTIONS (default 64),
#        THREADS (default 2), KEY (RAGSCOPE_RATE_KEY, default ip),
#        LIMIT (requests, default: RAGSCOPE_RATE_LIMIT on GETs; tokens: RAGSCOPE_TOKEN_LIMIT
#        on POSTed chat requests, each read at admission, reserved and settled; cost:
#        RAGSCOPE_COST_LIMIT on the same requests, priced by a one-line RAGSCOPE_PRICES;
#        both: the token and the cost limit together).
# Needs wrk and redis-server (Debian packages of those names) and builds the release binaries.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10} WARMUP=${WARMUP:-2} CONNECTIONS=${CONNECTIONS:-64} THREADS=${THREADS:-2}
KEY=${KEY:-ip} LIMIT=${LIMIT:-requests}
for tool in wrk redis-server; do
  command -v "$tool" >/dev/null || { echo "rate_limit.sh: needs $tool (apt-get install -y $tool)" >&2; exit 1; }
done

cargo build --release --example bench_upstream --bin ragscope >&2
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/ragscope-rl-bench.XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

UP_PORT=$(free_port); REDIS_PORT=$(free_port)
"$TARGET_DIR/release/examples/bench_upstream" "127.0.0.1:$UP_PORT" >"$TMP/upstream.log" 2>&1 &
PIDS+=($!); wait_port "$UP_PORT"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$TMP/redis.log" 2>&1 &
PIDS+=($!); wait_port "$REDIS_PORT"

# LIMIT=tokens: a small chat request, as a client would POST it.
SCRIPT=()
if [[ $LIMIT == tokens || $LIMIT == cost || $LIMIT == both ]]; then
  cat >"$TMP/chat.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"bench-model","max_tokens":64,"messages":[{"role":"user","content":"What does retrieval-augmented generation do?"}]}'
LUA
  SCRIPT=(-s "$TMP/chat.lua")
  echo 'bench* 0.15 0.60 0.075 - USD' >"$TMP/prices.txt"
fi

declare -A RPS
for mode in none local redis; do
  RS_PORT=$(free_port)
  env=(RAGSCOPE_LISTEN="127.0.0.1:$RS_PORT" RAGSCOPE_UPSTREAM="http://127.0.0.1:$UP_PORT"
       RAGSCOPE_ADMIN_LISTEN=off RAGSCOPE_LOG=warn OTEL_SDK_DISABLED=true)
  # A limit that never triggers: the cost measured is the decision, not refusals.
  if [[ $mode != none && $LIMIT == tokens ]]; then
    env+=(RAGSCOPE_TOKEN_LIMIT=1000000000000/m RAGSCOPE_RATE_KEY="$KEY")
  elif [[ $mode != none && ( $LIMIT == cost || $LIMIT == both ) ]]; then
    env+=(RAGSCOPE_COST_LIMIT=1000000000/m RAGSCOPE_PRICES="$TMP/prices.txt" RAGSCOPE_RATE_KEY="$KEY")
    [[ $LIMIT == both ]] && env+=(RAGSCOPE_TOKEN_LIMIT=1000000000000/m)
  elif [[ $mode != none ]]; then
    env+=(RAGSCOPE_RATE_LIMIT=100000000/s RAGSCOPE_RATE_KEY="$KEY")
  fi
  [[ $mode == redis ]] && env+=(RAGSCOPE_RATE_LIMIT_REDIS="redis://127.0.0.1:$REDIS_PORT/0")
  env -i PATH="$PATH" "${env[@]}" "$TARGET_DIR/release/ragscope" >"$TMP/$mode.log" 2>&1 &
  pid=$!; wait_port "$RS_PORT"
  url="http://127.0.0.1:$RS_PORT/v1/chat/completions"
  wrk "-t$THREADS" "-c$CONNECTIONS" "-d${WARMUP}s" "${SCRIPT[@]}" -H 'x-api-key: bench' "$url" >/dev/null
  wrk "-t$THREADS" "-c$CONNECTIONS" "-d${DURATION}s" "${SCRIPT[@]}" -H 'x-api-key: bench' "$url" >"$TMP/$mode.wrk"
  RPS[$mode]=$(awk '/^Requests\/sec:/ {print $2}' "$TMP/$mode.wrk")
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$TMP/$mode.wrk")
  [[ -z $non2xx ]] || { echo "$mode: $non2xx non-2xx responses: the limit triggered or failed" >&2; exit 1; }
  kill "$pid"; wait "$pid" 2>/dev/null || true
done

echo "$LIMIT limit cost: $(nproc) CPUs, wrk -t$THREADS -c$CONNECTIONS ${DURATION}s, key $KEY, limit never triggers"
printf '%-6s %12s %8s\n' mode 'req/s' ratio
for mode in none local redis; do
  awk -v m="$mode" -v r="${RPS[$mode]}" -v b="${RPS[none]}" 'BEGIN { printf "%-6s %12.0f %8.3f\n", m, r, r / b }'
done
