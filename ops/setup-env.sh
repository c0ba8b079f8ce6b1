#!/usr/bin/env bash
# Idempotent set-up for a fresh machine (Debian): system packages the tests and demo use,
# a running RabbitMQ on 127.0.0.1:5672, and the project virtualenv in .venv.
# Used by .ci/run and ops/demo.sh; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

missing=()
command -v rabbitmq-server >/dev/null 2>&1 || missing+=(rabbitmq-server)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)  # load generator for bench/
command -v pg_ctlcluster >/dev/null 2>&1 || missing+=(postgresql)
# the ops console's browser tests (tests/browser/): Debian's chromium and its matching chromedriver
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]} from Debian packages"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# RabbitMQ: start it if it is not answering, then wait for it (never a fixed sleep).
if ! rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
  echo "setup: starting RabbitMQ"
  $SUDO rabbitmq-server -detached
fi
for _ in $(seq 1 120); do
  rabbitmq-diagnostics -q check_port_connectivity >/dev/null 2>&1 && break
  sleep 1
done
rabbitmq-diagnostics -q check_port_connectivity >/dev/null || { echo "setup: RabbitMQ did not come up"; exit 1; }

# PostgreSQL (the shared store of seen message ids): start the cluster if it is down.
if command -v pg_ctlcluster >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 >/dev/null 2>&1; then
  ver=$(ls /etc/postgresql 2>/dev/null | head -1 || true)
  if [ -n "$ver" ]; then
    echo "setup: starting PostgreSQL $ver"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  fi
fi
# --- dedup: PostgreSQL must answer, and the test role/database must exist (tests/helpers.py PG_DSN) ---
if command -v pg_isready >/dev/null 2>&1; then
  for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 >/dev/null 2>&1 && break
    sleep 1
  done
  pg_isready -q -h 127.0.0.1 || { echo "setup: PostgreSQL did not come up on 127.0.0.1:5432"; exit 1; }
  # A stock Debian cluster wants passwords over TCP, so the tests use a role with one; created
  # through the local socket as the postgres superuser (peer auth), idempotently.
  pg_as_admin() { if [ "$(id -un)" = postgres ]; then psql -qAt "$@"; else $SUDO runuser -u postgres -- psql -qAt "$@"; fi; }
  if [ "$(pg_as_admin -d postgres -c "SELECT 1 FROM pg_roles WHERE rolname = 'swgw'")" != 1 ]; then
    pg_as_admin -d postgres -c "CREATE ROLE swgw LOGIN PASSWORD 'swgw'"
  fi
  if [ "$(pg_as_admin -d postgres -c "SELECT 1 FROM pg_database WHERE datname = 'swgw_test'")" != 1 ]; then
    pg_as_admin -d postgres -c "CREATE DATABASE swgw_test OWNER swgw"
  fi
fi
# --- end dedup ---

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v -i "warning" || true
.venv/bin/python -c "import gateway, aio_pika, lxml, aiohttp" || { echo "setup: install failed"; exit 1; }
