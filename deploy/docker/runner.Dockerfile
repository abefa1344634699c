# syntax=docker/dockerfile:1
# radtrain runner on CUDA: PyTorch's own CUDA runtime image, radtrain[runner] on top.
#
#   docker build -f deploy/docker/runner.Dockerfile -t radtrain-runner:0.1.0 .
#   docker run --gpus all radtrain-runner:0.1.0            # python -m runner
#   docker run --gpus all radtrain-runner:0.1.0 --once     # one task, then exit (KEDA Jobs)
#
# The base image's torch is the version pyproject.toml pins for the [runner] extra
# (tests/unit/deploy/test_containers.py checks it), so pip keeps it and downloads
# no second torch. Bump both together.

ARG TORCH_IMAGE=pytorch/pytorch:2.14.1-cuda12.8-cudnn9-runtime

FROM ${TORCH_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY imaging ./imaging
COPY infra ./infra
COPY gateway ./gateway
COPY handlers ./handlers
COPY runner ./runner
COPY radtrain ./radtrain
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${TORCH_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    RADTRAIN_DEVICE=auto \
    RADTRAIN_METRICS_HOST=0.0.0.0 \
    RADTRAIN_DATA_DIR=/var/lib/radtrain \
    RADTRAIN_CACHE_DIR=/var/lib/radtrain/cache \
    RADTRAIN_WORK_DIR=/var/lib/radtrain/work
COPY --from=build /wheels /wheels
# The pip of the image's Python (the one its torch belongs to) installs the extra.
RUN WHEEL="$(ls /wheels/radtrain-*.whl)" \
    && python -m pip install "${WHEEL}[runner]" && rm -rf /wheels \
    && groupadd --system --gid 10001 radtrain \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/radtrain \
       --create-home --shell /usr/sbin/nologin radtrain
WORKDIR /var/lib/radtrain
USER 10001:10001
ENTRYPOINT ["python", "-m", "runner"]
