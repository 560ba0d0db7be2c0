# make train: the book's recipe on pretrained gpt2.  make test: the offline test suite.
# Each target installs what it needs into .venv first, with the tested versions in constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/gpt2-small.yaml

.PHONY: install train smoke test test-all lint format bench bench-quick clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $(STAMP)

train: install
	$(BIN)/accelerate launch hf_spam/train.py --config $(CONFIG)

smoke: install
	HF_HUB_OFFLINE=1 $(BIN)/accelerate launch hf_spam/train.py --config configs/tiny.yaml

test: install
	$(BIN)/python -m pytest -m "not slow"

test-all: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/hf-spam bench --output bench.json

bench-quick: install
	$(BIN)/hf-spam bench --quick

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) outputs .pytest_cache
