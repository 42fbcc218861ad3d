#!/usr/bin/env bash
# QLoRA throughput and peak GPU memory at Llama-2-7B's shape (random weights, no download):
# the original design's batching against the project's, and the faster paths (flex attention,
# Liger's kernels) where the machine has them. See bench/gpu_check.py.
#
#   bash bench/gpu_check.sh [--steps 30] [--json PATH] [--budget SECONDS]
#   GPU_CHECK_WHEELS=all bash bench/gpu_check.sh ...   # every wheel in .whl/ first, over what Python has
#
# Works with no network: packages come from wheels in .whl/ (git-ignored; fill it elsewhere with
# `pip download --no-deps -d .whl <package>==<pin>` for the pins in requirements.txt, one version
# of each), installed into a scratch folder put first on PYTHONPATH. GPU_CHECK_WHEELS=missing (the
# default) installs them only when this Python lacks one of the packages below; =all always does,
# so the pins replace the versions the machine has; =none never does.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
PYTHON=${PYTHON:-python3}
NEEDED="torch transformers trl peft bitsandbytes datasets pydantic yaml tokenizers numpy"
MODE=${GPU_CHECK_WHEELS:-missing}
case "$MODE" in all|missing|none) ;; *) echo "error: GPU_CHECK_WHEELS must be all, missing or none, not '$MODE'" >&2; exit 2;; esac

install_wheels() {
  if ! compgen -G ".whl/*.whl" >/dev/null; then
    echo "error: GPU_CHECK_WHEELS=$MODE and .whl/ holds no wheels to install" >&2
    exit 1
  fi
  # One version of each package: two would leave which one wins to the order of installation.
  local twice
  twice=$(for w in .whl/*.whl; do basename "$w" | cut -d- -f1 | tr 'A-Z.-' 'a-z__'; done | sort | uniq -d)
  if [ -n "$twice" ]; then
    echo "error: .whl/ holds more than one wheel of: $twice" >&2
    exit 1
  fi
  SITE=${GPU_CHECK_SITE:-/tmp/gpu-check-site}
  mkdir -p "$SITE"
  echo "installing $(ls .whl/*.whl | wc -l) wheels from .whl/ into $SITE (GPU_CHECK_WHEELS=$MODE)"
  $PYTHON -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" .whl/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  $PYTHON -c "import ${NEEDED// /, }"  # fails here, naming the package, if a wheel is still missing
}

if [ "$MODE" = all ]; then
  install_wheels
elif [ "$MODE" = missing ] && ! $PYTHON -c "import ${NEEDED// /, }" 2>/dev/null; then
  install_wheels
fi
exec $PYTHON bench/gpu_check.py "$@"
