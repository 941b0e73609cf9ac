# mammokit — the two commands of the README are `make demo` and `make test`.
# Each creates .venv when it is missing; nothing else needs installing by hand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
DEMO_DIR ?= demo-output

.PHONY: help venv test test-slow test-wheel test-keras2 lint format demo demo-small serve bench clean chromium

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)  ## create .venv with mammokit and its dev extras

chromium:  ## install headless Chromium for the HTML-report test (Debian package)
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "warning: could not install chromium; the report screenshot test will skip"; \
	  else echo "warning: not root, cannot install chromium; the report screenshot test will skip"; fi; }

lint: $(STAMP)  ## ruff lint + format check + the package layering (.importlinter)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports --no-logo --no-cache

format: $(STAMP)  ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

# The suite runs one test file per worker process, a worker per core (TEST_WORKERS=0 runs it in one process);
# tests/conftest.py gives each worker one OpenMP thread (a thread per core in every worker oversubscribes them).
# --timeout: a test that hangs fails after 15 min (the longest, the README demo, takes ~2) instead of holding CI.
TEST_WORKERS ?= auto

test: $(STAMP) chromium lint  ## lint + the CPU/offline test suite (~7 min on 2 cores, plus ~3 min to build .venv)
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --timeout=900 --durations=15

test-slow: $(STAMP)  ## the slow tests (training-quality checks; tens of minutes on CPU)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m slow

test-wheel: $(STAMP)  ## the wheel in a clean virtualenv runs the small demo outside the repo (minutes; downloads torch once)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m wheel -s tests/test_wheel.py

# The reference writer of test-keras2 runs in its own venv: TensorFlow (CPU) + tf_keras (Keras 2), no torch.
# tf_keras goes in without its dependencies: it asks for the full `tensorflow` wheel, which tensorflow-cpu provides.
TF_VENV  := .venv-tf
TF_STAMP := $(TF_VENV)/.installed
TF_PINS  := tensorflow-cpu==2.17.1 numpy==1.26.4 h5py==3.16.0

$(TF_STAMP): Makefile
	@test -x $(TF_VENV)/bin/python || $(PYTHON) -m venv $(TF_VENV)
	$(TF_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TF_VENV)/bin/python -m pip install --quiet $(TF_PINS)
	$(TF_VENV)/bin/python -m pip install --quiet --no-deps tf_keras==2.17.0
	@touch $(TF_STAMP)

test-keras2: $(STAMP) $(TF_STAMP)  ## import-keras against files written by real Keras 2 (builds .venv-tf: ~220 MB download)
	MAMMOKIT_TF_PYTHON=$(TF_VENV)/bin/python $(BIN)/python -m pytest -q -p no:cacheprovider -m keras2ref -s \
	  tests/test_keras2_reference.py

demo: $(STAMP)  ## the whole method on a synthetic CBIS-DDSM-layout dataset (<= 10 min on 2 cores)
	$(BIN)/mammokit demo --out $(DEMO_DIR)

serve: $(STAMP)  ## the prediction service + viewer on the demo's model: http://127.0.0.1:8000/ (after make demo)
	@test -f $(DEMO_DIR)/runs/whole/model.json || { echo "no $(DEMO_DIR)/runs/whole: run 'make demo' first"; exit 2; }
	$(BIN)/mammokit serve $(DEMO_DIR)/runs/whole

bench: $(STAMP)  ## run the benchmark scripts
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:  ## remove build artefacts (keeps .venv)
	rm -rf build dist src/*.egg-info .pytest_cache .ruff_cache
