#!/usr/bin/env bash
# One command for a fresh machine: set up (RabbitMQ, .venv), then run the narrated demo:
# every message type accepted and delivered, bad input refused, a backend outage absorbed
# and drained, a rejected message parked and replayed, a duplicate recognised.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/setup-env.sh
exec .venv/bin/swgw demo --config ops/gateway.toml "$@"
