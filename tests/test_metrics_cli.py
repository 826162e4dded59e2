"""``seqchurn metrics`` on a hand-made CSV log: outputs, spot checks against the library, exit codes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from seqchurn.analytics.cli import load_data_config, predict_customer_value
from seqchurn.analytics.clv import fit_gamma_gamma, lifetimes_expected_purchases, rfm_summary
from seqchurn.analytics.periods import cohort_retention, period_metrics
from seqchurn.cli import main as seqchurn_main
from seqchurn.data.datamodule import churn_from_config
from seqchurn.data.io import load_events

# Purchase days and amounts per customer over 2023. c01 also returns 5.00 on 2023-02-12, and
# c02 has one view. The log ends on 2023-12-15, so with a 60-day horizon the segments are
# formed at 2023-10-17.
PURCHASES = {
    "c01": [("2023-01-05", 20.0), ("2023-02-10", 35.0), ("2023-04-02", 15.0), ("2023-06-20", 40.0), ("2023-09-01", 25.0), ("2023-11-15", 30.0)],
    "c02": [("2023-01-09", 120.0), ("2023-03-15", 80.0), ("2023-07-04", 150.0), ("2023-10-20", 95.0)],
    "c03": [("2023-01-20", 12.0)],
    "c04": [("2023-02-01", 45.0), ("2023-02-25", 50.0), ("2023-03-30", 55.0)],
    "c05": [("2023-02-14", 300.0), ("2023-05-14", 280.0), ("2023-08-14", 310.0), ("2023-11-14", 290.0)],
    "c06": [("2023-03-03", 18.0), ("2023-08-08", 22.0)],
    "c07": [("2023-04-11", 60.0)],
    "c08": [("2023-05-05", 10.0), ("2023-05-20", 12.0), ("2023-06-05", 9.0), ("2023-06-25", 14.0), ("2023-07-15", 11.0), ("2023-08-02", 13.0), ("2023-09-10", 10.0)],
    "c09": [("2023-06-01", 75.0), ("2023-09-20", 65.0)],
    "c10": [("2023-07-07", 500.0)],
    "c11": [("2023-08-19", 33.0), ("2023-12-01", 37.0)],
    "c12": [("2023-09-09", 8.0)],
    "c13": [("2023-03-21", 140.0), ("2023-04-28", 90.0), ("2023-06-30", 160.0)],
    "c14": [("2023-10-02", 27.0), ("2023-11-30", 29.0), ("2023-12-15", 31.0)],
}

DATA_CONFIG = """\
name: tiny
sources:
  - path: {path}
    columns: {{customer_id: customer, timestamp: ts, event_type: type, amount: amount, order_id: order}}
timestamp: {{unit: null, timezone: UTC, min_date: "2020-01-01"}}
event_types:
  map: {{purchase: purchase, return: return, view: view}}
  unknown: error
