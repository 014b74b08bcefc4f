"""``python -m mlplat_model_server``: the local KServe model server."""

from mlplat_model_server.server import main

main()
