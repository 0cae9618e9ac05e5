# Two commands do all set-up on a fresh machine with Python 3.11:
#   make train   create .venv, install hessfree, train on the embedded digits
#   make test    same set-up, then the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: train test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,mpi,plot]'
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/hessfree train

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_products.py

clean:
	rm -rf $(VENV) build *.egg-info
