# Two commands on a fresh machine:  `make run` (set up + run the main job on the bundled default) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= all
STAMP  := $(VENV)/.installed-$(EXTRAS)

.PHONY: install run test test-fast bench clean

$(STAMP): setup.cfg setup.py pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	EDGE_IRST_REQUIRE_EXT=$${EDGE_IRST_REQUIRE_EXT:-0} $(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

install: $(STAMP)

# The main job: bundled model, built-in synthetic IR source, best installed backend; outputs under runs/.
run: install
	$(BIN)/edge-irst info lw_irstnet

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf build dist *.egg-info runs .pytest_cache
