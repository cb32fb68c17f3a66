# syntax=docker/dockerfile:1
# Kaset image: one image for every role (gateway `kaset serve`, model worker `kaset worker`,
# `kaset jobs-worker`, `kaset db upgrade`). See docs/deploy.md.
#
# NOTE: this file was written and checked without a Docker engine (none exists on the machines
# Kaset is developed on): tests/deploy/test_dockerfile.py parses it, but no image has been built
# from it here.
#
#   docker build -t kaset .                              # with the default model pack (large)
#   docker build -t kaset --build-arg INSTALL_MODELS=0 . # no models: mount them at /opt/kaset/models

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: compilers and headers; every wheel (llama-cpp-python included) into /wheels -------
FROM ${PYTHON_IMAGE} AS builder

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential cmake git pkg-config \
 && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# llama.cpp: portable CPU build (no -march=native: the image runs on other machines).
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF" FORCE_CMAKE=1

WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip install --upgrade pip wheel \
 && pip wheel --wheel-dir /wheels '.[models]'

# --- runtime: only what the code runs -----------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# espeak-ng (the espeak-ng TTS model), apertium and the pairs the catalog uses (the apertium
# model), libgomp1 (OpenMP for llama.cpp and onnxruntime), curl (HEALTHCHECK). No ffmpeg: audio
# goes through PyAV, whose wheels bundle FFmpeg (src/kaset/media/audio.py).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        espeak-ng apertium apertium-eng-spa apertium-eng-cat apertium-en-gl libgomp1 curl \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 kaset \
 && useradd --system --uid 10001 --gid kaset --home-dir /home/kaset --create-home kaset \
 && mkdir -p /data /opt/kaset/models \
 && chown -R kaset:kaset /data /opt/kaset

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    KASET_DATA_DIR=/data \
    KASET_MODELS_DIR=/opt/kaset/models

COPY --from=builder /wheels /wheels
RUN pip install --no-index --find-links /wheels 'kaset[models]' \
 && rm -rf /wheels

USER kaset
WORKDIR /home/kaset

# Models installed into the image at build (INSTALL_MODELS=1, the default), or mounted at
# /opt/kaset/models (or wherever KASET_MODELS_DIR points) with INSTALL_MODELS=0. The vision
# models are exported from PyTorch once, in a venv beside the models (/opt/kaset/export-env)
# that is deleted in the same layer; KASET_EXPORT_PIP_ARGS picks the CPU build of torch.
ARG INSTALL_MODELS=1
ARG KASET_EXPORT_PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
RUN if [ "$INSTALL_MODELS" = "1" ]; then \
        KASET_DATA_DIR=/tmp/kaset-build KASET_EXPORT_PIP_ARGS="$KASET_EXPORT_PIP_ARGS" \
            kaset models install --default \
        && rm -rf /tmp/kaset-build /opt/kaset/export-env /home/kaset/.cache; \
    else echo "INSTALL_MODELS=$INSTALL_MODELS: no models in the image; mount them at $KASET_MODELS_DIR"; fi

# Database (SQLite by default), jobs' input files, the generated JWT secret.
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8000/health/live || exit 1

ENTRYPOINT ["kaset"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
