# The two commands a new user runs: `make demo` and `make test`.
SHELL := /bin/bash
# uv from PATH, else the one `make` installs with pip (run as a module: no PATH assumptions)
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)
export UV_COMPILE_BYTECODE := 1
# `install` syncs once; the other targets run in that environment as it is
RUN := $(UV) run --frozen --no-sync

.PHONY: uv system-deps install demo test lint unit integration bench up down status clean \
	compose-env compose-up compose-demo compose-down

uv:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv

# two environments: the provider + local platform (uv workspace, ./.venv) and the model server
# (its own lock, model_server/.venv: KServe's SDK pins psutil<6, Airflow 3.3 needs psutil>=6.1)
install: uv system-deps
	$(UV) sync --frozen
	$(UV) sync --frozen --project model_server

# Prometheus and its Pushgateway come from Debian; the serving and drift steps scrape and push. The
# platform runs its own instances: a policy-rc.d (Debian's own mechanism) keeps the packages' system
# services from starting, and an existing policy is left as it is.
system-deps:
	@if ! command -v prometheus >/dev/null || ! command -v prometheus-pushgateway >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    policy=/usr/sbin/policy-rc.d; own_policy=; \
	    if [ ! -e $$policy ]; then printf '#!/bin/sh\nexit 101\n' > $$policy && chmod +x $$policy && own_policy=1; fi; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      prometheus prometheus-pushgateway >/dev/null; status=$$?; \
	    [ -n "$$own_policy" ] && rm -f $$policy; \
	    [ $$status = 0 ] || exit $$status; \
	  else \
	    echo "install Debian's prometheus and prometheus-pushgateway (the platform runs its own instances)"; exit 1; \
	  fi; \
	fi
	@# headless Chromium and its driver for the browser test of the Models view (tests/e2e)
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      chromium chromium-driver >/dev/null; \
	  else \
	    echo "install Debian's chromium and chromium-driver (the browser test of the Models view)"; exit 1; \
	  fi; \
	fi

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
	$(RUN) ruff format --check airflow_provider_mlplat dags local_platform/mlplat model_server

# the model server's own tests run in its own environment
test: lint
	$(UV) run --frozen --no-sync --project model_server pytest -q model_server/tests
	$(RUN) pytest -q $(PYTEST_ARGS)

unit: install
	$(RUN) pytest -q tests/unit

bench: install
	$(RUN) python -m bench

clean: down
	rm -rf .mlplat

# -- the container stack (docker-compose.yaml; README.md, "Containers") --------------------------
COMPOSE ?= docker-compose

# the secrets, generated once into .env (mode 0600); an existing .env is kept
compose-env:
	@PYTHONPATH=local_platform python3 -m mlplat.keys .env

compose-up: compose-env
	DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1 $(COMPOSE) up -d --build

# the closed loop of `mlplat demo`, run inside the compose network
compose-demo:
	$(COMPOSE) run --rm demo

compose-down:
	$(COMPOSE) --profile grafana --profile demo down --volumes --remove-orphans
