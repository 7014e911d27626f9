#!/usr/bin/env bash
# Side-by-side load benchmark: the same wrk load against
#   direct   - the fast upstream (benches/bench_upstream.rs) with nothing in front,
#   nginx    - nginx (2 workers, upstream keep-alive, proxy_buffering off, access_log off),
#   ragscope - ragscope in front of it, DEFAULT telemetry on: spans 100% sampled exported
#              over OTLP to rotel-agent, metrics over OTLP and on /metrics (admin listener
#              on), JSON access log, /traces ring, GenAI parsing.
# Prints req/s, p50, p99 and proxy CPU per request (utime+stime of the proxy's processes
# from /proc over the measured window / requests) per target, the ratios to nginx, and
# ragscope's span drop counter. Scenarios (SCENARIOS, default "full off idle"):
#   full - the above;  off - ragscope with all telemetry off (OTEL_SDK_DISABLED, no access
#   log, no ring, no GenAI);  idle - 10,000 idle keep-alive connections: memory per
#   connection (RSS delta / connections) for ragscope and nginx;  sse - POST with
#   Accept: text/event-stream, the upstream streams 500 events per request, each flushed on
#   its own: CPU per event for nginx, ragscope (default telemetry) and ragscope-off, and the
#   time to the first event against direct (sequential requests from a small client);
#   tls - nginx and ragscope (telemetry off) terminating TLS with the same ECDSA P-256
#   certificate: full handshakes per second (wrk with Connection: close, GET, a new connection
#   and full handshake per request) and CPU per handshake, then TLS keep-alive CPU per request.
# TAIL=<rules> adds a run of ragscope as in full with RAGSCOPE_TAIL_SAMPLING=<rules> (e.g.
#   TAIL=errors,refused,cancelled,slow=2s,ttft=1s,rest=0.05): CPU per request and OTLP export
#   bytes per request (bytes acknowledged on ragscope's connections to the collector over the
#   measured window, from `ss -ti`) against full, which exports every span.
# See benches/README.md.
#
# Env: DURATION (measured seconds, default 10), WARMUP (seconds, default 2),
#      CONNECTIONS (default 64), THREADS (wrk threads, default 2),
#      TARGETS (default "direct nginx ragscope"),
#      REQUEST (post = POST /v1/chat/completions with a ~200-byte JSON body, the
#               default; get = GET /v1/chat/completions),
#      SCENARIOS (default "full off idle sse tls"), IDLE_CONNECTIONS (default 10000),
#      TTFE_REQUESTS (sequential requests timed for the first SSE event, default 200),
#      RAGSCOPE_WORKERS (passed through to ragscope when set),
#      KEEP_TMP=1 keeps the temporary directory (logs, configs) for inspection.
#      SKIP_BUILD=1 uses the binaries already built (with RAGSCOPE_BIN: compare builds).
# Everything listens on and talks to 127.0.0.1 only.
set -euo pipefail

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
TARGETS=${TARGETS:-direct nginx ragscope}
SCENARIOS=${SCENARIOS:-full off idle sse tls}
TTFE_REQUESTS=${TTFE_REQUESTS:-200}
SSE_EVENTS=500   # events per streamed answer: SSE_EVENTS in benches/bench_upstream.rs
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-10000}
REQUEST=${REQUEST:-post}
TAIL=${TAIL:-}
ROTEL_PKG="rotel==0.0.1a15"
REQ_PATH=/v1/chat/completions

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)

log() { printf '[load.sh] %s\n' "$*" >&2; }
die() { printf '[load.sh] ERROR: %s\n' "$*" >&2; exit 1; }

for v in DURATION WARMUP CONNECTIONS THREADS IDLE_CONNECTIONS TTFE_REQUESTS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
case $REQUEST in post|get) ;; *) die "REQUEST must be post or get (got '$REQUEST')";; esac
want() { [[ " $TARGETS " == *" $1 "* ]]; }
scenario() { [[ " $SCENARIOS " == *" $1 "* ]]; }
for sc in $SCENARIOS; do
  case $sc in full|off|idle|sse|tls) ;; *) die "unknown scenario '$sc' in SCENARIOS (use full, off, idle, sse, tls)";; esac
done
for t in $TARGETS; do
  case $t in direct|nginx|ragscope) ;; *) die "unknown target '$t' in TARGETS (use direct, nginx, ragscope)";; esac
done

