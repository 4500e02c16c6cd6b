# The two set-up commands of the README, plus their environment. Everything installs into one
# Python environment, never the system's:
# - an active virtualenv ($VIRTUAL_ENV) is used as it is;
# - else VENV (default ./.venv), created with `$(HOST_PYTHON) -m venv` when missing;
# - PYTHON=/path/to/python overrides both (that interpreter's environment is then yours to choose).
VENV ?= .venv
HOST_PYTHON ?= python3
ifdef VIRTUAL_ENV
PYTHON ?= $(VIRTUAL_ENV)/bin/python
endif
VENV_PYTHON := $(abspath $(VENV))/bin/python
PYTHON ?= $(VENV_PYTHON)
OUT ?= output/quickstart
export PYTHON

.PHONY: env install install-test demo test clean-env

# the environment: created here only when it is the project's own VENV
env:
	@if [ ! -x "$(PYTHON)" ]; then \
	  if [ "$(PYTHON)" = "$(VENV_PYTHON)" ]; then \
	    echo "[env] creating $(VENV) with $(HOST_PYTHON) -m venv"; \
	    $(HOST_PYTHON) -m venv "$(VENV)" || { echo "error: '$(HOST_PYTHON) -m venv' failed (Debian/Ubuntu: apt-get install python3-venv)" >&2; exit 1; }; \
	  else echo "error: PYTHON=$(PYTHON) is not an executable" >&2; exit 1; fi; \
	fi
	@echo "[env] using $(PYTHON)"

install: env
	bash tools/install_deps.sh

install-test: install
	bash tools/install_test_deps.sh

# Main job: train the quickstart model on the built-in dataset, evaluate it, write overlays + curves.
demo: install
	$(PYTHON) tools/train_net.py --config-file configs/quickstart.yaml OUTPUT_DIR $(OUT)
	$(PYTHON) tools/demo.py --config-file configs/quickstart.yaml \
		--dataset d2seg_shapes_val --max 6 --output $(OUT)/overlays \
		MODEL.WEIGHTS $(OUT)/model_final.pth
	$(PYTHON) tools/plot_metrics.py $(OUT)

# Tests (what CI runs).
test: install-test
	$(PYTHON) -m pytest -q tests

# Removes the project's own environment (nothing else was installed anywhere).
clean-env:
	rm -rf "$(VENV)" d2seg.egg-info d2seg/model_zoo/configs
