#!/usr/bin/env bash
# Run the MONAI Deploy echo application in its own venv (built by setup_env.sh when missing):
#
#   tools/monai_deploy/run.sh -i INPUT -o OUTPUT -m MODEL_DIR
#
# INPUT: an ultrasound DICOM cine or a folder of them; MODEL_DIR: model.ts from tools/monai_deploy/model_folder.py.
# Venv: $GDKVM_MONAI_DEPLOY_VENV, else ~/.cache/gdkvm-echo/venv-monai-deploy. Exit status: 0 all inputs gave
# their SR, 1 some input failed (one line each on stderr), 2 the model folder was refused.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${GDKVM_MONAI_DEPLOY_VENV:-$HOME/.cache/gdkvm-echo/venv-monai-deploy}"
[[ -f "$venv/.installed" ]] || "$here/setup_env.sh" "$venv" >&2
ulimit -s 32768 2>/dev/null || true   # Holoscan warns below 32 MB of stack
exec "$venv/bin/python" "$here/app.py" "$@"
