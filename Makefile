# georoute: `make demo` runs the whole stack locally; `make test` runs the suite.
# Both set themselves up on a fresh machine that has Python 3.11+ and make.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test bench bench-smoke lint clean cluster-up cluster-down venv chaos soak

venv: $(STAMP)

# The compiled row decoder is built by the install: rebuilt when its source changes.
$(STAMP): pyproject.toml setup.py router/backend/_rowdecode.c
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

## demo: local cluster + migrations + sample data + router + REST API, until Ctrl-C
demo: venv
	$(VENV)/bin/georoute demo

## test: the whole suite (unit, integration on a real cluster, ruff, mypy, the layer contract)
test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

## chaos: every fault and bad-input test, long cases included (pytest -m chaos with the quick
## ones), then docs/RELIABILITY.md's table from the figures they recorded
RELIABILITY_TESTS := tests/integration/test_reliability_router.py \
	tests/integration/test_reliability_failover.py tests/integration/test_reliability_nodes.py \
	tests/integration/test_reliability_links.py tests/integration/test_twophase_links.py \
	tests/integration/test_reliability_load.py \
	tests/integration/test_reliability_fuzz.py tests/integration/test_heartbeat.py \
	tests/unit/test_fuzz_decoder.py tests/unit/test_secrets.py \
	tests/api/test_injection.py tests/api/test_escalation.py
CHAOS_LOG := .georoute-reliability/chaos.jsonl
SOAK_LOG := .georoute-reliability/soak.jsonl

chaos: venv
	@mkdir -p .georoute-reliability && rm -f $(CHAOS_LOG)
	GEOROUTE_RELIABILITY_LOG=$(abspath $(CHAOS_LOG)) $(PY) -m pytest -m "chaos or not chaos" \
		$(RELIABILITY_TESTS) $(PYTEST_ARGS)
	$(PY) -m tests.support.report $(CHAOS_LOG) docs/RELIABILITY.md chaos

## soak: mixed load with a fault every few minutes for 30 min (GEOROUTE_SOAK_SECONDS and
## GEOROUTE_SOAK_FAULT_SECONDS shorten it), then docs/RELIABILITY.md's soak table
soak: venv
	@mkdir -p .georoute-reliability && rm -f $(SOAK_LOG)
	GEOROUTE_RELIABILITY_LOG=$(abspath $(SOAK_LOG)) $(PY) -m pytest -m soak -s \
		tests/integration/test_soak.py $(PYTEST_ARGS)
	$(PY) -m tests.support.report $(SOAK_LOG) docs/RELIABILITY.md soak

## bench: georoute against direct asyncpg, pgbouncer and pgpool-II (see bench/RESULTS.md)
bench: venv
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	$(PY) -m bench $(BENCH_ARGS)

bench-smoke: venv
	$(PY) -m bench --smoke

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

cluster-up: venv
	$(VENV)/bin/georoute cluster up

cluster-down: venv
	$(VENV)/bin/georoute cluster down

clean:
	-$(VENV)/bin/georoute cluster down --purge
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis
