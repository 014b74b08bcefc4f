# The two commands a new user runs: `make demo` and `make test`.
SHELL := /bin/bash
# uv from PATH, else the one `make` installs with pip (run as a module: no PATH assumptions)
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)
export UV_COMPILE_BYTECODE := 1
# `install` syncs once; the other targets run in that environment as it is
RUN := $(UV) run --frozen --no-sync

.PHONY: uv install demo test lint unit integration bench up down status clean

uv:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv

install: uv
	$(UV) sync --frozen

demo: install
	$(RUN) mlplat demo

up: install
	$(RUN) mlplat up

status:
	$(RUN) mlplat status

down:
	$(RUN) mlplat down

lint: install
	$(RUN) ruff check .
	$(RUN) ruff format --check airflow_provider_mlplat dags

test: lint
	$(RUN) pytest -q $(PYTEST_ARGS)

unit: install
	$(RUN) pytest -q tests/unit

bench: install
	$(RUN) python -m bench

clean: down
	rm -rf .mlplat
