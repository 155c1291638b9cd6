# Set-up and entry points. `make demo` and `make test` each create .venv if missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.jax_cache
export MPLBACKEND ?= Agg
# Lets the persistent cache store the solver's compilations (Equinox's runtime checks
# otherwise embed host callbacks, which the cache refuses); see README "Compilation cache".
export EQX_ON_ERROR ?= nan

.PHONY: install demo test test-all lint clean bench bench-gpu bench-nuts bench-versions calibrate

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
	$(PY) -m pytest -q -n auto --dist worksteal --durations=12

# Also the three long tests (MSCPK_LONG_TESTS=1: 79-86 s each, ~3 min more on 2 cores, cold cache, 2026-12-06).
test-all: $(STAMP)
	MSCPK_LONG_TESTS=1 $(PY) -m pytest -q -n auto --dist worksteal -m "slow or not slow"

# Benchmark suite (not part of `make test`; ~20 min on 2 cores, 2026-11-25): SciPy comparison, scaling,
# gradient, compile, expm and, under BENCH_OTHER_PY (default: a second venv with the newest
# jax, created here), the cross-version key figures. Writes benchmarks/results/latest.json.
# POSTERIOR=path.nc adds nuts_s_per_ess from a finished calibration.
# jax >= 0.11 needs Python >= 3.12: the newest stack is installed under the first Python
# >= 3.12 found (on PATH, or a pyenv version), else under $(PYTHON) (jax 0.10.2 on 3.11).
VENV_LATEST ?= .venv-jax-latest
PYTHON_LATEST ?= $(shell for p in python3.12 python3.13 python3.14 $$(ls -d $$HOME/.pyenv/versions/3.1[2-9]*/bin/python3 2>/dev/null); do $$p -c 'import sys; assert sys.version_info >= (3, 12)' >/dev/null 2>&1 && { command -v $$p; exit; }; done; echo $(PYTHON))
BENCH_OTHER_PY ?= $(VENV_LATEST)/bin/python
$(VENV_LATEST)/.installed-stamp: pyproject.toml
	test -x $(VENV_LATEST)/bin/python || $(PYTHON_LATEST) -m venv $(VENV_LATEST)
	$(VENV_LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(VENV_LATEST)/bin/python -m pip install --quiet --upgrade -e ".[dev]"
	touch $@

bench: $(STAMP) $(if $(filter $(VENV_LATEST)/bin/python,$(BENCH_OTHER_PY)),$(VENV_LATEST)/.installed-stamp)
	PYTHONPATH=$(CURDIR) $(PY) benchmarks/suite.py --other-python $(BENCH_OTHER_PY) $(if $(POSTERIOR),--posterior $(POSTERIOR))

# Only jax_versions (the key figures under the pinned jax, then under BENCH_OTHER_PY's),
# written into the existing latest.json (7-9 min on 2 cores, 2026-12-06).
bench-versions: $(STAMP) $(if $(filter $(VENV_LATEST)/bin/python,$(BENCH_OTHER_PY)),$(VENV_LATEST)/.installed-stamp)
	PYTHONPATH=$(CURDIR) $(PY) benchmarks/suite.py --versions-only --other-python $(BENCH_OTHER_PY)

# Only nuts_s_per_ess of a finished calibration, written into the existing latest.json.
bench-nuts: $(STAMP)
	test -n "$(POSTERIOR)" || (echo "give POSTERIOR=path.nc" && false)
	PYTHONPATH=$(CURDIR) $(PY) benchmarks/suite.py --nuts-only --posterior $(POSTERIOR)

# Re-create the shipped calibration end to end (~3 h on 2 cores; resumable: the same command
# continues it). EXPORT=mscpk/calibration/data replaces the shipped posterior once converged.
# CAL_ARGS: further options of benchmarks/recalibrate.py (e.g. "--own-step-sizes
# --detection-limit-log-sd 0": the sampler and model of the fit shipped before 2026-12;
# "--stages-from OLD_ROOT" with a new CAL_ROOT: copy OLD_ROOT's pilot and pooled stages, run only the final;
# with "--final-seed N" that final stage is a replicate keyed by mscpk fit --seed N).
CAL_ROOT ?= calibration-run
calibrate: $(STAMP)
	PYTHONPATH=$(CURDIR) $(PY) benchmarks/recalibrate.py --root $(CAL_ROOT) $(if $(HOURS),--hours $(HOURS)) $(if $(EXPORT),--export $(EXPORT)) $(CAL_ARGS)

# Virtual-population benchmark on the first accelerator (1e6 subjects x 30 days); writes
# benchmarks/results/gpu-<device>.json. The pinned .venv has the CPU build of jax: point
# BENCH_PY at a Python whose jax sees the GPU (e.g. make bench-gpu BENCH_PY=python3);
# .venv is then not created (a GPU machine may have no package index to install from).
BENCH_PY ?= $(PY)
bench-gpu: $(if $(filter $(PY),$(BENCH_PY)),$(STAMP))
	PYTHONPATH=$(CURDIR) $(BENCH_PY) benchmarks/population.py --n 1 1000 100000 1000000 --chunk 500000

lint: $(STAMP)
	$(PY) -m ruff check mscpk tests

clean:
	rm -rf $(VENV) $(VENV_LATEST) .jax_cache demo_output .pytest_cache
