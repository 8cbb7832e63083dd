#!/usr/bin/env bash
# Sourced by the bench/gpu_*.sh scripts on the device machine (PyTorch installed, no network):
#   source bench/gpu_env.sh SCRIPT_NAME MODULE [MODULE ...]
# Sets PY (python3, or $PYTHON) and PYTHONUNBUFFERED; when any MODULE is not importable, installs the wheels
# carried in .whl/ (pure Python, ignored by git; each script's header says which to download with
#   pip download --no-deps --only-binary=:all: -d .whl ...)
# into /tmp/site and puts it on PYTHONPATH. Exits 1 naming the missing modules when there are no wheels to install.
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
gpu_env_script="${1:?usage: source bench/gpu_env.sh SCRIPT_NAME MODULE [MODULE ...]}"
shift
gpu_env_missing=$("$PY" -c "
import importlib.util, sys
print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))" "$@")
if [ -n "$gpu_env_missing" ]; then
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "$gpu_env_script: missing $gpu_env_missing and no wheels in .whl/ (see the header)" >&2
        exit 1
    fi
fi
