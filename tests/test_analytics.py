"""Tests for period metrics, cohorts, Gamma-Gamma CLV and RFM segments.

The hand-made log below is small enough that every expected number is worked out in the
comments next to it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from seqchurn.analytics.clv import (
    conditional_expected_spend,
    fit_gamma_gamma,
    gamma_gamma_log_likelihood,
    lifetimes_expected_purchases,
    predict_clv,
    rfm_summary,
)
from seqchurn.analytics.periods import PERIOD_COLUMNS, cohort_retention, period_metrics
from seqchurn.analytics.segments import name_segment, segment_customers, segment_summary
from seqchurn.analytics.tables import format_frame, to_markdown, write_table
from seqchurn.data.labels import ChurnDefinition, make_snapshot
from seqchurn.data.schema import COLUMNS, EVENT_TYPE_DTYPE

NAN = float("nan")


def make_events(rows: list[tuple]) -> pd.DataFrame:
    """Build a canonical event frame from (customer, ts, type, amount, order_id, cancelled_at) rows."""
    raw = pd.DataFrame(rows, columns=["customer_id", "ts", "event_type", "amount", "order_id", "cancelled_at"])
    events = pd.DataFrame(
        {
            "customer_id": raw["customer_id"].astype("str"),
            "ts": pd.to_datetime(raw["ts"], utc=True).astype("datetime64[ns, UTC]"),
            "event_type": raw["event_type"].astype(EVENT_TYPE_DTYPE),
            "amount": raw["amount"].astype("float64"),
            "quantity": NAN,
            "item_id": pd.Series([None] * len(raw), dtype="str"),
            "category_id": pd.Series([None] * len(raw), dtype="str"),
            "order_id": raw["order_id"].astype("str"),
            "cancelled_at": pd.to_datetime(raw["cancelled_at"], utc=True).astype("datetime64[ns, UTC]"),
        }
    )
    return events[list(COLUMNS)].sort_values(["customer_id", "ts"], kind="stable").reset_index(drop=True)


# Customer A: one order of two lines, a view, a later order.
# Customer B: two purchases without order id, then a return.
# Customer C: an order cancelled two days later (with its return event), then a real order.
# Customer D: purchases either side of the March / April boundary.
# Customer E: views only, never active.
HAND_LOG = [
    ("A", "2021-01-05 10:00", "purchase", 100.0, "o1", None),
    ("A", "2021-01-05 10:00", "purchase", 50.0, "o1", None),
    ("A", "2021-02-15 09:00", "view", 0.0, None, None),
    ("A", "2021-03-10 12:00", "purchase", 80.0, "o2", None),
    ("B", "2021-01-20 08:00", "purchase", 30.0, None, None),
    ("B", "2021-01-25 08:00", "purchase", 20.0, None, None),
    ("B", "2021-02-02 08:00", "return", 10.0, None, None),
    ("C", "2021-02-10 08:00", "purchase", 60.0, "o3", "2021-02-12 08:00"),
    ("C", "2021-02-12 08:00", "return", 60.0, "o3", None),
    ("C", "2021-04-05 08:00", "purchase", 40.0, "o4", None),
    ("D", "2021-03-31 23:00", "purchase", 25.0, "o5", None),
    ("D", "2021-04-01 00:00", "purchase", 15.0, "o6", None),
    ("E", "2021-02-20 08:00", "view", 0.0, None, None),
]
HAND_CHURN = ChurnDefinition(activity_types=("purchase",), lookback_days=60, horizon_days=30)


@pytest.fixture
def hand_events() -> pd.DataFrame:
    return make_events(HAND_LOG)


# Worked by hand with a 60-day lookback. The log covers 2021-01-05 to 2021-04-06 (exclusive).
# Existing at Jan 1 (window Nov 2 - Jan 1): nobody.
# Existing at Feb 1 (Dec 3 - Feb 1): A, B.
# Existing at Mar 1 (Dec 31 - Mar 1): A, B. C's purchase was cancelled on Feb 12, before Mar 1.
# Existing at Apr 1 (Jan 31 - Apr 1): A (Mar 10), D (Mar 31 23:00). B's last purchase is Jan 25.
# Existing at May 1 (Mar 2 - May 1): A, C (Apr 5), D.
EXPECTED_PERIODS = {
    "period": ["2021-01", "2021-02", "2021-03", "2021-04"],
    # Jan starts before the first event day (Jan 5), Apr ends after the last (Apr 6).
    "complete": [False, True, True, False],
    # Start - 60 days is on or after Jan 5 only for Apr (Jan 31).
    "lookback_covered": [False, False, False, True],
    "customers_start": [0, 2, 2, 2],
    "customers_end": [2, 2, 2, 3],
    # Jan: A, B. Mar: D. Apr: C, whose only earlier purchase was cancelled.
    "new_customers": [2, 0, 1, 1],
    # Feb: A only viewed, B only returned, C's purchase was cancelled by Mar 1.
    "active_customers": [2, 0, 2, 2],
    # Feb: A and B. Mar: B. Apr: A.
    "churned_customers": [0, 2, 1, 1],
    # (start - end) / start; Apr is negative because C arrived and only A left.
    "churn_rate_headcount": [NAN, 0.0, 0.0, -0.5],
    "churn_rate_activity": [NAN, 1.0, 0.5, 0.5],
    "retention_rate": [NAN, 0.0, 0.5, 0.5],
    # Jan: order o1 (two lines) + two B purchases without order id. Mar: o2, o5. Apr: o6, o4.
    "purchases": [3, 0, 2, 2],
    # Jan: A's two lines and B's two purchases. Feb: no active customer.
    "events": [4, 0, 2, 2],
    "purchases_per_active": [1.5, NAN, 1.0, 1.0],
    "events_per_active": [2.0, NAN, 1.0, 1.0],
    # Jan: 100 + 50 + 30 + 20. Feb: 60 - 10 - 60. Mar: 80 + 25. Apr: 15 + 40.
    "revenue": [200.0, -10.0, 105.0, 55.0],
}


def test_period_metrics_hand_log(hand_events):
    table = period_metrics(hand_events, "M", HAND_CHURN)

    assert list(table.columns) == list(PERIOD_COLUMNS)
    for column, expected in EXPECTED_PERIODS.items():
        actual = table[column].tolist()
        if column in ("period", "complete", "lookback_covered") or table[column].dtype.kind == "i":
            assert actual == expected, column
        else:
            np.testing.assert_allclose(np.asarray(actual, dtype=float), expected, equal_nan=True, err_msg=column)
    starts = pd.to_datetime(["2021-01-01", "2021-02-01", "2021-03-01", "2021-04-01"], utc=True)
    ends = pd.to_datetime(["2021-02-01", "2021-03-01", "2021-04-01", "2021-05-01"], utc=True)
    assert table["period_start"].tolist() == list(starts)
    assert table["period_end"].tolist() == list(ends)


def test_period_metrics_counts_are_integers(hand_events):
    table = period_metrics(hand_events, "M", HAND_CHURN)
    for column in ("customers_start", "customers_end", "new_customers", "active_customers", "churned_customers", "purchases", "events"):
        assert table[column].dtype.kind == "i", column


def test_period_metrics_view_activity(hand_events):
    # With views as activity, A is active in Feb and E appears as a new customer there.
    churn = ChurnDefinition(activity_types=("purchase", "view"), lookback_days=60)
    table = period_metrics(hand_events, "M", churn).set_index("period")
    assert table.loc["2021-02", "active_customers"] == 2
    assert table.loc["2021-02", "new_customers"] == 1
    assert table.loc["2021-02", "churned_customers"] == 1
    # A's view is an event of an active customer; E's view too.
    assert table.loc["2021-02", "events"] == 2


def random_log(seed: int, n_customers: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = n_customers * 6
    customers = rng.integers(0, n_customers, n)
    ts = pd.Timestamp("2022-01-01", tz="UTC") + pd.to_timedelta(rng.uniform(0, 300, n), unit="D")
    types = rng.choice(["purchase", "view", "return"], n, p=[0.6, 0.3, 0.1])
    cancelled = np.where(rng.random(n) < 0.1, ts + pd.to_timedelta(rng.uniform(0, 20, n), unit="D"), pd.NaT)
    cancelled = np.where(types == "purchase", cancelled, pd.NaT)
    rows = [
        (f"c{c}", t, e, float(a), f"o{i}", x)
        for i, (c, t, e, a, x) in enumerate(zip(customers, ts, types, rng.gamma(2, 20, n), cancelled))
    ]
    return make_events(rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_period_churn_matches_snapshot_labels(seed):
    # Activity churn of a period is the label of a snapshot at its start with the period as horizon.
    events = random_log(seed)
    table = period_metrics(events, "M", ChurnDefinition(lookback_days=45))
    for row in table.itertuples():
        days = (row.period_end - row.period_start) / pd.Timedelta(days=1)
        snapshot = make_snapshot(events, row.period_start, ChurnDefinition(lookback_days=45, horizon_days=days))
        assert row.customers_start == len(snapshot), row.period
        assert row.churned_customers == int(snapshot["label"].sum()), row.period


@pytest.mark.parametrize("seed", [0, 1])
def test_period_metrics_invariants(seed):
    table = period_metrics(random_log(seed), "W", ChurnDefinition(lookback_days=30))
    assert (table["customers_end"].iloc[:-1].to_numpy() == table["customers_start"].iloc[1:].to_numpy()).all()
    assert (table["churned_customers"] <= table["customers_start"]).all()
    assert (table["new_customers"] <= table["active_customers"]).all()
    rates = table.dropna(subset=["churn_rate_activity"])
    np.testing.assert_allclose(rates["retention_rate"] + rates["churn_rate_activity"], 1.0)


def test_period_metrics_rejects_bad_input(hand_events):
    with pytest.raises(ValueError, match="period frequency"):
        period_metrics(hand_events, "not-a-freq", HAND_CHURN)
    with pytest.raises(ValueError, match="non-empty"):
        period_metrics(hand_events.iloc[:0], "M", HAND_CHURN)
    with pytest.raises(ValueError, match="columns"):
        period_metrics(hand_events.drop(columns=["cancelled_at"]), "M", HAND_CHURN)


def test_cohort_retention_hand_log(hand_events):
    table = cohort_retention(hand_events, "M")
    # Cohorts by first non-cancelled purchase: A, B in Jan; D in Mar; C in Apr (its Feb order was cancelled).
    assert table.index.tolist() == ["2021-01", "2021-03", "2021-04"]
    assert table["customers"].tolist() == [2, 1, 1]
    assert [c for c in table.columns if c != "customers"] == [0, 1, 2, 3]
    expected = np.array(
        [
            [1.0, 0.0, 0.5, 0.0],  # Jan cohort: nobody in Feb, A in Mar, nobody in Apr.
            [1.0, 1.0, NAN, NAN],  # Mar cohort: D again on Apr 1; May and later not observed.
            [1.0, NAN, NAN, NAN],  # Apr cohort: the log ends in Apr.
        ]
    )
    np.testing.assert_allclose(table[[0, 1, 2, 3]].to_numpy(), expected, equal_nan=True)


def test_cohort_retention_quarterly(hand_events):
    table = cohort_retention(hand_events, "Q")
    # Q1 cohort: A, B, D. In Q2: D (Apr 1). C starts in Q2.
    assert table.index.tolist() == ["2021Q1", "2021Q2"]
    assert table["customers"].tolist() == [3, 1]
    np.testing.assert_allclose(table[[0, 1]].to_numpy(), [[1.0, 1 / 3], [1.0, NAN]], equal_nan=True)


def test_write_table_csv_and_markdown(hand_events, tmp_path):
    table = period_metrics(hand_events, "M", HAND_CHURN)
    paths = write_table(table, tmp_path / "out", "periods", index=False)

    back = pd.read_csv(paths["csv"])
    assert back["period"].tolist() == EXPECTED_PERIODS["period"]
    np.testing.assert_allclose(back["revenue"], EXPECTED_PERIODS["revenue"])

    markdown = paths["md"].read_text()
    lines = markdown.strip().splitlines()
    assert len(lines) == 2 + len(table)
    april = lines[-1]
    assert "-50.0%" in april
    assert "55.00" in april
    assert "2021-04-01" in april
    assert "-10.00" in lines[3]


def test_markdown_formats_cohorts(hand_events):
    markdown = to_markdown(cohort_retention(hand_events, "M"))
    assert "100.0%" in markdown
    assert "50.0%" in markdown


def test_format_frame_thousands():
    frame = pd.DataFrame({"customers": [1234567], "revenue": [9876543.219], "churn_rate": [0.12345], "flag": [True]})
    formatted = format_frame(frame)
    assert formatted.iloc[0].tolist() == ["1,234,567", "9,876,543.22", "12.3%", "yes"]


# --- CLV -------------------------------------------------------------------------------


def test_rfm_summary_hand_log(hand_events):
    summary = rfm_summary(hand_events, "2021-04-01")
    # C's only purchase before the cutoff was cancelled before it, and E never bought.
    assert summary.index.tolist() == ["A", "B", "D"]

    a, b, d = summary.loc["A"], summary.loc["B"], summary.loc["D"]
    # A: purchase days Jan 5 (100 + 50) and Mar 10 (80).
    assert a["purchase_days"] == 2
    assert a["frequency"] == 1
    assert a["recency"] == 64  # Jan 5 -> Mar 10
    assert a["T"] == 86  # Jan 5 -> Apr 1
    assert a["days_since_last"] == 22
    assert a["monetary_value"] == 80  # the repeat day only
    assert a["net_spend"] == 230
    # B: Jan 20 (30) and Jan 25 (20), return of 10.
    assert b["frequency"] == 1
    assert b["recency"] == 5
    assert b["T"] == 71
    assert b["monetary_value"] == 20
    assert b["net_spend"] == 40
    # D: Mar 31 only; the Apr 1 purchase is at the cutoff and belongs to the future.
    assert d["frequency"] == 0
    assert d["T"] == 1
    assert np.isnan(d["monetary_value"])
    assert d["net_spend"] == 25


def simulate_gamma_gamma(p: float, q: float, gamma: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw mean spends of x purchases: nu ~ Gamma(q, rate gamma), each spend ~ Gamma(p, rate nu)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 8, n)
    nu = rng.gamma(q, 1.0 / gamma, n)
    # The sum of x Gamma(p, nu) draws is Gamma(p x, nu).
    mean_spend = rng.gamma(p * x, 1.0 / nu) / x
    return x, mean_spend


def test_gamma_gamma_recovers_parameters():
    p, q, gamma = 6.0, 4.0, 15.0
    x, m = simulate_gamma_gamma(p, q, gamma, n=20_000, seed=0)
    fit = fit_gamma_gamma(x, m)
    # Tolerances are about 1.5 times the largest error over 30 seeds at this sample size.
    assert fit.converged
    assert fit.p == pytest.approx(p, rel=0.15)
    assert fit.q == pytest.approx(q, rel=0.05)
    assert fit.gamma == pytest.approx(gamma, rel=0.2)
    assert fit.population_mean_spend == pytest.approx(p * gamma / (q - 1), rel=0.02)
    assert abs(fit.correlation) < 0.05
    assert fit.n_customers == 20_000


def test_gamma_gamma_matches_lifetimes():
    lifetimes = pytest.importorskip("lifetimes")
    x, m = simulate_gamma_gamma(3.0, 5.0, 40.0, n=2_000, seed=1)
    fit = fit_gamma_gamma(x, m)
    reference = lifetimes.GammaGammaFitter().fit(pd.Series(x), pd.Series(m))
    assert fit.p == pytest.approx(reference.params_["p"], rel=1e-3)
    assert fit.q == pytest.approx(reference.params_["q"], rel=1e-3)
    assert fit.gamma == pytest.approx(reference.params_["v"], rel=1e-3)
    expected = reference.conditional_expected_average_profit(pd.Series(x), pd.Series(m)).to_numpy()
    np.testing.assert_allclose(fit.expected_spend(x, m), expected, rtol=1e-3)


def test_gamma_gamma_likelihood_integrates_to_one():
    # The density of the mean spend of x = 3 purchases must integrate to 1 over m > 0.
    from scipy import integrate

    total, _ = integrate.quad(lambda m: np.exp(gamma_gamma_log_likelihood(2.0, 3.0, 10.0, 3, m)), 0, np.inf)
    assert total == pytest.approx(1.0, abs=1e-6)


def test_expected_spend_shrinks_to_population():
    p, q, gamma = 2.0, 3.0, 10.0
    population = p * gamma / (q - 1)  # 10
    spend = conditional_expected_spend(p, q, gamma, np.array([0, 1, 100]), np.array([NAN, 40.0, 40.0]))
    assert spend[0] == pytest.approx(population)
    # x = 1, m = 40: 2 * (10 + 40) / (2 + 3 - 1) = 25.
    assert spend[1] == pytest.approx(25.0)
    # Many purchases: close to the customer's own mean.
    assert spend[2] == pytest.approx(40.0, rel=0.02)


def test_gamma_gamma_rejects_too_few_customers():
    with pytest.raises(ValueError, match="at least 3"):
        fit_gamma_gamma(np.array([0, 1, 2, 0]), np.array([NAN, 10.0, 0.0, 5.0]))
    with pytest.raises(ValueError, match="equal length"):
        fit_gamma_gamma(np.array([1, 2]), np.array([1.0]))


@pytest.fixture
def clv_summary() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "frequency": [0, 2, 5],
            "recency": [0.0, 30.0, 200.0],
            "T": [10.0, 100.0, 300.0],
            "monetary_value": [NAN, 50.0, 20.0],
            "net_spend": [15.0, 140.0, 110.0],
        },
        index=pd.Index(["a", "b", "c"], name="customer_id"),
    )


def test_predict_clv_without_discount(clv_summary):
    fit = fit_gamma_gamma(*simulate_gamma_gamma(3.0, 5.0, 40.0, n=500, seed=2))
    rate = np.array([0.01, 0.02, 0.05])  # purchases per day

    result = predict_clv(clv_summary, fit, lambda summary, t: rate * t, horizon_days=365)

    spend = fit.expected_spend(clv_summary["frequency"].to_numpy(), clv_summary["monetary_value"].to_numpy())
    np.testing.assert_allclose(result["expected_purchases"], rate * 365)
    np.testing.assert_allclose(result["expected_spend"], spend)
    np.testing.assert_allclose(result["predicted_clv"], rate * 365 * spend)
    np.testing.assert_allclose(result["historical_value"], [15.0, 140.0, 110.0])
    assert result.index.tolist() == ["a", "b", "c"]


class SaturatingPurchases:
    """A purchase model with lifetimes' ``predict(t, frequency, recency, T)`` interface."""

    def predict(self, t, frequency, recency, T):
        return (np.asarray(frequency) + 1) * (1 - np.exp(-np.asarray(t) / 90.0))


def test_predict_clv_matches_lifetimes_discounting(clv_summary):
    pytest.importorskip("lifetimes")
    from lifetimes.utils import _customer_lifetime_value

    fit = fit_gamma_gamma(*simulate_gamma_gamma(3.0, 5.0, 40.0, n=500, seed=3))
    model = SaturatingPurchases()
    spend = pd.Series(fit.expected_spend(clv_summary["frequency"].to_numpy(), clv_summary["monetary_value"].to_numpy()), index=clv_summary.index)
    monthly_rate = 0.01
    reference = _customer_lifetime_value(
        model, clv_summary["frequency"], clv_summary["recency"], clv_summary["T"], spend, time=12, discount_rate=monthly_rate, freq="D"
    )

    # lifetimes discounts month k by (1 + monthly_rate) ** k with 30-day months.
    annual_rate = (1 + monthly_rate) ** (365 / 30) - 1
    result = predict_clv(
        clv_summary,
        fit,
        lambda s, t: model.predict(t, s["frequency"], s["recency"], s["T"]),
        horizon_days=360,
        annual_discount_rate=annual_rate,
        step_days=30,
    )
    np.testing.assert_allclose(result["predicted_clv"], reference.to_numpy(), rtol=1e-9)


def test_clv_with_bgnbd_purchases():
    pytest.importorskip("lifetimes")
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*chained_assignment.*")
        from lifetimes import BetaGeoFitter
        from lifetimes.generate_data import beta_geometric_nbd_model

    # lifetimes draws from numpy's global generator: seed it and restore it afterwards.
    state = np.random.get_state()
    try:
        np.random.seed(0)
        weeks = beta_geometric_nbd_model(52, r=0.243, alpha=4.414, a=0.793, b=2.426, size=500)
    finally:
        np.random.set_state(state)
    week = 7.0
    x, m = simulate_gamma_gamma(3.0, 5.0, 40.0, n=500, seed=6)
    summary = pd.DataFrame(
        {
            "frequency": weeks["frequency"].to_numpy(),
            "recency": weeks["recency"].to_numpy() * week,
            "T": weeks["T"].to_numpy() * week,
            "monetary_value": np.where(weeks["frequency"] > 0, m, NAN),
            "net_spend": m * (weeks["frequency"].to_numpy() + 1),
        }
    )
    fitter = BetaGeoFitter().fit(summary["frequency"], summary["recency"] / week, summary["T"] / week)
    expected = lifetimes_expected_purchases(fitter, time_unit_days=week)

    direct = fitter.conditional_expected_number_of_purchases_up_to_time(
        90 / week, summary["frequency"], summary["recency"] / week, summary["T"] / week
    )
    np.testing.assert_allclose(expected(summary, 90.0), np.asarray(direct))
    assert (expected(summary, 180.0) >= expected(summary, 90.0)).all()

    spend = fit_gamma_gamma(summary["frequency"], summary["monetary_value"])
    result = predict_clv(summary, spend, expected, horizon_days=180)
    np.testing.assert_allclose(result["expected_purchases"], expected(summary, 180.0))
    np.testing.assert_allclose(result["predicted_clv"], expected(summary, 180.0) * result["expected_spend"])