returns: {{order_prefixes: [], negative_quantity: false}}
strict: true
churn: {{activity_types: [purchase], lookback_days: 180, horizon_days: 60}}
"""


def write_log(folder: Path, extra_rows: list[str] = ()) -> Path:
    """Write the hand-made log as CSV with its data config; return the config path."""
    rows = ["customer,ts,type,amount,order"]
    for customer, purchases in PURCHASES.items():
        for day, amount in purchases:
            rows.append(f"{customer},{day}T10:00:00,purchase,{amount},o{len(rows)}")
    rows += ["c01,2023-02-12T09:00:00,return,5.0,r1", "c02,2023-05-01T12:00:00,view,0,", *extra_rows]
    (folder / "events.csv").write_text("\n".join(rows) + "\n")
    config = folder / "tiny.yaml"
    config.write_text(DATA_CONFIG.format(path=folder / "events.csv"))
    return config


@pytest.fixture(scope="module")
def metrics_run(tmp_path_factory):
    """Run ``seqchurn metrics`` once on the hand-made log; return (config path, output folder, exit code)."""
    folder = tmp_path_factory.mktemp("metrics")
    config = write_log(folder)
    out = folder / "out"
    code = seqchurn_main(["metrics", "--data", str(config), "--out", str(out)])
    return config, out, code


@pytest.fixture(scope="module")
def events(metrics_run):
    config, _, _ = metrics_run
    events, _ = load_events(load_data_config(str(config)))
    return events


def test_metrics_writes_every_table(metrics_run):
    _, out, code = metrics_run
    assert code == 0
    for name in ("periods", "cohort_retention", "segments"):
        assert (out / f"{name}.csv").is_file()
        assert (out / f"{name}.md").read_text().startswith("|")
    assert (out / "clv.csv").is_file()
    assert (out / "customer_segments.csv").is_file()
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["status"] == "ok"
    assert summary["rows_read"] == sum(len(p) for p in PURCHASES.values()) + 2


def test_periods_match_library(metrics_run, events):
    _, out, _ = metrics_run
    churn = churn_from_config({"activity_types": ["purchase"], "lookback_days": 180, "horizon_days": 60})
    expected = pd.read_csv(io.StringIO(period_metrics(events, "M", churn).to_csv(index=False)))
    written = pd.read_csv(out / "periods.csv")
    pd.testing.assert_frame_equal(written, expected)

    by_period = written.set_index("period")
    # January: c01, c02 and c03 buy, all for the first time.
    assert by_period.loc["2023-01", "active_customers"] == 3
    assert by_period.loc["2023-01", "new_customers"] == 3
    # February: purchases of c01, c04 (twice) and c05, minus the return of c01.
    assert by_period.loc["2023-02", "revenue"] == pytest.approx(35 + 45 + 50 + 300 - 5)


def test_cohorts_match_library(metrics_run, events):
    _, out, _ = metrics_run
    written = pd.read_csv(out / "cohort_retention.csv", index_col="cohort")
    expected = cohort_retention(events, "M")
    np.testing.assert_allclose(written.drop(columns="customers").to_numpy(), expected.drop(columns="customers").to_numpy())
    # The January cohort is c01, c02 and c03; only c01 buys in February.
    assert written.loc["2023-01", "customers"] == 3
    assert written.loc["2023-01", "1"] == pytest.approx(1 / 3)


def test_clv_matches_library(metrics_run, events):
    _, out, _ = metrics_run
    clv = pd.read_csv(out / "clv.csv", index_col="customer_id")
    summary = json.loads((out / "run_summary.json").read_text())["details"]
    assert len(clv) == len(PURCHASES)
    assert np.isfinite(clv["predicted_clv"]).all()
    assert clv.loc["c01", "historical_value"] == pytest.approx(165 - 5)
    assert clv.loc["c05", "historical_value"] == pytest.approx(1180)

    as_of = pd.Timestamp(summary["clv_as_of"])
    assert as_of == pd.Timestamp("2023-12-16", tz="UTC")
    rfm = rfm_summary(events, as_of)
    spend = fit_gamma_gamma(rfm["frequency"], rfm["monetary_value"]).expected_spend(rfm["frequency"].to_numpy(), rfm["monetary_value"].to_numpy())
    np.testing.assert_allclose(clv.loc[rfm.index, "expected_spend"], spend, rtol=1e-9)

    from lifetimes import BetaGeoFitter

    fitter = BetaGeoFitter()
    fitter.params_ = pd.Series(summary["bgnbd_params"])
    purchases = lifetimes_expected_purchases(fitter, time_unit_days=7.0)(rfm, 365.0)
    model_rows = (clv.loc[rfm.index, "purchases_model"] == "BetaGeoFitter").to_numpy()
    assert model_rows.sum() == len(rfm) - sum(summary["clv_fallbacks"].values())
    np.testing.assert_allclose(clv.loc[rfm.index, "expected_purchases"].to_numpy()[model_rows], purchases[model_rows], rtol=1e-9)
    # No discount: the value is expected purchases times expected spend.
    np.testing.assert_allclose(clv["predicted_clv"], clv["expected_purchases"] * clv["expected_spend"], rtol=1e-9)


def test_segments_cover_labelled_customers(metrics_run):
    _, out, _ = metrics_run
    segments = pd.read_csv(out / "segments.csv")
    assignments = pd.read_csv(out / "customer_segments.csv")
    # Active in the 180 days before 2023-10-17: everyone but c03, c04 and c07.
    assert sorted(assignments["customer_id"]) == sorted(set(PURCHASES) - {"c03", "c04", "c07"})
    assert segments["customers"].sum() == 11
    assert (segments["matched_customers"] == segments["customers"]).all()
    # Buying between 2023-10-17 and 2023-12-16: c01, c02, c05, c11, c14. The other 6 churned.
    assert (segments["churn_rate"] * segments["matched_customers"]).sum() == pytest.approx(6)
    assert np.isfinite(segments["mean_predicted_clv"]).all()


def test_predicted_clv_falls_back_on_nan():
    class NanForOneTimers:
        """A purchase model that returns NaN for customers without repeat purchases, as lifetimes can."""

        params_ = pd.Series({"r": 1.0})

        def conditional_expected_number_of_purchases_up_to_time(self, t, frequency, recency, T):
            return np.where(frequency > 0, 0.01 * t, np.nan)

    summary = pd.DataFrame(
        {
            "frequency": [0, 2, 3, 0],
            "recency": [0.0, 50.0, 80.0, 0.0],
            "T": [100.0, 100.0, 120.0, 10.0],
            "purchase_days": [1, 3, 4, 1],
            "days_since_last": [100.0, 50.0, 40.0, 10.0],
            "monetary_value": [np.nan, 20.0, 30.0, np.nan],
            "net_spend": [10.0, 60.0, 120.0, 5.0],
        },
        index=pd.Index(["a", "b", "c", "d"], name="customer_id"),
    )
    value = predict_customer_value(summary, pd.Timestamp("2024-01-01", tz="UTC"), 100.0, fitter=NanForOneTimers(), time_unit_days=1.0)
    assert value.fallbacks == {"purchases_population_rate": 2, "spend_population_mean": 4}
    assert np.isfinite(value.table["predicted_clv"]).all()
    # Population rate: 5 repeat purchases over 330 customer-days.
    np.testing.assert_allclose(value.table.loc[["a", "d"], "expected_purchases"], 5 / 330 * 100)
    assert value.table.loc["b", "expected_purchases"] == pytest.approx(1.0)
    # Fewer than 3 repeat customers: the spend is the mean net spend per purchase day.
    np.testing.assert_allclose(value.table["expected_spend"], 195 / 9)
    assert value.table["purchases_model"].tolist() == ["population_rate", "NanForOneTimers", "NanForOneTimers", "population_rate"]


def test_fallback_covers_every_step():
    class NanAfterTwoMonths:
        """A purchase model that becomes NaN after 60 days for customers with 3 repeat purchases."""

        params_ = pd.Series({"r": 1.0})

        def conditional_expected_number_of_purchases_up_to_time(self, t, frequency, recency, T):
            return np.where((frequency == 3) & (t > 60), np.nan, 0.01 * t)

    summary = pd.DataFrame(
        {
            "frequency": [1, 2, 3, 4],
            "recency": [20.0, 50.0, 80.0, 90.0],
            "T": [100.0, 100.0, 120.0, 100.0],
            "purchase_days": [2, 3, 4, 5],
            "days_since_last": [80.0, 50.0, 40.0, 10.0],
            "monetary_value": [10.0, 20.0, 30.0, 25.0],
            "net_spend": [20.0, 60.0, 120.0, 125.0],
        },
        index=pd.Index(["a", "b", "c", "d"], name="customer_id"),
    )
    value = predict_customer_value(
        summary, pd.Timestamp("2024-01-01", tz="UTC"), 120.0, annual_discount_rate=0.5, fitter=NanAfterTwoMonths(), time_unit_days=1.0
    )
    assert value.fallbacks["purchases_population_rate"] == 1
    # Customer c uses the population rate (10 repeat purchases over 420 days) in all four
    # 30-day steps. The discount tells this apart from model values in the first two steps.
    step_ends = np.array([30.0, 60.0, 90.0, 120.0])
    discounted_purchases = np.sum(10 / 420 * 30 / 1.5 ** (step_ends / 365))
    assert value.table.loc["c", "expected_purchases"] == pytest.approx(10 / 420 * 120)
    assert value.table.loc["c", "predicted_clv"] == pytest.approx(discounted_purchases * value.table.loc["c", "expected_spend"])
    np.testing.assert_allclose(value.table.loc[["a", "b", "d"], "expected_purchases"], 1.2)


def test_unknown_data_config_exits_2(tmp_path, capsys):
    code = seqchurn_main(["metrics", "--data", "no_such_data", "--out", str(tmp_path)])
    assert code == 2
    assert "no data config named 'no_such_data'" in capsys.readouterr().err


def test_bad_amount_exits_2(tmp_path, capsys):
    config = write_log(tmp_path, extra_rows=["c99,2023-05-05T10:00:00,purchase,twelve,o999"])
    code = seqchurn_main(["metrics", "--data", str(config), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "twelve" in err
    assert "amount" in err
    assert json.loads((tmp_path / "out" / "run_summary.json").read_text())["exit_code"] == 2


def test_late_segment_cutoff_exits_2(tmp_path, capsys):
    config = write_log(tmp_path)
    code = seqchurn_main(["metrics", "--data", str(config), "--out", str(tmp_path / "out"), "--segment-cutoff", "2023-11-01"])
    assert code == 2
    assert "ends after the log" in capsys.readouterr().err


def test_bad_frequency_exits_2(tmp_path, capsys):
    config = write_log(tmp_path)
    code = seqchurn_main(["metrics", "--data", str(config), "--out", str(tmp_path / "out"), "--freq", "fortnight"])
    assert code == 2
    assert "fortnight" in capsys.readouterr().err
