#!/usr/bin/env bash
# The Python environment of a cloud machine (setup of sky-training.yaml and sky-vscode.yaml):
# $VENV with requirements-cloud.txt (the runtime and DVC's S3, GCS and Azure remotes). The stack
# needs Python 3.11+ and cloud images often carry 3.10, so uv provides 3.12. An existing $VENV
# is reused. uv installs the pins: where the environment already holds them it checks them in
# 0.1 s, where pip's resolver took 15 to 20 s of CPU.
set -euo pipefail
: "${VENV:?VENV is not set}"
if [ ! -x "$VENV/bin/python" ]; then
  sudo mkdir -p "$VENV" && sudo chown "$(id -u):$(id -g)" "$VENV"
  python3 -m pip install --quiet uv==0.13.9
  python3 -m uv venv --seed --python 3.12 "$VENV"
fi
"$VENV/bin/python" -m uv --version >/dev/null 2>&1 || "$VENV/bin/python" -m pip install --quiet uv==0.13.9
install=("$VENV/bin/python" -m uv pip install --quiet --python "$VENV/bin/python")
"${install[@]}" -r requirements-cloud.txt
"${install[@]}" --no-deps -r requirements-nodeps.txt
