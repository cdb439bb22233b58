# Two commands do all set-up on a fresh Debian machine with Python 3.11:
#   make demo   - install into .venv (first time), run the demo pipeline, print alerts and a summary
#   make test   - install into .venv (first time), lint, type-check and run the tests
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: demo test lint install clean bench

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "streamproc needs Python 3.11 (apt install python3.11 python3.11-venv)"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	mkdir -p runs
	$(BIN)/streamproc --log-level WARNING demo --report runs/demo-report.json

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy streamproc workers

test: lint
	./scripts/install-test-deps.sh
	$(BIN)/python -m pytest

# the benchmark of docs/BENCHMARKS.md (about 6 minutes on 2 cores); results in runs/
bench: $(STAMP)
	mkdir -p runs
	$(BIN)/streamproc --log-level WARNING bench --model streamproc/models/demo-line.onnx --imgsz 640 \
		--cameras 4 --duration 60 --json runs/bench.json --markdown runs/bench.md

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
