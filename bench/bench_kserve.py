"""The local KServe model server (canary split + inference log on) vs `mlflow models serve`, same model."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from mlplat.platform import CHECKOUT_MODEL_SERVER

ROUNDS = 3
SEQUENTIAL = 2000  # single-row requests one after the other to each server in turn: latency
CONCURRENT = 2000  # single-row requests from 8 concurrent clients, per round: throughput
CLIENTS = 8
FEATURES = ("conv_rate", "acc_rate", "avg_daily_trips", "trip_distance_km")


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _register(tracking_uri: str, artifacts: Path) -> str:
    """A sklearn trip model logged once (artifacts under ``artifacts``, not ./mlruns) and registered
    as versions 1 and 2 of one model."""
    import mlflow
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    os.environ["MLFLOW_LOG_UV_FILES"] = "false"
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(
        experiment_id=mlflow.create_experiment("bench", artifact_location=artifacts.as_uri())
    )
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.random((2000, 4)), columns=list(FEATURES))
    model = LogisticRegression().fit(frame, (frame["conv_rate"] > 0.5).astype(int))
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model, name="model", input_example=frame.head(3), pip_requirements=["scikit-learn"]
        )
    for _ in range(2):
        mlflow.register_model(info.model_uri, "trip_completion")
    return "trip_completion"


def _start(command: list[str], env: dict[str, str], url: str, log: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        command, env={**os.environ, **env}, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"{command[:4]} exited: {log.read_text()[-2000:]}")
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"{command[:4]} did not answer at {url}")


def _rss_mb(process: subprocess.Popen) -> float:
    root = psutil.Process(process.pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


async def _sequential(urls: dict[str, str], n: int) -> dict[str, list[float]]:
    """One request at a time, to each server in turn, so noise from the rest of the machine
    (other processes on 2 cores) falls on all servers alike."""
    import aiohttp

    latencies: dict[str, list[float]] = {name: [] for name in urls}
    async with aiohttp.ClientSession() as session:
        for i in range(n):
            body = {"instances": [{f: (i % 97) / 97 for f in FEATURES}]}
            for name, url in urls.items():
                started = time.perf_counter()
                async with session.post(url, json=body) as response:
                    await response.read()
                    assert response.status == 200, await response.text()
                latencies[name].append(time.perf_counter() - started)
    return latencies


async def _concurrent(url: str, n: int, clients: int) -> float:
    import aiohttp

    async def client(session, count: int) -> None:
        for i in range(count):
            async with session.post(
                url, json={"instances": [{f: (i % 89) / 89 for f in FEATURES}]}
            ) as response:
                await response.read()
                assert response.status == 200

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session, n // clients) for _ in range(clients)))
        return (n // clients * clients) / (time.perf_counter() - started)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run() -> str:
    """Start three servers on one model, measure them in interleaved rounds, report ratios."""
    work = Path(tempfile.mkdtemp(prefix="bench-kserve-"))
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    model = _register(tracking, work / "artifacts")
    python = sys.executable
    # `mlflow models serve` runs `uvicorn` from PATH
    path = f"{Path(python).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    base_env = {"MLFLOW_TRACKING_URI": tracking, "MLFLOW_LOG_UV_FILES": "false", "PATH": path}
    # name -> (canary split + inference log, array fast path)
    variants = {"kserve": (True, True), "kserve-pyfunc": (True, False), "kserve-bare": (False, True)}
    ports = {name: _port() for name in (*variants, "mlflow")}
    processes: dict[str, subprocess.Popen] = {}
    try:
        for name, (logged, fast) in variants.items():
            env = {**base_env, "MLPLAT_SERVING_PORT": str(ports[name]), "MLPLAT_SERVING_FAST_PATH": str(fast),
                   "MLPLAT_SERVING_INFERENCE_LOG": str(work / name) if logged else ""}  # fmt: skip
            url = f"http://127.0.0.1:{ports[name]}"
            processes[name] = _start([str(CHECKOUT_MODEL_SERVER)], env, f"{url}/v2/health/live",
                                     work / f"{name}.log")  # fmt: skip
            for version in ("1", "2"):
                httpx.post(
                    f"{url}/v2/repository/models/{model}@{version}/load", timeout=300
                ).raise_for_status()
            split = {"model_name": model, "stable": "1", "canary": "2", "canary_percent": 10} if logged else {
                "model_name": model, "stable": "1"}  # fmt: skip
            httpx.put(f"{url}/mlplat/v1/deployments/trip-completion", json=split).raise_for_status()
        mlflow_cmd = [str(Path(python).parent / "mlflow"), "models", "serve", "-m", f"models:/{model}/1",
                      "--env-manager", "local", "-h", "127.0.0.1", "-p", str(ports["mlflow"])]  # fmt: skip
        processes["mlflow"] = _start(
            mlflow_cmd, base_env, f"http://127.0.0.1:{ports['mlflow']}/ping", work / "mlflow.log"
        )
        urls = {
            name: f"http://127.0.0.1:{ports[name]}/v1/models/trip-completion:predict" for name in variants
        }
        urls["mlflow"] = f"http://127.0.0.1:{ports['mlflow']}/invocations"
        memory = {name: _rss_mb(p) for name, p in processes.items()}
        asyncio.run(_sequential(urls, 100))  # warm-up
        latency = asyncio.run(_sequential(urls, SEQUENTIAL))
        throughput: dict[str, list[float]] = {name: [] for name in urls}
        for _ in range(ROUNDS):
            for name, url in urls.items():
                throughput[name].append(asyncio.run(_concurrent(url, CONCURRENT, CLIENTS)))
        memory_after = {name: _rss_mb(p) for name, p in processes.items()}
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    logged_rows = sum(len(p.read_text().splitlines()) for p in (work / "kserve").rglob("*.jsonl"))
    shutil.rmtree(work, ignore_errors=True)
    return _report(latency, throughput, memory, memory_after, logged_rows)


def _report(latency, throughput, memory, memory_after, logged_rows) -> str:
    stats = {
        name: {
            "p50": _pct(values, 0.5) * 1000,
            "p99": _pct(values, 0.99) * 1000,
            "rps": statistics.median(throughput[name]),
        }
        for name, values in latency.items()
    }
    ref = stats["mlflow"]
    rows = []
    labels = {
        "kserve": "KServe model server: 10% canary split + inference log",
        "kserve-pyfunc": "same, array fast path off (pyfunc DataFrame path)",
        "kserve-bare": "KServe model server: one version, no log",
        "mlflow": "`mlflow models serve` (baseline)",
    }
    for name, s in stats.items():
        rows.append(
            f"| {labels[name]} | {s['p50']:.2f} | {s['p99']:.2f} | {s['rps']:.0f} | "
            f"{ref['p99'] / s['p99'] if name == 'mlflow' else s['p99'] / ref['p99']:.2f}x | "
            f"{s['rps'] / ref['rps']:.2f}x | {memory_after[name]:.0f} |"
        )
    full = stats["kserve"]
    verdict_rps = "met" if full["rps"] / ref["rps"] >= 1.7 else "MISSED"
    verdict_p99 = "met" if full["p99"] / ref["p99"] <= 0.7 else "MISSED"
    return f"""## KServe model server vs `mlflow models serve`

