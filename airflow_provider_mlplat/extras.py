"""Which pip extra brings which SDK; a clear error when a task needs one that is not installed."""

from __future__ import annotations

import importlib.util

from airflow_provider_mlplat.exceptions import MLPlatMissingExtra

DISTRIBUTION = "airflow-provider-mlplat"
#: the modules each extra of the distribution installs (pyproject.toml's optional-dependencies)
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "mlflow": ("mlflow", "pandas"),
    "feast": ("feast", "pandas", "pyarrow"),
    "gx": ("great_expectations", "pandas"),
    "ray": ("ray",),
    "kubernetes": ("kubernetes", "kubernetes_asyncio", "airflow.providers.cncf.kubernetes"),
    "evidently": ("evidently", "pandas", "pyarrow", "orjson", "prometheus_client"),
    "s3": ("airflow.providers.amazon", "s3fs"),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package of a dotted name is missing
        return False


def require_extra(extra: str, needed_by: str) -> None:
    """
    Fail in one line naming the pip install when a module of an extra is missing.

    :param extra: a key of :data:`EXTRA_MODULES`.
    :param needed_by: what needs it (shown in the message), e.g. ``FeastHook``.
    """
    if extra not in EXTRA_MODULES:
        raise ValueError(f"unknown extra {extra!r}; valid: {', '.join(EXTRA_MODULES)}")
    missing = [module for module in EXTRA_MODULES[extra] if not _installed(module)]
    if missing:
        raise MLPlatMissingExtra(
            f"{needed_by} needs {', '.join(missing)}, which this environment lacks: "
            f"pip install '{DISTRIBUTION}[{extra}]'"
        )
