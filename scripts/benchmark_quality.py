"""Benchmark the quality of every churn model on every dataset and write docs/benchmarks.md.

    python scripts/benchmark_quality.py                       # online_retail and taobao, 3 seeds
    python scripts/benchmark_quality.py --data my_log         # conf/data/my_log.yaml
    python scripts/benchmark_quality.py --data path/to/my_log.yaml --models gru lightgbm
    python scripts/benchmark_quality.py --quick               # 10 % of customers, 1 seed, a few batches
    python scripts/benchmark_quality.py --data taobao --models gru logreg --validation-only \
        --sequence-override model.net.wide=true               # choose settings: validation PR-AUC only

Baselines (recency, logreg, lightgbm, bgnbd, paretonbd) and sequence models (gru,
transformer) are fitted on the same training snapshots and scored once on the same test
snapshots. seqchurn.benchmark_quality describes the protocol. The taobao config reads its
file from the folder named by SEQCHURN_SHARED_DATA (see conf/data/taobao.yaml).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import tempfile
import warnings
from pathlib import Path

import pandas as pd
import yaml

from seqchurn.benchmark_quality import (
    ALL_MODELS,
    QUICK_SEQUENCE_OVERRIDES,
    BenchmarkOptions,
    benchmark_dataset,
    environment,
    load_average,
    render_results,
    results_frame,
    summarise,
    validation_rows,
    write_page,
)
from seqchurn.conf_utils import REPO_ROOT

log = logging.getLogger("benchmark_quality")
DEFAULT_DATA = ("online_retail", "taobao")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=list(DEFAULT_DATA), help="data config names under conf/data, or YAML file paths (default: %(default)s)")
    parser.add_argument("--models", nargs="+", default=list(ALL_MODELS), choices=ALL_MODELS, metavar="MODEL", help=f"models to run (default: all of {', '.join(ALL_MODELS)})")
    parser.add_argument("--seeds", type=int, default=None, help="seeds of the stochastic models (0 .. N-1; default 3, 1 with --quick)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="Hydra override for every model, e.g. data.split.train_every_days=15 (repeatable)")
    parser.add_argument("--sequence-override", action="append", default=[], metavar="KEY=VALUE", help="Hydra override for the sequence models only (repeatable)")
    parser.add_argument("--baseline-option", action="append", default=[], metavar="NAME.KEY=VALUE", help="constructor option of one baseline, e.g. bgnbd.penalizer_coef=0.001 (repeatable; VALUE is read as YAML)")
    parser.add_argument("--no-experiments", action="store_true", help="ignore conf/experiment/quality/<data>_<model>.yaml and run the plain configs")
    parser.add_argument("--sample-fraction", type=float, default=None, help="share of customers kept, by stable hash (default 1, 0.1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 1 epoch of 3 batches, a 10 %% customer sample; writes beside --work-dir")
    parser.add_argument("--work-dir", type=Path, default=None, help="checkpoints, caches and per-run results (default: a new temporary folder)")
    parser.add_argument("--validation-only", action="store_true", help="score the validation split only (to choose settings): print validation PR-AUC per model, write validation.csv in --work-dir, leave the page alone")
    parser.add_argument("--output", type=Path, default=None, help="Markdown page to update (default docs/benchmarks.md; with --quick, benchmarks.md in --work-dir)")
    return parser.parse_args(argv)


def parse_baseline_options(items: list[str]) -> dict[str, dict]:
    """``["bgnbd.penalizer_coef=0.001"]`` -> ``{"bgnbd": {"penalizer_coef": 0.001}}``."""
    options: dict[str, dict] = {}
    for item in items:
        key, sep, value = item.partition("=")
        name, dot, option = key.partition(".")
        if not sep or not dot or not name or not option:
            raise SystemExit(f"--baseline-option expects NAME.KEY=VALUE, e.g. bgnbd.penalizer_coef=0.001, but got {item!r}")
        options.setdefault(name, {})[option] = yaml.safe_load(value)
    return options


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] %(message)s")
    for noisy in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="pytorch_lightning")

    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="seqchurn_benchmark_"))
    work_dir.mkdir(parents=True, exist_ok=True)
    seeds = args.seeds
    if seeds is None:
        seeds = 1 if args.quick else 3
    if seeds < 1:
        raise SystemExit(f"--seeds must be at least 1, got {seeds}")
    sample_fraction = args.sample_fraction
    if sample_fraction is None:
        sample_fraction = 0.1 if args.quick else 1.0
    options = BenchmarkOptions(
        work_dir=work_dir,
        seeds=tuple(range(seeds)),
        models=tuple(args.models),
        overrides=tuple(args.override),
        sequence_overrides=(*(QUICK_SEQUENCE_OVERRIDES if args.quick else ()), *args.sequence_override),
        sample_fraction=sample_fraction,
        use_experiments=not args.no_experiments,
        baseline_options=parse_baseline_options(args.baseline_option),
    )
    if args.validation_only:
        rows = pd.concat([validation_rows(data, options) for data in args.data], ignore_index=True)
        rows.to_csv(work_dir / "validation.csv", index=False)
        print(rows.to_markdown(index=False, floatfmt=".4f"))
        return 0
    output = args.output or (work_dir / "benchmarks.md" if args.quick else REPO_ROOT / "docs" / "benchmarks.md")
    log.info("work dir %s; page %s", work_dir, output)
    load_at_start = load_average()

    results, notes, intervals = [], [], {}
    for data in args.data:
        measured = benchmark_dataset(data, options)
        results.extend(measured.results)
        notes.extend(measured.notes)
        intervals[measured.name] = measured.intervals
        # Written after every dataset, so a later failure keeps the finished runs.
        runs = results_frame(results)
        runs.to_csv(work_dir / "runs.csv", index=False)

    summary = summarise(runs)
    summary.to_csv(work_dir / "summary.csv", index=False)
    env = environment()
    (work_dir / "environment.json").write_text(json.dumps(env, indent=2))
    arguments = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "scripts/benchmark_quality.py", *arguments])
    if os.environ.get("SEQCHURN_SHARED_DATA"):
        command = f"SEQCHURN_SHARED_DATA={shlex.quote(os.environ['SEQCHURN_SHARED_DATA'])} {command}"
    write_page(output, render_results(summary, env, command, options.seeds, notes, load_at_start, intervals))
    log.info("wrote %s (runs in %s)", output, work_dir / "runs.csv")
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
