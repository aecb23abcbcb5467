# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP_BASE := $(VENV)/.installed-base
STAMP_TEST := $(VENV)/.installed-test
STAMP_BENCH := $(VENV)/.installed-bench
JOBS ?= 2

.PHONY: demo test validate bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# CHOLMOD (scikit-sparse, built against Debian's SuiteSparse) for crossed designs; poolwise falls back to a
# dense Cholesky factor when it cannot be installed.  CHOLMOD calls the system BLAS (libblas.so.3): Debian's
# default is the reference BLAS, and OpenBLAS in its place halves a factorization (InstEval: 64 -> 34 ms)
SPARSE = @(test -f /usr/include/suitesparse/cholmod.h && dpkg -s libopenblas0-pthread >/dev/null 2>&1) || \
	(apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	libsuitesparse-dev libopenblas0-pthread >/dev/null 2>&1) || true; \
	$(PIP) install --quiet -e ".[sparse]" >/dev/null 2>&1 || echo "scikit-sparse could not be installed: crossed designs use a dense Cholesky factor"

$(STAMP_BASE): pyproject.toml | $(PY)
	$(PIP) install --quiet -e ".[data]"
	$(SPARSE)
	touch $@

$(STAMP_TEST): pyproject.toml | $(PY)
	$(PIP) install --quiet -e ".[test]"
	$(SPARSE)
	touch $@

$(STAMP_BENCH): pyproject.toml | $(PY)
	$(PIP) install --quiet -e ".[test,bench]"
	touch $@

demo: $(STAMP_BASE)
	$(PY) -m poolwise.datasets drivers demo/drivers.csv --force
	$(VENV)/bin/poolwise compare demo/drivers.csv -f "reaction ~ night + (1 | driver)" --out demo --report demo/report.html --force
	@echo "demo written to demo/ (figure, table, results)"

test: $(STAMP_TEST)
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1) || echo "chromium could not be installed: the browser test will be skipped"
	$(PY) -m pytest -n $(JOBS) --dist loadgroup -q -m "not validate" tests

validate: $(STAMP_TEST)
	$(PY) -m pytest -n $(JOBS) -q -m validate tests
	$(PY) -m validation.sbc --family gaussian-exact bernoulli poisson --reps 400 --out validation/_out

PYMC_VENV := benchmarks/_data/_venv_pymc

bench: $(STAMP_BENCH)
	@# PyMC (default sampler, nutpie) and Bambi rows run in their own environment, when it installs (rows
	@# skipped otherwise); matplotlib<3.11: arviz-plots, which Bambi needs, does not import with 3.11
	-$(PYMC_VENV)/bin/python -c "import pymc, nutpie, bambi, pyarrow" 2>/dev/null || \
	    ( (test -x $(PYMC_VENV)/bin/python || $(PYTHON) -m venv $(PYMC_VENV)) && \
	    $(PYMC_VENV)/bin/pip install --quiet pymc nutpie bambi pyarrow "matplotlib<3.11")
	-$(PIP) install --quiet mixedlm-rs
	@# the large Parquet sets are generated once, under benchmarks/_data/ (git-ignored)
	$(PY) benchmarks/run.py --out benchmarks/results.md

lint: $(STAMP_TEST)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) demo .pytest_cache
