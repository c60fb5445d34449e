# motionqc — every target creates and fills its own virtual environment (.venv) first.
#   make reproduce   run every numbered notebook with papermill (profile: sample) -> figures/
#   make test        pytest + nbval over the notebooks under the fast `smoke` profile
#   make data        gather and verify the sample volumes (no network beyond package registries)
#   make pretrain    train the released encoder on the corpus -> src/motionqc/weights/ (resumable)
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

.PHONY: help venv data bids-validator gpu-prepare pretrain test test-py test-notebooks test-stream-units test-stream-chain reproduce bench lint clean

help:
	@sed -n '2,8p' Makefile | sed 's/^# \{0,1\}//'

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $@

venv: $(VENV)/.installed

# bids-validator 1.15 (npm) for the derivatives test (tests/app/test_cli.py); needs node and npm.
BIDS_VALIDATOR := build/bids-validator/node_modules/.bin/bids-validator
$(BIDS_VALIDATOR):
	npm install --silent --no-audit --no-fund --prefix build/bids-validator bids-validator@1.15.0

bids-validator: $(BIDS_VALIDATOR)

# Inputs of benchmarks/gpu_check.sh (the GPU machine has no TorchIO): build/gpu_check/inputs.pt.
gpu-prepare: data
	$(PY) benchmarks/gpu_prepare.py --out build/gpu_check

data: venv
	$(PY) -m motionqc.data.sample

# nbval under the fast `smoke` profile. Notebooks 01 and 02 need nothing another notebook writes;
# the others form a chain (03's encoder feeds 04-07 and the demo, 04's QC set feeds 05, 06 reads
# the resource logs of 03-05) and run in that order.
# notebooks/conftest.py starts a kernel again when its start fails (a CI flake), never a cell;
# a loaded machine gets 180 s to start one (nbval's default: 60).
NBVAL := MOTIONQC_PROFILE=smoke $(PY) -m pytest -p no:cacheprovider --durations=10 --nbval-lax \
	--nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg --nbval-kernel-startup-timeout 180
NB_INDEPENDENT := notebooks/01_data_curation.ipynb notebooks/02_synthetic_generation.ipynb
NB_CHAIN := $(filter-out $(NB_INDEPENDENT),$(NOTEBOOKS))
UNIT_TESTS := $(PY) -m pytest --durations=20 tests

# `make test` runs two streams side by side on the two cores: the unit tests then notebooks 01-02,
# and the notebook chain 03-07 + demo. Much of the time is spent starting interpreters and
# importing, which leaves a core idle in a single stream. OMP_WAIT_POLICY=PASSIVE: an OpenMP
# thread waiting at a barrier sleeps instead of spinning on a core the other stream needs
# (measured here: an SFCN training step with both streams busy took 7.4 s with spinning threads,
# 3.4 s with passive ones, 1.7 s alone). Each stream's output is printed when it ends.
# glibc malloc settings of motionqc.runtime.allocator (freed memory stays in the process for reuse: far
# fewer page faults in CPU training) for every process the tests start, nbval kernels included.
ALLOCATOR_ENV := MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TRIM_THRESHOLD_=2147483647

test: data
	$(ALLOCATOR_ENV) OMP_WAIT_POLICY=PASSIVE $(MAKE) --no-print-directory -j2 --output-sync=target \
		test-stream-units test-stream-chain DATA_READY=1

# `data` once per `make test`, not once per stream.
TEST_NEEDS := $(if $(DATA_READY),venv,data)

test-stream-units: $(TEST_NEEDS)
	$(UNIT_TESTS)
	$(NBVAL) $(NB_INDEPENDENT)

test-stream-chain: $(TEST_NEEDS)
	$(NBVAL) $(NB_CHAIN)

test-py: $(TEST_NEEDS)
	$(UNIT_TESTS)

test-notebooks: $(TEST_NEEDS)
	$(NBVAL) $(NOTEBOOKS)

# The released encoder: motionqc.training.recipe's `corpus` recipe on the corpus of real heads
# (data_manifest/corpus.tsv; DATA_ROOT or MOTIONQC_DATA_ROOT: the folder holding it). Run it again
# after an interruption: the motion pool's chunks and the training checkpoint are read back.
pretrain: data
	$(ALLOCATOR_ENV) $(PY) -m motionqc.training.release --recipe corpus --draws 1 \
		$(if $(DATA_ROOT),--data-root $(DATA_ROOT))

# Under the sample profile the executed notebooks are copied over notebooks/ at the end: the
# committed notebooks then show the run whose tables are in figures/ (see figures/PROVENANCE.md).
reproduce: data
	MOTIONQC_PROFILE=$(PROFILE) $(PY) -m motionqc.runner $(if $(PARAMS),--params $(PARAMS)) \
		$(if $(and $(filter sample,$(PROFILE)),$(if $(PARAMS),,1)),--publish) $(NOTEBOOKS)

bench: data
	@for b in $(sort $(wildcard benchmarks/bench_*.py)); do echo "== $$b"; $(PY) $$b || exit 1; done

lint: venv
	$(PY) -m ruff check src tests benchmarks notebooks
	$(PY) -m ruff format --check src tests benchmarks

clean:
	rm -rf build .pytest_cache .ruff_cache