def test_predict_clv_partial_last_step(clv_summary):
    fit = fit_gamma_gamma(*simulate_gamma_gamma(3.0, 5.0, 40.0, n=500, seed=4))
    calls = []

    def purchases(summary, t):
        calls.append(t)
        return np.full(len(summary), t / 100)

    predict_clv(clv_summary, fit, purchases, horizon_days=75, step_days=30, annual_discount_rate=0.1)
    assert calls == [30.0, 60.0, 75.0]


def test_predict_clv_rejects_bad_callable(clv_summary):
    fit = fit_gamma_gamma(*simulate_gamma_gamma(3.0, 5.0, 40.0, n=500, seed=5))
    with pytest.raises(ValueError, match="3 values"):
        predict_clv(clv_summary, fit, lambda s, t: np.ones(2), horizon_days=30)
    with pytest.raises(ValueError, match=">= 0"):
        predict_clv(clv_summary, fit, lambda s, t: -np.ones(3), horizon_days=30)
    with pytest.raises(ValueError, match="finite"):
        predict_clv(clv_summary, fit, lambda s, t: np.array([1.0, NAN, 1.0]), horizon_days=30)
    with pytest.raises(ValueError, match="horizon_days"):
        predict_clv(clv_summary, fit, lambda s, t: np.ones(3), horizon_days=0)


