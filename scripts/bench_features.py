"""Measure `aggregate_features` speed and the baselines' scores on a synthetic event log.

Usage: python scripts/bench_features.py [--customers 4000] [--events-per-customer 125]
       [--cutoffs 15] [--skip-baselines] [--output docs/benchmarks/baselines.md]

Generates a log with `seqchurn.synth.generate` and loads it with the data config
conf/data/synthetic.yaml. Then it times `aggregate_features` on two snapshot sets: every
customer at each of --cutoffs cutoffs 30 days apart, ending at the config's test cutoff
(the worst case), and the active customers of `make_split_snapshots` at the config's
cutoffs. Unless --skip-baselines, it also fits every baseline on the train split and
reports the val and test metrics. Writes a Markdown page with the machine and date.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

# Run as `python scripts/bench_features.py`, so scripts/ is on sys.path.
from bench_pseudonymise import cpu_name

from seqchurn.baselines import evaluate_baselines
from seqchurn.baselines.features import aggregate_features
from seqchurn.data.io import load_events
from seqchurn.data.labels import ChurnDefinition, make_split_snapshots, plan_splits
from seqchurn.synth import generate
from seqchurn.utils.atomic import atomic_write_text

REPO = Path(__file__).resolve().parent.parent
REPEATS = 3


def best_seconds(events: pd.DataFrame, snapshots: pd.DataFrame, churn: ChurnDefinition) -> tuple[float, int]:
    best, n_columns = float("inf"), 0
    for _ in range(REPEATS):
        start = time.perf_counter()
        features = aggregate_features(events, snapshots, churn)
        best = min(best, time.perf_counter() - start)
        n_columns = features.shape[1]
    return best, n_columns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=4000, help="customers in the generated log")
    parser.add_argument("--events-per-customer", type=float, default=125.0, help="target mean events per customer")
    parser.add_argument("--cutoffs", type=int, default=15, help="cutoffs of the every-customer snapshot set")
    parser.add_argument("--skip-baselines", action="store_true", help="time the features only")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks/baselines.md"), help="Markdown file to write")
    args = parser.parse_args()

    data_cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "data" / "synthetic.yaml"), resolve=False)
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp) / "synthetic", args.customers, events_per_customer=args.events_per_customer, seed=0)
        data_cfg["sources"][0]["path"] = str(Path(tmp) / "synthetic")
        events, _ = load_events(data_cfg)

    churn = ChurnDefinition(**data_cfg["churn"])
    plan = plan_splits(**data_cfg["split"], churn=churn)
    cutoffs = pd.date_range(end=plan.test[0], periods=args.cutoffs, freq="30D")
    customers = events["customer_id"].unique()
    every_customer = pd.DataFrame({"customer_id": np.tile(customers, len(cutoffs)), "cutoff": np.repeat(cutoffs, len(customers))})
    active = make_split_snapshots(events, plan, churn)

    threads = " ".join(f"{k}={os.environ[k]}" for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS") if k in os.environ)
    command = (threads + " " if threads else "") + f"python scripts/bench_features.py --customers {args.customers} --events-per-customer {args.events_per_customer:g} --cutoffs {args.cutoffs}"
    lines = [
        "# Baseline features and scores",
        "",
        f"Measured with `{command}{' --skip-baselines' if args.skip_baselines else ''}` on {datetime.date.today().isoformat()}, "
        f"{cpu_name()} (2 logical CPUs visible, shared with other jobs), Python {platform.python_version()}, "
        f"numpy {np.__version__}, pandas {pd.__version__}. The log comes from `seqchurn.synth.generate` (seed 0) "
        f"and has {len(events):,} events of {len(customers):,} customers.",
        "",
        f"Thread settings: OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}. On busy shared CPUs, BLAS threads that "
        "compete for cores can make the logistic regression fit many times slower.",
        "",
        f"## `aggregate_features` (best of {REPEATS} runs)",
        "",
        "| snapshots | cutoffs | rows | columns | seconds |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, snapshots in (("every customer at every cutoff", every_customer), ("active customers at the config's cutoffs", active)):
        seconds, n_columns = best_seconds(events, snapshots, churn)
        lines.append(f"| {name} | {snapshots['cutoff'].nunique()} | {len(snapshots):,} | {n_columns} | {seconds:.2f} |")

    if not args.skip_baselines:
        report = evaluate_baselines(events, active, churn)
        lines += [
            "",
            "## Baselines on the active-customer snapshots",
            "",
            "Fitted on the train split (validation for early stopping and the choice of C), scored once per split. "
            "Top = the 10 % highest scores; ECE uses 15 equal-width bins.",
            "",
            "| baseline | split | rows | churn rate | AUROC | PR-AUC | log loss | Brier | ECE | precision@top | lift@top | fit seconds |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in report.itertuples():
            lines.append(
                f"| {row.baseline} | {row.split} | {row.n:,} | {row.positive_rate:.3f} | {row.auroc:.4f} | {row.average_precision:.4f} | "
                f"{row.log_loss:.4f} | {row.brier:.4f} | {row.ece:.4f} | {row.precision_at_top:.4f} | {row.lift_at_top:.3f} | {row.fit_seconds:.1f} |"
            )

    text = "\n".join(lines) + "\n"
    atomic_write_text(args.output, text)
    print(text)


if __name__ == "__main__":
    main()
