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

# The Python packages the tests drive, pinned (the wire formats and framing they produce are what
# the tests assert):
# - rotel: the real OTLP collector of tests/rotel.rs;
# - openai, anthropic: tests/llm_apis/ drives the official clients;
# - grpcio: tests/grpc.rs drives its real gRPC server and client through ragscope;
# - websockets: tests/websocket.rs drives it as both the WebSocket client and the upstream server.
# One pip call for all of them: pip spends ~8 s a call even when everything is already installed
# (it still checks each package's dependencies), so one call instead of four saves ~25 s.
python3 -m pip install -q --root-user-action=ignore \
  rotel==0.0.1a15 openai==3.51.0 anthropic==2.10.0 grpcio==1.85.1 websockets==15.0.1
# PyYAML: tests/deploy.rs reads deploy/ YAML (any version).
python3 -c 'import yaml' 2>/dev/null || python3 -m pip install -q --root-user-action=ignore pyyaml
