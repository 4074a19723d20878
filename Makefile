# make test   set-up (virtualenv, pinned requirements, build) + the whole test suite
# make bench  set-up + the benchmark table (bench/results/)
# Both are idempotent: a second run only rebuilds what changed.
#
# Variables: PYTHON (interpreter for the venv), VENV (its folder), REQUIREMENTS (pinned
# list; requirements-cpu.txt gives the CPU-only torch), MAX_JOBS (parallel compile jobs),
# BENCH_ARGS (arguments for bench/bench.py; default --compile, which adds torch.compile's
# column; BENCH_ARGS=--quick for the short version).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
REQUIREMENTS ?= requirements.txt
BENCH_ARGS ?= --compile
export MAX_JOBS ?= 2

PY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.requirements-installed
BUILD_STAMP := $(VENV)/.groupnorm_ext-built
SOURCES := setup.py pyproject.toml $(shell find csrc groupnorm_ext/include -type f 2>/dev/null)

.PHONY: all test bench build deps clean

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)

$(DEPS_STAMP): $(REQUIREMENTS) | $(PY)
	$(PY) -m pip install -q --disable-pip-version-check -r $(REQUIREMENTS)
	touch $@

deps: $(DEPS_STAMP)

# The op library (groupnorm_ext/lib/libgroupnorm_ext.so) and the Python module that links it
# (groupnorm_ext/_C*.so) sit in the source tree (editable install). Rebuild when one is
# missing, when a source is newer than the last build, or when the requirements changed.
build: $(DEPS_STAMP)
	@if [ ! -f $(BUILD_STAMP) ] || ! ls groupnorm_ext/_C*.so groupnorm_ext/lib/libgroupnorm_ext.so >/dev/null 2>&1 \
	    || [ -n "$$(find $(SOURCES) $(DEPS_STAMP) -newer $(BUILD_STAMP) 2>/dev/null)" ]; then \
	  echo "building groupnorm_ext (MAX_JOBS=$(MAX_JOBS))"; \
	  $(PY) -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e . \
	    && touch $(BUILD_STAMP); \
	else echo "groupnorm_ext is up to date"; fi

test: build
	$(PY) -m pytest -q tests

bench: build
	$(PY) bench/bench.py $(BENCH_ARGS)

clean:
	rm -rf build groupnorm_ext/_C*.so groupnorm_ext/lib *.egg-info $(BUILD_STAMP)