# --------------------------------------------------------------- cleanup
TMP=""
PIDS=()        # every process this script started (in start order)
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local pid kids=()
  # nginx workers are children of the nginx master: collect them first.
  for pid in "${PIDS[@]}"; do
    mapfile -t -O "${#kids[@]}" kids < <(pgrep -P "$pid" 2>/dev/null || true)
  done
  for pid in "${PIDS[@]}" "${kids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  # Give them up to ~3 s to go, then SIGKILL whatever is left.
  local alive
  for _ in $(seq 30); do
    alive=0
    for pid in "${PIDS[@]}" "${kids[@]}"; do
      kill -0 "$pid" 2>/dev/null && alive=1
    done
    ((alive)) || break
    sleep 0.1
  done
  for pid in "${PIDS[@]}" "${kids[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [[ -n $TMP && -d $TMP ]]; then
    if [[ ${KEEP_TMP:-0} == 1 ]]; then
      log "kept temporary directory $TMP"
    else
      rm -rf "$TMP"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# waited CMD...: run CMD in the background and wait for it, so that a signal
# sent to this script alone (not to its process group) still reaches the
# cleanup trap at once; cleanup stops CMD.
waited() {
  "$@" &
  local pid=$! rc=0 idx=${#PIDS[@]}
  PIDS[idx]=$pid
  wait "$pid" || rc=$?
  unset "PIDS[$idx]"
  return "$rc"
}

# --------------------------------------------------------------- tools
SUDO=()
[[ $(id -u) == 0 ]] || SUDO=(sudo)
APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null || die "apt-get not found: install $* by hand"
  if ((APT_UPDATED == 0)); then
    log "apt-get update"
    "${SUDO[@]}" apt-get update -qq
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "$@" >/dev/null
}

command -v wrk >/dev/null || apt_install wrk
command -v curl >/dev/null || apt_install curl
NGINX=""
if want nginx; then
  NGINX=$(command -v nginx || true)
  [[ -z $NGINX && -x /usr/sbin/nginx ]] && NGINX=/usr/sbin/nginx
  if [[ -z $NGINX ]]; then
    apt_install nginx-light 2>/dev/null || apt_install nginx
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
  fi
  [[ -x $NGINX ]] || die "nginx not found after install"
fi

find_rotel() {
  local p
  p=$(command -v rotel-agent 2>/dev/null || true)
  if [[ -z $p ]]; then
    # The rotel wheel ships the binary inside the python package, not in bin/.
    local py
    for py in "$REPO/target/bench-tools/venv/bin/python" python3 python; do
      command -v "$py" >/dev/null 2>&1 || continue
      p=$("$py" - <<'EOF' 2>/dev/null || true
import os, sysconfig
try:
    import rotel
    c = os.path.join(os.path.dirname(rotel.__file__), "rotel-agent")
    if os.access(c, os.X_OK):
        print(c)
        raise SystemExit
except ImportError:
    pass
c = os.path.join(sysconfig.get_path("scripts"), "rotel-agent")
if os.access(c, os.X_OK):
    print(c)
EOF
)
      [[ -n $p ]] && break
    done
  fi
  printf '%s' "$p"
}
ROTEL=""
if want ragscope; then
  ROTEL=$(find_rotel)
  if [[ -z $ROTEL ]]; then
    log "installing $ROTEL_PKG (provides rotel-agent, the OTLP sink)"
    if ! python3 -m pip install -q "$ROTEL_PKG" >&2; then
      # e.g. an externally-managed system python: use a private venv instead.
      log "pip install failed; using a venv in target/bench-tools/venv"
      python3 -m venv "$REPO/target/bench-tools/venv" \
        || { apt_install python3-venv && python3 -m venv "$REPO/target/bench-tools/venv"; }
      "$REPO/target/bench-tools/venv/bin/python" -m pip install -q "$ROTEL_PKG" >&2
    fi
    ROTEL=$(find_rotel)
  fi
  [[ -n $ROTEL ]] || die "rotel-agent not found after 'pip install $ROTEL_PKG'"
fi

# --------------------------------------------------------------- build
cd "$REPO"
BUILD=(cargo build --release --example bench_upstream)
# RAGSCOPE_BIN names a build to measure instead of this checkout's: then it is not rebuilt.
want ragscope && [[ -z ${RAGSCOPE_BIN:-} ]] && BUILD+=(--bin ragscope)
if [[ ${SKIP_BUILD:-0} == 1 ]]; then
  log "SKIP_BUILD=1: using the binaries already in target/release"
else
  log "${BUILD[*]}"
  waited "${BUILD[@]}" >&2 || die "build failed: ${BUILD[*]}"
fi
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
UPSTREAM_BIN=$TARGET_DIR/release/examples/bench_upstream
RAGSCOPE_BIN=${RAGSCOPE_BIN:-$TARGET_DIR/release/ragscope}   # override to compare builds
[[ -x $UPSTREAM_BIN ]] || die "missing $UPSTREAM_BIN"
if want ragscope; then [[ -x $RAGSCOPE_BIN ]] || die "missing $RAGSCOPE_BIN"; fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/ragscope-bench.XXXXXX")
chmod 755 "$TMP"

