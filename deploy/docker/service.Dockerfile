# syntax=docker/dockerfile:1
# radtrain gateway and handlers: the base install, no torch (DESIGN.md §2, §11).
#
#   docker build -f deploy/docker/service.Dockerfile -t radtrain-service:0.1.0 .
#   docker run radtrain-service:0.1.0             # python -m gateway (the default)
#   docker run radtrain-service:0.1.0 handlers    # python -m handlers
#
# Build context: the repository root (.dockerignore there keeps .venv, data and
# tests out). Settings come from RADTRAIN_* variables (infra/settings.py); the
# Kubernetes manifests under deploy/k8s set them.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY imaging ./imaging
COPY infra ./infra
COPY gateway ./gateway
COPY handlers ./handlers
COPY runner ./runner
COPY radtrain ./radtrain
# One wheel of radtrain itself; its dependencies are resolved in the next stage.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RADTRAIN_GATEWAY_HOST=0.0.0.0 \
    RADTRAIN_METRICS_HOST=0.0.0.0 \
    RADTRAIN_DATA_DIR=/var/lib/radtrain \
    RADTRAIN_CACHE_DIR=/var/lib/radtrain/cache \
    RADTRAIN_WORK_DIR=/var/lib/radtrain/work
COPY --from=build /wheels /wheels
# The base install only: no [runner] extra, so no torch, torchvision or timm.
RUN pip install /wheels/radtrain-*.whl && rm -rf /wheels \
    && groupadd --system --gid 10001 radtrain \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/radtrain \
       --create-home --shell /usr/sbin/nologin radtrain
WORKDIR /var/lib/radtrain
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["python", "-m"]
CMD ["gateway"]
