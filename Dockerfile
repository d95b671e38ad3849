# syntax=docker/dockerfile:1.7
# One image per Driftloop service, all from this file. Build from the repository
# root (the uv workspace and its lock live there), naming the service and its gRPC
# port (the defaults in driftloop_core.settings.Endpoints):
#   docker build --build-arg SERVICE=ingestion --build-arg PORT=50051 -t driftloop/ingestion .
#
#   SERVICE     PORT    what it does
#   ingestion   50051   validates raw events and publishes them to events.valid
#   features    50052   online aggregates (Faust) and the point-in-time offline log
#   registry    50053   model versions, artifacts and the promotion gate
#   drift       50054   online drift detection and the retrain policy
#   trainer     50055   builds models from training sets and exports them to ONNX
#   inference   8001    OIP v2 and Predictor over gRPC with ONNX Runtime
#
# docker-compose.yml passes both arguments for every service.

FROM python:3.11-slim-bookworm AS build
ARG SERVICE
ARG PORT
COPY --from=ghcr.io/astral-sh/uv:0.9 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
WORKDIR /app
COPY pyproject.toml uv.lock ./
COPY libs ./libs
COPY services ./services
RUN if [ -z "$SERVICE" ] || [ ! -f "services/$SERVICE/pyproject.toml" ]; then \
        echo "build with --build-arg SERVICE=<one of: $(ls services | tr '\n' ' ')>" >&2; exit 1; \
    fi; \
    if [ -z "$PORT" ]; then \
        echo "build with --build-arg PORT=<the gRPC port of $SERVICE>" >&2; exit 1; \
    fi
# Only this service, its workspace dependencies and the CLI (health probe, topics).
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --package "driftloop-$SERVICE" --package driftloop-cli

FROM python:3.11-slim-bookworm
ARG SERVICE
ARG PORT
LABEL org.opencontainers.image.title="driftloop-${SERVICE}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 driftloop \
    && useradd --system --uid 10001 --gid driftloop --home-dir /app --shell /usr/sbin/nologin driftloop \
    && mkdir -p /var/lib/driftloop && chown driftloop:driftloop /var/lib/driftloop
COPY --from=build --chown=driftloop:driftloop /app/.venv /app/.venv
COPY LICENSE /usr/share/licenses/driftloop/LICENSE
# DRIFTLOOP_SERVICE and DRIFTLOOP_SERVICE_PORT are the build arguments kept for run
# time: the entrypoint and the health check read them (Settings ignores both).
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DRIFTLOOP_HOME=/var/lib/driftloop \
    DRIFTLOOP_GRPC__BIND_HOST=0.0.0.0 \
    DRIFTLOOP_EMBEDDED_BROKER=false \
    DRIFTLOOP_SERVICE=${SERVICE} \
    DRIFTLOOP_SERVICE_PORT=${PORT}
USER 10001:10001
WORKDIR /app
EXPOSE ${PORT} 9464
# Shell form: the port is expanded when the check runs.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD exec python -m driftloop_core.grpc.health_probe "127.0.0.1:${DRIFTLOOP_SERVICE_PORT}"
# python -m driftloop_<service>, as PID 1 (exec), with any arguments `docker run` adds.
ENTRYPOINT ["/bin/sh", "-c", "exec python -m \"driftloop_${DRIFTLOOP_SERVICE}\" \"$@\"", "driftloop"]