# --------------------------------------------------------------- ports
# Pick free loopback ports below the ephemeral range, so that the proxies'
# and wrk's outgoing connections can never take them.
read -r EPH_LO _ < /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || EPH_LO=32768
PORT_LO=20000
((EPH_LO - 2000 > PORT_LO)) || PORT_LO=1100
USED_PORTS=" "
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
  local p
  for _ in $(seq 200); do
    p=$((PORT_LO + RANDOM % (EPH_LO - PORT_LO - 1)))
    [[ $USED_PORTS == *" $p "* ]] && continue
    port_busy "$p" && continue
    USED_PORTS+="$p "
    echo "$p"
    return 0
  done
  die "no free loopback port found"
}
# Note: free_port runs in a subshell via $(...), so record ports here too.
UP_PORT=$(free_port);    USED_PORTS+="$UP_PORT "
NGINX_PORT=$(free_port); USED_PORTS+="$NGINX_PORT "
RS_PORT=$(free_port);    USED_PORTS+="$RS_PORT "
OTLP_GRPC=$(free_port);  USED_PORTS+="$OTLP_GRPC "
OTLP_HTTP=$(free_port);  USED_PORTS+="$OTLP_HTTP "
RS_ADMIN=$(free_port);   USED_PORTS+="$RS_ADMIN "
NGINX_TLS_PORT=$(free_port); USED_PORTS+="$NGINX_TLS_PORT "

# wait_port NAME PID PORT LOGFILE: bounded wait until PORT accepts.
wait_port() {
  local name=$1 pid=$2 port=$3 logf=$4
  for _ in $(seq 150); do   # 150 x 0.1 s = 15 s
    if ! kill -0 "$pid" 2>/dev/null; then
      log "$name exited before listening on 127.0.0.1:$port; last lines of $logf:"
      tail -n 20 "$logf" >&2 || true
      die "$name failed to start"
    fi
    port_busy "$port" && return 0
    sleep 0.1
  done
  log "$name did not accept on 127.0.0.1:$port within 15 s; last lines of $logf:"
  tail -n 20 "$logf" >&2 || true
  die "$name failed to start"
}

# make_cert: one self-signed ECDSA P-256 certificate (X.509 v3, as rustls requires) for both
# TLS servers, so the handshakes compared sign with the same key type.
make_cert() {
  [[ -s $TMP/tls/cert.pem ]] && return 0
  mkdir -p "$TMP/tls"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$TMP/tls/key.pem" -out "$TMP/tls/cert.pem" >"$TMP/tls/openssl.log" 2>&1 \
    || die "openssl could not make the benchmark certificate: $(cat "$TMP/tls/openssl.log")"
  chmod 644 "$TMP/tls/key.pem"
}

# --------------------------------------------------------------- start
# 10,000 idle connections need as many descriptors in the proxies and the idle client
# (children inherit this limit).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

"$UPSTREAM_BIN" "127.0.0.1:$UP_PORT" >"$TMP/upstream.log" 2>&1 &
PIDS+=($!); UP_PID=$!
wait_port upstream "$UP_PID" "$UP_PORT" "$TMP/upstream.log"
log "upstream  pid $UP_PID on 127.0.0.1:$UP_PORT"

NGINX_PID=""
if want nginx; then
  NGX_USER=""
  [[ $(id -u) == 0 ]] && NGX_USER="user root;"
  mkdir -p "$TMP/nginx"
  NGX_TLS=""
  if scenario tls; then
    make_cert
    # The same certificate and key as ragscope; TLS 1.2 and 1.3 as ragscope offers them.
    NGX_TLS="server {
        listen 127.0.0.1:$NGINX_TLS_PORT ssl;
        ssl_certificate $TMP/tls/cert.pem;
        ssl_certificate_key $TMP/tls/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_buffering off;
        }
    }"
  fi
  cat >"$TMP/nginx/nginx.conf" <<EOF
