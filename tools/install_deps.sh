#!/usr/bin/env bash
# Installs what d2seg needs on a fresh machine: torch, Detectron2 (the sal-detectron2 wheel where
# `import detectron2` fails), Detectron2's pure-Python needs, d2seg itself (editable) and the test
# tools. Idempotent: a second run only checks imports and returns within seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}

have() { "$PY" -c "import $1" >/dev/null 2>&1; }

if ! have torch || ! have torchvision; then
  echo "[install] torch + torchvision"
  "$PY" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi

D2_NEEDS="fvcore iopath pycocotools yacs termcolor tabulate cloudpickle tqdm tensorboard omegaconf hydra-core matplotlib Pillow opencv-python-headless"
if ! have fvcore || ! have pycocotools || ! have omegaconf || ! have cv2 || ! have tensorboard || ! have matplotlib; then
  echo "[install] Detectron2's pure-Python dependencies"
  "$PY" -m pip install -q $D2_NEEDS
fi

if ! have detectron2; then
  echo "[install] detectron2 (sal-detectron2==0.7.2 wheel, pure-Python parts)"
  PURELIB=$("$PY" -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])')
  "$PY" -m pip install -q --no-deps --only-binary=:all: --python-version 3.10 --implementation cp \
      --target "$PURELIB" --upgrade sal-detectron2==0.7.2
fi

if ! have pytest || ! have hypothesis; then
  "$PY" -m pip install -q pytest hypothesis
fi

if ! (cd / && "$PY" -c "import d2seg") >/dev/null 2>&1; then
  echo "[install] d2seg (editable)"
  "$PY" -m pip install -q --no-deps --no-build-isolation -e .
fi
"$PY" -c "import torch, detectron2, d2seg; print('torch', torch.__version__, '| detectron2', detectron2.__version__, '| d2seg ready')"