Same sklearn model (LogisticRegression, 4 features), single-row V1 requests (`{{"instances": [...]}}`,
which both servers accept), one uvicorn worker per server. Latency: {SEQUENTIAL} sequential requests per
server, sent to each server in turn (so load from the rest of the machine hits all alike); throughput:
{CONCURRENT} requests from {CLIENTS} concurrent keep-alive clients (aiohttp, one process), median of
{ROUNDS} interleaved rounds.

| server | p50 ms | p99 ms | req/s at {CLIENTS} clients | p99 vs baseline | throughput vs baseline | RSS MB |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Targets (split + log on vs baseline): throughput >= 1.7x -> **{full["rps"] / ref["rps"]:.2f}x ({verdict_rps})**;
p99 <= 0.7x -> **{full["p99"] / ref["p99"]:.2f}x ({verdict_p99})**.
Memory of the model server with two versions loaded: {memory["kserve"]:.0f} MB at start,
{memory_after["kserve"]:.0f} MB after the run (the one-version server: {memory_after["kserve-bare"]:.0f} MB;
`mlflow models serve` with one model: {memory_after["mlflow"]:.0f} MB, its uvicorn worker included).
The inference log holds {logged_rows} rows: every request the logged server answered.

Where the time goes: pyfunc's DataFrame path (DataFrame from the JSON rows, MLflow schema
enforcement, sklearn's feature-name validation on a DataFrame) costs about 1 ms per single-row call;
`mlflow models serve` pays it on every request and so does this server with the fast path off
({stats["kserve-pyfunc"]["rps"] / ref["rps"]:.2f}x the baseline's throughput). At load time the server
checks that the raw sklearn model predicts the logged input example from a float array in signature
order exactly as pyfunc does; if so it serves from arrays (about 0.2 ms per call), else through pyfunc.
The canary split (a counter) and the inference log (an in-memory append; orjson encoding and file
writes on a background thread every 0.5 s) cost {(1 - full["rps"] / stats["kserve-bare"]["rps"]) * 100:.0f}% of
the bare server's throughput. Per-request access/trace log lines are off (`MLPLAT_SERVING_ACCESS_LOG=true`).
p99 at this scale (a few ms) moves with whatever else runs on the 2 cores; measured server by server
instead of in turn, the split+log server's p99 ratio came out between 0.9x and 1.0x in busy runs.
"""


if __name__ == "__main__":
    print(run())
