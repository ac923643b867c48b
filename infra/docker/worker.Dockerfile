# syntax=docker/dockerfile:1
# GPU worker image: `voicefarm workers` (one Celery worker process per visible GPU, or CPU workers
# when there is none). Piper runs through onnxruntime-gpu; CosyVoice needs INSTALL_COSYVOICE=true.
# Build from the repository root: docker build -f infra/docker/worker.Dockerfile .
ARG CUDA_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04
FROM ${CUDA_IMAGE}

# torch's CUDA build must match the base image's CUDA major (12.x) and cuDNN 9.
ARG TORCH_VERSION=2.5.1
ARG TORCHAUDIO_VERSION=2.5.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124
ARG ONNXRUNTIME_GPU_VERSION=1.20.1
# Optional: a snapshot of the official CosyVoice code (not a pip package) at /opt/CosyVoice,
# at the commit voicefarm is tested with (infra/dev/cosyvoice-src.sh pins it and Matcha-TTS);
# the engine puts it on sys.path from VOICEFARM_COSYVOICE_SRC.
ARG INSTALL_COSYVOICE=false
ARG COSYVOICE_REPO=https://github.com/FunAudioLLM/CosyVoice.git
ARG MATCHA_REPO=https://github.com/shivammehta25/Matcha-TTS.git

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH

# Ubuntu 22.04 ships Python 3.11 in universe; the venv keeps pip away from the system Python.
# Distribution packages follow the base image's release, not pinned versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates libsndfile1 \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv

# The heavy, rarely changing layer first, so code edits do not re-download torch.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" "torchaudio==${TORCHAUDIO_VERSION}"

# CosyVoice's requirements.txt pins torch, pydantic, fastapi, gradio and TensorRT, which would
# break this image: its inference dependencies are the `cosyvoice` extra (installed below with
# the project); openai-whisper goes in with --no-deps (its requirements pull triton). ffmpeg
# gives torchaudio's loader its libraries.
COPY infra/dev/cosyvoice-src.sh /usr/local/bin/cosyvoice-src.sh
# hadolint ignore=DL3008
RUN if [ "${INSTALL_COSYVOICE}" = "true" ]; then \
      set -eux; \
      apt-get update; \
      apt-get install -y --no-install-recommends git ffmpeg; \
      rm -rf /var/lib/apt/lists/*; \
      cosyvoice-src.sh /opt/CosyVoice "${COSYVOICE_REPO}" "${MATCHA_REPO}"; \
    fi

ENV VOICEFARM_COSYVOICE_SRC=/opt/CosyVoice

WORKDIR /src
COPY pyproject.toml README.md ./
COPY api ./api
COPY cli ./cli
COPY core ./core
COPY db ./db
COPY migrations ./migrations
COPY tasks ./tasks
COPY workers ./workers
# piper-tts pulls the CPU `onnxruntime`; both wheels own the same module, so swap it for the
# GPU build (which also runs on CPU) after everything else is installed.
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install ".[worker]" \
    && if [ "${INSTALL_COSYVOICE}" = "true" ]; then \
         # the `cosyvoice` extra, less its torchaudio pin (the image's matches its CUDA torch)
         python -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb')); \
print('\n'.join(r for r in d['project']['optional-dependencies']['cosyvoice'] \
if not r.startswith('torchaudio')))" > /tmp/cosyvoice.txt \
         && pip install -r /tmp/cosyvoice.txt "torch==${TORCH_VERSION}" \
           "torchaudio==${TORCHAUDIO_VERSION}" --extra-index-url "${TORCH_INDEX_URL}" \
         && pip install --no-deps openai-whisper==20250625; fi \
    && pip uninstall -y onnxruntime \
    && pip install --no-deps --force-reinstall "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}" \
    && python -c "import torch, onnxruntime" \
    && rm -rf /src

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app --shell /usr/sbin/nologin app \
    && mkdir -p /models /var/lib/voicefarm \
    && chown app:app /models /var/lib/voicefarm
WORKDIR /home/app
USER 10001:10001
# Model directories are mounted at /models read-only (e.g. /models/CosyVoice2-0.5B).
# Metrics: the supervisor on 9100, its worker processes on 9101, 9102, ... (one per GPU).
EXPOSE 9100 9101
CMD ["voicefarm", "workers"]
