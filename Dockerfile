# The project's images, installed from the locks with uv:
#   airflow       Airflow 3 with the provider (all extras), the reference DAG bundle and the mlplat CLI;
#                 the Ray head and workers and the MLflow server run on it too
#   model-server  the KServe model server (its own lock: KServe's SDK cannot share Airflow's environment)
# No `# syntax=` line: Docker 20.10's built-in frontend has the cache and secret mounts used here, and
# no frontend image has to be pulled. Build with BuildKit:
#   DOCKER_BUILDKIT=1 docker build --target airflow -t mlplat-airflow .
# Behind a TLS-inspecting proxy, pass its CA bundle as a build secret (never part of a layer):
#   ... --secret id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt
# BASE_IMAGE: any Debian-like image with python3 3.11+ and its venv module (python3-venv).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS python
ENV LANG=C.UTF-8 PYTHONUNBUFFERED=1
# one unprivileged user in both images, owning the mount points its named volumes are created from
RUN groupadd --gid 50000 mlplat \
 && useradd --uid 50000 --gid mlplat --create-home --home-dir /home/mlplat mlplat \
 && mkdir -p /mlplat /opt/airflow /mlflow /etc/mlplat-prometheus \
 && chown mlplat:mlplat /mlplat /opt/airflow /mlflow /etc/mlplat-prometheus

# uv, at the lock's version, into a venv of its own (pip comes with python3's venv module)
FROM python AS uv
ARG UV_VERSION=0.13.9
RUN --mount=type=secret,id=ca_bundle --mount=type=cache,target=/root/.cache/pip \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
 && python3 -m venv /opt/uv \
 && /opt/uv/bin/pip install --quiet --disable-pip-version-check "uv==${UV_VERSION}"
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never UV_PYTHON=python3
WORKDIR /src

# the locked dependencies: a layer that code changes leave alone
FROM uv AS airflow-deps
ENV UV_PROJECT_ENVIRONMENT=/opt/mlplat/venv
COPY pyproject.toml uv.lock README.md ./
COPY local_platform/pyproject.toml local_platform/README.md local_platform/
RUN --mount=type=secret,id=ca_bundle --mount=type=cache,target=/root/.cache/uv \
    if [ -s /run/secrets/ca_bundle ]; then export SSL_CERT_FILE=/run/secrets/ca_bundle; fi \
 && /opt/uv/bin/uv sync --frozen --no-dev --package mlplat --extra containers --no-install-workspace

# the provider and mlplat (with the DAG bundle inside) as wheels
FROM airflow-deps AS airflow-wheels
COPY airflow_provider_mlplat airflow_provider_mlplat
COPY local_platform/mlplat local_platform/mlplat
COPY dags dags
COPY include include
COPY plugins plugins
RUN --mount=type=secret,id=ca_bundle --mount=type=cache,target=/root/.cache/uv \
    if [ -s /run/secrets/ca_bundle ]; then export SSL_CERT_FILE=/run/secrets/ca_bundle; fi \
 && /opt/uv/bin/uv build --wheel --package airflow-provider-mlplat --out-dir /wheels \
 && /opt/uv/bin/uv build --wheel --package mlplat --out-dir /wheels

FROM uv AS model-server-build
ENV UV_PROJECT_ENVIRONMENT=/opt/model-server/venv
WORKDIR /src/model_server
COPY model_server/pyproject.toml model_server/uv.lock model_server/README.md ./
RUN --mount=type=secret,id=ca_bundle --mount=type=cache,target=/root/.cache/uv \
    if [ -s /run/secrets/ca_bundle ]; then export SSL_CERT_FILE=/run/secrets/ca_bundle; fi \
 && /opt/uv/bin/uv sync --frozen --no-dev --no-install-project
COPY model_server/mlplat_model_server mlplat_model_server
RUN --mount=type=secret,id=ca_bundle --mount=type=cache,target=/root/.cache/uv \
    if [ -s /run/secrets/ca_bundle ]; then export SSL_CERT_FILE=/run/secrets/ca_bundle; fi \
 && /opt/uv/bin/uv sync --frozen --no-dev --no-editable

FROM python AS model-server
COPY --from=model-server-build /opt/model-server/venv /opt/model-server/venv
COPY docker/healthcheck.py /opt/mlplat/healthcheck.py
ENV PATH=/opt/model-server/venv/bin:$PATH \
    MLPLAT_SERVING_HOST=0.0.0.0 \
    MLPLAT_SERVING_PORT=8090
USER mlplat
WORKDIR /home/mlplat
EXPOSE 8090
CMD ["mlplat-model-server"]

FROM python AS airflow
COPY --from=airflow-deps /opt/mlplat/venv /opt/mlplat/venv
RUN --mount=type=bind,from=uv,source=/opt/uv,target=/opt/uv \
    --mount=type=bind,from=airflow-wheels,source=/wheels,target=/wheels \
    /opt/uv/bin/uv pip install --quiet --python /opt/mlplat/venv/bin/python --no-deps --no-index /wheels/*.whl \
 && ln -s "$(/opt/mlplat/venv/bin/python -c 'import mlplat, os; print(os.path.dirname(mlplat.__file__))')/bundle" \
      /opt/mlplat/bundle
COPY docker/healthcheck.py /opt/mlplat/healthcheck.py
# DAGs import the bundle's helpers as `include.<module>`: the bundle's root is on the path
ENV PATH=/opt/mlplat/venv/bin:$PATH \
    PYTHONPATH=/opt/mlplat/bundle \
    AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/mlplat/bundle/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False
USER mlplat
WORKDIR /opt/airflow
EXPOSE 8080
CMD ["airflow", "version"]
