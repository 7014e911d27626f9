#!/usr/bin/env bash
# Installs what the test suite drives besides Rust, when missing (idempotent, quiet; run as root
# on Debian). Part of the test command in README.md:
#   bash tests/install-deps.sh && cargo test --locked
set -euo pipefail

# openssl: tests/tls.rs drives `openssl s_client` to check that TLS 1.0/1.1 are refused.
# redis-server, redis-cli: the rate-limit tests start their own servers on free ports.
# prometheus (with promtool), chromium: tests/operations.rs and tests/deploy.rs run promtool, a
# real Prometheus scraping ragscope, and headless Chromium on the /traces page.
missing=()
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
{ command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; } || missing+=(redis-server)
{ command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; } || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian packages start system-wide redis and prometheus services; the tests use their own.
for service in redis-server prometheus; do
  systemctl stop "$service" >/dev/null 2>&1 || service "$service" stop >/dev/null 2>&1 || true
done

# rotel: the real OTLP collector of tests/rotel.rs. PyYAML: tests/deploy.rs reads deploy/ YAML.
python3 -m pip install -q --root-user-action=ignore rotel==0.0.1a15
# openai, anthropic: tests/llm_apis.rs drives the official clients (pinned: the wire formats
# they accept are what the tests assert).
python3 -m pip install -q --root-user-action=ignore openai==3.51.0 anthropic==2.10.0
# grpcio: tests/grpc.rs drives its real gRPC server and client through ragscope (pinned: the
# HTTP/2 framing and status handling it does is what the tests assert).
python3 -m pip install -q --root-user-action=ignore grpcio==1.85.1
# websockets: tests/websocket.rs drives it as both the WebSocket client and the upstream server.
python3 -m pip install -q --root-user-action=ignore websockets==15.0.1
python3 -c 'import yaml' 2>/dev/null || python3 -m pip install -q --root-user-action=ignore pyyaml
