"""Alert store: recording runs, idempotent re-runs, suppression, transactions and delivery status."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging

import pandas as pd
import pytest
import sqlalchemy as sa

from seqchurn.alerts.policy import AlertPolicy, select_alerts
from seqchurn.alerts.store import AlertStore, RunMeta, Suppression, make_alert_ids


@pytest.fixture
def store(tmp_path):
    store = AlertStore(tmp_path / "db" / "alerts.sqlite")
    yield store
    store.close()


def make_alerts(probabilities: dict[str, float], **extra) -> pd.DataFrame:
    """Build a selected-alerts frame (as ``select_alerts`` returns) ranked by probability."""
    scores = pd.DataFrame({"customer_id": list(probabilities), "churn_probability": list(probabilities.values())})
    scores["rank"] = scores["churn_probability"].rank(ascending=False, method="first").astype(int)
    for column, values in extra.items():
        scores[column] = values
    return select_alerts(scores, AlertPolicy(), model_threshold=0.0)


def run_meta(run_id: str, as_of: str, model_version: str = "m1") -> RunMeta:
    return RunMeta(run_id=run_id, model_version=model_version, as_of=as_of, threshold=0.5)


def table_counts(store: AlertStore) -> dict[str, int]:
    with store.engine.connect() as conn:
        return {name: conn.execute(sa.text(f"SELECT COUNT(*) FROM {name}")).scalar_one() for name in ("runs", "alerts", "deliveries")}


def test_record_and_read_back(store):
    alerts = make_alerts(
        {"c1": 0.9, "c2": 0.5, "c3": 0.3},
        reasons=[["recency", "frequency"], None, ["returns"]],
        p_churn_30d=[0.6, 0.2, 0.1],
        clv=[120.0, float("nan"), 40.0],
    )
    result = store.record_run(run_meta("r1", "2024-03-31"), alerts, sinks=["hook", "file"], n_scored=10)

    assert result.new_run
    assert result.n_new == 3
    stored = store.alerts(run_id="r1")
    assert stored["customer_id"].tolist() == ["c1", "c2", "c3"]
    assert stored["probability"].tolist() == [0.9, 0.5, 0.3]
    assert stored["tier"].tolist() == ["high", "medium", "low"]
    assert stored["reasons"].tolist() == [["recency", "frequency"], [], ["returns"]]
    assert stored["details"].iloc[0] == {"p_churn_30d": 0.6, "clv": 120.0}
    assert stored["details"].iloc[1] == {"p_churn_30d": 0.2, "clv": None}
    assert (stored["as_of"] == pd.Timestamp("2024-03-31", tz="UTC")).all()
    assert str(stored["as_of"].dtype) == "datetime64[ns, UTC]"
    assert stored["policy_reason"].iloc[0] == "p=0.900 >= threshold 0.000"

    deliveries = store.deliveries()
    assert len(deliveries) == 6
    assert set(deliveries["status"]) == {"pending"}
    assert set(deliveries["attempts"]) == {0}

    runs = store.runs()
    assert runs["n_scored"].tolist() == [10]
    assert runs["n_alerts"].tolist() == [3]
    assert store.get_run("r1") == run_meta("r1", "2024-03-31")


def test_alert_ids_deterministic(store):
    as_of = dt.date(2024, 3, 31)
    ids = make_alert_ids("r1", ["c1", "c2"], as_of)
    assert ids[0] == hashlib.sha256(b"r1\x1fc1\x1f2024-03-31").hexdigest()
    assert make_alert_ids("r1", ["c1"], as_of) == ids[:1]
    assert make_alert_ids("r2", ["c1"], as_of) != ids[:1]
    assert make_alert_ids("r1", ["c1"], dt.date(2024, 4, 1)) != ids[:1]

    result = store.record_run(run_meta("r1", "2024-03-31"), make_alerts({"c1": 0.9, "c2": 0.8}))
    assert result.alert_ids == ids


def test_rerun_same_scoring_is_idempotent(store):
    alerts = make_alerts({"c1": 0.9, "c2": 0.7, "c3": 0.6})
    first = store.record_run(run_meta("r1", "2024-03-31"), alerts, sinks=["hook"], suppression=Suppression(window_days=30))
    store.mark_delivery(first.alert_ids[0], "hook", delivered=True, attempts=1)
    before = table_counts(store)

    second = store.record_run(run_meta("r1", "2024-03-31"), alerts, sinks=["hook"], suppression=Suppression(window_days=30))

    assert table_counts(store) == before
    assert not second.new_run
    assert second.n_new == 0
    assert second.n_existing == 3
    assert second.n_suppressed == 0
    assert sorted(second.alert_ids) == sorted(first.alert_ids)
    statuses = store.deliveries().set_index("alert_id")["status"]
    assert statuses[first.alert_ids[0]] == "delivered"
    assert (statuses.drop(first.alert_ids[0]) == "pending").all()


def test_rerun_adds_only_missing_rows(store):
    store.record_run(run_meta("r1", "2024-03-31"), make_alerts({"c1": 0.9}), sinks=["hook"])
    result = store.record_run(run_meta("r1", "2024-03-31"), make_alerts({"c1": 0.9, "c2": 0.8}), sinks=["hook", "file"])

    assert result.n_new == 1
    assert result.n_existing == 1
    assert table_counts(store) == {"runs": 1, "alerts": 2, "deliveries": 4}
    assert store.runs()["n_alerts"].tolist() == [2]


def test_run_id_reused_for_other_model_raises(store):
    store.record_run(run_meta("r1", "2024-03-31"), make_alerts({"c1": 0.9}))
    with pytest.raises(ValueError, match="already stored for model 'm1'"):
        store.record_run(run_meta("r1", "2024-03-31", model_version="m2"), make_alerts({"c1": 0.9}))
    with pytest.raises(ValueError, match="as of 2024-03-31"):
        store.record_run(run_meta("r1", "2024-04-30"), make_alerts({"c1": 0.9}))


def test_zero_alerts_still_records_run(store):
    result = store.record_run(run_meta("r1", "2024-03-31"), make_alerts({}), sinks=["hook"], n_scored=5)
    assert result.n_new == 0
    assert table_counts(store) == {"runs": 1, "alerts": 0, "deliveries": 0}


def test_crash_mid_record_leaves_nothing(store, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash after the alerts were inserted")

    monkeypatch.setattr(AlertStore, "_add_missing_deliveries", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        store.record_run(run_meta("r1", "2024-03-31"), make_alerts({"c1": 0.9, "c2": 0.8}), sinks=["hook"])
    assert table_counts(store) == {"runs": 0, "alerts": 0, "deliveries": 0}

    monkeypatch.undo()
    result = store.record_run(run_meta("r1", "2024-03-31"), make_alerts({"c1": 0.9, "c2": 0.8}), sinks=["hook"])
    assert result.n_new == 2
    assert table_counts(store) == {"runs": 1, "alerts": 2, "deliveries": 2}


# ---- suppression ------------------------------------------------------------------------------


def test_suppressed_within_window(store, caplog):
    window = Suppression(window_days=30, min_rise=0.1)
    store.record_run(run_meta("r1", "2024-03-01"), make_alerts({"c1": 0.60, "c2": 0.60}), suppression=window)

    with caplog.at_level(logging.INFO, logger="seqchurn.alerts.store"):
        result = store.record_run(run_meta("r2", "2024-03-11"), make_alerts({"c1": 0.65, "c2": 0.55, "c3": 0.9}), sinks=["hook"], suppression=window)

    assert result.n_suppressed == 2
    assert sorted(result.suppressed["customer_id"]) == ["c1", "c2"]
    assert result.suppressed.set_index("customer_id").loc["c1", "prior_probability"] == 0.60
    assert store.alerts(run_id="r2")["customer_id"].tolist() == ["c3"]
    assert store.runs().set_index("run_id").loc["r2", "n_suppressed"] == 2
    assert "suppressed 2 of 3 selected customers" in caplog.text
    assert len(store.deliveries(run_id="r2")) == 1


def test_realerted_when_risk_rose_by_margin(store):
    window = Suppression(window_days=30, min_rise=0.1)
    store.record_run(run_meta("r1", "2024-03-01"), make_alerts({"c1": 0.6, "c2": 0.6}), suppression=window)
    # 0.7 - 0.6 is 0.0999... in floats; a rise of exactly the margin must still count.
    result = store.record_run(run_meta("r2", "2024-03-11"), make_alerts({"c1": 0.7, "c2": 0.69}), suppression=window)
    assert result.n_suppressed == 1
    assert store.alerts(run_id="r2")["customer_id"].tolist() == ["c1"]


@pytest.mark.parametrize(("days_later", "suppressed"), [(0, True), (29, True), (30, False), (45, False)])
def test_suppression_window_boundary(store, days_later, suppressed):
    window = Suppression(window_days=30, min_rise=0.1)
    store.record_run(run_meta("r1", "2024-03-01"), make_alerts({"c1": 0.8}), suppression=window)
    as_of = (dt.date(2024, 3, 1) + dt.timedelta(days=days_later)).isoformat()
    result = store.record_run(run_meta("r2", as_of), make_alerts({"c1": 0.8}), suppression=window)
    assert result.n_suppressed == int(suppressed)
    assert result.n_new == int(not suppressed)


def test_suppression_compares_with_latest_alert(store):
    window = Suppression(window_days=30, min_rise=0.1)
    store.record_run(run_meta("r1", "2024-03-01"), make_alerts({"c1": 0.50}), suppression=window)
    store.record_run(run_meta("r2", "2024-03-10"), make_alerts({"c1": 0.65}), suppression=window)
    # 0.70 is 0.20 above the first alert but only 0.05 above the latest one.
    result = store.record_run(run_meta("r3", "2024-03-20"), make_alerts({"c1": 0.70}), suppression=window)
    assert result.n_suppressed == 1
    assert result.suppressed["prior_probability"].tolist() == [0.65]


def test_suppressed_alerts_keep_baseline(store):
    # A slow creep of +0.06 per run re-alerts once the total rise over the last raised alert reaches 0.1.
    window = Suppression(window_days=30, min_rise=0.1)
    store.record_run(run_meta("r1", "2024-03-01"), make_alerts({"c1": 0.50}), suppression=window)
    second = store.record_run(run_meta("r2", "2024-03-05"), make_alerts({"c1": 0.56}), suppression=window)
    third = store.record_run(run_meta("r3", "2024-03-09"), make_alerts({"c1": 0.62}), suppression=window)
    assert second.n_suppressed == 1
    assert third.n_suppressed == 0


def test_later_alerts_do_not_suppress_backfill(store):
    window = Suppression(window_days=30, min_rise=0.1)
    store.record_run(run_meta("r-late", "2024-03-20"), make_alerts({"c1": 0.8}), suppression=window)
    result = store.record_run(run_meta("r-early", "2024-03-10"), make_alerts({"c1": 0.8}), suppression=window)
    assert result.n_suppressed == 0


def test_suppression_off_with_zero_window(store):
    window = Suppression(window_days=0)
    store.record_run(run_meta("r1", "2024-03-01"), make_alerts({"c1": 0.8}), suppression=window)
    result = store.record_run(run_meta("r2", "2024-03-01"), make_alerts({"c1": 0.8}), suppression=window)
    assert result.n_suppressed == 0
    assert result.n_new == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"window_days": -1}, "window_days"), ({"window_days": 1.5}, "window_days"), ({"min_rise": 2.0}, "min_rise")],
)
def test_suppression_invalid_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Suppression(**kwargs)


# ---- run metadata and configuration -----------------------------------------------------------


def test_run_meta_validation():
    assert RunMeta("r", "m", "2024-03-31T00:00:00Z").as_of == dt.date(2024, 3, 31)
    assert RunMeta("r", "m", pd.Timestamp("2024-03-31")).as_of == dt.date(2024, 3, 31)
    with pytest.raises(ValueError, match="midnight UTC"):
        RunMeta("r", "m", "2024-03-31T12:00:00")
    with pytest.raises(ValueError, match="as_of date"):
        RunMeta("r", "m", "not a date")
    with pytest.raises(ValueError, match="run_id"):
        RunMeta("", "m", "2024-03-31")
    with pytest.raises(ValueError, match="threshold"):
        RunMeta("r", "m", "2024-03-31", threshold=1.5)


def test_store_from_config_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'from-url.sqlite'}"
    store = AlertStore.from_config({"url": url})
    store.record_run(run_meta("r1", "2024-03-31"), make_alerts({"c1": 0.9}))
    store.close()
    reopened = AlertStore(tmp_path / "from-url.sqlite")
    assert reopened.alerts()["customer_id"].tolist() == ["c1"]
    reopened.close()
    with pytest.raises(ValueError, match="Unknown alert store keys"):
        AlertStore.from_config({"uri": url})


def test_store_repr_hides_password():
    engine = sa.create_engine("sqlite://")
    store = AlertStore(engine=engine)
    assert "sqlite://" in repr(store)
    store.close()


# ---- delivery status ------------------------------------------------------------------------


def test_mark_delivery_and_requeue(store):
    result = store.record_run(run_meta("r1", "2024-03-31"), make_alerts({"c1": 0.9, "c2": 0.8}), sinks=["hook"])
    first, second = result.alert_ids

    store.mark_delivery(first, "hook", delivered=False, attempts=3, error="HTTP 503")
    store.mark_delivery(second, "hook", delivered=False, attempts=1, error="HTTP 400", permanent=True)
    rows = store.deliveries().set_index("alert_id")
    assert rows.loc[first, "status"] == "pending"
    assert rows.loc[first, "attempts"] == 3
    assert rows.loc[first, "last_error"] == "HTTP 503"
    assert rows.loc[second, "status"] == "failed"
    assert store.pending()["alert_id"].tolist() == [first]

    assert store.requeue_failed(sink="hook") == 1
    assert sorted(store.pending()["alert_id"]) == sorted([first, second])
    assert store.deliveries().set_index("alert_id").loc[second, "last_error"] == "HTTP 400"

    store.mark_delivery(first, "hook", delivered=True, attempts=1)
    rows = store.deliveries().set_index("alert_id")
    assert rows.loc[first, "status"] == "delivered"
    assert rows.loc[first, "attempts"] == 4
    assert pd.isna(rows.loc[first, "last_error"])
    assert pd.notna(rows.loc[first, "delivered_at"])

    with pytest.raises(KeyError, match="No delivery"):
        store.mark_delivery(first, "email", delivered=True, attempts=1)


def test_invalid_status_filter_raises(store):
    with pytest.raises(ValueError, match="delivery status"):
        store.deliveries(status="sent")
