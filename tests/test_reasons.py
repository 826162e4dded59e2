"""Reason codes: history statistics, candidate signals, and occlusion checked against the model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import make_events
from trained_model import get_trained_model

from seqchurn.alerts.reasons import (
    SIGNALS,
    ReasonSettings,
    add_references,
    candidate_signals,
    explain,
    history_stats,
    neutralised_inputs,
    signal_texts,
    usable_signals,
)
from seqchurn.data.sequences import STATIC_FEATURES, FeatureSpec, build_arrays, collapse_orders
from seqchurn.export import OUTPUT_NAME
from seqchurn.score import load_model, rank_scores, score_events

AS_OF = pd.Timestamp("2024-07-01", tz="UTC")


def days_before(days: float) -> str:
    return (AS_OF - pd.Timedelta(days=days)).isoformat()


def spec_with_means(recency_days: float = 48.0, spend_365d: float = 600.0) -> FeatureSpec:
    """A feature spec whose training means of recency and 365-day spend are the given values."""
    static_mean = [0.0] * len(STATIC_FEATURES)
    static_mean[STATIC_FEATURES.index("log_days_since_last_activity")] = float(np.log1p(recency_days))
    static_mean[STATIC_FEATURES.index("log_spend_365d")] = float(np.log1p(spend_365d))
    return FeatureSpec(
        max_len=8,
        activity_types=["purchase"],
        numeric_mean=[0.0] * 8,
        numeric_std=[1.0] * 8,
        static_mean=static_mean,
        static_std=[1.0] * len(STATIC_FEATURES),
    )


@pytest.fixture
def small_log() -> pd.DataFrame:
    rows = [
        # a: every 100 days, last one 100 days ago
        ("a", days_before(300), "purchase", 10.0),
        ("a", days_before(200), "purchase", 10.0),
        ("a", days_before(100), "purchase", 10.0),
        # b: weekly buyer who just returned something
        ("b", days_before(40), "purchase", 50.0),
        ("b", days_before(30), "purchase", 50.0),
        ("b", days_before(20), "purchase", 50.0),
        ("b", days_before(10), "purchase", 50.0),
        ("b", days_before(5), "return", 20.0),
        # c: one purchase 10 days ago
        ("c", days_before(10), "purchase", 700.0),
        # d: spend collapsing, 200 in the 90 days before the last 90 and 10 since
        ("d", days_before(170), "purchase", 100.0),
        ("d", days_before(100), "purchase", 100.0),
        ("d", days_before(60), "purchase", 10.0),
        # e: an event after as_of is not read
        ("e", days_before(30), "purchase", 5.0),
        ("e", days_before(-3), "purchase", 1000.0),
    ]
    return make_events(rows)


def test_history_stats_by_hand(small_log):
    customers = pd.Index(["a", "b", "c", "d", "e"])
    stats = history_stats(small_log, customers, AS_OF, ["purchase"], recent_transactions=5).set_index("customer_id")

    assert stats.loc["a", "n_activity"] == 3
    assert stats.loc["a", "last_activity_days"] == pytest.approx(100.0)
    assert stats.loc["a", "mean_gap_days"] == pytest.approx(100.0)
    assert stats.loc["a", "spend_recent"] == 0.0
    assert stats.loc["a", "spend_prior"] == 10.0
    assert stats.loc["a", "spend_365d"] == 30.0
    # Usual count per 90 days before the last 90: 3 events over the 210 days from day 300 to day 90.
    assert stats.loc["a", "usual_activity_per_window"] == pytest.approx(3 * 90 / 210)

    assert stats.loc["b", "n_recent_returns"] == 1
    assert stats.loc["b", "n_recent_transactions"] == 5
    assert stats.loc["b", "last_event_days"] == pytest.approx(5.0)
    assert stats.loc["b", "last_activity_days"] == pytest.approx(10.0)
    assert np.isnan(stats.loc["b", "usual_activity_per_window"])  # under 180 days of history

    assert stats.loc["c", "n_activity"] == 1
    assert np.isnan(stats.loc["c", "mean_gap_days"])

    assert stats.loc["d", "spend_recent"] == 10.0
    assert stats.loc["d", "spend_prior"] == 200.0

    assert stats.loc["e", "n_events"] == 1
    assert stats.loc["e", "spend_365d"] == 5.0


def test_candidates_and_texts(small_log):
    customers = pd.Index(["a", "b", "c", "d", "e"])
    settings = ReasonSettings()
    stats = add_references(history_stats(small_log, customers, AS_OF, ["purchase"], 5), spec_with_means(48.0, 600.0), settings)
    candidates = {signal: dict(zip(customers, flags)) for signal, flags in candidate_signals(stats, settings).items()}
    texts = {signal: dict(zip(customers, values)) for signal, values in signal_texts(stats, ["purchase"]).items()}

    # a keeps its own rhythm of 100 days but is far past the typical 48 days. d (every 55 days,
    # last one 60 days ago) is within 1.5x of both.
    assert candidates["recency"] == {"a": True, "b": False, "c": False, "d": False, "e": False}
    assert texts["recency"]["a"] == "no purchase for 100 days, 2.1x the typical time since the last purchase (48 days)"
    assert not stats["recency_reference_is_own"].any()

    assert candidates["spend_trend"] == {"a": True, "b": False, "c": False, "d": True, "e": False}
    assert texts["spend_trend"]["d"] == "spend in the last 90 days down 95% on the 90 days before (10.00 vs 200.00)"
    assert texts["spend_trend"]["a"] == "no spend in the last 90 days, after 10.00 in the 90 days before"

    assert candidates["returns"] == {"a": False, "b": True, "c": False, "d": False, "e": False}
    assert texts["returns"]["b"] == "1 of the last 5 purchases and returns were returns"

    assert candidates["one_timer"] == {"a": False, "b": False, "c": True, "d": False, "e": True}
    assert texts["one_timer"]["c"] == "a single purchase so far, 10 days ago"

    assert candidates["low_spend"] == {"a": True, "b": True, "c": False, "d": True, "e": True}
    assert texts["low_spend"]["b"] == "spent 200.00 in the last 365 days, against a typical 600.00"
    assert candidates["frequency"] == {"a": True, "b": False, "c": False, "d": False, "e": False}
    assert texts["frequency"]["a"] == "0 purchases in the last 90 days, against 1.3 per 90 days before"


def test_overdue_on_own_gap_names_the_gap():
    rows = [("f", days_before(d), "purchase", 20.0) for d in (70, 60, 50, 40, 30)]
    events = make_events(rows)
    stats = add_references(history_stats(events, pd.Index(["f"]), AS_OF, ["purchase"], 5), spec_with_means(48.0), ReasonSettings())
    assert bool(candidate_signals(stats, ReasonSettings())["recency"][0])
    assert signal_texts(stats, ["purchase"])["recency"][0] == "no purchase for 30 days, 3.0x this customer's usual gap of 10 days"


def test_settings_reject_invalid_values():
    with pytest.raises(ValueError, match="max_reasons"):
        ReasonSettings(max_reasons=4)
    with pytest.raises(ValueError, match="overdue_ratio"):
        ReasonSettings(overdue_ratio=1.0)
    with pytest.raises(ValueError, match="spend_drop"):
        ReasonSettings(spend_drop=1.5)
    with pytest.raises(ValueError, match="Unknown keys"):
        ReasonSettings.from_dict({"max_reason": 2})
    assert ReasonSettings.from_dict({"max_reasons": 2}).max_reasons == 2


def test_drop_events_keeps_order():
    spec = spec_with_means()
    events = make_events(
        [
            ("g", days_before(9), "purchase", 1.0),
            ("g", days_before(8), "return", 2.0),
            ("g", days_before(7), "purchase", 3.0),
            ("g", days_before(6), "return", 4.0),
            ("g", days_before(5), "purchase", 5.0),
        ]
    )
    snapshot = pd.DataFrame({"customer_id": ["g"], "cutoff": [AS_OF]})
    inputs = build_arrays(events, snapshot, spec).as_inputs()
    stats = history_stats(events, pd.Index(["g"]), AS_OF, ["purchase"], 5)
    edited = neutralised_inputs("returns", inputs, add_references(stats, spec, ReasonSettings()), spec)

    assert edited["mask"][0].tolist() == [True, True, True, False, False, False, False, False]
    assert np.expm1(edited["numeric"][0, :3, 0]).round(4).tolist() == [1.0, 3.0, 5.0]
    assert (edited["event_type"][0, :3] == spec.event_types.index("purchase")).all()
    assert edited["static"][0, STATIC_FEATURES.index("return_share")] == 0.0
    assert inputs["mask"][0].sum() == 5  # the input arrays are not changed


def test_signal_off_without_its_input():
    spec = spec_with_means()
    spec.static_features = [name for name in STATIC_FEATURES if name != "return_share"]
    assert "returns" not in usable_signals(spec)
    assert "recency" in usable_signals(spec)


# ---- against a trained model ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, retail_slice):
    return get_trained_model(tmp_path_factory, retail_slice)


def reference_effects(customer_events: pd.DataFrame, customer: str, model, as_of: pd.Timestamp, settings: ReasonSettings) -> dict[str, float]:
    """Occlusion effects of one customer's candidate signals, written out per customer from the events.

    This is a second implementation of the rules in the seqchurn.alerts.reasons docstring:
    it reads raw events instead of inverting normalised arrays, and loops where the module
    is vectorised.
    """
    spec = model.spec
    events = collapse_orders(customer_events)
    events = events[events["ts"] < as_of].sort_values("ts", kind="stable")
    base = build_arrays(events, pd.DataFrame({"customer_id": [customer], "cutoff": [as_of]}), spec).as_inputs()
    visible = events.tail(spec.max_len).reset_index(drop=True)
    n_visible = len(visible)

    age = (as_of - events["ts"]).dt.total_seconds().to_numpy() / 86400
    cancelled = (events["cancelled_at"].notna() & (events["cancelled_at"] < as_of)).to_numpy()
    kind = events["event_type"].astype(str).to_numpy()
    amount = events["amount"].to_numpy()
    purchase = (kind == "purchase") & ~cancelled
    activity = np.isin(kind, spec.activity_types) & ~cancelled
    visible_age = (as_of - visible["ts"]).dt.total_seconds().to_numpy() / 86400
    visible_kind = visible["event_type"].astype(str).to_numpy()

    n_activity = int(activity.sum())
    last = age[activity].min()
    first = age[activity].max()
    own_gap = (first - last) / (n_activity - 1) if n_activity > 1 else None
    spend_recent = amount[purchase & (age < 90)].sum()
    spend_prior = amount[purchase & (age >= 90) & (age < 180)].sum()
    spend_365 = amount[purchase & (age < 365)].sum()
    n_recent = int((activity & (age < 90)).sum())
    usual = (n_activity - n_recent) * 90 / (first - 90) if first >= 180 else None
    transactions = kind[np.isin(kind, ["purchase", "return"])][-settings.recent_transactions :]

    static_index = spec.static_features.index
    numeric_index = spec.numeric_features.index
    typical_recency = float(np.expm1(spec.static_mean[static_index("log_days_since_last_activity")]))
    typical_spend = float(np.expm1(spec.static_mean[static_index("log_spend_365d")]))

    def normalised_static(name: str, raw: float) -> float:
        j = static_index(name)
        return (raw - spec.static_mean[j]) / spec.static_std[j]

    def normalised_numeric(name: str, raw: np.ndarray) -> np.ndarray:
        j = numeric_index(name)
        return ((raw - spec.numeric_mean[j]) / spec.numeric_std[j]).astype(np.float32)

    def probability(inputs: dict[str, np.ndarray]) -> float:
        return float(model.session.run([OUTPUT_NAME], {name: np.ascontiguousarray(value) for name, value in inputs.items()})[0][0])

    def copy() -> dict[str, np.ndarray]:
        return {name: value.copy() for name, value in base.items()}

    candidates: dict[str, dict[str, np.ndarray]] = {}
    overdue_own = own_gap is not None and own_gap >= 1 and last >= settings.overdue_ratio * own_gap
    reference = own_gap if overdue_own else typical_recency
    if last >= settings.overdue_ratio * max(reference, 1.0):
        x = copy()
        shift = last - reference
        x["static"][0, static_index("log_days_since_last_activity")] = normalised_static("log_days_since_last_activity", np.log1p(reference))
        x["static"][0, static_index("log_days_since_last_event")] = normalised_static("log_days_since_last_event", np.log1p(max(age.min() - shift, 0.0)))
        ratio = 0.0 if own_gap is None else min(reference / max(own_gap, 1.0), 50.0)
        x["static"][0, static_index("gap_ratio")] = normalised_static("gap_ratio", ratio)
        x["numeric"][0, :n_visible, numeric_index("log_days_before_cutoff")] = normalised_numeric(
            "log_days_before_cutoff", np.log1p(np.maximum(visible_age - shift, 0.0))
        )
        candidates["recency"] = x
    if spend_prior > 0 and spend_recent <= (1 - settings.spend_drop) * spend_prior:
        x = copy()
        x["static"][0, static_index("log_spend_90d")] = normalised_static("log_spend_90d", np.log1p(spend_prior))
        x["static"][0, static_index("log_spend_365d")] = normalised_static("log_spend_365d", np.log1p(spend_365 - spend_recent + spend_prior))
        if spend_recent > 0:
            factor = spend_prior / spend_recent
            for i in range(n_visible):
                if visible_kind[i] == "purchase" and visible_age[i] < 90:
                    x["numeric"][0, i, numeric_index("log_amount")] = normalised_numeric("log_amount", np.log1p(visible["amount"].iloc[i] * factor))
        candidates["spend_trend"] = x
    if (transactions == "return").sum() >= 1:
        x = copy()
        keep = [i for i in range(n_visible) if visible_kind[i] != "return"]
        for name in ("event_type", "item", "mask", "numeric"):
            packed = np.zeros_like(base[name][0])
            packed[: len(keep)] = base[name][0][keep]
            x[name][0] = packed
        x["static"][0, static_index("return_share")] = normalised_static("return_share", 0.0)
        x["static"][0, static_index("log_n_events")] = normalised_static("log_n_events", np.log1p(len(events) - (kind == "return").sum()))
        candidates["returns"] = x
    if usual is not None and usual >= 1 and n_recent <= settings.frequency_drop * usual:
        x = copy()
        x["static"][0, static_index("log_n_activity_90d")] = normalised_static("log_n_activity_90d", np.log1p(usual))
        candidates["frequency"] = x
    if 0 < spend_365 < settings.low_spend_share * typical_spend:
        x = copy()
        factor = typical_spend / spend_365
        x["static"][0, static_index("log_spend_365d")] = normalised_static("log_spend_365d", np.log1p(typical_spend))
        x["static"][0, static_index("log_spend_90d")] = normalised_static("log_spend_90d", np.log1p(spend_recent * factor))
        for i in range(n_visible):
            if visible_kind[i] == "purchase" and visible_age[i] < 365:
                x["numeric"][0, i, numeric_index("log_amount")] = normalised_numeric("log_amount", np.log1p(visible["amount"].iloc[i] * factor))
        candidates["low_spend"] = x
    if n_activity == 1:
        x = copy()
        for name in ("log_tenure_days", "log_n_events", "log_mean_gap_days", "gap_ratio"):
            x["static"][0, static_index(name)] = 0.0
        candidates["one_timer"] = x

    p = probability(base)
    return {signal: p - probability(inputs) for signal, inputs in candidates.items()}


@pytest.mark.slow
def test_first_reason_moves_score_most(trained):
    model = load_model(trained.model_dir)
    events = trained.events
    as_of = pd.Timestamp("2011-09-01", tz="UTC")
    scores = rank_scores(score_events(events, model, as_of), model, as_of)
    settings = ReasonSettings(min_effect=1e-4)
    explanation = explain(events, scores["customer_id"], model, as_of, settings=settings)
    np.testing.assert_allclose(explanation.probability.reindex(scores["customer_id"]).to_numpy(), scores["churn_probability"].to_numpy(), atol=1e-6)

    # For each signal, the highest-ranked customer who has it and at least one other candidate.
    signals = explanation.signals
    n_candidates = signals.groupby("customer_id")["signal"].transform("size")
    order = scores.set_index("customer_id")["rank"]
    several = signals.loc[n_candidates >= 2].assign(rank=lambda t: order.reindex(t["customer_id"]).to_numpy())
    chosen = several.sort_values("rank").drop_duplicates("signal")["customer_id"].unique()
    assert len(chosen) >= 3, f"too few customers with two or more candidate signals: {chosen}"

    for customer in chosen:
        expected = reference_effects(events[events["customer_id"] == customer], customer, model, as_of, settings)
        got = signals.loc[signals["customer_id"] == customer].set_index("signal")["effect"]
        assert set(got.index) == set(expected), customer
        for signal, effect in expected.items():
            assert got[signal] == pytest.approx(effect, abs=2e-5), (customer, signal)

        reported = explanation.reasons[customer]
        # Effects within the comparison tolerance of min_effect may fall on either side of it.
        surely_reported = sum(effect >= settings.min_effect + 2e-5 for effect in expected.values())
        maybe_reported = sum(effect >= settings.min_effect - 2e-5 for effect in expected.values())
        assert min(3, surely_reported) <= len(reported) <= min(3, maybe_reported), (customer, reported, expected)
        if reported:
            first = signals.loc[(signals["customer_id"] == customer) & (signals["position"] == 1), "signal"].item()
            assert expected[first] >= max(expected.values()) - 1e-6, (customer, first, expected)
            texts = signals.loc[signals["customer_id"] == customer].set_index("signal")["text"]
            assert reported[0] == texts[first]


@pytest.mark.slow
def test_only_score_lowering_signals_reported(trained):
    model = load_model(trained.model_dir)
    as_of = pd.Timestamp("2011-09-01", tz="UTC")
    scores = score_events(trained.events, model, as_of)
    settings = ReasonSettings(min_effect=0.002, max_reasons=2)
    explanation = explain(trained.events, scores["customer_id"], model, as_of, settings=settings)
    signals = explanation.signals

    assert set(signals["signal"]) <= set(SIGNALS)
    assert (signals.loc[signals["reported"], "effect"] >= 0.002).all()
    assert explanation.reasons.map(len).max() <= 2
    unreported_better = signals.loc[~signals["reported"] & (signals["effect"] >= 0.002)]
    # A qualifying signal is left out only when two larger ones were reported.
    for customer in unreported_better["customer_id"].unique():
        assert len(explanation.reasons[customer]) == 2
    first = signals.loc[signals["position"] == 1].set_index("customer_id")["effect"]
    best = signals.groupby("customer_id")["effect"].max().reindex(first.index)
    np.testing.assert_array_equal(first.to_numpy(), best.to_numpy())


@pytest.mark.slow
def test_explain_without_history(trained):
    model = load_model(trained.model_dir)
    explanation = explain(trained.events, ["no-such-customer"], model, "2011-09-01")
    assert explanation.reasons.tolist() == [[]]
    assert explanation.signals.empty
