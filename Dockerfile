# syntax=docker/dockerfile:1
# One image for the five services; each Kubernetes Deployment sets the command:
#   gateway    gunicorn (see manifests/gateway/deployment.yaml)
#   auth       python -m auth          storage    python -m storage
#   converter  python -m converter     notifier   python -m notifier
# Build: docker build -t video2mp3:0.1.0 .   (no generated code is taken from the work tree:
# the gRPC stubs are generated from protos/ here)
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ---------------------------------------------------------------- stubs from protos/
FROM ${PYTHON_IMAGE} AS stubs
ARG GRPCIO_TOOLS_VERSION=1.81.1
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# In a venv of its own: a base whose Python belongs to the distribution (PEP 668, such as the
# Debian one dev/image.sh makes) refuses pip installs into the system.
# The secret pip_ca (optional; `--secret id=pip_ca,src=FILE`) is a CA bundle for pip where the
# build's network intercepts TLS; it is mounted for the one step, never stored in a layer.
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && python -m venv /opt/tools \
 && /opt/tools/bin/pip install "grpcio-tools==${GRPCIO_TOOLS_VERSION}"
WORKDIR /src
COPY protos/ protos/
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN mkdir -p /out \
 && find protos -name '*.proto' -print0 | sort -z \
    | xargs -0 /opt/tools/bin/python -m grpc_tools.protoc -I protos --python_out=/out --grpc_python_out=/out \
 && find /out/video2mp3 -type d -exec touch '{}/__init__.py' ';'

# ---------------------------------------------------------------- dependencies and code
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
# The dependencies first, from pyproject.toml alone, so code changes reuse this layer.
COPY pyproject.toml ./
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      >requirements.txt \
 && pip install -r requirements.txt
COPY common/ common/
COPY gateway/ gateway/
COPY auth/ auth/
COPY storage/ storage/
COPY converter/ converter/
COPY notifier/ notifier/
# pip and setuptools have done their work: the runtime image does not carry them (nor gevent's tests).
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && pip install --no-deps . \
 && pip uninstall --yes pip setuptools \
 && rm -rf /opt/venv/lib/python3.11/site-packages/gevent/tests

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="video2mp3" \
      org.opencontainers.image.description="video2mp3 services: gateway, auth, storage, converter, notifier"
RUN groupadd --gid 10001 app \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
# The generated stubs (package video2mp3), importable beside the installed services.
COPY --from=stubs /out/ /opt/video2mp3-stubs/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/video2mp3-stubs \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TMPDIR=/tmp
WORKDIR /tmp
USER 10001:10001
EXPOSE 8080 5000 5001
CMD ["python", "-m", "gateway"]
