#!/usr/bin/env bash
# Create the MONAI Deploy application's own virtual environment (default $GDKVM_MONAI_DEPLOY_VENV, else
# ~/.cache/gdkvm-echo/venv-monai-deploy: outside the clone, so that ruff and git do not see it).
#
#   tools/monai_deploy/setup_env.sh [VENV_DIR]
#
# Pins (tools/monai_deploy/requirements.txt): monai-deploy-app-sdk==4.0.0 (the App SDK: Application, operators,
# MonaiBundleInferenceOperator), holoscan-cli==4.2.0 (the `monai-deploy` command: package, run; 5.x has none),
# torch==2.13.0 (resolves to the local CPU wheel; an unpinned torch pulls a CUDA build of several GB), monai==1.6.1
# and the bundle's own readers/writers as in the project's requirements.txt. The SDK pulls holoscan (CUDA runtime
# libraries), cupy and tritonclient; all import and run on a CPU-only machine. Idempotent: a finished venv (stamp
# file .installed holding the checksum of requirements.txt) is left as it is; after a change of requirements.txt the
# install runs again into the same venv (pip installs what changed).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${1:-${GDKVM_MONAI_DEPLOY_VENV:-$HOME/.cache/gdkvm-echo/venv-monai-deploy}}"
python="${PYTHON:-python3}"
stamp="$venv/.installed"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "MONAI Deploy venv ready: $venv"
    exit 0
fi

start=$(date +%s)
rm -f "$stamp"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -r "$here/requirements.txt"

# The application's imports must work: the SDK, its bundle inference operator, the CLI, and the bundle's code.
"$venv/bin/python" - "$root/bundle" <<'PY'
import sys

sys.path.insert(0, sys.argv[1])
import highdicom, monai, numpy, pydicom, torch
import monai.deploy
from monai.deploy.operators.monai_bundle_inference_operator import MonaiBundleInferenceOperator  # noqa: F401
import scripts.clinical.dicom_sr, scripts.inference  # noqa: F401
import pynetdicom  # noqa: F401

print(f"monai-deploy-app-sdk {monai.deploy.__version__}, monai {monai.__version__}, torch {torch.__version__}, "
      f"numpy {numpy.__version__}, pydicom {pydicom.__version__}, highdicom {highdicom.__version__}")
PY
"$venv/bin/monai-deploy" version >/dev/null 2>&1 || "$venv/bin/monai-deploy" --help >/dev/null
echo "$want" > "$stamp"
echo "MONAI Deploy venv ready: $venv ($(( $(date +%s) - start )) s, $(du -sh "$venv" | cut -f1))"
