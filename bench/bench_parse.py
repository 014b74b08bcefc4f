"""DAG parse time and provider import cost, as ratios against bare `import airflow.sdk` in this run."""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = 9
# Time, in a fresh interpreter, what the dag processor does for a file: import it and build its DAGs.
_TIMER = """
import runpy, sys, time, importlib
t = time.perf_counter()
import airflow.sdk
base = time.perf_counter()
for target in sys.argv[1:]:
    if target.endswith(".py"):
        runpy.run_path(target)
    else:
        importlib.import_module(target)
end = time.perf_counter()
print(end - t, end - base)
"""
EMPTY_DAG = "from airflow.sdk import DAG  # an empty DAG file that only imports airflow.sdk\n"


def _time_all(targets: dict[str, list[str]]) -> dict[str, tuple[float, float]]:
    """
    Median (total, after-airflow.sdk) seconds per target over fresh interpreters, measured in
    interleaved rounds so that load from other processes hits every target alike.
    """
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in targets}
    for _ in range(RUNS):
        for name, args in targets.items():
            out = subprocess.run(
                [sys.executable, "-c", _TIMER, *args], capture_output=True, text=True, check=True, cwd=REPO
            ).stdout.split()
            samples[name].append((float(out[0]), float(out[1])))
    return {
        name: (statistics.median(t for t, _ in values), statistics.median(e for _, e in values))
        for name, values in samples.items()
    }


def run() -> str:
    dag_files = sorted((REPO / "dags").glob("*.py"))
    modules = [
        "airflow_provider_mlplat",
        *sorted(
            f"airflow_provider_mlplat.{kind}.{p.stem}"
            for kind in ("hooks", "operators", "sensors", "triggers")
            for p in (REPO / "airflow_provider_mlplat" / kind).glob("*.py")
            if p.stem != "__init__"
        ),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty_dag.py"
        empty.write_text(EMPTY_DAG)
        times = _time_all(
            {
                "empty": [str(empty)],
                "bare": [],
                **{str(p): [str(p)] for p in dag_files},
                **{m: [m] for m in modules},
            }
        )
    empty_total, bare = times["empty"][0], times["bare"][1]
    rows = ["| DAG file | parse (s) | ratio vs empty file | target |", "|---|---|---|---|"]
    rows.append(f"| (empty file, `import airflow.sdk` only) | {empty_total:.3f} | 1.00 | |")
    for path in dag_files:
        total = times[str(path)][0]
        ratio = total / empty_total
        rows.append(
            f"| `dags/{path.name}` | {total:.3f} | {ratio:.2f} | <= 1.2 {'ok' if ratio <= 1.2 else 'MISSED'} |"
        )
    rows += ["", "| provider module | added over `import airflow.sdk` (ms) | target |", "|---|---|---|"]
    for module in modules:
        ms = max(times[module][1] - bare, 0.0) * 1000
        rows.append(f"| `{module}` | {ms:.1f} | < 50 {'ok' if ms < 50 else 'MISSED'} |")
    return (
        "## DAG parse time and provider import cost\n\n"
        f"Median of {RUNS} fresh interpreters each, measured in interleaved rounds. A DAG file's time is "
        "`import airflow.sdk` plus executing the file (what the dag processor pays per file); the baseline "
        "is an empty DAG file that only imports `airflow.sdk`. A module's cost is its import time after "
        "`airflow.sdk` is loaded, minus the same measurement with nothing imported "
        f"({bare * 1000:.1f} ms).\n\n" + "\n".join(rows)
    )
