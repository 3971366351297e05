#!/usr/bin/env bash
# Install mlx-serve with every worker extra and the test tools into ./.venv, then run the tests.
# Extra arguments go to pytest (e.g. scripts/test.sh -k hot_swap).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/system-deps.sh chromium chromium-driver  # the browser for the dashboard test
scripts/install.sh all,test
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
