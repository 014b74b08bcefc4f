"""`make bench`: run every bench/bench_*.py and rewrite bench/RESULTS.md from what they report."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).parent


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all), e.g. parse platform")
    args = parser.parse_args()
    names = args.names or sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    results = HERE / "RESULTS.md"
    sections = _read_sections(results)
    for name in names:
        started = time.monotonic()
        print(f"== bench {name}", flush=True)
        section = importlib.import_module(f"bench.bench_{name}").run()
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        sections[name] = (
            f"{section.strip()}\n\n_Command: `make bench` (or `uv run python -m bench {name}`); "
            f"{stamp}, {time.monotonic() - started:.0f} s._\n"
        )
        print(sections[name], flush=True)
    header = (
        "# Benchmark results\n\nRatios are measured against a baseline run in the same script on the same "
        "machine (2 cores, 24 GiB). Each section is rewritten by `make bench`.\n"
    )
    results.write_text(header + "".join(f"\n<!-- {n} -->\n{s}" for n, s in sorted(sections.items())))
    return 0


def _read_sections(path: Path) -> dict[str, str]:
    """Sections of an existing RESULTS.md, so running one benchmark keeps the others."""
    if not path.exists():
        return {}
    sections, name, lines = {}, None, []
    for line in path.read_text().splitlines(keepends=True):
        if line.startswith("<!-- ") and line.rstrip().endswith(" -->"):
            if name:
                sections[name] = "".join(lines).strip("\n") + "\n"
            name, lines = line.strip()[5:-4], []
        elif name:
            lines.append(line)
    if name:
        sections[name] = "".join(lines).strip("\n") + "\n"
    return sections


if __name__ == "__main__":
    sys.exit(main())
