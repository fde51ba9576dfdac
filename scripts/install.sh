#!/usr/bin/env bash
# Sets up a fresh Debian machine with Python 3.11: system libraries, a venv in .venv, the package.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
# libegl1 + libgl1-mesa-dri: headless MuJoCo rendering (EGL on Mesa); ffmpeg: torchcodec's video decoding;
# chromium: the teleop page's browser test (Playwright drives /usr/bin/chromium, nothing is downloaded).
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq libegl1 libgl1-mesa-dri ffmpeg chromium > /dev/null
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q --no-cache-dir -e ".[dev]"  # no wheel cache: the CUDA build of torch is ~3 GB twice
