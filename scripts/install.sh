#!/usr/bin/env bash
# Install mlx-serve into ./.venv (created if missing), with the extras given (default: all).
#   scripts/install.sh            -> .[all]
#   scripts/install.sh all,test   -> .[all,test]
# On Linux, mlx-whisper's torch requirement is met with a CPU build first, so pip never
# pulls the multi-GB CUDA wheels. Override with MLX_SERVE_TORCH_SPEC (empty to skip).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-all}"
PYTHON="${PYTHON:-python3}"
VENV="${MLX_SERVE_VENV:-.venv}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)

if [ "$(uname -s)" = "Linux" ] && [[ "$EXTRAS" == *all* || "$EXTRAS" == *stt* ]]; then
    TORCH_SPEC="${MLX_SERVE_TORCH_SPEC-torch==2.13.0}"
    if [ -n "$TORCH_SPEC" ] && ! "$VENV/bin/python" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('torch') is None)"; then
        echo "installing $TORCH_SPEC (CPU build) for mlx-whisper's weight converter"
        "${PIP[@]}" "$TORCH_SPEC"
    fi
fi

echo "installing mlx-serve[$EXTRAS] into $VENV"
"${PIP[@]}" -e ".[$EXTRAS]"
