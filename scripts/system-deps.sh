#!/usr/bin/env bash
# System packages the workers use when present: ffmpeg (audio formats other than WAV) and, on
# Linux, OpenBLAS (MLX's CPU build otherwise runs a slow reference BLAS). Installed with apt-get
# when we can (root on Debian/Ubuntu); elsewhere this only says what is missing.
set -euo pipefail
missing=()
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
if [ "$(uname -s)" = "Linux" ]; then
    ls /usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0 >/dev/null 2>&1 || missing+=(libopenblas0-pthread)
fi
for pkg in "$@"; do  # extra packages a caller needs (e.g. chromium for the browser tests)
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    echo "installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
elif [ "$(uname -s)" = "Darwin" ]; then
    echo "optional: 'brew install ffmpeg' lets the audio workers read and write mp3, flac, opus and aac"
else
    echo "optional system packages not installed: ${missing[*]} (install them with your package manager)"
fi
