# georoute: `make demo` runs the whole stack locally; `make test` runs the suite.
# Both set themselves up on a fresh machine that has Python 3.11+ and make.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test bench bench-smoke lint clean cluster-up cluster-down venv

venv: $(STAMP)

$(STAMP): pyproject.toml
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
