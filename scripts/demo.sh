#!/usr/bin/env bash
# Install mlx-serve into ./.venv, build the tiny offline demo models (first run only) and serve
# them on http://127.0.0.1:8095. Demo models have random weights: they answer in gibberish.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/system-deps.sh || true
scripts/install.sh all
DEMO_DIR="${MLX_SERVE_DEMO_DIR:-$HOME/.mlx-serve/demo}"
CONFIG="$DEMO_DIR/models.yaml"
if [ ! -f "$CONFIG" ]; then
    .venv/bin/mlx-serve init --demo "$DEMO_DIR" --config "$CONFIG"
fi
exec .venv/bin/mlx-serve start --config "$CONFIG" "$@"
