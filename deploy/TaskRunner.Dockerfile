# The aiserver task runner image, made from the wheelhouse dist/taskrunner and nothing else, plus
# the document tools (LibreOffice Writer without its GUI, poppler) from the base's Debian packages.
#
#   hatch run build:taskrunner
#   podman build --format docker -f deploy/TaskRunner.Dockerfile -t aiserver-taskrunner .
#
# On start the worker initializes the database: migrations under an advisory lock, then the
# catalog seed when it is empty (initialize_database()). BASE_IMAGE: see deploy/API.Dockerfile.
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
COPY dist/taskrunner/ /wheelhouse/
# uv, too, comes from the wheelhouse (tools/).
RUN python3 -m venv /opt/uv \
 && /opt/uv/bin/pip install --no-index --find-links /wheelhouse/tools uv \
 && /opt/uv/bin/uv venv --python python3 /opt/aiserver \
 && /opt/uv/bin/uv pip install --python /opt/aiserver/bin/python \
      --no-index --find-links /wheelhouse aiserver-taskrunner-service \
 && PATH="/opt/uv/bin:$PATH" python3 /wheelhouse/tools/slim_venv.py /opt/aiserver

FROM ${BASE_IMAGE}
# Versions float with the base's bookworm point releases (security fixes); an exact Debian
# revision pinned here would stop building once the mirror drops it. LibreOffice is Debian's
# -nogui build of Writer: the same converter without the desktop stack (X11, GStreamer, CUPS,
# D-Bus); libreoffice-core-nogui is named because writer-nogui is content with either core. .ci/run
# installs the same packages, so the tests convert with what ships. tini reaps the processes that
# LibreOffice leaves behind, which a Python PID 1 does not. apt's package caches (*.bin, 75 MB on
# a base without Debian's docker-clean setting) go with the lists.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libreoffice-writer-nogui libreoffice-core-nogui poppler-utils tini \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb \
      /var/log/apt /var/log/dpkg.log \
 && groupadd --gid 10001 aiserver \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/aiserver \
      --shell /usr/sbin/nologin aiserver
# Owned by root: the service can run the venv, not change it.
COPY --from=builder /opt/aiserver /opt/aiserver
ENV PATH="/opt/aiserver/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LOG_FORMAT=json
# LibreOffice keeps its profile under $HOME, which is why this user has a home.
USER 10001:10001
WORKDIR /home/aiserver
HEALTHCHECK --interval=15s --timeout=15s --start-period=60s --retries=3 \
  CMD ["aiserver-taskrunner", "check"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["aiserver-taskrunner"]
# Last, so that a new revision changes only this layer and reuses the ones above.
ARG BASE_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="aiserver-taskrunner" \
      org.opencontainers.image.description="aiserver task runner (arq): database initialization, price catalog refresh, document conversion" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.vendor="aiserver" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
