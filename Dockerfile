# tcpecho's container image: the server and the client, run as PID 1 by a non-root numeric user.
#
# BASE is any Debian-like image with python3 and its venv module (the official slim image by
# default; CI passes a Debian base it builds with mmdebstrap, since no registry is reachable there).
# Both stages must use the same BASE: the virtual environment links to the base's interpreter.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
WORKDIR /src
# Dependencies first, from the hash-locked files alone, so source edits reuse this layer.
COPY requirements/image.txt requirements/image-build.txt requirements/
RUN python3 -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir --disable-pip-version-check \
        --require-hashes --no-deps -r requirements/image-build.txt \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
        --require-hashes --no-deps -r requirements/image.txt
COPY pyproject.toml README.md ./
COPY src/ src/
# The build backend comes from the locked /opt/build, not from an unpinned isolated build;
# pip leaves the runtime environment once tcpecho is in, so nothing there can install or build.
RUN /opt/build/bin/pip wheel --no-cache-dir --disable-pip-version-check \
        --no-deps --no-build-isolation --wheel-dir /tmp/dist . \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
        --no-deps --no-index /tmp/dist/tcpecho-*.whl \
    && /opt/venv/bin/pip uninstall --yes --disable-pip-version-check pip setuptools

FROM ${BASE}
LABEL org.opencontainers.image.title="tcpecho" \
      org.opencontainers.image.description="TCP echo server and client for the force-deleted-pod hang" \
      org.opencontainers.image.licenses="MIT"
COPY --from=build /opt/venv /opt/venv
# Unbuffered: every JSON log line reaches kubectl logs when it is written, also right before
# a crash. No bytecode writes: the root filesystem is read-only in the pods.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8000
# Exec form, no shell and no init: tcpecho is PID 1 and receives SIGTERM itself; it installs
# its own handlers, which PID 1 needs since the kernel drops default-action signals to it.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tcpecho"]
CMD ["server"]
