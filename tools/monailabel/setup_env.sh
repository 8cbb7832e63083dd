#!/usr/bin/env bash
# Create MONAI Label's own virtual environment (default .venv-monailabel/ at the repository root).
#
#   tools/monailabel/setup_env.sh [VENV_DIR]
#
# MONAI Label 0.8.5 pins numpy<2 (numpymaxflow, pydicom-seg), so it cannot share the project venv (numpy 2.4.6).
# Pins: torch==2.13.0 (the project's CPU torch), monai==1.6.1 (the bundle's), pydicom<3 (pydicom-seg 0.4.1 fails to
# import with pydicom 3). The only torchvision on PyPI for torch 2.13.0 is the CUDA build; a small import hook
# (tv_cpu_shim.py, loaded by a .pth file) makes it importable beside the CPU torch. Works offline when pip can reach
# a local index or wheel folder (pip's own configuration). OpenCV reads AVI/MP4 cines: opencv-python-headless 4.11
# is the last release built for numpy 1. Idempotent: a finished venv is left as it is (one finished before OpenCV was
# part of it gets OpenCV).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${1:-$root/.venv-monailabel}"
python="${PYTHON:-python3}"
stamp="$venv/.installed"

opencv="opencv-python-headless==4.11.0.86"

if [[ -f "$stamp" ]]; then
    if ! "$venv/bin/python" -c "import cv2" 2>/dev/null; then
        echo "MONAI Label venv $venv: adding $opencv (AVI/MP4 cines)"
        "$venv/bin/python" -m pip install --quiet "$opencv" "numpy<2"
    fi
    echo "MONAI Label venv ready: $venv"
    exit 0
fi

start=$(date +%s)
"$python" -m venv "$venv"
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
printf 'torch==2.13.0\nmonai==1.6.1\npydicom<3\n' > "$constraints"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -c "$constraints" torch==2.13.0 monai==1.6.1 monailabel==0.8.5 "$opencv"

site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cp "$here/tv_cpu_shim.py" "$site/gdkvm_tv_cpu_shim.py"
echo "import gdkvm_tv_cpu_shim" > "$site/gdkvm_tv_cpu_shim.pth"

# The server path must import: monailabel's post transforms (torchvision), pydicom-seg (pydicom<3), the bundle app.
"$venv/bin/python" - <<'PY'
import cv2, monai, monailabel, numpy, pydicom, torch
from monailabel.tasks.infer.bundle import BundleInferTask  # imports torchvision.utils through monailabel.transform.post
import pydicom_seg
print(f"monailabel {monailabel.__version__}, monai {monai.__version__}, torch {torch.__version__}, "
      f"numpy {numpy.__version__}, pydicom {pydicom.__version__}, opencv {cv2.__version__}")
PY
# pip 26.3 `pip check` crashes on itk's wheel tag (InvalidTag ...cp311-abi3...), so its result is informative only.
"$venv/bin/python" -m pip check || echo "warning: pip check failed (see above); the imports above succeeded"
touch "$stamp"
echo "MONAI Label venv ready: $venv ($(( $(date +%s) - start )) s, $(du -sh "$venv" | cut -f1))"
