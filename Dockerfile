# swgw gateway image. NOTE: written carefully but never built here (no Docker engine on the
# development machines or in CI); see README "Docker".
#
#   docker build -t swgw .
#   docker run -p 8080:8080 -e SWGW_BROKER_URL=amqp://user:pass@rabbitmq:5672/ swgw
#
# Slim Debian base, a virtualenv owned by root, the process runs as an unprivileged user,
# and the health check uses the gateway's own /healthz.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SWGW_CONFIG=/app/ops/docker/gateway.toml

RUN groupadd --system --gid 10001 swgw \
 && useradd --system --uid 10001 --gid swgw --home-dir /var/lib/swgw --create-home --shell /usr/sbin/nologin swgw

WORKDIR /app
# Dependencies first (better layer caching), then the source. lxml ships manylinux wheels,
# so no compiler is needed. The package is installed in editable mode on purpose: the
# envelope schema and the message-set XSDs are read from /app/schemas next to the code.
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-compile -e . \
 && /opt/venv/bin/swgw --help >/dev/null
COPY schemas ./schemas
COPY ops ./ops

USER swgw
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["/opt/venv/bin/python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["/opt/venv/bin/swgw"]
CMD ["serve"]
