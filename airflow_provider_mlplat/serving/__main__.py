"""``python -m airflow_provider_mlplat.serving``: the local KServe model server."""

from airflow_provider_mlplat.serving.server import main

main()
