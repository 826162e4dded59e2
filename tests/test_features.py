"""Tests for seqchurn.baselines.features: exact values on hand-built logs and the cutoff rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from seqchurn.baselines.features import DEFAULT_TREND_DAYS, DEFAULT_WINDOWS, aggregate_features, feature_names, feature_options
from seqchurn.data.labels import ChurnDefinition
from seqchurn.data.schema import EVENT_TYPE_DTYPE, EVENT_TYPES

CUTOFF = pd.Timestamp("2024-03-01", tz="UTC")
CHURN = ChurnDefinition(activity_types=("purchase",), lookback_days=365, horizon_days=90)


def make_events(rows: list[tuple]) -> pd.DataFrame:
    """Build a canonical event frame from ``(customer, ts, type, amount[, cancelled_at])`` tuples."""
    rows = [tuple(r) + (None,) * (5 - len(r)) for r in rows]
    customer, ts, event_type, amount, cancelled_at = zip(*rows) if rows else ((),) * 5
    n = len(rows)
    frame = pd.DataFrame(
        {
            "customer_id": pd.Series(customer, dtype="str"),
            "ts": pd.to_datetime(pd.Series(ts, dtype=object), utc=True).dt.as_unit("ns"),
            "event_type": pd.Categorical(event_type, dtype=EVENT_TYPE_DTYPE),
            "amount": pd.Series(amount, dtype="float64"),
            "quantity": pd.Series([np.nan] * n, dtype="float64"),
            "item_id": pd.Series([None] * n, dtype="str"),
            "category_id": pd.Series([None] * n, dtype="str"),
            "order_id": pd.Series([None] * n, dtype="str"),
            "cancelled_at": pd.to_datetime(pd.Series(cancelled_at, dtype=object), utc=True).dt.as_unit("ns"),
        }
    )
    return frame.sort_values(["customer_id", "ts"], ignore_index=True)


def snapshots_at(customers: list[str], cutoff: pd.Timestamp = CUTOFF) -> pd.DataFrame:
    return pd.DataFrame({"customer_id": pd.Series(customers, dtype="str"), "cutoff": cutoff})


# Customer "a" at CUTOFF. Ages in days: 425, 120, 90, 60, 60, 30, 20, 10, then the cutoff itself.
HISTORY_A = [
    ("a", "2023-01-01", "purchase", 10.0),
    ("a", "2023-11-02", "purchase", 15.0),
    ("a", "2023-12-02", "view", 0.0),
    ("a", "2024-01-01", "purchase", 20.0),  # two lines of one order
    ("a", "2024-01-01", "purchase", 5.0),
    ("a", "2024-01-31", "purchase", 30.0, "2024-02-05"),  # cancelled before the cutoff
    ("a", "2024-02-10", "purchase", 40.0, "2024-03-05"),  # cancelled only after the cutoff
    ("a", "2024-02-20", "return", 5.0),
]
AT_OR_AFTER_CUTOFF = [
    ("a", "2024-03-01", "purchase", 100.0),  # exactly at the cutoff: future
    ("a", "2024-04-01", "purchase", 50.0),
    ("a", "2024-03-02", "view", 0.0),
    ("b", "2024-03-10", "purchase", 10.0),
]


def features_of_a() -> pd.Series:
    events = make_events(HISTORY_A + AT_OR_AFTER_CUTOFF)
    return aggregate_features(events, snapshots_at(["a"]), CHURN).iloc[0]


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        ("days_since_last_activity", 20.0),
        ("days_since_last_event", 10.0),
        ("days_since_last_order", 20.0),
        ("tenure_days", 425.0),
        ("n_orders", 4.0),
        ("spend", 90.0),
        ("mean_order_value", 22.5),
        ("order_gap_mean_days", 135.0),  # gaps 305, 60, 40
        ("order_gap_std_days", float(np.std([305.0, 60.0, 40.0]))),
        ("order_gap_median_days", 60.0),
        ("order_gap_ratio", 20.0 / 60.0),
        ("return_count_share", 1 / 6),  # 6 purchase lines, the cancelled one included
        ("return_amount_share", 5 / 120),
        ("cancel_count_share", 1 / 6),
        ("cancel_amount_share", 30 / 120),
        ("n_orders_30d", 1.0),
        ("n_purchase_30d", 1.0),  # the cancelled line at age 30 is no purchase
        ("spend_30d", 40.0),
        ("n_activity_30d", 1.0),
        ("n_return_30d", 1.0),
        ("n_view_30d", 0.0),
        ("n_view_90d", 1.0),  # age exactly 90 is inside [cutoff - 90 days, cutoff)
        ("n_orders_90d", 2.0),
        ("n_purchase_90d", 3.0),
        ("spend_90d", 65.0),
        ("n_activity_90d", 3.0),
        ("n_orders_180d", 3.0),
        ("n_purchase_180d", 4.0),
        ("spend_180d", 80.0),
        ("n_orders_365d", 3.0),
        ("n_cart_365d", 0.0),
        ("trend_orders_90d", (2 - 1) / (2 + 1)),
        ("trend_spend_90d", (65 - 15) / (65 + 15)),
        ("trend_activity_90d", (3 - 1) / (3 + 1)),
        ("has_history", 1.0),
        ("has_activity", 1.0),
        ("has_order", 1.0),
        ("has_gap", 1.0),
    ],
)
def test_hand_built_customer_values(column, expected):
    assert features_of_a()[column] == pytest.approx(expected, rel=1e-6)


def test_customers_without_history_get_fill_values():
    events = make_events(HISTORY_A + AT_OR_AFTER_CUTOFF + [("c", "2024-02-20", "view", 0.0)])
    features = aggregate_features(events, snapshots_at(["b", "c", "z"]), CHURN)
    b, c, z = features.iloc[0], features.iloc[1], features.iloc[2]

    # "b" has events only after the cutoff and "z" none at all: both have no history.
    for row in (b, z):
        assert row["has_history"] == 0
        assert row["days_since_last_activity"] == CHURN.lookback_days
        assert row["days_since_last_event"] == CHURN.lookback_days
        assert row["tenure_days"] == 0
        assert row.drop(["days_since_last_activity", "days_since_last_event", "days_since_last_order"]).abs().sum() == 0

    # "c" viewed once 10 days ago: history but no activity and no order.
    assert c["has_history"] == 1
    assert c["has_activity"] == 0
    assert c["has_order"] == 0
    assert c["days_since_last_event"] == pytest.approx(10.0)
    assert c["days_since_last_activity"] == CHURN.lookback_days
    assert c["n_view_30d"] == 1
    assert c["mean_order_value"] == 0
    assert c["order_gap_ratio"] == 0


def test_days_since_fill_uses_tenure_when_longer():
    events = make_events([("c", "2022-03-01", "view", 0.0)])
    features = aggregate_features(events, snapshots_at(["c"]), CHURN).iloc[0]
    tenure = (CUTOFF - pd.Timestamp("2022-03-01", tz="UTC")).days
    assert features["tenure_days"] == tenure
    assert features["days_since_last_activity"] == tenure


def test_events_at_or_after_cutoff_change_nothing():
    snapshots = snapshots_at(["a", "b"])
    only_past = aggregate_features(make_events(HISTORY_A), snapshots, CHURN)
    with_future = aggregate_features(make_events(HISTORY_A + AT_OR_AFTER_CUTOFF), snapshots, CHURN)
    pd.testing.assert_frame_equal(only_past, with_future)


def test_event_one_nanosecond_before_cutoff_counts():
    just_before = ("a", CUTOFF - pd.Timedelta(1, "ns"), "purchase", 100.0)
    features = aggregate_features(make_events(HISTORY_A + [just_before]), snapshots_at(["a"]), CHURN).iloc[0]
    assert features["n_orders"] == 5
    assert features["days_since_last_activity"] == pytest.approx(0.0, abs=1e-6)


def test_cancellation_counts_only_once_known():
    purchase = [("a", "2024-02-01", "purchase", 10.0, "2024-02-15")]
    events = make_events(purchase)
    snapshots = pd.DataFrame(
        {"customer_id": ["a", "a"], "cutoff": pd.to_datetime(["2024-02-10", "2024-02-20"], utc=True)}
    )
    features = aggregate_features(events, snapshots, CHURN)
    assert features["n_orders"].tolist() == [1.0, 0.0]
    assert features["cancel_count_share"].tolist() == [0.0, 1.0]
    assert features["has_activity"].tolist() == [1.0, 0.0]


def test_cancellation_exactly_at_cutoff_not_yet_known():
    events = make_events([("a", "2024-02-01", "purchase", 10.0, "2024-03-01")])
    features = aggregate_features(events, snapshots_at(["a"]), CHURN).iloc[0]
    assert features["n_orders"] == 1
    assert features["cancel_count_share"] == 0


def test_activity_types_follow_churn_definition():
    churn = ChurnDefinition(activity_types=("purchase", "view"), lookback_days=365, horizon_days=90)
    events = make_events([("c", "2024-02-20", "view", 0.0)])
    features = aggregate_features(events, snapshots_at(["c"]), churn).iloc[0]
    assert features["has_activity"] == 1
    assert features["days_since_last_activity"] == pytest.approx(10.0)
    assert features["n_activity_30d"] == 1


def test_output_shape_dtype_and_index():
    events = make_events(HISTORY_A + AT_OR_AFTER_CUTOFF)
    snapshots = snapshots_at(["a", "b", "a"])
    snapshots.index = [10, 5, 7]
    features = aggregate_features(events, snapshots, CHURN, windows=(7, 30))
    assert list(features.columns) == feature_names((7, 30))
    assert list(features.index) == [10, 5, 7]
    assert (features.dtypes == np.float32).all()
    assert not features.isna().any().any()
    assert "n_view_7d" in features.columns
    assert f"n_{EVENT_TYPES[-1]}_30d" in features.columns


def test_empty_snapshots_give_empty_frame():
    features = aggregate_features(make_events(HISTORY_A), snapshots_at([]), CHURN)
    assert features.shape == (0, len(feature_names()))


def random_log(seed: int, n_customers: int = 30, n_events: int = 1500) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2023-01-01", tz="UTC")
    # Whole hours, so that several lines share an order timestamp.
    ts = start + pd.to_timedelta(rng.integers(0, 500 * 24, n_events), unit="h")
    event_type = rng.choice(EVENT_TYPES, size=n_events, p=[0.3, 0.05, 0.4, 0.15, 0.05, 0.05])
    amount = np.where(np.isin(event_type, ["purchase", "return"]), rng.integers(1, 100, n_events), 0)
    cancelled = (event_type == "purchase") & (rng.random(n_events) < 0.1)
    cancelled_at = [t + pd.Timedelta(days=int(d)) if c else None for t, c, d in zip(ts, cancelled, rng.integers(0, 40, n_events))]
    customers = [f"u{c}" for c in rng.integers(0, n_customers, n_events)]
    return make_events(list(zip(customers, ts, event_type, amount.astype(float), cancelled_at)))


def reference_features(events: pd.DataFrame, customer: str, cutoff: pd.Timestamp) -> dict[str, float]:
    """Straightforward per-row computation of some features, to check the vectorised one."""
    past = events[(events["customer_id"] == customer) & (events["ts"] < cutoff)]
    cancelled = past["cancelled_at"].notna() & (past["cancelled_at"] < cutoff)
    purchases = past[(past["event_type"] == "purchase") & ~cancelled]
    order_times = sorted(set(purchases["ts"]))
    gaps = [(b - a) / pd.Timedelta(days=1) for a, b in zip(order_times, order_times[1:])]
    day = pd.Timedelta(days=1)
    in_90 = past["ts"] >= cutoff - 90 * day
    return {
        "n_orders": len(order_times),
        "spend": purchases["amount"].sum(),
        "days_since_last_order": (cutoff - order_times[-1]) / day if order_times else np.nan,
        "order_gap_median_days": float(np.median(gaps)) if gaps else 0.0,
        "order_gap_std_days": float(np.std(gaps)) if gaps else 0.0,
        "n_view_90d": int(((past["event_type"] == "view") & in_90).sum()),
        "n_purchase_90d": int(((past["event_type"] == "purchase") & ~cancelled & in_90).sum()),
        "cancel_count_share": cancelled.sum() / (past["event_type"] == "purchase").sum() if (past["event_type"] == "purchase").any() else 0.0,
        "tenure_days": (cutoff - past["ts"].min()) / day if len(past) else 0.0,
    }


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_per_row_reference(seed):
    events = random_log(seed)
    customers = sorted(events["customer_id"].unique()) + ["nobody"]
    cutoffs = pd.to_datetime(["2023-03-01T00:00", "2023-08-15T12:00", "2024-05-01T00:00"], utc=True)
    snapshots = pd.DataFrame(
        {"customer_id": np.tile(customers, len(cutoffs)), "cutoff": np.repeat(cutoffs, len(customers))}
    ).sample(frac=1.0, random_state=seed)
    features = aggregate_features(events, snapshots, CHURN)
    for index, snapshot in snapshots.iterrows():
        expected = reference_features(events, snapshot["customer_id"], snapshot["cutoff"])
        got = features.loc[index]
        for column, value in expected.items():
            if column == "days_since_last_order" and np.isnan(value):
                assert got["has_order"] == 0
                continue
            assert got[column] == pytest.approx(value, rel=1e-5, abs=1e-3), (column, snapshot.to_dict())


def test_chunking_does_not_change_result():
    events = random_log(2)
    customers = sorted(events["customer_id"].unique())
    snapshots = pd.DataFrame(
        {"customer_id": customers * 2, "cutoff": [pd.Timestamp("2023-06-01", tz="UTC")] * len(customers) + [pd.Timestamp("2024-01-01", tz="UTC")] * len(customers)}
    )
    whole = aggregate_features(events, snapshots, CHURN)
    chunked = aggregate_features(events, snapshots, CHURN, max_events_per_chunk=7)
    pd.testing.assert_frame_equal(whole, chunked)


def test_microsecond_cutoffs_accepted():
    events = make_events(HISTORY_A)
    snapshots = snapshots_at(["a"])
    snapshots["cutoff"] = snapshots["cutoff"].dt.as_unit("us")
    assert aggregate_features(events, snapshots, CHURN).iloc[0]["n_orders"] == 4


def test_naive_cutoff_rejected():
    snapshots = pd.DataFrame({"customer_id": ["a"], "cutoff": [pd.Timestamp("2024-03-01")]})
    with pytest.raises(ValueError, match="Expected `cutoff` to be a UTC datetime column"):
        aggregate_features(make_events(HISTORY_A), snapshots, CHURN)


def test_missing_snapshot_column_rejected():
    with pytest.raises(ValueError, match=r"\['cutoff'\] are missing"):
        aggregate_features(make_events(HISTORY_A), pd.DataFrame({"customer_id": ["a"]}), CHURN)


def test_integer_customer_ids_rejected():
    snapshots = pd.DataFrame({"customer_id": [1], "cutoff": [CUTOFF]})
    with pytest.raises(ValueError, match="Expected `customer_id` to be strings"):
        aggregate_features(make_events(HISTORY_A), snapshots, CHURN)


@pytest.mark.parametrize("windows", [(0,), (30, 30), (7.5,)])
def test_invalid_windows_rejected(windows):
    with pytest.raises(ValueError, match="Expected `windows` to be distinct positive whole days"):
        aggregate_features(make_events(HISTORY_A), snapshots_at(["a"]), CHURN, windows=windows)


def test_feature_options_defaults_and_config():
    assert feature_options({}) == {"windows": list(DEFAULT_WINDOWS), "trend_days": DEFAULT_TREND_DAYS}
    assert feature_options({"aggregate_features": {"windows": [1, 2, 4, 8], "trend_days": 2}}) == {"windows": [1, 2, 4, 8], "trend_days": 2}
    assert feature_options({"aggregate_features": {"trend_days": None}})["trend_days"] is None


@pytest.mark.parametrize(
    "section,needle",
    [
        ({"window": [1]}, r"Unknown key\(s\) \['window'\]"),
        ({"windows": [1, 1]}, "distinct positive whole days"),
        ({"windows": [0.5]}, "distinct positive whole days"),
        ({"trend_days": 0}, "positive whole number of days or null"),
        ([1, 2], "to be a mapping"),
    ],
)
def test_feature_options_reject_invalid(section, needle):
    with pytest.raises(ValueError, match=needle):
        feature_options({"aggregate_features": section})


def test_short_windows_count_recent_events():
    options = feature_options({"aggregate_features": {"windows": [15, 60], "trend_days": 10}})
    features = aggregate_features(make_events(HISTORY_A), snapshots_at(["a"]), CHURN, **options).iloc[0]
    # Orders of "a" 20 and 60 days before the cutoff (the one 30 days before is cancelled),
    # a view 90 days and a return 10 days before.
    assert features["n_orders_15d"] == 0
    assert features["n_orders_60d"] == 2
    assert features["n_view_60d"] == 0
    assert features["n_return_15d"] == 1
    # No order in the last 10 days against one in the 10 days before.
    assert features["trend_orders_10d"] == -1
    assert "n_orders_30d" not in features.index


def test_sequence_side_input_uses_configured_windows():
    from seqchurn.data.sequences import FeatureSpec, build_arrays, fit_spec

    events = make_events(HISTORY_A + AT_OR_AFTER_CUTOFF)
    snapshots = snapshots_at(["a", "b"])
    options = {"windows": [15, 60], "trend_days": 10}
    spec = fit_spec(events, snapshots, max_len=4, item_vocab_size=0, activity_types=["purchase"], collapse=False, aggregate=True, aggregate_options=options)
    arrays = build_arrays(events, snapshots, spec, raw=True)
    expected = aggregate_features(events, snapshots, CHURN, **options).to_numpy(dtype=np.float64)
    n_aggregate = len(feature_names(**options))

    assert spec.static_features[-n_aggregate:] == [f"agg_{name}" for name in feature_names(**options)]
    assert arrays.static.shape[1] == len(spec.static_features)
    np.testing.assert_allclose(arrays.static[:, -n_aggregate:], np.sign(expected) * np.log1p(np.abs(expected)), rtol=1e-6)
    assert FeatureSpec.from_dict(spec.to_dict()).aggregate_options == options
