# The README's two commands. Each creates/uses .venv and installs what it needs on first use.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test install install-test

$(VENV)/.runtime: requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.test: $(VENV)/.runtime requirements-test.txt
	$(PY) -m pip install -q -r requirements-test.txt
	touch $@

install: $(VENV)/.runtime
install-test: $(VENV)/.test

# Synthetic data -> tiny training (~7 min on 2 CPU cores) -> sampling -> sync scores.
demo: $(VENV)/.runtime
	$(PY) -m launch.demo --out=demo_out

# Full suite on 8 simulated CPU devices (every sharding path without an accelerator), in
# TEST_WORKERS processes, each running whole test modules (their fixtures are module-wide).
# One process keeps ~1.2 of 2 cores busy (compiles are single-threaded): 2 workers take the
# suite from ~38 to ~24 min on 2 cores. Each worker peaks at ~6.5 GB of host memory. Modules
# are handed out in collection order, which puts the `heavy` ones first (tests/conftest.py).
TEST_WORKERS ?= 2
test: $(VENV)/.test
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest tests -q --durations=15 \
	    -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
