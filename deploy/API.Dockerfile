# The aiserver API image, made from the wheelhouse dist/api and nothing else.
#
#   hatch run build:api                                   # dist/api: the service's wheels
#   podman build --format docker -f deploy/API.Dockerfile -t aiserver-api .   # (or docker build)
#
# BASE_IMAGE is any Debian bookworm image with python3 and its venv module on PATH; the builder
# and the final stage use the same one, so the venv's interpreter link holds in both. Where no
# registry is reachable, deploy/local_base_image.py makes one (see deploy/deployment.md).
ARG BASE_IMAGE=python:3.12-slim-bookworm

FROM ${BASE_IMAGE} AS builder
# The label lets `podman image prune --filter label=...` find this stage's leftovers.
LABEL org.opencontainers.image.vendor="aiserver"
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# binutils' strip, for slim_venv.py; like uv and the wheels, it stays in this stage.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends binutils \
 && rm -rf /var/lib/apt/lists/*
COPY dist/api/ /wheelhouse/
# uv, too, comes from the wheelhouse (tools/).
RUN python3 -m venv /opt/uv \
 && /opt/uv/bin/pip install --no-index --find-links /wheelhouse/tools uv \
 && /opt/uv/bin/uv venv --python python3 /opt/aiserver \
 && /opt/uv/bin/uv pip install --python /opt/aiserver/bin/python \
      --no-index --find-links /wheelhouse aiserver-api-service \
 && PATH="/opt/uv/bin:$PATH" python3 /wheelhouse/tools/slim_venv.py /opt/aiserver

FROM ${BASE_IMAGE}
RUN groupadd --gid 10001 aiserver \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/aiserver \
      --shell /usr/sbin/nologin aiserver
# Owned by root: the service can run the venv, not change it.
COPY --from=builder /opt/aiserver /opt/aiserver
ENV PATH="/opt/aiserver/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LOG_FORMAT=json
USER 10001:10001
WORKDIR /home/aiserver
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["aiserver-api", "--host", "0.0.0.0", "--port", "8000"]
# Last, so that a new revision changes only this layer and reuses the ones above.
ARG BASE_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="aiserver-api" \
      org.opencontainers.image.description="aiserver HTTP API: the model price catalog and exact costs of AI model calls" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.vendor="aiserver" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
