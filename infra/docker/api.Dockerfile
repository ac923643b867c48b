# syntax=docker/dockerfile:1
# API image: FastAPI app, `voicefarm migrate`, Celery beat, the CPU "ops" worker
# (webhooks, maintenance) and Flower. No `worker` extra: no torch, no onnxruntime.
# Build from the repository root: docker build -f infra/docker/api.Dockerfile .
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Only what the package build needs; the rest of the checkout stays out of the image.
COPY pyproject.toml README.md ./
COPY api ./api
COPY cli ./cli
COPY core ./core
COPY db ./db
COPY migrations ./migrations
COPY tasks ./tasks
COPY workers ./workers
RUN --mount=type=cache,target=/root/.cache/pip pip install .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app \
    && mkdir -p /app /data /var/lib/voicefarm \
    && chown app:app /app /data /var/lib/voicefarm
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# Healthchecks live in docker-compose.yml / the k8s probes: this image also runs beat, flower
# and the ops worker, which do not serve /healthz.
# VOICEFARM_API_WORKERS (default 2) uvicorn processes, a listening socket each (api/serve.py).
CMD ["python", "-m", "api.serve", "--host", "0.0.0.0", "--port", "8000"]
