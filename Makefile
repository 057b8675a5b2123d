# hsm-coordinator: every target sets up .venv itself when needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
# the modules compiled with mypyc (MODULES in hsm/compiled.py, in this order)
NATIVE := $(VENV)/.native
NATIVE_SRC := hsm/fid.py hsm/hsmflags.py hsm/wire.py coordinator/state.py coordinator/scheduler.py \
              coordinator/agents.py agentd/lease.py agentd/core.py

.PHONY: demo test test-quick test-slow test-pure lint proto venv clean bench bench-full bench-profile nemesis fuse

venv: $(NATIVE)

# the install compiles NATIVE_SRC with mypyc when a C compiler works (setup.py;
# HSM_NO_MYPYC=1: pure Python)
$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# a compiled module's source changed since the extensions were built (they
# would run the old code: until rebuilt, the pure sources run, see
# hsm/compiled.py), or they are missing: build them again, alone
$(NATIVE): $(STAMP) $(NATIVE_SRC)
	$(PY) -c 'import sys, hsm.compiled as c; sys.exit(1 if c.needs_build() else 0)' \
		|| $(PY) -m pip install -q --no-deps -e .
	touch $(NATIVE)

# the [bench] extra (py-spy) on top of the test install
$(BENCH_STAMP): $(NATIVE)
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(BENCH_STAMP)

# hsm-mount needs libfuse3 and fusermount3 (Debian package fuse3): installed
# here when missing and we are root with apt-get; otherwise the demo and the
# tests say why they leave it out
fuse:
	@if ldconfig -p 2>/dev/null | grep -q 'libfuse3\.so\.3 ' && command -v fusermount3 >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing libfuse3 for hsm-mount (apt-get install fuse3)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q fuse3 >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q fuse3 >/dev/null 2>&1; } \
		|| echo "could not install fuse3: hsm-mount's tests will be skipped"; \
	else echo "libfuse3 is missing (Debian: apt-get install fuse3, as root): hsm-mount's tests will be skipped"; fi

demo: $(NATIVE) fuse
	$(PY) -m coordinator.demo

# every test, the slow ones too (what CI runs): about 26 minutes on 2 cores (test-quick: about 8)
test: $(NATIVE) fuse
	$(PY) -m pytest -q

# every test but those marked slow (multi-process system tests): the edit-test loop
test-quick: $(NATIVE)
	$(PY) -m pytest -q -m 'not slow'

# only the tests marked slow; like pytest it fails (exit 5) if none is marked
test-slow: $(NATIVE)
	$(PY) -m pytest -q -m slow

# every test but the slow ones on the pure Python modules, the compiled ones
# installed or not (HSM_PURE_PYTHON=1, see hsm/compiled.py): CI runs it after `make test`
test-pure: $(NATIVE)
	HSM_PURE_PYTHON=1 $(PY) -m pytest -q -m 'not slow'

# benchmarks (bench/): quick mode takes a few minutes; results in bench/results/latest.{json,md}
bench: $(BENCH_STAMP)
	$(PY) -m bench all --quick

bench-full: $(BENCH_STAMP)
	$(PY) -m bench all --full

bench-profile: $(BENCH_STAMP)
	$(PY) -m bench profile

# Jepsen-style fault testing (tests/nemesis, issue 14): CYCLES faults drawn
# with SEED (default: a random seed, printed), checked after each; the
# report is also copied to bench/results/nemesis-latest.{md,json}. Needs root.
CYCLES ?= 10
SEED ?=
nemesis: $(NATIVE)
	$(PY) -m tests.nemesis --cycles $(CYCLES) $(if $(SEED),--seed $(SEED)) --report bench/results/nemesis-latest.md

lint: $(NATIVE)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

proto: $(NATIVE)
	$(PY) -m hsm.protogen

clean:
	rm -rf $(VENV) build *.egg-info hsm/_native_build.json hsm/_native__mypyc.*.so \
		$(foreach m,$(basename $(NATIVE_SRC)),$(m).*.so)
