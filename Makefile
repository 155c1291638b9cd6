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

# worksteal: idle workers take queued tests from busy ones (the suite has a few long tests).
test: $(STAMP)
	$(PY) -m pytest -q -n auto --dist worksteal

test-all: $(STAMP)
	$(PY) -m pytest -q -n auto --dist worksteal -m "slow or not slow"

# Virtual-population benchmark on the first accelerator (1e6 subjects x 30 days); writes
# benchmarks/results/gpu-<device>.json. The pinned .venv has the CPU build of jax: point
# BENCH_PY at a Python whose jax sees the GPU (e.g. make bench-gpu BENCH_PY=python3).
BENCH_PY ?= $(PY)
bench-gpu: $(STAMP)
	PYTHONPATH=$(CURDIR) $(BENCH_PY) benchmarks/population.py --n 1 1000 100000 1000000 --chunk 250000

lint: $(STAMP)
	$(PY) -m ruff check mscpk tests

clean:
	rm -rf $(VENV) .jax_cache demo_output .pytest_cache