$NGX_USER
worker_processes 2;
worker_rlimit_nofile 65536;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events {
    worker_connections 16384;
}
http {
    client_body_temp_path $TMP/nginx/client_body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    access_log off;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
    upstream bench_upstream {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
    $NGX_TLS
}
EOF
  "$NGINX" -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" \
    -g 'daemon off;' >"$TMP/nginx/stdout.log" 2>&1 &
  PIDS+=($!); NGINX_PID=$!
  wait_port nginx "$NGINX_PID" "$NGINX_PORT" "$TMP/nginx/error.log"
  log "nginx     pid $NGINX_PID on 127.0.0.1:$NGINX_PORT ($("$NGINX" -v 2>&1 | sed 's/.*: //'))"
fi

if want ragscope; then
  "$ROTEL" start --exporter blackhole \
    --otlp-grpc-endpoint "127.0.0.1:$OTLP_GRPC" \
    --otlp-http-endpoint "127.0.0.1:$OTLP_HTTP" \
    --pid-file "$TMP/rotel.pid" --log-file "$TMP/rotel.log" \
    >"$TMP/rotel.stdout" 2>&1 &
  PIDS+=($!); ROTEL_PID=$!
  wait_port rotel-agent "$ROTEL_PID" "$OTLP_HTTP" "$TMP/rotel.stdout"
  log "rotel     pid $ROTEL_PID on 127.0.0.1:$OTLP_HTTP (OTLP/HTTP, blackhole exporter)"
fi

# start_ragscope MODE (full|off): (re)starts ragscope on RS_PORT; sets RS_PID.
RS_PID=""
start_ragscope() {
  stop_ragscope
  local mode=$1
  local vars=(
    RAGSCOPE_LISTEN="127.0.0.1:$RS_PORT"
    RAGSCOPE_UPSTREAM="http://127.0.0.1:$UP_PORT"
    RAGSCOPE_MAX_CONNECTIONS=20000
  )
  [[ -n ${RAGSCOPE_WORKERS:-} ]] && vars+=(RAGSCOPE_WORKERS="$RAGSCOPE_WORKERS")
  if [[ $mode == tail ]]; then
    vars+=(RAGSCOPE_TAIL_SAMPLING="$TAIL")
  fi
  if [[ $mode == tls ]]; then
    make_cert
    vars+=(RAGSCOPE_TLS_CERT="$TMP/tls/cert.pem" RAGSCOPE_TLS_KEY="$TMP/tls/key.pem")
  fi
  if [[ $mode == full || $mode == tail ]]; then
    vars+=(
      RAGSCOPE_ADMIN_LISTEN="127.0.0.1:$RS_ADMIN"
      RAGSCOPE_LOG=info
      RAGSCOPE_GENAI=on
      OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$OTLP_HTTP"
      OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf
      OTEL_METRIC_EXPORT_INTERVAL=5000
    )
  else
    vars+=(
      RAGSCOPE_ADMIN_LISTEN=off
      RAGSCOPE_LOG=warn
      RAGSCOPE_GENAI=off
      RAGSCOPE_RECENT_TRACES=0
      OTEL_SDK_DISABLED=true
    )
  fi
  env "${vars[@]}" "$RAGSCOPE_BIN" >"$TMP/ragscope.$mode.stdout" 2>"$TMP/ragscope.$mode.stderr" &
  RS_PID=$!
  PIDS+=("$RS_PID")
  wait_port ragscope "$RS_PID" "$RS_PORT" "$TMP/ragscope.$mode.stderr"
  log "ragscope  pid $RS_PID on 127.0.0.1:$RS_PORT (telemetry $mode)"
}
stop_ragscope() {
  [[ -n $RS_PID ]] || return 0
  kill -TERM "$RS_PID" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$RS_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$RS_PID" 2>/dev/null || true
  wait "$RS_PID" 2>/dev/null || true
  RS_PID=""
}

# --------------------------------------------------------------- load
WRK_SCRIPT=$TMP/request.lua
if [[ $REQUEST == post ]]; then
  cat >"$WRK_SCRIPT" <<'EOF'
wrk.method = "POST"
wrk.body = '{"model":"bench-model","messages":[{"role":"system","content":"Answer from the documents."},{"role":"user","content":"What is retrieval-augmented generation, in one sentence?"}],"temperature":0.2,"max_tokens":64}'
wrk.headers["Content-Type"] = "application/json"
EOF
else
  echo 'wrk.method = "GET"' >"$WRK_SCRIPT"
fi
# The SSE scenario: a streamed chat request; the upstream answers with SSE_EVENTS events.
SSE_SCRIPT=$TMP/sse.lua
cat >"$SSE_SCRIPT" <<'EOF'
wrk.method = "POST"
wrk.body = '{"model":"bench-model","stream":true,"messages":[{"role":"user","content":"What is retrieval-augmented generation, in one sentence?"}],"max_tokens":600}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "text/event-stream"
EOF
# The TLS handshake run: every answer closes its connection, so each request is a new TCP
# connection and a full handshake (wrk keeps no TLS sessions to resume).
HANDSHAKE_SCRIPT=$TMP/handshake.lua
cat >"$HANDSHAKE_SCRIPT" <<'EOF'
wrk.method = "GET"
wrk.headers["Connection"] = "close"
EOF

port_of() {
  case $1 in
    direct*) echo "$UP_PORT";; nginx-tls*) echo "$NGINX_TLS_PORT";; nginx*) echo "$NGINX_PORT";;
    ragscope*) echo "$RS_PORT";;
  esac
}
# pids_of TARGET: the processes whose CPU and memory count for TARGET (nginx: master + workers).
pids_of() {
  case $1 in
    direct*) echo "$UP_PID";;
    nginx*) echo "$NGINX_PID" $(pgrep -P "$NGINX_PID" 2>/dev/null || true);;
    ragscope*) echo "$RS_PID";;
  esac
}
# cpu_ticks PID...: utime+stime clock ticks of these processes (all their threads).
cpu_ticks() {
  local pid t=0 f a
  for pid in "$@"; do
    f=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    f=${f##*) }   # the fields after "(comm) ", starting with field 3 (state)
    read -r -a a <<<"$f"
    t=$((t + a[11] + a[12]))   # fields 14 (utime) and 15 (stime)
  done
  echo "$t"
}
rss_kb() {
  local pid t=0 v
  for pid in "$@"; do
    v=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    t=$((t + ${v:-0}))
  done
  echo "$t"
}
CLK_TCK=$(getconf CLK_TCK)

# to_ms VALUE: wrk latency (e.g. 539.00us, 1.05ms, 2.01s, 3.00m) -> milliseconds
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v; sub(/[a-z]+$/, "", n); u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") m = n / 1000; else if (u == "ms") m = n + 0
    else if (u == "s") m = n * 1000; else if (u == "m") m = n * 60000
    else if (u == "h") m = n * 3600000; else m = -1
    printf "%.3f", m }'
}

