# Set-up and entry points. `make demo` and `make test` each create .venv if missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.jax_cache
export MPLBACKEND ?= Agg

.PHONY: install demo test test-all lint clean bench-gpu

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m mscpk.demo --out demo_output

test: $(STAMP)
	$(PY) -m pytest -q -n auto

test-all: $(STAMP)
	$(PY) -m pytest -q -n auto -m "slow or not slow"

# Virtual-population benchmark on the first accelerator (1e6 subjects x 30 days); writes
# benchmarks/results/gpu-<device>.json. Needs a CUDA build of jax in the environment.
bench-gpu: $(STAMP)
	$(PY) benchmarks/population.py --n 1 1000 100000 1000000 --chunk 250000

lint: $(STAMP)
	$(PY) -m ruff check mscpk tests

clean:
	rm -rf $(VENV) .jax_cache demo_output .pytest_cache
