#!/usr/bin/env bash
# Install Latent Studio into ./.venv (CPU torch 2.13.0 unless a torch is already there).
#   bash packaging/install.sh          the studio, plus Qt's X11 libraries on Debian/Ubuntu if missing
#   bash packaging/install.sh --test   the studio and the test tools (no system packages: tests run offscreen)
set -euo pipefail
cd "$(dirname "$0")/.."
test_mode=0
[ "${1:-}" = "--test" ] && test_mode=1

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build; a range the installed one
# satisfies then installs nothing more.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${pip[@]}" install "torch==2.13.0"
fi
if [ $test_mode = 1 ]; then
  "${pip[@]}" install -e ".[test]"
  # Only for the tokenizer test: the CLIP BPE file lives in this wheel. --no-deps: it would pull
  # torchvision, which has no CPU build here; nothing imports open_clip.
  "${pip[@]}" install --no-deps open-clip-torch
else
  "${pip[@]}" install -e .
fi
# Upscaler models (ESRGAN, SwinIR, HAT...) load through spandrel, installed with --no-deps: it requires torchvision,
# and PyPI's torchvision is a multi-GB CUDA build that fails beside the CPU torch ("operator torchvision::nms does not
# exist"). spandrel uses torchvision only for LaMa and RestoreFormer, which studio.engine.upscalers refuses without
# it (a working torchvision, when there is one, is used). Its other needs: einops and typing_extensions here,
# torch, numpy and safetensors with the studio. Pinned: the stand-in for torchvision knows what this version imports.
# Its needs go in first: pip checks the installed packages that depend on what it installs, and an einops install
# after spandrel printed a red resolver ERROR about the missing torchvision; a --no-deps install checks nothing.
"${pip[@]}" install "einops>=0.7" "typing_extensions>=4.5"
"${pip[@]}" install --no-deps "spandrel==0.4.2"

# Qt's xcb platform plugin needs these on Linux to open a real window (offscreen tests don't).
if [ $test_mode = 0 ] && [ "$(uname -s)" = Linux ] && command -v dpkg >/dev/null 2>&1; then
  libs=(libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-xkb1
        libxkbcommon-x11-0 libxcb-shape0)
  missing=()
  for l in "${libs[@]}"; do dpkg -s "$l" >/dev/null 2>&1 || missing+=("$l"); done
  if [ ${#missing[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "Installing Qt's X11 libraries: ${missing[*]}" >&2
    { $sudo apt-get update -qq && $sudo apt-get install -y -qq "${missing[@]}"; } >/dev/null \
      || echo "Could not install ${missing[*]}; install them with your package manager to open the window." >&2
  fi
fi
echo "Latent Studio is installed in .venv" >&2
