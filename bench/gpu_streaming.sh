#!/usr/bin/env bash
# Issue 13's GPU figures (writes results/gpu_streaming*.json and a log per stage):
#   bash bench/gpu_streaming.sh [STAGE]      STAGE: main (default, about 5 min on one H100/H200), compile (about
#                                            7 min: minutes of compilation per row) or all (both, over one call's limit)
#   main:    1. agreement: Dice between the streaming engine's masks (CUDA graph) and eager masks, per precision, on 8
#               synthetic 128 x 128 cines of 20 frames: the trained small model if bundle/models/model.pt is there
#               (also Dice against the synthetic ground truth), the base model with random weights;
#            2. speed: base and small at 256 x 256, float32/bfloat16/float16, 1/8/32/64 streams, eager GDKVM.step
#               against the engine, taking turns frame by frame in the same process (ms/step p50/p99, frames/s,
#               engine/eager).
#   compile: torch.compile(mode="reduce-overhead") against the CUDA graph and eager in the same run: agreement of the
#            small model per precision, then base at 256 x 256, 1 and 32 streams, each precision (which backend
#            should be inference.json's stream_backend default).
# The device machine has PyTorch but not MONAI: carry its wheel (pure Python) in .whl/, ignored by git:
#   echo /.whl/ >> .git/info/exclude; pip download --no-deps --only-binary=:all: -d .whl monai==1.6.1
# and run (device tool): command "bash bench/gpu_streaming.sh main", carry [".whl", "bundle/models/model.pt"],
# timeout_s 540; then the same with "compile". Results are copied to $OUT when it is set (the device tool brings
# them back).
set -uo pipefail
cd "$(dirname "$0")/.."
STAGE="${1:-main}"
case "$STAGE" in
    main | compile | all) ;;
    *) echo "gpu_streaming.sh: STAGE must be main, compile or all, not $STAGE" >&2; exit 2 ;;
esac
source bench/gpu_env.sh gpu_streaming.sh monai
RESULTS="${RESULTS_DIR:-results}"
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu_streaming_$STAGE.log"
CKPT=()
[ -f bundle/models/model.pt ] && CKPT=(--ckpt bundle/models/model.pt)
start=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$LOG"
status=0

if [ "$STAGE" != compile ]; then
    "$PY" bench/streaming.py --device cuda --skip_bench --agreement "${CKPT[@]}" --sizes small base \
        --precisions float32 bfloat16 float16 --cines 8 --agreement_frames 20 --agreement_resolution 128 \
        --out "$RESULTS/gpu_streaming_agreement.json" 2>&1 | tee -a "$LOG" || status=1
    echo "agreement done after $(( $(date +%s) - start )) s" | tee -a "$LOG"
    "$PY" bench/streaming.py --device cuda --resolution 256 --sizes base small --precisions float32 bfloat16 float16 \
        --streams 1 8 32 64 --frames 200 --warmup 20 --max_seconds 2.5 \
        --out "$RESULTS/gpu_streaming.json" 2>&1 | tee -a "$LOG" || status=1
    echo "speed done after $(( $(date +%s) - start )) s" | tee -a "$LOG"
fi
if [ "$STAGE" != main ]; then
    "$PY" bench/streaming.py --device cuda --skip_bench --agreement "${CKPT[@]}" --sizes small \
        --backends cuda_graph compile --precisions float32 bfloat16 float16 --cines 8 --agreement_frames 20 \
        --agreement_resolution 128 --out "$RESULTS/gpu_streaming_compile_agreement.json" 2>&1 | tee -a "$LOG" || status=1
    echo "compile agreement done after $(( $(date +%s) - start )) s" | tee -a "$LOG"
    "$PY" bench/streaming.py --device cuda --resolution 256 --sizes base --precisions float32 bfloat16 float16 \
        --streams 1 32 --backends cuda_graph compile --frames 200 --warmup 20 --max_seconds 2.5 \
        --out "$RESULTS/gpu_streaming_compile.json" 2>&1 | tee -a "$LOG" || status=1
fi
echo "gpu_streaming.sh $STAGE done after $(( $(date +%s) - start )) s (exit $status)" | tee -a "$LOG"

if [ -n "${OUT:-}" ]; then
    cp "$RESULTS"/gpu_streaming*.json "$LOG" "$OUT"/ 2>/dev/null || true
fi
exit "$status"