# run_wrk SECONDS URL OUTFILE [SCRIPT]: one bounded wrk run (default script: WRK_SCRIPT).
run_wrk() {
  waited timeout $(($1 + 30)) "${WRK[@]}" -s "${4:-$WRK_SCRIPT}" "-d$1s" "$2" >"$3" 2>&1
}

# CPU already busy with other work (measured over 1 s, targets idle): any
# noticeable figure here means the results below are skewed.
cpu_busy() {
  local a b
  a=$(awk '/^cpu / {print $2+$3+$4+$5+$6+$7+$8, $5+$6}' /proc/stat)
  sleep 1
  b=$(awk '/^cpu / {print $2+$3+$4+$5+$6+$7+$8, $5+$6}' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ");
    t = y[1] - x[1]; if (t > 0) printf "%.0f%%", 100 * (1 - (y[2] - x[2]) / t); else print "?" }'
}
# metric NAME: a Prometheus sample summed over its series on ragscope's /metrics.
metric() {
  curl -s --max-time 5 "http://127.0.0.1:$RS_ADMIN/metrics" \
    | awk -v n="$1" '$1 == n || index($1, n "{") == 1 {s += $NF} END {printf "%d", s}'
}

declare -A RPS P50 P99 ERRS CPU_US REQS EXPORT_B
# otlp_bytes: bytes acknowledged by the collector on the open connections to it (its port only
# ever has ragscope as a client). A connection closed within a window is missed: the figure
# is a lower bound, and hyper keeps its export connection alive.
otlp_bytes() {
  # No connection to the collector yet (direct, nginx) is 0 bytes, not a failure (pipefail).
  { ss -tinH state established "( dport = :$OTLP_HTTP )" 2>/dev/null || true; } \
    | { grep -o 'bytes_acked:[0-9]*' || true; } | awk -F: '{s += $2} END {printf "%d", s}'
}
WRK=(wrk "-t$THREADS" "-c$CONNECTIONS" --latency)
# measure NAME [SCRIPT] [SCHEME]: warm-up, then a measured run against NAME's port with the
# wrk SCRIPT (default WRK_SCRIPT) over SCHEME (default http); fills the arrays.
measure() {
  local t=$1 script=${2:-$WRK_SCRIPT} scheme=${3:-http} url out c0 c1 pids code
  url="$scheme://127.0.0.1:$(port_of "$t")$REQ_PATH"
  # One request first: the target must answer 200 before being measured.
  code=$(curl -sk -o "$TMP/$t.probe" -w '%{http_code}' --max-time 5 \
         -H 'content-type: application/json' -d '{"model":"bench"}' "$url" || true)
  [[ $code == 200 ]] || die "$t: probe request to $url answered '${code:-nothing}' (want 200)"
  log "$t: warm-up ${WARMUP}s"
  run_wrk "$WARMUP" "$url" "$TMP/$t.warmup.txt" "$script" \
    || die "$t: wrk warm-up failed: $(cat "$TMP/$t.warmup.txt")"
  log "$t: measuring ${DURATION}s: ${WRK[*]} -s $(basename "$script") -d${DURATION}s $url"
  read -r -a pids <<<"$(pids_of "$t")"
  local b0 b1
  b0=$(otlp_bytes)
  c0=$(cpu_ticks "${pids[@]}")
  run_wrk "$DURATION" "$url" "$TMP/$t.wrk.txt" "$script" || die "$t: wrk failed: $(cat "$TMP/$t.wrk.txt")"
  c1=$(cpu_ticks "${pids[@]}")
  # Spans still in the batch queue leave within the schedule delay (5 s).
  [[ $t == ragscope || $t == ragscope-tail ]] && sleep 6
  b1=$(otlp_bytes)
  out=$TMP/$t.wrk.txt
  RPS[$t]=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$out")
  REQS[$t]=$(awk '/requests in/ {print $1}' "$out")
  P50[$t]=$(to_ms "$(awk '$1 == "50%" {print $2}' "$out")")
  P99[$t]=$(to_ms "$(awk '$1 == "99%" {print $2}' "$out")")
  EXPORT_B[$t]=$(awk -v b="$((b1 - b0))" -v n="${REQS[$t]}" \
               'BEGIN { if (n > 0 && b >= 0) printf "%.0f", b / n; else print "n/a" }')
  CPU_US[$t]=$(awk -v c="$((c1 - c0))" -v hz="$CLK_TCK" -v n="${REQS[$t]}" \
               'BEGIN { if (n > 0) printf "%.1f", c / hz * 1e6 / n; else print "n/a" }')
  # Non-2xx answers and socket errors: a proxy that fails fast must not look fast.
  ERRS[$t]=$(awk '/Non-2xx or 3xx responses:/ {e += $NF}
                  /Socket errors:/ {gsub(/,/, ""); e += $4 + $6 + $8 + $10}
                  END {print e + 0}' "$out")
  [[ -n ${RPS[$t]} && ${P50[$t]} != -* && ${P99[$t]} != -* ]] \
    || die "$t: could not parse wrk output: $(cat "$out")"
}

# idle_conns TARGET: opens IDLE_CONNECTIONS keep-alive connections to TARGET, one request
# each, then holds them idle; prints "KiB-per-connection rss-before-kB rss-after-kB".
idle_conns() {
  local t=$1 pids before after ready=$TMP/idle.$t.ready cpid
  read -r -a pids <<<"$(pids_of "$t")"
  before=$(rss_kb "${pids[@]}")
  python3 - "$(port_of "$t")" "$IDLE_CONNECTIONS" "$ready" >"$TMP/idle.$t.log" 2>&1 <<'EOF' &
import asyncio, sys
port, n, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
async def one(conns):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET /v1/models HTTP/1.1\r\nHost: bench\r\n\r\n")
    await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await r.readexactly(length)
    conns.append((r, w))
async def main():
    conns = []
    for start in range(0, n, 500):
        await asyncio.gather(*(one(conns) for _ in range(start, min(n, start + 500))))
    with open(ready, "w") as f:
        f.write(str(len(conns)))
    await asyncio.sleep(3600)
asyncio.run(main())
EOF
  cpid=$!
  PIDS+=("$cpid")
  for _ in $(seq 600); do
    [[ -s $ready ]] && break
    kill -0 "$cpid" 2>/dev/null || break
    sleep 0.1
  done
  [[ -s $ready ]] || die "idle client for $t failed: $(tail -n 5 "$TMP/idle.$t.log")"
  sleep 2   # let the proxy settle
  after=$(rss_kb "${pids[@]}")
  kill "$cpid" 2>/dev/null || true
  wait "$cpid" 2>/dev/null || true
  awk -v a="$after" -v b="$before" -v n="$(cat "$ready")" \
    'BEGIN { printf "%.1f %d %d\n", (a - b) / n, b, a }'
}

# ttfe TARGET: TTFE_REQUESTS sequential streamed requests (after 20 unmeasured ones), each on a
# new connection with `Connection: close` and read to its end; prints "median-ms p99-ms": the
# time from writing the request (connection already open) to the first `data:` event arriving,
# and how many streams ended before their first event or `[DONE]`.
ttfe() {
  # A file, not a here-document: `waited` runs it in the background, where stdin is /dev/null.
  [[ -s $TMP/ttfe.py ]] || cat >"$TMP/ttfe.py" <<'EOF'
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
body = b'{"model":"bench-model","stream":true,"messages":[{"role":"user","content":"hi"}]}'
req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
       b"Accept: text/event-stream\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
times, broken = [], 0
for i in range(n + 20):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(30)
    t0 = time.perf_counter()
    s.sendall(req)
    seen, tail, first, done = b"", b"", None, False
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        if first is None:
            seen += chunk
            if b"data:" in seen:
                first = time.perf_counter() - t0
        done = done or b"[DONE]" in tail + chunk
        tail = chunk[-8:]
    s.close()
    if first is None or not done:
        broken += 1   # reported: a proxy that cuts streams must not look fast
        continue
    if i >= 20:
        times.append(first * 1000)
times.sort()
if not times:
    sys.exit("no stream reached [DONE]")
print("%.3f %.3f %d" % (times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.99))], broken))
EOF
  waited timeout 120 python3 "$TMP/ttfe.py" "$(port_of "$1")" "$TTFE_REQUESTS"
}

