#!/usr/bin/env bash
# Issue 23's GPU figures: archive frames/s of `run inferring` against the network alone at 1, 8 and 32 streams
# (bench/archive.py --streams 1 8 32), on 24 colour JPEG-baseline DICOM cines of 30-120 frames made on the machine
# (and the synthetic NIfTI set when bundle/data/synthetic was carried). About 6-8 minutes on one H100; writes
# results/gpu_archive.json and results/gpu_archive.log, copied to $OUT when it is set (the device tool brings them).
#   bash bench/gpu_archive.sh [N_DICOM]        (default 24)
# The device machine has PyTorch but not MONAI and the readers: carry their wheels in .whl/ (ignored by git):
#   echo /.whl/ >> .git/info/exclude
#   pip download --no-deps --only-binary=:all: -d .whl monai==1.6.1 pytorch-ignite==0.5.5 nibabel==5.4.2 \
#       pydicom==3.0.2 fire==0.7.1 termcolor scikit-image==0.26.0 opencv-python-headless==5.0.0.93 \
#       imageio tifffile lazy-loader networkx
#   (scipy, matplotlib and Pillow as the device's Python has them, else add them; match its Python version)
# and run (device tool): command "bash bench/gpu_archive.sh", carry [".whl", "bundle/models/model.pt"] (and
# "bundle/data/synthetic" for the NIfTI rows: 42 MB), timeout_s 540.
set -uo pipefail
cd "$(dirname "$0")/.."
N_DICOM="${1:-24}"
source bench/gpu_env.sh gpu_archive.sh monai ignite nibabel pydicom skimage scipy cv2 fire matplotlib PIL
RESULTS="${RESULTS_DIR:-results}"
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu_archive.log"
NIFTI=0
[ -d bundle/data/synthetic/database_nifti ] && NIFTI=30
start=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$LOG"
"$PY" bench/archive.py --nifti "$NIFTI" --dicom "$N_DICOM" --streams 1 8 32 --work /tmp/archive_bench \
    --out "$RESULTS/gpu_archive.json" 2>&1 | tee -a "$LOG"
status=${PIPESTATUS[0]}
echo "gpu_archive.sh done after $(( $(date +%s) - start )) s (exit $status)" | tee -a "$LOG"
if [ -n "${OUT:-}" ]; then
    cp "$RESULTS"/gpu_archive.json "$LOG" "$OUT"/ 2>/dev/null || true
fi
exit "$status"
