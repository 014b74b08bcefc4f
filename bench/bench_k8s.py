"""The tests' Kubernetes emulator: cost of one request as the request history it keeps grows."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from kubernetes import client, config

from airflow_provider_mlplat.testing.kubernetes.emulator import K8sEmulator

RAY, NS = ("ray.io", "v1"), "default"
SAMPLES = 500
HISTORY = (2_000, 10_000)  # requests in the history when measured again


def _median_get(crd: client.CustomObjectsApi, n: int = SAMPLES) -> float:
    """Median seconds of one GET of a RayJob through the real client, over ``n`` requests."""
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        crd.get_namespaced_custom_object(*RAY, NS, "rayjobs", "a")
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def run() -> str:
    with tempfile.TemporaryDirectory() as tmp, K8sEmulator() as emu:
        emu.register("ray.io", "v1", "rayjobs", "RayJob")
        api = config.new_client_from_config(config_file=emu.kubeconfig(Path(tmp) / "kubeconfig"))
        crd = client.CustomObjectsApi(api)
        body = {
            "apiVersion": "ray.io/v1",
            "kind": "RayJob",
            "metadata": {"name": "a"},
            "spec": {"entrypoint": "python train.py"},
        }
        crd.create_namespaced_custom_object(*RAY, NS, "rayjobs", body)
        _median_get(crd, 50)  # warm up the connection pool
        rows = [(len(emu.requests), _median_get(crd))]
        for size in HISTORY:
            for i in range(size - len(emu.requests)):
                patch = {"metadata": {"labels": {"i": str(i)}}}
                crd.patch_namespaced_custom_object(*RAY, NS, "rayjobs", "a", patch)
            rows.append((len(emu.requests), _median_get(crd)))
        api.close()
    early = rows[0][1]
    grown = rows[1][1] / early
    table = "\n".join(f"| {n:,} | {median * 1e3:.2f} | {median / early:.2f}x |" for n, median in rows)
    return (
        "## Kubernetes emulator (tests): request cost as its request history grows\n\n"
        f"`airflow_provider_mlplat/testing/kubernetes/emulator.py` in-process, the real `kubernetes` client; median of {SAMPLES} GETs of "
        "one RayJob, measured with a fresh emulator, then again after merge patches have grown the "
        "request history it keeps (tests read it back with `count()` and `requests`).\n\n"
        "| requests in history | median GET (ms) | vs fresh |\n|---|---|---|\n"
        f"{table}\n\nTarget: <= 3x with {HISTORY[0]:,} requests in the history -> **{grown:.2f}x** "
        f"({'met' if grown <= 3 else 'MISSED'})."
    )
