"""Churn baselines scored on the same snapshots (customers, cutoffs, labels) as the sequence models.

All baselines implement ``Baseline``: ``fit(events, train_snaps, val_snaps)`` and
``predict_proba(events, snaps) -> P(churn)``. ``evaluate_baselines`` fits each one on the
``train`` split of ``make_split_snapshots`` output and reports the metrics of
``seqchurn.metrics`` on the other splits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import pandas as pd

from seqchurn.baselines.base import Baseline
from seqchurn.baselines.bgnbd import BuyTillYouDieBaseline
from seqchurn.baselines.features import aggregate_features, feature_names
from seqchurn.baselines.gbm import LightGBMBaseline, LogisticBaseline
from seqchurn.baselines.recency import RecencyBaseline
from seqchurn.data.labels import ChurnDefinition
from seqchurn.metrics import binary_report

log = logging.getLogger(__name__)

BASELINES: tuple[str, ...] = ("recency", "logreg", "lightgbm", "bgnbd", "paretonbd")

__all__ = [
    "BASELINES",
    "Baseline",
    "BuyTillYouDieBaseline",
    "LightGBMBaseline",
    "LogisticBaseline",
    "RecencyBaseline",
    "aggregate_features",
    "evaluate_baselines",
    "feature_names",
    "make_baseline",
]


def make_baseline(name: str, churn: ChurnDefinition, **options) -> Baseline:
    """Create the baseline called ``name`` (one of ``BASELINES``) with constructor ``options``."""
    if name == "recency":
        return RecencyBaseline(churn, **options)
    if name == "logreg":
        return LogisticBaseline(churn, **options)
    if name == "lightgbm":
        return LightGBMBaseline(churn, **options)
    if name in ("bgnbd", "paretonbd"):
        return BuyTillYouDieBaseline(churn, name, **options)
    raise ValueError(f"Expected a baseline name in {BASELINES}, but got {name!r}")


def evaluate_baselines(
    events: pd.DataFrame,
    snaps: pd.DataFrame,
    churn: ChurnDefinition,
    names: Sequence[str] = BASELINES,
    splits: Sequence[str] = ("val", "test"),
) -> pd.DataFrame:
    """Fit each baseline on the ``train`` rows of ``snaps`` and report metrics per split.

    ``snaps`` needs the ``split`` column of ``make_split_snapshots``. Returns one row per
    (baseline, split) with the ``binary_report`` keys and the fit time in seconds.
    """
    if "split" not in snaps.columns:
        raise ValueError("Expected snapshots with a `split` column (from make_split_snapshots), but it is missing")
    train = snaps[snaps["split"] == "train"]
    val = snaps[snaps["split"] == "val"]
    rows = []
    for name in names:
        baseline = make_baseline(name, churn)
        began = time.perf_counter()
        baseline.fit(events, train, val if len(val) else None)
        fit_seconds = time.perf_counter() - began
        for split in splits:
            part = snaps[snaps["split"] == split]
            if len(part) == 0:
                log.warning("evaluate_baselines: split %r has no snapshots; skipped", split)
                continue
            report = binary_report(part["label"].to_numpy(), baseline.predict_proba(events, part))
            rows.append({"baseline": name, "split": split, **report, "fit_seconds": fit_seconds})
            log.info("%s on %s: AUROC %.4f, average precision %.4f", name, split, report["auroc"], report["average_precision"])
    return pd.DataFrame(rows)
