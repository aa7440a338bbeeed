# syntax=docker/dockerfile:1
# The gateway: Flask under gunicorn (threaded). No torch, only the base dependencies.
# Also the image of the webhook worker (python -m deploy.processes notifier).
# Build from the repository root:
#   docker build -f deploy/gateway.Dockerfile -t img2img-gateway .
FROM python:3.11-slim

# gunicorn processes share their Prometheus counters through this directory (a tmpfs
# in compose, an emptyDir in Kubernetes); deploy/gunicorn.conf.py empties it at start.
ENV PYTHONUNBUFFERED=1 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus

COPY deploy/requirements-gateway.txt /tmp/requirements-gateway.txt
RUN pip install --no-cache-dir --disable-pip-version-check -r /tmp/requirements-gateway.txt \
    && rm /tmp/requirements-gateway.txt \
    && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin app

# Code stays owned by root: the service user can read it, not change it.
WORKDIR /app
COPY shared/ shared/
COPY api/ api/
COPY deploy/__init__.py deploy/gunicorn.conf.py deploy/processes.py deploy/gateway_worker.py deploy/
# The webhook worker needs no torch either: it runs from this image too.
COPY worker/__init__.py worker/notify.py worker/notify_main.py worker/

USER 10001:10001
EXPOSE 8000
# Alive, not ready: /readyz also needs a worker, and workers may be scaled to zero.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["gunicorn", "-c", "deploy/gunicorn.conf.py", "api.wsgi:app"]
