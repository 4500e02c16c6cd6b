#!/usr/bin/env bash
# What the tests need, into the Python named by $PYTHON (as tools/install_deps.sh): d2seg's `test`
# extra (pytest, hypothesis and the optional packages the tests import), then the test-only
# reference: MMSegmentation 0.30 on the pure-Python mmcv 1.7.2, for the parity tests
# (tests/parity/*: d2seg against mmseg with the same weights); d2seg never imports it.
# Idempotent. Recipe: shared/reference/mmseg_peer.md.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -n "${VIRTUAL_ENV:-}" ]; then PYTHON="$VIRTUAL_ENV/bin/python"
  else echo "error: set PYTHON=/path/to/python or run 'make test'" >&2; exit 1; fi
fi
PY=$("$PYTHON" -c "import sys; print(sys.executable)")  # absolute: have() runs from /
have() { (cd / && "$PY" -c "import $1") >/dev/null 2>&1; }

if ! have pytest || ! have hypothesis || ! have scipy || ! have onnxruntime || ! have submitit \
    || ! have cityscapesscripts || ! have onnxscript || ! have openvino || ! have nncf; then
  echo "[install] d2seg's test extra (pip install -e '.[test]')"
  "$PY" -m pip install -q -e ".[test]"
fi
if have mmseg && have mmcv && have mmcls; then
  exit 0
fi
echo "[install] mmsegmentation 0.30 + mmcv 1.7.2 (test-only reference for the parity tests)"
"$PY" -m pip install -q "setuptools==80.9.0" wheel  # mmcv 1.7.2's setup.py imports pkg_resources
"$PY" -m pip install -q "opencv-python-headless<5" "yapf==0.40.1" addict pyyaml packaging \
    matplotlib prettytable
"$PY" -m pip install -q --no-build-isolation --no-deps mmcv==1.7.2
"$PY" -m pip install -q --no-build-isolation --no-deps mmsegmentation==0.30.0
# mmcls 0.25: the reference for mmseg's ConvNeXt and PoolFormer configs (custom_imports mmcls.models)
"$PY" -m pip install -q --no-build-isolation --no-deps mmcls==0.25.0
