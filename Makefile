# The two commands from the README: `make demo` and `make test`. Each creates .venv when missing
# and installs what it needs into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test check bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Stamp files: reinstall when pyproject.toml changes.
$(VENV)/.demo-installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[demo]'
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.demo-installed
	$(VENV)/bin/tribridge demo

# Three workers, each with its own three Synapses: the kill -9 test (one xdist group) on one, the
# rest shared by the other two. Then the tests marked `alone` (30-second catch-up promises, which
# are timings) by themselves, so that nothing competes with them for the CPU.
test: $(VENV)/.test-installed
	$(PY) -m pytest -n 3 --dist loadgroup -m "not alone"
	$(PY) -m pytest -m alone

check: $(VENV)/.test-installed
	$(VENV)/bin/ruff check bridge tests bench
	$(VENV)/bin/mypy

$(VENV)/.bench-installed: pyproject.toml $(VENV)/.test-installed
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $@

# docs/performance.md: what one HTTP request costs on this stack, the bridge beside a no-logic
# floor and issue 7's calibration relays (httpx, mautrix-python) on a fake homeserver (with
# py-spy's hot spots), a big store and a big backlog, what pruning a big store costs, then the
# CPU ratio against three real Synapses, beside the floor's and the mautrix relay's.
bench: $(VENV)/.bench-installed
	$(PY) bench/stack.py
	$(PY) bench/perf.py --messages 5000 --paced 1000 --rounds 3 --calibrate --profile $(VENV)/perf-profile.txt
	$(PY) bench/scale.py
	$(PY) bench/prune.py
	$(PY) bench/pace.py
	$(PY) bench/relay.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
