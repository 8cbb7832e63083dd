#!/usr/bin/env bash
# Serve this repository's bundle with MONAI Label (offline), for auto-segmentation of echo cines (DICOM, AVI/MP4,
# NIfTI, MetaImage/NRRD) in the studies folder or uploaded.
#
#   tools/monailabel/start_server.sh STUDIES_DIR [PORT]
#
# STUDIES_DIR is a flat folder of cines (labels saved through MONAI Label go to STUDIES_DIR/labels/final); a folder
# MONAI Label cannot serve (cines only in subfolders, as a CAMUS tree) is refused before the server starts.
#
# Environment (all optional):
#   MONAILABEL_VENV    MONAI Label's venv (default .venv-monailabel; created by setup_env.sh if missing)
#   MONAILABEL_APP     the app folder it lays out (default .monailabel/app)
#   GDKVM_WEIGHTS      weights to serve (default bundle/models/model.pt)
#   GDKVM_OVERRIDES    JSON merged into the served configs, e.g. '{"batch_size": 2}' for MONAI Label's /train; the
#                      network and preprocessing come from the weights (an override contradicting them is refused)
#   MONAILABEL_HOST    bind address (default 127.0.0.1)
#   MONAI_LABEL_INFER_CONCURRENCY  inferences run at once (default 1; more requests wait their turn)
#   MONAI_LABEL_INFER_TIMEOUT      seconds a request waits for its inference (MONAI Label's default 600)
#   GDKVM_MAX_UPLOAD_MB            largest request body (an uploaded cine or label) in MB (default 512; 413 past it)
# Extra `--conf k v` pairs can follow in MONAILABEL_EXTRA (e.g. "--conf preload true").
#
# The server runs in the foreground (exec); stop it with Ctrl-C or by killing its process.
# Offline options: zoo_source local (no model-zoo lookup at start-up), sam2 false (no SAM2 checkpoint download).
set -euo pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: $0 STUDIES_DIR [PORT]" >&2
    exit 2
fi
if [[ ! -d "$1" ]]; then
    echo "studies folder $1: no such folder (create it for an empty datastore that is filled by uploads)" >&2
    exit 2
fi
studies="$(cd "$1" && pwd)"
port="${2:-8000}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${MONAILABEL_VENV:-$root/.venv-monailabel}"
app="${MONAILABEL_APP:-$root/.monailabel/app}"
name="gdkvm_echo_segmentation"

[[ -x "$venv/bin/monailabel" ]] || "$here/setup_env.sh" "$venv"
"$venv/bin/python" "$here/make_app.py" "$app" --name "$name" \
    ${GDKVM_WEIGHTS:+--weights "$GDKVM_WEIGHTS"} --overrides "${GDKVM_OVERRIDES:-{\}}" --studies "$studies"

export PATH="$venv/bin:$PATH"
# One inference at a time on MONAI Label's own thread pool (the app runs /infer in worker threads, so the server keeps
# answering meanwhile); the bundle's scripts stay imported between requests (MONAI Label re-imports them by default).
export MONAI_LABEL_INFER_CONCURRENCY="${MONAI_LABEL_INFER_CONCURRENCY:-1}"
export MONAI_LABEL_RELOAD_APP_LIB="${MONAI_LABEL_RELOAD_APP_LIB:-false}"
# shellcheck disable=SC2086
exec monailabel start_server --app "$app" --studies "$studies" \
    --conf models "$name" --conf zoo_source local --conf sam2 false --conf preload false \
    --host "${MONAILABEL_HOST:-127.0.0.1}" --port "$port" ${MONAILABEL_EXTRA:-}
