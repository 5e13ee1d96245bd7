# Two commands on a fresh machine:  `make run` (set up + run the main job on the bundled default) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= all
STAMP  := $(VENV)/.installed-$(EXTRAS)

.PHONY: install run test test-fast bundle clean

$(STAMP): setup.cfg setup.py pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	EDGE_IRST_REQUIRE_EXT=$${EDGE_IRST_REQUIRE_EXT:-0} $(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

install: $(STAMP)

# The main job: bundled model, built-in synthetic IR source, best installed backend; outputs under runs/.
run: install
	mkdir -p runs/run
	$(BIN)/edge-irst run --source synthetic --max-frames 300 --save-json runs/run/detections.jsonl \
		--save-csv runs/run/targets.csv --save-video runs/run/annotated.avi

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# Rebuild the bundled default model (edge_irst/assets/lw_irstnet/) from a training run's best checkpoint.
# int8 is calibrated on a training list, never on test images. Needs ../shared (the datasets).
BUNDLE_FROM ?= runs/bundled/best.pt
BUNDLE_CALIB ?= ../shared/data/sirst:idx_427/trainval.txt
# lw_irstnet_grey/ holds the same weights exported with --grey-input (one-channel input, for grey IR cameras).
bundle: install
	rm -rf edge_irst/assets/lw_irstnet edge_irst/assets/lw_irstnet_grey
	$(BIN)/edge-irst export --weights $(BUNDLE_FROM) --format onnx,ncnn,mnn,tflite --precision fp32,int8 \
		--calib $(BUNDLE_CALIB) --out edge_irst/assets --name lw_irstnet --threads 2
	$(BIN)/edge-irst export --weights $(BUNDLE_FROM) --format onnx,ncnn,mnn,tflite --precision fp32,int8 \
		--calib $(BUNDLE_CALIB) --out edge_irst/assets --name lw_irstnet_grey --threads 2 --grey-input
	cp $(BUNDLE_FROM) edge_irst/assets/lw_irstnet/lw_irstnet.pt

clean:
	rm -rf build dist *.egg-info runs .pytest_cache
