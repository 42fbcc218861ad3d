#!/usr/bin/env bash
# The Python environment of a cloud machine (setup of sky-training.yaml and sky-vscode.yaml):
# $VENV with requirements-cloud.txt (the runtime and DVC's S3, GCS and Azure remotes). The stack
# needs Python 3.11+ and cloud images often carry 3.10, so uv provides 3.12. An existing $VENV
# is reused; pip leaves what already satisfies the pins alone.
set -euo pipefail
: "${VENV:?VENV is not set}"
if [ ! -x "$VENV/bin/python" ]; then
  sudo mkdir -p "$VENV" && sudo chown "$(id -u):$(id -g)" "$VENV"
  python3 -m pip install --quiet uv==0.13.9
  python3 -m uv venv --seed --python 3.12 "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet -r requirements-cloud.txt
"$VENV/bin/python" -m pip install --quiet --no-deps -r requirements-nodeps.txt
