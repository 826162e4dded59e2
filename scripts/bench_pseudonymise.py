"""Measure how long `seqchurn.privacy.pseudonymise` takes on event-log-sized id columns.

Usage: python scripts/bench_pseudonymise.py [--output docs/benchmarks/pseudonymise.md]

Writes a Markdown table with the best of three runs per case, and the machine and date.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

from seqchurn.privacy import pseudonymise
from seqchurn.utils.atomic import atomic_write_text
from seqchurn.utils.machine import cpu_model

# (rows, size of the id pool that rows draw from); 1M rows from a 1M pool are all distinct.
CASES = [(1_000_000, 1_000_000), (5_000_000, 1_000_000), (5_000_000, 100_000)]
REPEATS = 3


def make_ids(rows: int, pool: int) -> pd.Series:
    rng = np.random.default_rng(0)
    names = np.char.add("C", np.arange(pool).astype(str))
    picks = rng.permutation(pool) if rows == pool else rng.integers(0, pool, rows)
    return pd.Series(names[picks], dtype="str")


def time_case(ids: pd.Series, key: bytes) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        pseudonymise(ids, key)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks/pseudonymise.md"), help="Markdown file to write")
    args = parser.parse_args()

    key = os.urandom(32)
    lines = [
        "# Pseudonymisation speed",
        "",
        "`seqchurn.privacy.pseudonymise` on a `str` Series of ids like `C123456`, best of "
        f"{REPEATS} runs. Measured with `python scripts/bench_pseudonymise.py` on "
        f"{datetime.date.today().isoformat()}, {cpu_model()} ({os.cpu_count()} logical CPUs visible, "
        f"one used, shared with other jobs), Python {platform.python_version()}, pandas {pd.__version__}.",
        "",
        "| rows | distinct ids | seconds |",
        "| ---: | ---: | ---: |",
    ]
    for rows, pool in CASES:
        ids = make_ids(rows, pool)
        seconds = time_case(ids, key)
        lines.append(f"| {rows:,} | {ids.nunique():,} | {seconds:.2f} |")
        print(lines[-1], flush=True)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
