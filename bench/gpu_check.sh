#!/usr/bin/env bash
# GPU check: install what the machine lacks, write the random-weight SD1.5 model, run
# bench/gpu.py for the reference request and leave its JSON, log and table in $OUT.
#
#   OUT=/tmp/out bash bench/gpu_check.sh
#   WHEELS=/path/to/wheels bash bench/gpu_check.sh        # offline: install from a wheel folder
#   SIZES=512 ROUNDS=5 COMPILE_MODE=default bash bench/gpu_check.sh   # a shorter run
#
# bench/gpu.py writes its JSON after every row and measures size by size, so a run that is
# cut short still leaves every figure of the sizes it finished.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-var/bench}"
PY="${PYTHON:-python3}"
MODEL="${MODEL:-var/models/sd15-random}"
mkdir -p "$OUT"
log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" | tee -a "$OUT/check.log"; }

# 1. Python packages: the project with its worker and dev extras, keeping what is installed
#    (a CUDA build of torch already there stays).
if ! "$PY" -c 'import torch, diffusers, transformers, celery, redis, moto, flask, gunicorn, requests' 2>/dev/null; then
    pip_args=(--quiet --disable-pip-version-check)
    if [ -n "${WHEELS:-}" ]; then
        pip_args+=(--no-index --find-links "$WHEELS")
    fi
    log "installing the project: pip install -e .[worker,dev]"
    "$PY" -m pip install "${pip_args[@]}" -e '.[worker,dev]' 2>&1 | tail -5 | tee -a "$OUT/check.log" \
        || log "pip install failed; going on with what is installed"
fi
"$PY" - <<'PYEOF' 2>&1 | tee "$OUT/env.txt"
import diffusers, torch
cuda = torch.cuda.is_available()
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", cuda)
print("device", torch.cuda.get_device_name() if cuda else "cpu", "diffusers", diffusers.__version__)
PYEOF
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || log "no nvidia-smi"

# 2. The service path needs redis-server (the S3 endpoint is moto's, installed above).
skip=()
if ! command -v redis-server > /dev/null; then
    log "no redis-server on PATH: skipping the service path"
    skip+=(--skip-service)
fi

# 3. The model (reused when present), then the benchmark. Compiled kernels and autotuning
#    results go to one cache, so the service's worker reuses what the runner rows compiled.
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$PWD/var/inductor-cache}"
log "writing (or reusing) the sd15 random-weight model in $MODEL"
"$PY" -m worker.models sd15 --out "$MODEL" >> "$OUT/check.log" 2>&1 || { log "model write failed"; exit 1; }

args=(--model "$MODEL" --sizes "${SIZES:-512,768}" --rounds "${ROUNDS:-10}" --clients "${CLIENTS:-8}"
      --service-rounds "${SERVICE_ROUNDS:-5}" --json "$OUT/gpu.json")
if [ -n "${COMPILE_MODE:-}" ]; then
    args+=(--compile-mode "$COMPILE_MODE")
fi
if [ -n "${COMPILE_BACKEND:-}" ]; then
    args+=(--compile-backend "$COMPILE_BACKEND")
fi
log "python bench/gpu.py ${args[*]} ${skip[*]}"
"$PY" bench/gpu.py "${args[@]}" "${skip[@]}" 2>&1 | tee "$OUT/gpu.log"
status=${PIPESTATUS[0]}
log "bench/gpu.py exited with $status"
exit "$status"
