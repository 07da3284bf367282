"""How long ``intrada`` takes before it does anything: ``intrada --version`` and ``intrada fit --help``,
this checkout beside an earlier commit's package (default e3058b0, before the dispatcher), side by
side in one run, each command started ``--repeat`` times in a fresh interpreter (median seconds).

    python bench/startup.py [--repeat 5] [--baseline e3058b0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = (["--version"], ["fit", "--help"])


def extract(commit: str, into: Path) -> Path:
    """The package as it was at ``commit`` (from git history)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "intrada_pl"], capture_output=True, check=True)
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def seconds(code: Path, command: list[str], repeat: int) -> float:
    """Median wall time of ``python -m intrada_pl.cli COMMAND`` with the package found in ``code``."""
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "intrada_pl.cli", *command], env=env, cwd=code, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--baseline", default="e3058b0", help="the commit to compare with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        baseline = extract(args.baseline, Path(tmp))
        print(f"{'command':<22}{'baseline ' + args.baseline:>20}{'this checkout':>16}{'ratio':>8}")
        for command in COMMANDS:
            old, new = seconds(baseline, command, args.repeat), seconds(REPO, command, args.repeat)
            print(f"{'intrada ' + ' '.join(command):<22}{old:>19.2f}s{new:>15.2f}s{old / new:>7.1f}x")


if __name__ == "__main__":
    main()
