#!/usr/bin/env bash
# Test-only reference: MMSegmentation 0.30 on the pure-Python mmcv 1.7.2, for the parity tests
# (tests/parity/*: d2seg against mmseg with the same weights). d2seg never imports them.
# Idempotent: returns at once where both import. Recipe: shared/reference/mmseg_peer.md.
set -euo pipefail
PY=${PYTHON:-python}
# Cityscapes' official evaluation script, for its evaluator test (which skips without it).
# --no-deps: its metadata asks for the obsolete `typing` backport.
if ! "$PY" -c "import cityscapesscripts, appdirs, coloredlogs, pyquaternion" >/dev/null 2>&1; then
  echo "[install] cityscapesscripts (test-only: Cityscapes' official evaluation)"
  "$PY" -m pip install -q --no-deps cityscapesscripts==2.3.0 appdirs coloredlogs humanfriendly \
      pyquaternion || echo "[install] cityscapesscripts unavailable: its test will be skipped"
fi
if "$PY" -c "import mmseg, mmcv" >/dev/null 2>&1; then
  exit 0
fi
echo "[install] mmsegmentation 0.30 + mmcv 1.7.2 (test-only reference for the parity tests)"
"$PY" -m pip install -q "setuptools==80.9.0" wheel  # mmcv 1.7.2's setup.py imports pkg_resources
"$PY" -m pip install -q "opencv-python-headless<5" "yapf==0.40.1" addict pyyaml packaging \
    matplotlib prettytable
"$PY" -m pip install -q --no-build-isolation --no-deps mmcv==1.7.2
"$PY" -m pip install -q --no-build-isolation --no-deps mmsegmentation==0.30.0