CPU_BUSY=$(cpu_busy)
for t in direct nginx; do
  if want "$t"; then measure "$t"; fi
done
declare -A TTFE
if scenario sse; then
  for t in direct nginx; do
    if want "$t"; then measure "$t-sse" "$SSE_SCRIPT"; TTFE[$t]=$(ttfe "$t-sse"); fi
  done
fi
if scenario tls && want nginx; then
  measure nginx-tls-hs "$HANDSHAKE_SCRIPT" https
  measure nginx-tls "$WRK_SCRIPT" https
fi
DROPPED="" RECORDS_DROPPED="" SPANS="" LOG_LINES=""
if want ragscope; then
  if scenario full; then
    start_ragscope full
    measure ragscope
    sleep 6   # one metric export interval: the last batches and the drop counter are in
    DROPPED=$(metric ragscope_telemetry_spans_dropped_total)
    RECORDS_DROPPED=$(metric ragscope_telemetry_records_dropped_total)
    SPANS=$(metric http_server_request_duration_seconds_count)
    LOG_LINES=$(wc -l <"$TMP/ragscope.full.stdout")
  fi
  if scenario sse; then
    start_ragscope full
    measure ragscope-sse "$SSE_SCRIPT"
    TTFE[ragscope]=$(ttfe ragscope-sse)
  fi
  if scenario off; then
    start_ragscope off
    measure ragscope-off
  fi
  if scenario sse; then
    scenario off || start_ragscope off
    measure ragscope-off-sse "$SSE_SCRIPT"
    TTFE[ragscope-off]=$(ttfe ragscope-off-sse)
  fi
  if scenario tls; then
    start_ragscope tls
    measure ragscope-tls-hs "$HANDSHAKE_SCRIPT" https
    measure ragscope-tls "$WRK_SCRIPT" https
  fi
  if [[ -n $TAIL ]]; then
    start_ragscope tail
    measure ragscope-tail
    sleep 6
    TAIL_KEPT=$(curl -s --max-time 5 "http://127.0.0.1:$RS_ADMIN/metrics" \
      | awk '/^ragscope_tail_sampling_traces_total[{]/ && /decision="kept"/ {s += $NF} END {printf "%d", s}')
  fi