# --- Segments ---------------------------------------------------------------------------


def three_group_summary(seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """RFM summary with three well-separated groups, and the true group of each customer.

    Group 0 (125): lapsing one-timers with small baskets. Group 1 (50): recent buyers with
    2-3 purchase days. Group 2 (75): recent frequent big spenders. The sizes put every
    median that the segment names use into a gap between groups.
    """
    rng = np.random.default_rng(seed)
    sizes = (125, 50, 75)
    groups = np.repeat([0, 1, 2], sizes)
    days_since_last = np.concatenate([rng.uniform(250, 350, 125), rng.uniform(5, 40, 50), rng.uniform(1, 20, 75)])
    purchase_days = np.concatenate([np.ones(125), rng.integers(2, 4, 50), rng.integers(12, 20, 75)]).astype(np.int64)
    net_spend = np.concatenate([rng.uniform(10, 20, 125), rng.uniform(100, 200, 50), rng.uniform(2000, 4000, 75)])
    summary = pd.DataFrame(
        {"days_since_last": days_since_last, "purchase_days": purchase_days, "net_spend": net_spend},
        index=pd.Index([f"c{i:03d}" for i in range(sum(sizes))], name="customer_id"),
    )
    return summary, groups


def test_segments_find_planted_groups():
    summary, groups = three_group_summary()
    result = segment_customers(summary, k_range=(2, 6), seed=0)

    assert result.k == 3
    assert set(result.silhouette) == {2, 3, 4, 5, 6}
    assert max(result.silhouette, key=result.silhouette.get) == 3
    assert adjusted_rand_score(groups, result.assignments["segment"]) == 1.0
    assert result.profiles["customers"].tolist() == [125, 75, 50]
    # The recency median falls between 40 and 250 days, and the spend median between 20
    # and 100. The median purchase days of repeat customers lie inside group 2 (12 or more).
    assert result.profiles["segment_name"].tolist() == [
        "lapsing low-spend one-timers",
        "recent high-spend frequent buyers",
        "recent high-spend repeat buyers",
    ]
    assert result.medians["repeat_frequency"] >= 12
    assert result.assignments["customer_id"].tolist() == summary.index.tolist()
    assert "monetary" in result.log_features


def test_segments_are_deterministic():
    summary, _ = three_group_summary(seed=1)
    first = segment_customers(summary, seed=7)
    second = segment_customers(summary, seed=7)
    pd.testing.assert_frame_equal(first.assignments, second.assignments)
    pd.testing.assert_frame_equal(first.profiles, second.profiles)


@pytest.mark.parametrize(
    ("centroid", "expected"),
    [
        ({"recency_days": 10, "frequency": 1.2, "monetary": 500}, "recent high-spend one-timers"),
        ({"recency_days": 30, "frequency": 3.0, "monetary": 100}, "recent low-spend repeat buyers"),
        ({"recency_days": 31, "frequency": 3.5, "monetary": 101}, "lapsing high-spend frequent buyers"),
        ({"recency_days": 300, "frequency": 1.0, "monetary": 10}, "lapsing low-spend one-timers"),
    ],
)
def test_segment_naming_rules(centroid, expected):
    medians = {"recency_days": 30.0, "frequency": 2.0, "monetary": 100.0, "repeat_frequency": 3.0}
    assert name_segment(centroid, medians) == expected


def test_segment_summary_outcomes():
    summary, groups = three_group_summary()
    result = segment_customers(summary, k_range=(3, 3))
    rng = np.random.default_rng(0)
    customers = pd.DataFrame(
        {
            "customer_id": summary.index,
            "label": rng.integers(0, 2, len(summary)),
            "churn_probability": rng.random(len(summary)),
            "predicted_clv": rng.gamma(2, 50, len(summary)),
        }
    ).iloc[:-10]  # ten customers without outcomes

    table = segment_summary(result, customers)

    joined = result.assignments.merge(customers, on="customer_id")
    expected = joined.groupby("segment")[["label", "churn_probability", "predicted_clv"]].mean()
    np.testing.assert_allclose(table["churn_rate"], expected["label"].to_numpy())
    np.testing.assert_allclose(table["mean_churn_probability"], expected["churn_probability"].to_numpy())
    np.testing.assert_allclose(table["mean_predicted_clv"], expected["predicted_clv"].to_numpy())
    assert table["matched_customers"].sum() == len(summary) - 10
    np.testing.assert_allclose(table["share"], np.array([125, 75, 50]) / 250)


def test_segment_summary_rejects_duplicates():
    summary, _ = three_group_summary()
    result = segment_customers(summary, k_range=(3, 3))
    customers = pd.DataFrame({"customer_id": ["c000", "c000"], "label": [0, 1]})
    with pytest.raises(ValueError, match="one row per customer"):
        segment_summary(result, customers)


def test_segments_reject_bad_input():
    summary, _ = three_group_summary()
    with pytest.raises(ValueError, match="k_range"):
        segment_customers(summary, k_range=(1, 4))
    with pytest.raises(ValueError, match="distinct RFM"):
        segment_customers(summary.iloc[:3], k_range=(3, 4))
    with pytest.raises(ValueError, match="missing"):
        segment_customers(summary.drop(columns=["net_spend"]))
    broken = summary.copy()
    broken.iloc[5, 0] = NAN
    with pytest.raises(ValueError, match="c005"):
        segment_customers(broken)


def test_segments_from_rfm_summary(hand_events):
    # The columns segment_customers needs come straight from rfm_summary.
    events = random_log(3, n_customers=80)
    summary = rfm_summary(events, "2022-09-01")
    result = segment_customers(summary, k_range=(3, 4))
    assert len(result.assignments) == len(summary)
    assert result.k in (3, 4)
