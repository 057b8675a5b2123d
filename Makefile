# hsm-coordinator: every target sets up .venv itself when needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: demo test test-quick test-slow lint proto venv clean bench bench-full bench-profile

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# the [bench] extra (py-spy) on top of the test install
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(BENCH_STAMP)

demo: $(STAMP)
	$(PY) -m coordinator.demo

# every test, the slow ones too (what CI runs): about 6 minutes on 2 cores
test: $(STAMP)
	$(PY) -m pytest -q

# every test but those marked slow (multi-process system tests): the edit-test loop
test-quick: $(STAMP)
	$(PY) -m pytest -q -m 'not slow'

# only the tests marked slow; like pytest it fails (exit 5) if none is marked
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# benchmarks (bench/): quick mode takes a few minutes; results in bench/results/latest.{json,md}
bench: $(BENCH_STAMP)
	$(PY) -m bench all --quick

bench-full: $(BENCH_STAMP)
	$(PY) -m bench all --full

bench-profile: $(BENCH_STAMP)
	$(PY) -m bench profile

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

proto: $(STAMP)
	$(PY) -m hsm.protogen

clean:
	rm -rf $(VENV) build *.egg-info
