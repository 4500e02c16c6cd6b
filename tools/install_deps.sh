#!/usr/bin/env bash
# Installs what d2seg needs into the Python named by $PYTHON (the Makefile passes its project
# environment, .venv by default; an active virtualenv is used when PYTHON is unset): torch,
# Detectron2 (the sal-detectron2 wheel where `import detectron2` fails) and d2seg itself (editable,
# with its install_requires). Idempotent: a second run only checks imports.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -n "${VIRTUAL_ENV:-}" ]; then PYTHON="$VIRTUAL_ENV/bin/python"
  else
    echo "error: set PYTHON=/path/to/python (a virtualenv's) or run 'make install', which creates .venv" >&2
    exit 1
  fi
fi
PY=$("$PYTHON" -c "import sys; print(sys.executable)")  # absolute: have() runs from /

have() { (cd / && "$PY" -c "import $1") >/dev/null 2>&1; }

if ! have torch || ! have torchvision; then
  echo "[install] torch + torchvision"
  "$PY" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi

if ! have detectron2; then
  echo "[install] detectron2 (sal-detectron2==0.7.2 wheel, pure-Python parts)"
  PURELIB=$("$PY" -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])')
  "$PY" -m pip install -q --no-deps --only-binary=:all: --python-version 3.10 --implementation cp \
      --target "$PURELIB" --upgrade sal-detectron2==0.7.2
fi

# d2seg (editable) with its dependencies: Detectron2's pure-Python needs and d2seg's own (setup.py)
if ! have d2seg || ! have fvcore || ! have pycocotools || ! have omegaconf || ! have cv2; then
  echo "[install] d2seg (editable) and its dependencies"
  "$PY" -m pip install -q -e .
fi
(cd / && "$PY" -c "import torch, detectron2, d2seg; print('torch', torch.__version__, '| detectron2', detectron2.__version__, '| d2seg ready')")
