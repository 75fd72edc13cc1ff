#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install everything it needs.
#
#   bash tools/setup_env.sh            # -> .venv with torch, torchvision, detectron2, timm, ...
#   VENV=/path/to/env PYTHON=python3.10 bash tools/setup_env.sh
#
# Idempotent: a second run only checks.
#
# A detectron2 you already have (built from source, `pip install -e` of a checkout, ...) is
# used, never replaced: if the Python you run this with ($PYTHON) can `import detectron2`,
# the new environment is made to see that Python's packages: a file
# `<new env>/lib/pythonX.Y/site-packages/_bifpn_d2_base_env.pth` adds each of its
# site-packages folders (with their own .pth files, so editable installs keep working)
# after the new environment's own. Your environment is not modified; the new one imports
# your detectron2 (and your torch, if it has one), and no second detectron2 is installed.
# (`venv --system-site-packages` is not enough: made from a virtual environment's Python
# it sees the base interpreter's packages, not that environment's.)
# To install bifpn_d2 into your own environment instead, point VENV at it:
#   VENV=/path/to/your/env bash tools/setup_env.sh
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

d2_location() { "$1" -c 'import detectron2, os; print(os.path.dirname(detectron2.__file__))' 2>/dev/null; }
if [ ! -x "$VENV/bin/python" ]; then
  if d2_location "$PYTHON" >/dev/null; then
    # No pip or setuptools of its own: older copies would shadow the user's.
    "$PYTHON" -m venv --without-pip "$VENV"
  else
    "$PYTHON" -m venv "$VENV"
  fi
fi
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

if mine="$(d2_location "$PY")"; then
  say "found detectron2 in $mine; installing bifpn_d2 into $VENV, next to it"
elif theirs="$(d2_location "$PYTHON")"; then
  pth="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_bifpn_d2_base_env.pth"
  # One `import site; site.addsitedir(...)` line per site-packages folder of $PYTHON (and the
  # folder detectron2 itself was found in, if it is none of them).
  "$PYTHON" - > "$pth" <<'EOF'
import importlib.util, os, site
dirs = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
dirs = [d for d in dirs if os.path.isdir(d)]
found = os.path.dirname(list(importlib.util.find_spec("detectron2").submodule_search_locations)[0])
for d in dirs + ([found] if found not in dirs else []):
    print(f"import site; site.addsitedir({d!r})")
EOF
  say "found detectron2 in $theirs; reusing it: $VENV sees the packages of $PYTHON through $pth"
fi
"$PY" -m pip --version >/dev/null 2>&1 || "$PY" -m ensurepip -q

if ! "$PY" -c "import pkg_resources, wheel" 2>/dev/null; then
  # detectron2's model_zoo imports pkg_resources, which setuptools>=81 no longer ships.
  pip_install "setuptools<81" wheel
fi
if ! "$PY" -c "import torch, torchvision; from torchvision.ops import nms; import torch as t; nms(t.zeros(1,4), t.zeros(1), 0.5)" 2>/dev/null; then
  say "installing torch and torchvision"
  pip_install torch torchvision "setuptools<81"  # torch wants >=77.0.3: both hold for 80.x
fi

if ! "$PY" -c "import detectron2" 2>/dev/null; then
  # detectron2 is not published on the package index by its authors. A redistribution of
  # its pure-Python code exists as a wheel tagged for CPython 3.10; on other versions its
  # compiled extension simply does not load and detectron2 falls back to pure PyTorch ops
  # (nothing RetinaNet, Faster R-CNN or Mask R-CNN needs is missing). `installer` does not
  # check the tag, nor install dependencies: they are listed here. Its metadata also asks
  # for numpy<2, which its code does not need (the test suite passes with numpy 2, which
  # OpenCV 5 requires); pip may point out that mismatch, harmlessly.
  say "installing detectron2 (redistributed wheel) and its dependencies"
  pip_install Pillow matplotlib pycocotools termcolor yacs tabulate cloudpickle tqdm \
    tensorboard "omegaconf>=2.1,<2.4" hydra-core black packaging fvcore iopath installer
  tmp="$(mktemp -d)"
  "$PY" -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: \
    --python-version 3.10 sal-detectron2==0.7.2 -d "$tmp"
  "$PY" -m installer "$tmp"/*.whl
  rm -rf "$tmp"
fi

say "installing bifpn_d2 (editable) with its test, export, benchmark and demo extras"
# No build isolation: the build needs only setuptools and wheel, checked above.
pip_install --no-build-isolation -e "$ROOT[dev]"
if ! "$PY" -c "import panopticapi.evaluation" 2>/dev/null; then
  # PQ: Detectron2's COCOPanopticEvaluator imports panopticapi, which its authors do not
  # publish on the package index; panopticapi-lite is that code, packaged. Without its
  # declared dependencies: it asks for numpy<2 and scikit-image, which the evaluation code
  # does not use (it needs numpy and Pillow, installed above).
  pip_install --no-deps panopticapi-lite
fi
"$PY" -c "import bifpn_d2, detectron2, timm, torch; print('[setup] torch', torch.__version__, '| detectron2', detectron2.__version__, 'from', detectron2.__file__, '| timm', timm.__version__)"
touch "$STAMP"
