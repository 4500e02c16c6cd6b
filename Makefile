# The two set-up commands of the README. Both install what they need (idempotent).
PYTHON ?= python
OUT ?= output/quickstart

.PHONY: install demo test test-all

install:
	bash tools/install_deps.sh

# Main job: train the quickstart model on the built-in dataset, evaluate it, write overlays + curves.
demo: install
	$(PYTHON) tools/train_net.py --config-file configs/quickstart.yaml OUTPUT_DIR $(OUT)
	$(PYTHON) tools/demo.py --config-file configs/quickstart.yaml \
		--dataset d2seg_shapes_val --max 6 --output $(OUT)/overlays \
		MODEL.WEIGHTS $(OUT)/model_final.pth
	$(PYTHON) tools/plot_metrics.py $(OUT)

# Tests (what CI runs).
test: install
	bash tools/install_test_deps.sh
	$(PYTHON) -m pytest -q tests
