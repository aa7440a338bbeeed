#!/usr/bin/env bash
# GPU check: every GPU figure of bench/gpu.py in one call, on a machine with no network.
#
#   make gpu-kit                                   # here, where pip can fetch: var/gpu-kit
#   OUT=/tmp/out bash bench/gpu_check.sh           # there, with var/gpu-kit carried along
#   bash bench/gpu_check.sh --budget-seconds 480   # stages that would not fit are skipped
#   PYTHON=.venv/bin/python bash bench/gpu_check.sh --smoke   # a rehearsal on the CPU
#
# It says in its first lines what it found (Python, torch, the packages that matter, the GPU,
# redis-server), installs only from the kit (pip --no-index, torch pinned to the version
# found, so it is never upgraded or replaced), puts the kit's redis-server first on PATH,
# writes the random-weight SD1.5 model, then runs bench/gpu.py stage by stage within what is
# left of the budget: plain diffusers, the eager fast path, the whole service, compiled
# variants. bench/gpu.py writes its JSON after every row, so a run cut short keeps every
# figure it finished. --smoke: the tiny model on this machine's device, pip in --dry-run
# (nothing is installed), a budget of its own.
set -uo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

budget=480
smoke=0
while [ $# -gt 0 ]; do
    case "$1" in
        --budget-seconds) budget=$2; shift 2 ;;
        --smoke) smoke=1; shift ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
done

OUT="${OUT:-var/bench}"
PY="${PYTHON:-python3}"
KIT="${KIT:-var/gpu-kit}"
MODEL="${MODEL:-var/models/sd15-random}"
mkdir -p "$OUT"
log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" | tee -a "$OUT/check.log"; }
left() { echo $(( budget - ($(date +%s) - started) )); }

# 0. What is here.
log "python: $("$PY" -c 'import sys; print(sys.version.split()[0], sys.executable)')"
"$PY" -m pip list --disable-pip-version-check 2>/dev/null \
    | grep -iE '^(torch|transformers|accelerate|numpy|huggingface.hub|diffusers|celery|flask|redis|boto3|moto) ' \
    | sed 's/^/  /' | tee -a "$OUT/check.log"
torch_found=$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null) || { log "no torch in $PY"; exit 1; }
log "torch $torch_found, $("$PY" -c 'import torch; c=torch.cuda.is_available(); print("cuda " + str(torch.version.cuda) + ": " + (torch.cuda.get_device_name() if c else "no GPU visible"))')"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || log "no nvidia-smi"
if [ ! -f "$KIT/requirements.txt" ] || [ ! -x "$KIT/bin/redis-server" ]; then
    log "no kit in $KIT: run 'make gpu-kit' where pip can fetch, and carry $KIT"
    exit 1
fi
export PATH="$PWD/$KIT/bin:$PATH"
log "redis-server: $(command -v redis-server), $(redis-server --version | cut -d' ' -f1-3)"
log "kit: $(grep -vc '^#' "$KIT/requirements.txt") packages, $(du -sh "$KIT" | cut -f1)"

# 1. The packages the machine lacks, from the kit only; torch stays as it was found.
pins="$OUT/pins.txt"
echo "torch==$torch_found" > "$pins"
pip_args=(--no-index --find-links "$KIT/wheels" --disable-pip-version-check --constraint "$pins"
          --requirement "$KIT/requirements.txt")
if [ "$smoke" = 1 ]; then
    pip_args+=(--dry-run)
fi
log "pip install ${pip_args[*]}"
if ! "$PY" -m pip install "${pip_args[@]}" >> "$OUT/check.log" 2>&1; then
    log "pip could not install the kit as resolved (see above); installing its wheels as they are"
    "$PY" -m pip install --no-deps "${pip_args[@]}" >> "$OUT/check.log" 2>&1 || log "pip failed again"
fi
torch_after=$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null)
if [ "$torch_after" != "$torch_found" ]; then
    log "torch changed from $torch_found to $torch_after: stopping"
    exit 1
fi

# 2. The model (reused when present). Compiled kernels and autotuning results go to one
#    cache in the working tree, so a second call reuses what the first compiled.
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$PWD/var/inductor-cache}"
args=(--json "$OUT/gpu.json" --budget-seconds "$(left)")
if [ "$smoke" = 1 ]; then
    args+=(--smoke --sizes "${SIZES:-512}")
else
    log "writing (or reusing) the sd15 random-weight model in $MODEL"
    "$PY" -m worker.models sd15 --out "$MODEL" >> "$OUT/check.log" 2>&1 || { log "model write failed"; exit 1; }
    args=(--model "$MODEL" --sizes "${SIZES:-512}" --rounds "${ROUNDS:-10}" --clients "${CLIENTS:-8}"
          --service-rounds "${SERVICE_ROUNDS:-5}" --json "$OUT/gpu.json" --budget-seconds "$(left)")
fi
if [ -n "${COMPILE_MODES:-}" ]; then
    args+=(--compile-modes "$COMPILE_MODES")
fi

# 3. The benchmark, within what is left of the budget.
log "python bench/gpu.py ${args[*]}"
"$PY" bench/gpu.py "${args[@]}" 2>&1 | tee "$OUT/gpu.log"
status=${PIPESTATUS[0]}
log "bench/gpu.py exited with $status after $(( $(date +%s) - started )) s in all"
exit "$status"
