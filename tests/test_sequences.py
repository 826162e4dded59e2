"""Sequence building: vectorised arrays against a plain per-customer reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
from conftest import make_events
from test_labels import random_log

from seqchurn.data.labels import ChurnDefinition, make_snapshot
from seqchurn.data.sequences import UNKNOWN_ID, build_arrays, collapse_orders, fit_spec

CHURN = ChurnDefinition(("purchase",), lookback_days=60, horizon_days=10)


def test_arrays_match_per_customer_reference():
    events = random_log(1)
    cutoff = pd.Timestamp("2021-03-15", tz="UTC")
    snaps = make_snapshot(events, cutoff, CHURN)
    spec = fit_spec(events, snaps, max_len=5, item_vocab_size=0, activity_types=["purchase"], collapse=False)
    arrays = build_arrays(events, snaps, spec, raw=True)
    for i, cid in enumerate(snaps["customer_id"]):
        hist = events[(events["customer_id"] == cid) & (events["ts"] < cutoff)].tail(5)
        n = len(hist)
        assert arrays.mask[i].sum() == n
        assert arrays.mask[i, :n].all()  # right padding
        types = [spec.event_types.index(t) for t in hist["event_type"].astype(str)]
        assert arrays.event_type[i, :n].tolist() == types
        np.testing.assert_allclose(arrays.numeric[i, :n, 0], np.log1p(hist["amount"].to_numpy()), rtol=1e-6)
        days_before = (cutoff - hist["ts"]).dt.total_seconds().to_numpy() / 86400
        np.testing.assert_allclose(arrays.numeric[i, :n, 3], np.log1p(days_before), rtol=1e-5)
        assert np.all(arrays.numeric[i, n:] == 0)


def test_several_cutoffs_use_their_own_history():
    events = random_log(2)
    snaps = pd.concat([make_snapshot(events, t, CHURN) for t in ("2021-02-15", "2021-03-15")], ignore_index=True)
    spec = fit_spec(events, snaps, max_len=6, item_vocab_size=0, activity_types=["purchase"], collapse=False)
    both = build_arrays(events, snaps, spec)
    for t in ("2021-02-15", "2021-03-15"):
        rows = np.flatnonzero(snaps["cutoff"] == pd.Timestamp(t, tz="UTC"))
        alone = build_arrays(events, snaps.iloc[rows], spec)
        assert alone.numeric.tobytes() == both.numeric[rows].tobytes()


def test_unknown_items_get_the_unknown_id_and_are_counted():
    events = make_events([("a", "2021-01-01", "purchase", 1), ("a", "2021-01-02", "purchase", 1)])
    events["item_id"] = pd.Series(["known", "new"], dtype="str")
    snaps = make_snapshot(events, "2021-01-03", CHURN)
    spec = fit_spec(events.iloc[:1], snaps, max_len=4, item_vocab_size=5, activity_types=["purchase"], collapse=False)
    arrays = build_arrays(events, snaps, spec)
    assert arrays.item[0, :2].tolist() == [2, UNKNOWN_ID]
    assert arrays.unknown_items == 1


def test_collapse_orders_sums_lines():
    events = make_events([("a", "2021-01-01 10:00", "purchase", 2.0), ("a", "2021-01-01 10:05", "purchase", 3.0), ("a", "2021-01-03", "purchase", 1.0)])
    events["order_id"] = pd.Series(["o1", "o1", "o2"], dtype="str")
    merged = collapse_orders(events)
    assert merged["amount"].tolist() == [5.0, 1.0]
    assert merged["n_lines"].tolist() == [2.0, 1.0]
    assert str(merged["ts"].iloc[0]) == "2021-01-01 10:00:00+00:00"
