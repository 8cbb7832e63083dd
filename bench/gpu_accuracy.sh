#!/usr/bin/env bash
# Issue 15's accuracy benchmark at the full budget on one GPU (python -m bench.accuracy: 200 iterations x 32 clips,
# float32, every row trained on the realistic train split and tested on the clean and the hard test split).
# All nine rows x 3 seeds are about 25-30 min of H100/H200 time, more than one device call (10 min), so one call
# runs one seed of one row group and the calls are merged afterwards:
#   bash bench/gpu_accuracy.sh SEED GROUP      SEED 0, 1 or 2; GROUP recurrent (the five GDKVM update rules with
#                                              KPFF, about 5 min), rest (GDKVM without KPFF, softmax memory, MONAI
#                                              UNet and SegResNet per frame, about 4 min) or all (about 9 min)
# Each call writes results/gpu_accuracy_s{SEED}_{GROUP}.json (rewritten after every row: a call stopped by its time
# limit still leaves the rows it finished) and a log, and copies them to $OUT when it is set (the device tool brings
# them back). The data split (results/accuracy_data.npz) is generated on the first call (about 1 min on 16 CPUs)
# and copied to $OUT as well: put it in results/ here and carry it in later calls so that every call tests on the
# same clips (the run refuses a file of another generator version). Merge here, from the repository root:
#   python -m bench.accuracy --docs-from results/gpu_accuracy_s*_*.json --data results/accuracy_data.npz \
#       --docs docs/benchmarks_accuracy_gpu.md
# The device machine has PyTorch, scikit-image and SciPy but not MONAI or pytorch-ignite: carry their wheels (pure
# Python) in .whl/, ignored by git:
#   echo /.whl/ >> .git/info/exclude
#   pip download --no-deps --only-binary=:all: -d .whl monai==1.6.1 pytorch-ignite==0.5.5
# and run (device tool): command "bash bench/gpu_accuracy.sh 0 recurrent", carry [".whl", "results/accuracy_data.npz"]
# (the data file once you have it), timeout_s 600.
set -uo pipefail
cd "$(dirname "$0")/.."
SEED="${1:?usage: bash bench/gpu_accuracy.sh SEED recurrent|rest|all}"
GROUP="${2:-all}"
case "$GROUP" in
    recurrent) ROWS=(gdkvm-additive gdkvm-delta gdkvm-delta_beta gdkvm-decay_alpha gdkvm-gated_delta) ;;
    rest) ROWS=(gdkvm-gated_delta-nokpff softmax-memory unet2d-perframe segresnet2d-perframe) ;;
    all) ROWS=() ;;
    *) echo "gpu_accuracy.sh: GROUP must be recurrent, rest or all, not $GROUP" >&2; exit 2 ;;
esac
source bench/gpu_env.sh gpu_accuracy.sh monai ignite skimage scipy
RESULTS="${RESULTS_DIR:-results}"
mkdir -p "$RESULTS"
NAME="gpu_accuracy_s${SEED}_${GROUP}"
LOG="$RESULTS/$NAME.log"
DATA="$RESULTS/accuracy_data.npz"
start=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$LOG"
ROW_ARGS=()
[ "${#ROWS[@]}" -gt 0 ] && ROW_ARGS=(--rows "${ROWS[@]}")

"$PY" -m bench.accuracy --device cuda --seeds "$SEED" "${ROW_ARGS[@]}" --data "$DATA" \
    --out "$RESULTS/$NAME.json" --docs "$RESULTS/$NAME.md" 2>&1 | tee -a "$LOG"
status=${PIPESTATUS[0]}
echo "gpu_accuracy.sh $SEED $GROUP done after $(( $(date +%s) - start )) s (exit $status)" | tee -a "$LOG"

if [ -n "${OUT:-}" ]; then
    cp "$RESULTS/$NAME".* "$OUT"/ 2>/dev/null || true
    cp "$DATA" "$OUT"/ 2>/dev/null || true
fi
exit "$status"
