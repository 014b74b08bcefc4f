# The two commands a new user runs: `make demo` and `make test`.
SHELL := /bin/bash
export PATH := $(HOME)/.local/bin:$(PATH)
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
export UV_COMPILE_BYTECODE := 1

.PHONY: install demo test lint unit integration bench up down status clean

$(UV):
	@command -v uv >/dev/null 2>&1 || python3 -m pip install --user --quiet uv || python3 -m pip install --quiet uv

install: $(UV)
	$(UV) sync --frozen

demo: install
	$(UV) run --frozen mlplat demo

up: install
	$(UV) run --frozen mlplat up

status:
	$(UV) run --frozen mlplat status

down:
	$(UV) run --frozen mlplat down

lint: install
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check airflow_provider_mlplat dags

test: lint
	$(UV) run --frozen pytest -q $(PYTEST_ARGS)

unit: install
	$(UV) run --frozen pytest -q tests/unit

bench: install
	$(UV) run --frozen python -m bench

clean: down
	rm -rf .mlplat
