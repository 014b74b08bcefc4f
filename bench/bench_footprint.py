"""Install footprint: packages and size of the provider's core, each extra and [all], next to Airflow 3.3."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UV = str(Path(sys.executable).parent / "uv")
AIRFLOW = "apache-airflow==3.3.*"
EXTRAS = ("mlflow", "feast", "gx", "ray", "kubernetes", "evidently", "openlineage", "all")
#: the last commit whose wheel required every SDK (it installed only with a psutil override)
TURN_1 = "d9441be"


def _uv(*args: str | Path, cwd: Path) -> str:
    done = subprocess.run([UV, *map(str, args)], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"uv {' '.join(map(str, args))} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def _footprint(work: Path, name: str, requirements: list[str], *options: str) -> tuple[int, float]:
    """Packages and MB of site-packages of a fresh venv with ``requirements`` installed (from uv's cache)."""
    venv = work / name
    _uv("venv", "--no-config", "--python", sys.executable, venv, cwd=work)
    _uv(
        "pip",
        "install",
        "--no-config",
        "--python",
        venv / "bin" / "python",
        *options,
        *requirements,
        cwd=work,
    )
    listed = json.loads(_uv("pip", "list", "--no-config", "--python", venv / "bin" / "python", "--format",
                            "json", cwd=work))  # fmt: skip
    site = next((venv / "lib").glob("python3.*/site-packages"))
    size = int(
        subprocess.run(["du", "-sk", site], capture_output=True, text=True, check=True).stdout.split()[0]
    )
    return len(listed), size / 1024


def run() -> str:
    work = Path(tempfile.mkdtemp(prefix="mlplat-bench-footprint-"))
    dist = work / "dist"
    _uv("build", "--wheel", "--out-dir", dist, "--package", "airflow-provider-mlplat", cwd=REPO)
    find = ("--find-links", str(dist))
    rows = {"Airflow 3.3 alone (baseline)": _footprint(work, "airflow", [AIRFLOW])}
    rows["provider, no extra"] = _footprint(work, "core", ["airflow-provider-mlplat", AIRFLOW], *find)
    for extra in EXTRAS:
        rows[f"provider[{extra}]"] = _footprint(
            work, extra, [f"airflow-provider-mlplat[{extra}]", AIRFLOW], *find
        )
    old = tomllib.loads(
        subprocess.run(
            ["git", "show", f"{TURN_1}:pyproject.toml"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
    )
    overrides = work / "overrides.txt"
    overrides.write_text("psutil>=6.1\n")
    turn_1 = [r for r in old["project"]["dependencies"] if not r.startswith("apache-airflow>=")]
    rows[f"turn-1 wheel's hard requirements ({TURN_1}, psutil override)"] = _footprint(
        work, "turn1", [*turn_1, AIRFLOW], "--override", str(overrides)
    )
    base_n, base_mb = rows["Airflow 3.3 alone (baseline)"]
    lines = [
        "## Install footprint: the provider's core and each extra (issue 11)",
        "",
        "Each line is a fresh venv (Python 3.11) with Airflow 3.3 and the provider wheel built from this tree,",
        "installed by `uv pip install --no-config` from uv's cache; packages as `uv pip list` counts them,",
        "size as `du -sk site-packages`. The last line is what the wheel required before the split: every",
        "SDK as a hard requirement (it installs only with a `psutil>=6.1` override).",
        "",
        "| install | packages | MB | over Airflow alone |",
        "|---|---|---|---|",
    ]
    for name, (count, mb) in rows.items():
        extra = "" if name.startswith("Airflow") else f"+{count - base_n} packages, +{mb - base_mb:.0f} MB"
        lines.append(f"| {name} | {count} | {mb:.0f} | {extra} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
