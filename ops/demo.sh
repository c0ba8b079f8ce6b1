#!/usr/bin/env bash
# One command for a fresh machine: set up (RabbitMQ, .venv), then run the narrated demo:
# every message type accepted and delivered, bad input refused, a backend outage absorbed
# and drained, a rejected message parked and replayed, a duplicate recognised.
# The set-up's output goes to a file whose path is printed (the last line of it shows, with
# the time taken, on a terminal); the demo sends the gateway's logs to a file of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
log="$(mktemp -t swgw-setup-XXXXXX.log)"
echo "set-up: RabbitMQ and .venv (minutes on a fresh machine, seconds after); its output: $log"
bash ops/setup-env.sh >"$log" 2>&1 &
setup=$!
while kill -0 "$setup" 2>/dev/null; do
  if [ -t 2 ]; then
    printf '\r  %3ss  %s\033[K' "$SECONDS" "$(tail -n 1 "$log" | cut -c 1-70)" >&2
  fi
  sleep 1
done
[ -t 2 ] && printf '\r\033[K' >&2
if ! wait "$setup"; then
  tail -n 30 "$log" >&2
  echo "set-up failed; its whole output is in $log" >&2
  exit 1
fi
echo "set-up: done in ${SECONDS}s"
exec .venv/bin/swgw demo --config ops/gateway.toml "$@"
