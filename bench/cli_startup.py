"""How fast the CLI answers: `dcn-ray --help` and a malformed job file refused, each in a fresh process.

    python bench/cli_startup.py [--repeat 5]

Prints the best and median wall time of each over the repeats. Targets (issue: layout):
a bad job file refused in well under 3 s, `--help` in about 1 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(argv: list[str]) -> tuple[float, int]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "dcn_ray", *argv], capture_output=True, text=True)
    return time.perf_counter() - started, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        bad = Path(folder) / "bad.yaml"
        bad.write_text("- a job file\n- that is a list\n")
        cases = {"dcn-ray --help": ["--help"], "bad job file, --dry-run": ["sweep", str(bad), "--dry-run"]}
        baseline = [sys.executable, "-c", "pass"]
        bare = min(_wall(baseline) for _ in range(args.repeat))
        print(f"python start-up alone: {bare:.3f} s")
        for label, argv in cases.items():
            runs = [timed(argv) for _ in range(args.repeat)]
            seconds = [s for s, _ in runs]
            codes = {c for _, c in runs}
            print(
                f"{label:26} best {min(seconds):.3f} s  median {statistics.median(seconds):.3f} s  exit {sorted(codes)}"
            )


def _wall(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, capture_output=True)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