fi
declare -A IDLE
if scenario idle; then
  if want ragscope; then
    # Idle memory with the defaults: telemetry on.
    [[ -n $RS_PID ]] && stop_ragscope
    start_ragscope full
    IDLE[ragscope]=$(idle_conns ragscope)
    # The same with telemetry off: what the connections themselves hold. The difference is
    # what the telemetry pipeline kept after the burst of IDLE_CONNECTIONS requests.
    start_ragscope off
    IDLE[ragscope-off]=$(idle_conns ragscope-off)
    # ragscope turns transparent huge pages off for its process (src/main.rs). With them on
    # (MIMALLOC_ALLOW_THP=1: mimalloc madvises its arenas) RSS moves in 2 MiB steps as
    # khugepaged collapses pages, and the same build measured 8 to 42 KiB per connection from
    # run to run: this row shows what that opt-in costs.
    MIMALLOC_ALLOW_THP=1 start_ragscope full
    IDLE[ragscope-thp]=$(idle_conns ragscope)
  fi
  if want nginx; then IDLE[nginx]=$(idle_conns nginx); fi
fi
stop_ragscope

# --------------------------------------------------------------- report
CPU_BUSY_AFTER=$(cpu_busy)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a != "n/a") printf "%.2fx", a / b; else print "-" }'; }
echo
echo "CPU busy with other work: $CPU_BUSY before the runs, $CPU_BUSY_AFTER after (should be ~0%)"
echo "ragscope load benchmark: $(nproc) CPUs, wrk -t$THREADS -c$CONNECTIONS, ${WARMUP}s warm-up + ${DURATION}s measured, ${REQUEST^^} $REQ_PATH"
printf '%-13s %9s %8s %8s %10s %9s %8s %8s %7s\n' target "req/s" "p50 ms" "p99 ms" "CPU us/req" "req/s:ngx" "p99:ngx" "CPU:ngx" errors
for t in direct nginx ragscope ragscope-off ragscope-tail; do
  [[ -n ${RPS[$t]:-} ]] || continue
  cpu=${CPU_US[$t]} cpu_ratio=$(ratio "${CPU_US[$t]}" "${CPU_US[nginx]:-0}")
  [[ $t == direct ]] && cpu="-" cpu_ratio="-"
  printf '%-13s %9s %8s %8s %10s %9s %8s %8s %7s\n' "$t" "${RPS[$t]}" "${P50[$t]}" "${P99[$t]}" "$cpu" \
    "$(ratio "${RPS[$t]}" "${RPS[nginx]:-0}")" "$(ratio "${P99[$t]}" "${P99[nginx]:-0}")" \
    "$cpu_ratio" "${ERRS[$t]}"
