"""Outcome recording and the feedback report, checked by hand and against make_snapshot."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from seqchurn.alerts.feedback import feedback_report, label_alerts, record_outcome, record_outcomes
from seqchurn.alerts.policy import AlertPolicy, ThresholdRule, select_alerts
from seqchurn.alerts.store import AlertStore, RunMeta, Suppression
from seqchurn.data.labels import ChurnDefinition, make_snapshot
from seqchurn.data.schema import EVENT_TYPE_DTYPE, InputError

HORIZON_30 = ChurnDefinition(activity_types=("purchase",), lookback_days=365, horizon_days=30)


def make_events(rows: list[tuple]) -> pd.DataFrame:
    """Build a canonical event frame from (customer_id, ts, event_type, cancelled_at) tuples."""
    frame = pd.DataFrame(rows, columns=["customer_id", "ts", "event_type", "cancelled_at"])
    n = len(frame)
    events = pd.DataFrame(
        {
            "customer_id": frame["customer_id"].astype("str"),
            "ts": pd.to_datetime(frame["ts"], utc=True).astype("datetime64[ns, UTC]"),
            "event_type": frame["event_type"].astype(EVENT_TYPE_DTYPE),
            "amount": np.full(n, 10.0),
            "quantity": np.full(n, 1.0),
            "item_id": pd.Series([None] * n, dtype="str"),
            "category_id": pd.Series([None] * n, dtype="str"),
            "order_id": pd.Series([None] * n, dtype="str"),
            "cancelled_at": pd.to_datetime(frame["cancelled_at"], utc=True).astype("datetime64[ns, UTC]"),
        }
    )
    return events.sort_values(["customer_id", "ts"], ignore_index=True)


def record_run(store: AlertStore, run_id: str, as_of: str, probabilities: dict[str, float], reasons: dict[str, list[str]] | None = None) -> dict[str, str]:
    """Record a run alerting every given customer and return {customer_id: alert_id}."""
    scores = pd.DataFrame({"customer_id": list(probabilities), "churn_probability": list(probabilities.values())})
    scores["rank"] = scores["churn_probability"].rank(ascending=False, method="first").astype(int)
    if reasons is not None:
        scores["reasons"] = [reasons.get(c, []) for c in scores["customer_id"]]
    alerts = select_alerts(scores, AlertPolicy(threshold=ThresholdRule(override=0.0)))
    result = store.record_run(RunMeta(run_id, "m1", as_of), alerts, suppression=Suppression(window_days=0))
    return dict(zip(alerts["customer_id"], result.alert_ids))


@pytest.fixture
def store(tmp_path):
    store = AlertStore(tmp_path / "alerts.sqlite")
    yield store
    store.close()


# ---- labels -----------------------------------------------------------------------------------


def test_label_alerts_matches_make_snapshot():
    rng = np.random.default_rng(7)
    n_events = 400
    customers = rng.integers(0, 40, n_events).astype(str)
    ts = pd.Timestamp("2023-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 300 * 24, n_events), unit="h")
    event_type = rng.choice(["purchase", "view", "return"], n_events, p=[0.5, 0.4, 0.1])
    cancelled = np.where(rng.random(n_events) < 0.2, ts + pd.to_timedelta(rng.integers(1, 60 * 24, n_events), unit="h"), pd.NaT)
    events = make_events(list(zip(customers, ts, event_type, cancelled)))

    for cutoff in ("2023-04-01", "2023-07-15", "2023-09-01"):
        snapshot = make_snapshot(events, cutoff, HORIZON_30)
        alerts = pd.DataFrame({"customer_id": snapshot["customer_id"], "as_of": snapshot["cutoff"]})
        labels = label_alerts(alerts, events, HORIZON_30)
        assert labels.tolist() == snapshot["label"].tolist()
        assert 0 < labels.sum() < len(labels)


def test_label_alerts_edge_cases():
    events = make_events(
        [
            ("kept", "2024-05-10", "purchase", None),
            ("view_only", "2024-05-10", "view", None),
            ("cancelled", "2024-05-20", "purchase", "2024-05-25"),
            ("cancelled_late", "2024-05-20", "purchase", "2024-06-05"),
            ("at_end", "2024-05-31", "purchase", None),
            ("at_start", "2024-05-01", "purchase", None),
        ]
    )
    customers = ["kept", "view_only", "cancelled", "cancelled_late", "at_end", "at_start", "no_events"]
    alerts = pd.DataFrame({"customer_id": customers, "as_of": pd.Timestamp("2024-05-01", tz="UTC")})
    labels = dict(zip(customers, label_alerts(alerts, events, HORIZON_30)))
    assert labels == {"kept": 0, "view_only": 1, "cancelled": 1, "cancelled_late": 0, "at_end": 1, "at_start": 0, "no_events": 1}


# ---- outcomes ---------------------------------------------------------------------------------


def test_record_outcome_by_alert_and_customer(store):
    first = record_run(store, "r1", "2024-04-01", {"c1": 0.9, "c2": 0.8})
    second = record_run(store, "r2", "2024-05-01", {"c1": 0.95})

    assert record_outcome(store, "contacted", alert_id=first["c2"], at="2024-04-02T10:00:00Z", note="called") == [first["c2"]]
    # Without as_of, the customer's latest alert gets the outcome.
    assert record_outcome(store, "retained", customer_id="c1", at="2024-05-20") == [second["c1"]]
    assert record_outcome(store, "churned", customer_id="c1", as_of="2024-04-01") == [first["c1"]]

    alerts = store.alerts().set_index("alert_id")
    assert alerts.loc[first["c2"], "contacted_at"] == pd.Timestamp("2024-04-02T10:00:00Z")
    assert alerts.loc[first["c2"], "outcome_note"] == "called"
    assert pd.isna(alerts.loc[first["c2"], "outcome"])
    assert alerts.loc[second["c1"], "outcome"] == "retained"
    assert alerts.loc[second["c1"], "outcome_at"] == pd.Timestamp("2024-05-20", tz="UTC")
    assert alerts.loc[first["c1"], "outcome"] == "churned"
    assert pd.notna(alerts.loc[first["c1"], "outcome_at"])


def test_record_outcomes_table_later_row_wins(store):
    ids = record_run(store, "r1", "2024-04-01", {"c1": 0.9, "c2": 0.8})
    table = pd.DataFrame(
        {
            "outcome": ["contacted", "retained", "churned", "contacted"],
            "alert_id": [ids["c1"], ids["c1"], ids["c1"], None],
            "customer_id": [None, None, None, "c2"],
            "at": ["2024-04-02", "2024-04-20", "2024-04-25", "2024-04-03"],
        }
    )
    updated = record_outcomes(store, table, source="outcomes.csv")
    assert sorted(updated) == sorted(ids.values())
    alerts = store.alerts().set_index("customer_id")
    assert alerts.loc["c1", "outcome"] == "churned"
    assert alerts.loc["c1", "outcome_at"] == pd.Timestamp("2024-04-25", tz="UTC")
    assert alerts.loc["c1", "contacted_at"] == pd.Timestamp("2024-04-02", tz="UTC")
    assert alerts.loc["c2", "contacted_at"] == pd.Timestamp("2024-04-03", tz="UTC")


@pytest.mark.parametrize(
    ("row", "message", "column"),
    [
        ({"outcome": "saved", "customer_id": "c1"}, "outcome must be one of", "outcome"),
        ({"outcome": "contacted", "alert_id": "f" * 64}, "alert_id not found", "alert_id"),
        ({"outcome": "contacted", "customer_id": "nobody"}, "no stored alert for this customer", "customer_id"),
        ({"outcome": "contacted", "customer_id": "c1", "as_of": "2024-01-01"}, "as of 2024-01-01", "customer_id"),
        ({"outcome": "contacted", "customer_id": "c1", "at": "yesterday-ish"}, "invalid at", "at"),
        ({"outcome": "contacted", "customer_id": "c1", "as_of": "2024-04-01T12:00"}, "date without a time", "as_of"),
    ],
)
def test_record_outcomes_invalid_rows(store, row, message, column):
    record_run(store, "r1", "2024-04-01", {"c1": 0.9})
    good = {"outcome": "contacted", "customer_id": "c1"}
    table = pd.DataFrame([good, row])
    with pytest.raises(InputError, match=message) as error:
        record_outcomes(store, table, source="outcomes.csv")
    assert error.value.row == 2
    assert error.value.column == column
    assert error.value.file == "outcomes.csv"
    assert store.alerts()["contacted_at"].isna().all()


def test_record_outcomes_needs_key_columns(store):
    with pytest.raises(InputError, match="`outcome` column"):
        record_outcomes(store, pd.DataFrame({"alert_id": ["x"]}))
    with pytest.raises(InputError, match="alert_id` or a `customer_id"):
        record_outcomes(store, pd.DataFrame({"outcome": ["contacted"]}))
    with pytest.raises(InputError, match="needs an alert_id or a customer_id") as error:
        record_outcomes(store, pd.DataFrame({"outcome": ["contacted"], "alert_id": [None]}))
    assert error.value.row == 1


# ---- the report -------------------------------------------------------------------------------


@pytest.fixture
def report_setup(store):
    events = make_events(
        [
            ("c1", "2024-04-10", "purchase", None),
            ("c1", "2024-05-05", "view", None),  # a view is no activity
            ("c2", "2024-05-10", "purchase", None),
            ("c3", "2024-05-20", "purchase", "2024-05-25"),  # cancelled within the horizon
            ("c4", "2024-05-31", "purchase", None),  # exactly at as_of + 30 days: outside
            ("c5", "2024-06-20", "purchase", None),
            ("c9", "2024-06-30", "purchase", None),  # the last event: observed until 2024-06-30
        ]
    )
    reasons = {"c1": ["recency"], "c2": ["recency", "returns"], "c4": ["returns"]}
    ids = record_run(store, "r1", "2024-05-01", {"c1": 0.9, "c2": 0.8, "c3": 0.5, "c4": 0.3}, reasons)
    ids.update(record_run(store, "r2", "2024-06-15", {"c5": 0.6}))
    record_outcome(store, "contacted", alert_id=ids["c1"])
    record_outcome(store, "retained", alert_id=ids["c1"])
    record_outcome(store, "contacted", alert_id=ids["c2"])
    return events, ids


def test_feedback_report_hand_computed(store, report_setup):
    events, _ = report_setup
    report = feedback_report(store, events, HORIZON_30)

    # Evaluable (as_of + 30 days <= 2024-06-30): c1..c4. Churned: c1, c3, c4.
    assert report.observed_until == pd.Timestamp("2024-06-30", tz="UTC")
    assert report.n_alerts == 5
    assert report.n_evaluable == 4
    assert report.n_true_positives == 3
    assert report.precision == pytest.approx(0.75)
    assert report.n_evaluable_not_contacted == 2
    assert report.precision_not_contacted == pytest.approx(1.0)
    assert report.n_contacted == 2
    assert report.n_retained == 1
    assert report.n_churned == 0
    assert report.save_rate == pytest.approx(1.0)
    # The event log disagrees with the recorded outcome for c1: c1 churned, c2 stayed.
    assert report.save_rate_observed == pytest.approx(0.5)

    by_tier = report.by_tier.set_index("tier")
    assert by_tier.loc["high", ["alerts", "evaluable", "true_positives", "contacted", "retained"]].tolist() == [2, 2, 1, 2, 1]
    assert by_tier.loc["high", "precision"] == pytest.approx(0.5)
    assert by_tier.loc["medium", ["alerts", "evaluable", "true_positives"]].tolist() == [2, 1, 1]
    assert by_tier.loc["low", ["alerts", "evaluable", "true_positives"]].tolist() == [1, 1, 1]

    by_reason = report.by_reason.set_index("reason")
    assert sorted(by_reason.index) == ["(none)", "recency", "returns"]
    assert by_reason.loc["recency", ["alerts", "evaluable", "true_positives"]].tolist() == [2, 2, 1]
    assert by_reason.loc["returns", ["alerts", "evaluable", "true_positives"]].tolist() == [2, 2, 1]
    assert by_reason.loc["(none)", ["alerts", "evaluable", "true_positives"]].tolist() == [2, 1, 1]


def test_feedback_report_filters_and_observed_until(store, report_setup):
    events, _ = report_setup
    early = feedback_report(store, events, HORIZON_30, observed_until="2024-05-30")
    assert early.n_alerts == 5
    assert early.n_evaluable == 0
    assert early.precision is None

    only_r2 = feedback_report(store, events, HORIZON_30, run_id="r2")
    assert only_r2.n_alerts == 1
    assert only_r2.n_evaluable == 0

    since = feedback_report(store, events, HORIZON_30, since="2024-06-01")
    assert since.n_alerts == 1


def test_feedback_report_serializes(store, report_setup):
    events, _ = report_setup
    report = feedback_report(store, events, HORIZON_30)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["precision"] == pytest.approx(0.75)
    assert data["observed_until"] == "2024-06-30T00:00:00+00:00"
    assert {row["tier"] for row in data["by_tier"]} == {"high", "medium", "low"}
    text = report.to_text()
    assert "precision: 0.750 (3 churned of 4)" in text
    assert "by reason:" in text


def test_feedback_report_empty_store(store):
    events = make_events([("c1", "2024-05-10", "purchase", None)])
    report = feedback_report(store, events, HORIZON_30)
    assert report.n_alerts == 0
    assert report.precision is None
    assert report.by_tier.empty
    assert "alerts: 0" in report.to_text()
