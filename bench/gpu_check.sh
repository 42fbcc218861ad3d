#!/usr/bin/env bash
# QLoRA throughput and peak GPU memory at Llama-2-7B's shape (random weights, no download):
# the original design's batching against the project's. See bench/gpu_check.py.
#
#   bash bench/gpu_check.sh [--steps 30]
#
# Works with no network: packages this machine's Python lacks are installed from wheels in
# .whl/ (git-ignored; fill it elsewhere with `pip download --no-deps -d .whl <package>==<pin>`
# for the pins in requirements.txt) into a scratch folder put first on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
PYTHON=${PYTHON:-python3}
NEEDED="torch transformers trl peft bitsandbytes datasets pydantic yaml tokenizers numpy"
if ! $PYTHON -c "import ${NEEDED// /, }" 2>/dev/null; then
  if ! compgen -G ".whl/*.whl" >/dev/null; then
    echo "error: $PYTHON lacks some of: $NEEDED, and .whl/ holds no wheels to install them from" >&2
    exit 1
  fi
  SITE=${GPU_CHECK_SITE:-/tmp/gpu-check-site}
  echo "installing $(ls .whl/*.whl | wc -l) wheels from .whl/ into $SITE"
  $PYTHON -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  $PYTHON -c "import ${NEEDED// /, }"  # fails here, naming the package, if a wheel is still missing
fi
exec $PYTHON bench/gpu_check.py "$@"
