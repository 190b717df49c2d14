#!/usr/bin/env bash
# One lease of a CUDA machine (an H200 lent by the `device` tool, 10 minutes a command): the
# project's CUDA checks and a generator training run, in one command.
#
# The machine has torch, triton, cupy, onnxruntime and opencv but no mediapipe, PyAV or
# network, so everything that needs tracking was done beforehand (on the CPU machine) and
# travels in $G (an ignored folder, deleted after the lease; the clips are research-only):
#   $G/tracks.npz                  python -m rt_portrait.training cache --pool 60 --export-tracks ...
#   $G/data/MANIFEST.tsv, clips/   the train clips' videos
#
# Timeline (seconds): 0 the cache renders on 12 CPU workers while the CUDA tests and the GPU
# suite run; then two one-step-tuning variants train side by side until $DEADLINE; their
# weights and logs land in $OUT (8 files at most come back).
set -u
G=${G:-.gpu}
OUT=${OUT:-/tmp/gpu-out}
DEADLINE=${DEADLINE:-500}
# a CPU smoke run of this script: DEVICE=cpu WORKERS=2 MAX_CLIPS=2 CHECKS=0 DEADLINE=150
DEVICE=${DEVICE:-cuda}
WORKERS=${WORKERS:-12}
MAX_CLIPS=${MAX_CLIPS:-1000}
CHECKS=${CHECKS:-1}
BATCH=${BATCH:-256}  # the step rate is launch-bound on an H200: a large batch is nearly free
GC=${GC:-/tmp/gc}
RUNS=${RUNS:-/tmp}
PY=${PY:-python3}  # the GPU image's python3 holds torch
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
mkdir -p "$OUT"
T0=$(date +%s)
elapsed() { echo $(($(date +%s) - T0)); }
log() { echo "[$(elapsed) s] $*" >>"$OUT/session.log"; }

log "start"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >>"$OUT/session.log" 2>&1
$PY -c "import cv2, torch, triton; print('cv2', cv2.__version__, 'torch', torch.__version__, 'triton', triton.__version__)" >>"$OUT/session.log" 2>&1

# 1. the training cache, rendered from the tracks on the CPU (same code as the CPU cache), with
# the residual base of the weights the runs start from (warp_fill since session 9), or $BASE
# (warp_mirror: today's reflecting fill, which a run then learns); the head shell follows the
# jaw ($SKIN_FOLLOW, 0.25 since session 12; 0 = the rigid shell the shipped weights learned)
BASE=${BASE:-$($PY -c "from rt_portrait.generator.diffusion import DEFAULT_WEIGHTS, load_weights; print(load_weights(DEFAULT_WEIGHTS)[1].get('base', 'warp'))")}
SKIN_FOLLOW=${SKIN_FOLLOW:-0.25}
MOUTH=${MOUTH:-teeth}  # how the base paints a shut mouth opened (strips: as the shipped weights learned)
$PY -m rt_portrait.training cache --data "$G/data" --out "$GC" --split train --base "$BASE" --skin-follow "$SKIN_FOLLOW" --mouth "$MOUTH" \
    --from-tracks "$G/tracks.npz" --workers "$WORKERS" --max-clips "$MAX_CLIPS" --sources 3 --targets 32 \
    >/tmp/render.log 2>&1 &
RENDER=$!

# 2. meanwhile the CUDA checks: compiled Triton kernels, CUDA graphs, engines, the GPU suite
[ "$CHECKS" = 1 ] && timeout 150 $PY -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_engines.py \
    tests/test_tensorrt.py tests/test_flow.py -k "cuda or gpu or compiled or graph" >"$OUT/tests.log" 2>&1
log "tests rc=$?"
[ "$CHECKS" = 1 ] && timeout 170 $PY bench/gpu_suite.py --budget-s 120 \
    --out "$OUT/gpu_suite.json" >/tmp/suite.log 2>&1
log "gpu suite rc=$?"

wait $RENDER
log "render rc=$? ($(grep -c . /tmp/render.log) log lines)"
grep -v "clip/s\]" /tmp/render.log | tail -20 >>"$OUT/session.log"

# 3. two variants side by side on the one GPU (the model is small: it is data-bound)
minutes=$($PY -c "print(max(0.5, ($DEADLINE - $(elapsed) - 60) / 60))")
log "training for $minutes min"
train() {  # name, extra flags
    local name=$1
    shift
    $PY -m rt_portrait.training train --device "$DEVICE" --batches device --amp bf16 \
        --cache "$GC/train-256" --out "$RUNS/run$name" --init rt_portrait/generator/weights/generator_1step.safetensors \
        --p-t1 1 --batch "$BATCH" --ckpt-minutes 1 --max-minutes "$minutes" "$@" >"$OUT/train$name.log" 2>&1
    log "train $name rc=$?"
}
# A is B plus a displacement of the base (two flow channels, gain 10): on this CPU, 30-40
# minutes of it learned shifts of ~0.1 px and no gain (README, session 10); a GPU's scale is
# the test of whether the misalignment it targets (an oracle displacement: +4.9 dB) is learnable
train A --lr 3e-4 --texture-weight 3 --ssim-weight 1 --displacement --displacement-gain 10 &
train B --lr 3e-4 --texture-weight 3 --ssim-weight 1 &
wait
for name in A B; do
    cp "$RUNS/run$name/weights.safetensors" "$OUT/$name.safetensors" 2>>"$OUT/session.log"
done
log "done"
