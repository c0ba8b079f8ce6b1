# swgw gateway image. NOTE: written carefully but never built here (no Docker engine on the
# development machines or in CI); see docs/operations.md "Docker".
#
#   docker build -t swgw .
#   docker run -p 8080:8080 -e SWGW_BROKER_URL=amqp://user:pass@rabbitmq:5672/ swgw
#
# Slim Debian base, a virtualenv owned by root, the process runs as an unprivileged user,
# and the health check uses the gateway's own /healthz.

# Stage 1 builds the wheel: the package plus the two folders its package data links to
# (gateway/schemas -> schemas/, gateway/tools/demo.toml -> ops/gateway.toml); setuptools copies
# them into the wheel. Stage 2 installs that wheel, not the source: the image runs what
# `pip install swgw-*.whl` gives anyone (tests/packaging/test_wheel.py checks the same wheel).
FROM python:3.11-slim-bookworm AS wheel
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY ops/gateway.toml ./ops/gateway.toml
COPY gateway ./gateway
RUN pip wheel --no-deps --wheel-dir /dist .

FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SWGW_CONFIG=/app/ops/docker/gateway.toml

RUN groupadd --system --gid 10001 swgw \
 && useradd --system --uid 10001 --gid swgw --home-dir /var/lib/swgw --create-home --shell /usr/sbin/nologin swgw

# A normal (non-editable) install: the envelope schema, the message set and the demo config are
# the package's own data in site-packages. lxml ships manylinux wheels, so no compiler is needed.
# The last line compiles every schema of the shipped demo config, so an image whose package
# lacks its data fails to build.
COPY --from=wheel /dist/ /tmp/dist/
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-compile /tmp/dist/swgw-*.whl \
 && rm -rf /tmp/dist \
 && /opt/venv/bin/swgw --help >/dev/null \
 && /opt/venv/bin/swgw check-config --config "$(/opt/venv/bin/python -c 'from gateway.tools.demo import DEMO_CONFIG; print(DEMO_CONFIG)')"
# The container's config (SWGW_CONFIG) and the message set it names (../../schemas from it):
# operator data beside the package, from the same checkout as the wheel.
WORKDIR /app
COPY schemas ./schemas
COPY ops ./ops

USER swgw
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["/opt/venv/bin/python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["/opt/venv/bin/swgw"]
CMD ["serve"]
