# syntax=docker/dockerfile:1
# A GPU worker: one Celery worker process holding one fp16 SD1.5 pipeline on one GPU.
# Build from the repository root:
#   docker build -f deploy/worker.Dockerfile -t img2img-worker .
# A CPU-only image (for the compose `cpu` profile) comes from the same file:
#   docker build -f deploy/worker.Dockerfile -t img2img-worker:cpu \
#     --build-arg BASE_IMAGE=ubuntu:24.04 --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
ARG BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

# The same torch pin as the Makefile. PyPI's Linux x86-64 torch wheels are CUDA builds;
# TORCH_INDEX_URL picks another index (another CUDA version, or the CPU build).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=""

# gcc, libc6-dev and python3-dev: torch.compile's Triton builds a small C module at the first
# kernel launch; without a compiler and Python's headers every GPU worker fails to load.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin app \
    && mkdir -p /models/hf /models/tiny \
    && chown -R 10001:10001 /models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1

RUN pip install --no-cache-dir --disable-pip-version-check \
        ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}"
COPY deploy/requirements-gateway.txt deploy/requirements-worker.txt /tmp/requirements/
RUN pip install --no-cache-dir --disable-pip-version-check -r /tmp/requirements/requirements-worker.txt \
    && rm -rf /tmp/requirements

WORKDIR /app
COPY shared/ shared/
COPY worker/ worker/
COPY deploy/__init__.py deploy/processes.py deploy/launcher.py deploy/

# Weights download once into HF_HOME; mount a volume there so a restart reuses them.
# MODEL_ID: the canonical Hugging Face id of the SD1.5 weights (formerly runwayml/...).
ENV HF_HOME=/models/hf \
    MODEL_ID=stable-diffusion-v1-5/stable-diffusion-v1-5 \
    QUEUE_NAME=img2img \
    WORKER_METRICS_PORT=9100
VOLUME ["/models/hf"]

USER 10001:10001
EXPOSE 9100
# Healthy once this container's worker has loaded its model (a first download takes minutes).
HEALTHCHECK --interval=15s --timeout=10s --start-period=20m --retries=3 \
    CMD ["python", "-m", "worker.health"]
# SIGTERM is Celery's warm shutdown: the running job finishes, nothing new is taken.
STOPSIGNAL SIGTERM
# Execs the one worker command line (deploy/processes.py) on QUEUE_NAME; `--print` shows it.
CMD ["python", "-m", "deploy.processes", "worker"]
