# One-command entry points. Every target sets the environment up first when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_ROOT ?= ../shared/data
DATASET ?= shapes
OUT ?=
QUICK ?=
CACHE ?=
CACHE_ARGS ?=
TRAIN_ARGS ?=

.PHONY: setup test lint demo experiment cache train ablations bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# compat: a plain path entry, so a folder named storage/ elsewhere on sys.path (dask workers' spill
	# directory) cannot shadow our package as a namespace package
	$(BIN)/python -m pip install -q --disable-pip-version-check --config-settings editable_mode=compat -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

cache: $(STAMP)
	$(BIN)/python cache_clip.py $(DATASET) --data-root $(DATA_ROOT) $(CACHE_ARGS)

train: $(STAMP)
	$(BIN)/python train_student.py $(DATASET) --data-root $(DATA_ROOT) $(if $(CACHE),--cache $(CACHE),) \
		$(TRAIN_ARGS)

demo: $(STAMP)
	$(BIN)/epmvg demo --out $(or $(OUT),demo) $(if $(QUICK),--quick,)

# STUDY=distillation (default), box-loss, students, exact-views or coord-embedding; QUICK=1 for the
# test-sized form.
experiment: $(STAMP)
	$(BIN)/epmvg experiment $(or $(STUDY),distillation) --out $(or $(OUT),experiment/$(or $(STUDY),distillation)) \
		$(if $(QUICK),--quick,)

# Without CACHE, train and ablations use the one store under cache/$(DATASET) that `make cache` built for
# these data (pipeline/targets/lookup.py), or stop with one line listing what they found.
# The grid is `train --ablations` (every training option via TRAIN_ARGS), except with QUICK, or on shapes
# without a CACHE: `epmvg ablations`, which on shapes builds a random-teacher demo store when none fits.
ablations: $(STAMP)
ifeq ($(or $(QUICK),$(filter shapes|,$(DATASET)|$(CACHE))),)
	$(BIN)/python train_student.py $(DATASET) --data-root $(DATA_ROOT) $(if $(CACHE),--cache $(CACHE),) \
		--ablations --out $(or $(OUT),ablations/$(DATASET)) $(TRAIN_ARGS)
else
	$(BIN)/epmvg ablations $(DATASET) --data-root $(DATA_ROOT) --out $(or $(OUT),ablations/$(DATASET)) \
		$(if $(CACHE),--cache $(CACHE),) $(if $(QUICK),--quick,)
endif

bench: $(STAMP)
	$(BIN)/python -m bench.cache_bench --data-root $(DATA_ROOT)
	$(BIN)/python -m bench.step_bench
	$(BIN)/python -m bench.epoch_bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
