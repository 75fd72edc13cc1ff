#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install everything it needs.
#
#   bash tools/setup_env.sh            # -> .venv with torch, torchvision, detectron2, timm, ...
#   VENV=/path/to/env PYTHON=python3.10 bash tools/setup_env.sh
#
# Idempotent: a second run only checks. If the Python you run it with can already
# `import detectron2` (e.g. you installed it from source), the environment is created
# with --system-site-packages and that detectron2 is used; no second copy is installed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-$ROOT/.venv}"
STAMP="$VENV/.bifpn_d2_installed"
say() { printf '[setup] %s\n' "$*"; }

if [ -f "$STAMP" ] && "$VENV/bin/python" -c "import bifpn_d2, detectron2, timm" 2>/dev/null; then
  say "environment ready: $VENV"
  exit 0
fi

system_d2=0
if "$PYTHON" -c "import detectron2" 2>/dev/null; then
  system_d2=1
  say "found detectron2 in $("$PYTHON" -c 'import detectron2, os; print(os.path.dirname(detectron2.__file__))'); reusing it"
fi

if [ ! -x "$VENV/bin/python" ]; then
  if [ "$system_d2" = 1 ]; then
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    "$PYTHON" -m venv "$VENV"
  fi
fi
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

pip_install --upgrade pip "setuptools<81" wheel
if ! "$PY" -c "import torch, torchvision; from torchvision.ops import nms; import torch as t; nms(t.zeros(1,4), t.zeros(1), 0.5)" 2>/dev/null; then
  say "installing torch and torchvision"
  pip_install torch torchvision
fi

if ! "$PY" -c "import detectron2" 2>/dev/null; then
  # detectron2 is not published on the package index by its authors. A redistribution of
  # its pure-Python code exists as a wheel tagged for CPython 3.10; on other versions its
  # compiled extension simply does not load and detectron2 falls back to pure PyTorch ops
  # (nothing RetinaNet, Faster R-CNN or Mask R-CNN needs is missing).
  say "installing detectron2 (redistributed wheel) and its dependencies"
  pip_install "numpy<2" Pillow matplotlib pycocotools termcolor yacs tabulate cloudpickle tqdm \
    tensorboard "omegaconf>=2.1,<2.4" hydra-core black packaging fvcore iopath installer
  tmp="$(mktemp -d)"
  "$PY" -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: \
    --python-version 3.10 sal-detectron2==0.7.2 -d "$tmp"
  "$PY" -m installer "$tmp"/*.whl
  rm -rf "$tmp"
fi

say "installing bifpn_d2 (editable) with its test and benchmark extras"
pip_install "numpy<2" -e "$ROOT[dev]"
"$PY" -c "import bifpn_d2, detectron2, timm, torch; print('[setup] torch', torch.__version__, '| detectron2', detectron2.__version__, '| timm', timm.__version__)"
touch "$STAMP"