done
echo "(ragscope: default telemetry on, exporting to rotel; ragscope-off: all telemetry off)"
if scenario sse; then
  echo
  echo "SSE: $SSE_EVENTS events per request (each its own write), POST $REQ_PATH, Accept: text/event-stream"
  printf '%-13s %9s %9s %12s %10s %12s %12s %8s %7s\n' target "req/s" "events/s" "CPU us/event" "CPU:ngx" \
    "1st ev p50" "1st ev p99" "cut" errors
  for t in direct nginx ragscope ragscope-off; do
    [[ -n ${RPS[$t-sse]:-} ]] || continue
    cpu=$(awk -v c="${CPU_US[$t-sse]}" -v e="$SSE_EVENTS" 'BEGIN { if (c != "n/a") printf "%.3f", c / e; else print "n/a" }')
    ngx=$(awk -v c="${CPU_US[nginx-sse]:-0}" -v e="$SSE_EVENTS" 'BEGIN { printf "%.3f", c / e }')
    cpu_ratio=$(ratio "$cpu" "$ngx")
    [[ $t == direct ]] && cpu="-" cpu_ratio="-"
    read -r f50 f99 fcut <<<"${TTFE[$t]:-- - 0}"
    printf '%-13s %9s %9s %12s %10s %9s ms %9s ms %8s %7s\n' "$t" "${RPS[$t-sse]}" \
      "$((${RPS[$t-sse]} * SSE_EVENTS))" "$cpu" "$cpu_ratio" "$f50" "$f99" "$fcut" "${ERRS[$t-sse]}"
  done
  for t in nginx ragscope ragscope-off; do
    [[ -n ${TTFE[$t]:-} && -n ${TTFE[direct]:-} ]] || continue
    awk -v a="${TTFE[$t]%% *}" -v d="${TTFE[direct]%% *}" -v t="$t" \
      'BEGIN { printf "%s: first event %.3f ms after direct (median; goal <= 1 ms)\n", t, a - d }'
  done
  echo "(first event: $TTFE_REQUESTS sequential requests, each on its own connection, no other load;"
  echo " cut: those of them that ended before their first event or [DONE])"
fi
if scenario tls && [[ -n ${RPS[nginx-tls]:-}${RPS[ragscope-tls]:-} ]]; then
  echo
  echo "TLS (ECDSA P-256 certificate, TLS 1.3; ragscope with all telemetry off, as nginx has no log):"
  printf '%-13s %13s %14s %9s %12s %12s %9s %7s\n' target "handshakes/s" "CPU us/hands." "hs:ngx" \
    "keep-alive/s" "CPU us/req" "CPU:ngx" errors
  for t in nginx ragscope; do
    [[ -n ${RPS[$t-tls]:-} ]] || continue
    printf '%-13s %13s %14s %9s %12s %12s %9s %7s\n' "$t" "${RPS[$t-tls-hs]}" "${CPU_US[$t-tls-hs]}" \
      "$(ratio "${RPS[$t-tls-hs]}" "${RPS[nginx-tls-hs]:-0}")" "${RPS[$t-tls]}" "${CPU_US[$t-tls]}" \
      "$(ratio "${CPU_US[$t-tls]}" "${CPU_US[nginx-tls]:-0}")" "$((${ERRS[$t-tls-hs]} + ${ERRS[$t-tls]}))"
  done
  echo "(handshakes: GET with Connection: close, one full handshake per request; keep-alive: the POST above over TLS)"
fi
if [[ -n $TAIL ]]; then
  echo
  echo "OTLP export bytes per request: ragscope ${EXPORT_B[ragscope]:-n/a} (every span), ragscope-tail ${EXPORT_B[ragscope-tail]:-n/a} (TAIL=$TAIL; traces kept: ${TAIL_KEPT:-?})"
fi
if [[ -n $DROPPED ]]; then
  echo
  echo "ragscope spans: $SPANS requests recorded on /metrics (one server span each, 100% sampled); dropped: $DROPPED (must be 0)"
  echo "ragscope records dropped before telemetry (queue to the telemetry thread full): $RECORDS_DROPPED (must be 0)"
  echo "ragscope access-log lines: $LOG_LINES"
fi
for t in ragscope ragscope-off ragscope-thp nginx; do
  [[ -n ${IDLE[$t]:-} ]] || continue
  read -r per before after <<<"${IDLE[$t]}"
  echo "$t: $IDLE_CONNECTIONS idle keep-alive connections: $per KiB per connection (RSS $before -> $after kB)"
done
