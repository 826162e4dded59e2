"""Snapshots, labels and split planning: no label or input may see past its cutoff."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import make_events

from seqchurn.data.labels import ChurnDefinition, make_snapshot, make_split_snapshots, plan_splits
from seqchurn.data.schema import InputError
from seqchurn.data.sequences import build_arrays, fit_spec

CHURN = ChurnDefinition(("purchase",), lookback_days=30, horizon_days=10)


def test_active_and_churned_by_definition():
    events = make_events(
        [
            ("a", "2021-01-05", "purchase", 1),  # active, buys again in the horizon
            ("a", "2021-01-12", "purchase", 1),
            ("b", "2021-01-05", "purchase", 1),  # active, no purchase after: churned
            ("b", "2021-01-12", "view", 0),  # a view is not activity
            ("c", "2020-11-01", "purchase", 1),  # outside the lookback: not active
            ("d", "2021-01-05", "view", 0),  # never bought: not active
        ]
    )
    snap = make_snapshot(events, "2021-01-10", CHURN)
    assert snap["customer_id"].tolist() == ["a", "b"]
    assert snap["label"].tolist() == [0, 1]


def test_event_exactly_at_cutoff_is_future():
    events = make_events([("a", "2021-01-05", "purchase", 1), ("a", "2021-01-10", "purchase", 1), ("b", "2021-01-10", "purchase", 1)])
    snap = make_snapshot(events, "2021-01-10", CHURN)
    # b's only purchase is at T: b is not active at T, and it counts as a's return in the horizon.
    assert snap["customer_id"].tolist() == ["a"]
    assert snap["label"].tolist() == [0]


def test_horizon_end_is_exclusive():
    events = make_events([("a", "2021-01-05", "purchase", 1), ("a", "2021-01-20", "purchase", 1)])
    assert make_snapshot(events, "2021-01-10", CHURN)["label"].tolist() == [1]


def random_log(seed: int, n_customers: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    start = pd.Timestamp("2021-01-01", tz="UTC")
    for c in range(n_customers):
        for _ in range(rng.integers(1, 12)):
            ts = start + pd.Timedelta(hours=float(rng.uniform(0, 24 * 120)))
            rows.append((f"c{c:03d}", ts, rng.choice(["purchase", "view", "return"], p=[0.5, 0.4, 0.1]), float(rng.gamma(2, 10))))
    return make_events(rows)


def test_inputs_ignore_events_at_or_after_cutoff():
    events = random_log(0)
    cutoff = pd.Timestamp("2021-03-01", tz="UTC")
    snaps = make_snapshot(events, cutoff, CHURN)
    spec = fit_spec(events, snaps, max_len=8, item_vocab_size=10, activity_types=["purchase"], collapse=False)
    base = build_arrays(events, snaps, spec)

    # Add events at and after T (also for new customers), and drop every later event.
    extra = make_events([(cid, cutoff, "purchase", 99.0) for cid in snaps["customer_id"]] + [("zz", cutoff + pd.Timedelta(days=1), "purchase", 5.0)])
    more = pd.concat([events, extra]).sort_values(["customer_id", "ts"], ignore_index=True)
    fewer = events[events["ts"] < cutoff].reset_index(drop=True)
    for variant in (more, fewer):
        got = build_arrays(variant, snaps, spec)
        for name, array in base.as_inputs().items():
            assert got.as_inputs()[name].tobytes() == array.tobytes(), name


def test_split_plan_rejects_leaking_cutoffs():
    churn = ChurnDefinition(("purchase",), 365, 90)
    with pytest.raises(ValueError, match="reaches past the test cutoff"):
        plan_splits(test_cutoff="2021-06-01", val_cutoff="2021-04-01", train_first_cutoff="2020-01-01", churn=churn)
    with pytest.raises(ValueError, match="reaches past the validation cutoff"):
        plan_splits(test_cutoff="2021-09-01", val_cutoff="2021-06-01", train_cutoffs=["2021-05-01"], churn=churn)
    plan = plan_splits(test_cutoff="2021-09-01", val_cutoff="2021-06-01", train_first_cutoff="2020-06-01", train_every_days=30, churn=churn)
    assert max(plan.train) + churn.horizon <= plan.val[0]
    assert plan.val[0] + churn.horizon <= plan.test[0]


def test_split_with_one_class_fails_naming_the_split():
    events = make_events([(f"c{i}", "2021-01-05", "purchase", 1) for i in range(5)] + [("c0", "2021-01-15", "purchase", 1)])
    plan = plan_splits(test_cutoff="2021-03-01", val_cutoff="2021-02-01", train_cutoffs=["2021-01-10"], churn=CHURN)
    with pytest.raises(InputError, match="split 'val'"):
        make_split_snapshots(events, plan, CHURN)
