"""Alert policies and risk tiers against hand-computed expectations and pandas references."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqchurn.alerts.policy import (
    AlertPolicy,
    BudgetRule,
    ExpectedValueRule,
    RiskTiers,
    ThresholdRule,
    normalize_reasons,
    select_alerts,
)
from seqchurn.data.schema import InputError


def make_scores() -> pd.DataFrame:
    # Ranks follow the probabilities, except that "e" and "b" tie at 0.60 and the scorer
    # ranked "e" first: the policy must follow the scorer's rank.
    return pd.DataFrame(
        {
            "customer_id": ["a", "b", "c", "d", "e", "f"],
            "churn_probability": [0.95, 0.60, 0.30, 0.80, 0.60, 0.05],
            "rank": [1, 4, 5, 2, 3, 6],
            "customer_value": [10.0, 500.0, 1000.0, 50.0, 20.0, 5000.0],
            "reasons": [["recency"], ["frequency", "returns"], None, [], ["recency"], ["x", "y", "z"]],
        }
    )


def test_threshold_uses_model_threshold():
    alerts = select_alerts(make_scores(), AlertPolicy(), model_threshold=0.6)
    assert alerts["customer_id"].tolist() == ["a", "d", "e", "b"]
    assert alerts["policy_reason"].iloc[0] == "p=0.950 >= threshold 0.600"


def test_threshold_override_beats_model():
    policy = AlertPolicy(threshold=ThresholdRule(override=0.8))
    alerts = select_alerts(make_scores(), policy, model_threshold=0.1)
    assert alerts["customer_id"].tolist() == ["a", "d"]


def test_threshold_without_any_value_raises():
    with pytest.raises(ValueError, match="threshold"):
        select_alerts(make_scores(), AlertPolicy(), model_threshold=None)


def test_budget_top_k_follows_rank():
    policy = AlertPolicy(threshold=None, budget=BudgetRule(top_k=3))
    alerts = select_alerts(make_scores(), policy)
    assert alerts["customer_id"].tolist() == ["a", "d", "e"]
    assert alerts["policy_reason"].tolist() == ["budget position 1 of 3", "budget position 2 of 3", "budget position 3 of 3"]


@pytest.mark.parametrize(
    ("percent", "expected"),
    [(50.0, ["a", "d", "e"]), (49.0, ["a", "d"]), (100.0, ["a", "d", "e", "b", "c", "f"]), (10.0, [])],
)
def test_budget_top_k_percent_rounds_down(percent, expected):
    # 6 customers: 50 % -> 3, 49 % -> 2.94 -> 2, 10 % -> 0.6 -> 0.
    policy = AlertPolicy(threshold=None, budget=BudgetRule(top_k_percent=percent))
    assert select_alerts(make_scores(), policy)["customer_id"].tolist() == expected


def test_budget_percent_float_edge():
    # 100 * 0.29 = 28.999999999999996 in floats, and the budget must still be 29.
    assert BudgetRule(top_k_percent=29).size(100) == 29
    assert BudgetRule(top_k_percent=7).size(100) == 7


def test_threshold_and_budget_combined():
    policy = AlertPolicy(threshold=ThresholdRule(override=0.5), budget=BudgetRule(top_k=10))
    assert select_alerts(make_scores(), policy)["customer_id"].tolist() == ["a", "d", "e", "b"]
    policy = AlertPolicy(threshold=ThresholdRule(override=0.5), budget=BudgetRule(top_k=2))
    alerts = select_alerts(make_scores(), policy)
    assert alerts["customer_id"].tolist() == ["a", "d"]
    assert alerts["policy_reason"].iloc[1] == "p=0.800 >= threshold 0.500; budget position 2 of 2"


def test_expected_value_hand_computed():
    # value * p * 0.5 - 20:
    # a: 10*0.95*0.5-20 = -15.25   b: 500*0.6*0.5-20 = 130   c: 1000*0.3*0.5-20 = 130
    # d: 50*0.8*0.5-20 = 0 (not > 0)   e: 20*0.6*0.5-20 = -14   f: 5000*0.05*0.5-20 = 105
    policy = AlertPolicy(threshold=None, expected_value=ExpectedValueRule(save_rate=0.5, contact_cost=20.0))
    alerts = select_alerts(make_scores(), policy)
    assert alerts["customer_id"].tolist() == ["b", "c", "f"]
    np.testing.assert_allclose(alerts["expected_value"], [130.0, 130.0, 105.0])
    assert alerts["policy_reason"].tolist() == ["expected value 130.00", "expected value 130.00", "expected value 105.00"]


def test_expected_value_prefers_clv():
    scores = make_scores().assign(clv=[1000.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    policy = AlertPolicy(threshold=None, expected_value=ExpectedValueRule(save_rate=0.5, contact_cost=20.0))
    assert select_alerts(scores, policy)["customer_id"].tolist() == ["a"]
    policy = AlertPolicy(threshold=None, expected_value=ExpectedValueRule(save_rate=0.5, contact_cost=20.0, value_column="customer_value"))
    assert select_alerts(scores, policy)["customer_id"].tolist() == ["b", "c", "f"]


def test_expected_value_missing_values_logged(caplog):
    scores = make_scores()
    scores.loc[1, "customer_value"] = np.nan
    policy = AlertPolicy(threshold=None, expected_value=ExpectedValueRule(save_rate=0.5, contact_cost=20.0))
    with caplog.at_level(logging.WARNING, logger="seqchurn.alerts.policy"):
        alerts = select_alerts(scores, policy)
    assert alerts["customer_id"].tolist() == ["c", "f"]
    assert "1 of 6 customers have no usable 'customer_value'" in caplog.text


def test_expected_value_without_value_column_raises():
    policy = AlertPolicy(threshold=None, expected_value=ExpectedValueRule(save_rate=0.5))
    with pytest.raises(ValueError, match="customer value column"):
        select_alerts(make_scores().drop(columns="customer_value"), policy)


def test_budget_ranked_by_expected_value():
    # With f's value at 10000, positive expected values are f 230, b 130 (rank 4) and
    # c 130 (rank 5). Ties in expected value go to the better rank.
    scores = make_scores()
    scores.loc[5, "customer_value"] = 10000.0
    rules = {"threshold": None, "expected_value": ExpectedValueRule(save_rate=0.5, contact_cost=20.0)}
    by_value = select_alerts(scores, AlertPolicy(**rules, budget=BudgetRule(top_k=2, rank_by="expected_value")))
    assert by_value["customer_id"].tolist() == ["b", "f"]
    np.testing.assert_allclose(by_value["expected_value"], [130.0, 230.0])
    assert by_value["policy_reason"].tolist() == [
        "expected value 130.00; budget position 2 of 2",
        "expected value 230.00; budget position 1 of 2",
    ]
    by_probability = select_alerts(scores, AlertPolicy(**rules, budget=BudgetRule(top_k=2, rank_by="probability")))
    assert by_probability["customer_id"].tolist() == ["b", "c"]


def test_threshold_and_expected_value():
    policy = AlertPolicy(threshold=ThresholdRule(override=0.5), expected_value=ExpectedValueRule(save_rate=0.5, contact_cost=20.0))
    assert select_alerts(make_scores(), policy)["customer_id"].tolist() == ["b"]


def test_zero_alerts_returns_empty_frame():
    policy = AlertPolicy(threshold=ThresholdRule(override=0.99))
    alerts = select_alerts(make_scores(), policy)
    assert alerts.empty
    for column in ("customer_id", "churn_probability", "tier", "policy_reason"):
        assert column in alerts.columns


def test_empty_scores_frame():
    alerts = select_alerts(make_scores().iloc[:0], AlertPolicy(budget=BudgetRule(top_k=5)), model_threshold=0.5)
    assert alerts.empty
    assert "tier" in alerts.columns


def test_tiers_match_pandas_cut():
    tiers = RiskTiers(cuts=(0.3, 0.6, 0.9), names=("low", "medium", "high", "critical"))
    probability = np.array([0.0, 0.29999, 0.3, 0.45, 0.6, 0.8999, 0.9, 1.0])
    reference = pd.cut(probability, bins=[-np.inf, 0.3, 0.6, 0.9, np.inf], right=False, labels=list(tiers.names))
    assert tiers.assign(probability).tolist() == list(reference.astype(str))


def test_tiers_in_selected_alerts():
    policy = AlertPolicy(threshold=ThresholdRule(override=0.0))
    alerts = select_alerts(make_scores(), policy)
    assert dict(zip(alerts["customer_id"], alerts["tier"])) == {
        "a": "high",
        "d": "high",
        "e": "medium",
        "b": "medium",
        "c": "low",
        "f": "low",
    }


@pytest.mark.parametrize(
    ("cuts", "names", "message"),
    [
        ((0.7, 0.4), ("low", "medium", "high"), "cut 0.4 at position 1 is not greater than 0.7"),
        ((0.4, 0.4), ("low", "medium", "high"), "cut 0.4 at position 1 is not greater than 0.4"),
        ((0.4, 1.2), ("low", "medium", "high"), "cut 1.2 at position 1 is outside"),
        ((-0.1, 0.5), ("low", "medium", "high"), "cut -0.1 at position 0 is outside"),
        ((0.4, 0.7), ("low", "high"), "Expected 3 tier names"),
        ((0.4, 0.7), ("low", "low", "high"), "distinct"),
    ],
)
def test_tiers_invalid_raise(cuts, names, message):
    with pytest.raises(ValueError, match=message):
        RiskTiers(cuts=cuts, names=names)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_k": 3, "top_k_percent": 5.0}, "exactly one"),
        ({}, "exactly one"),
        ({"top_k": -1}, "non-negative integer"),
        ({"top_k": 2.5}, "non-negative integer"),
        ({"top_k_percent": 0.0}, r"\(0, 100\]"),
        ({"top_k_percent": 120.0}, r"\(0, 100\]"),
        ({"top_k": 3, "rank_by": "value"}, "rank_by"),
    ],
)
def test_budget_invalid_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BudgetRule(**kwargs)


def test_rules_invalid_raise():
    with pytest.raises(ValueError, match="save_rate"):
        ExpectedValueRule(save_rate=0.0)
    with pytest.raises(ValueError, match="contact_cost"):
        ExpectedValueRule(save_rate=0.2, contact_cost=-1.0)
    with pytest.raises(ValueError, match="override"):
        ThresholdRule(override=1.5)
    with pytest.raises(ValueError, match="at least one alert rule"):
        AlertPolicy(threshold=None)
    with pytest.raises(ValueError, match="needs the expected_value rule"):
        AlertPolicy(budget=BudgetRule(top_k=3, rank_by="expected_value"))


def test_policy_from_dict():
    config = {
        "threshold": {"override": 0.5},
        "budget": {"top_k_percent": 10},
        "expected_value": {"save_rate": 0.25, "contact_cost": 2.0},
        "tiers": {"cuts": [0.5, 0.8], "names": ["low", "medium", "high"]},
    }
    policy = AlertPolicy.from_dict(config)
    assert policy.threshold == ThresholdRule(override=0.5)
    assert policy.budget == BudgetRule(top_k_percent=10)
    assert policy.expected_value == ExpectedValueRule(save_rate=0.25, contact_cost=2.0)
    assert policy.tiers.cuts == (0.5, 0.8)
    assert policy.to_dict()["tiers"]["cuts"] == (0.5, 0.8)


def test_policy_from_dict_defaults_and_null():
    assert AlertPolicy.from_dict({}) == AlertPolicy()
    policy = AlertPolicy.from_dict({"threshold": None, "budget": {"top_k": 4}})
    assert policy.threshold is None
    assert policy.budget == BudgetRule(top_k=4)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"treshold": {}}, r"Unknown alert policy keys \['treshold'\]"),
        ({"budget": {"top": 3}}, r"Unknown keys \['top'\] in alert policy section `budget`"),
        ({"budget": 3}, "Expected `budget` to be a mapping"),
        ({"tiers": None}, "Expected `tiers` to be a mapping"),
    ],
)
def test_policy_from_dict_invalid(config, message):
    with pytest.raises(ValueError, match=message):
        AlertPolicy.from_dict(config)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("churn_probability", 1.5, "churn probability must be a number in"),
        ("churn_probability", np.nan, "churn probability must be a number in"),
        ("churn_probability", "high", "churn probability must be a number in"),
        ("rank", 0, "rank must be an integer >= 1"),
        ("rank", 1.5, "rank must be an integer >= 1"),
        ("customer_id", "a", "customer_id must be unique"),
    ],
)
def test_invalid_scores_name_row_and_value(column, value, message):
    scores = make_scores().astype({"churn_probability": object, "rank": object})
    scores.loc[2, column] = value
    with pytest.raises(InputError, match=message) as error:
        select_alerts(scores, AlertPolicy(), model_threshold=0.5)
    assert error.value.row == 3
    assert error.value.column == column


def test_scores_missing_column_raises():
    with pytest.raises(InputError, match=r"missing columns \['rank'\]"):
        select_alerts(make_scores().drop(columns="rank"), AlertPolicy(), model_threshold=0.5)


def test_reasons_normalized():
    assert normalize_reasons(make_scores()["reasons"], 6) == [["recency"], ["frequency", "returns"], [], [], ["recency"], ["x", "y", "z"]]
    assert normalize_reasons(None, 2) == [[], []]
    with pytest.raises(InputError, match="at most 3 reasons") as error:
        normalize_reasons(pd.Series([["a"], ["a", "b", "c", "d"]]), 2)
    assert error.value.row == 2
    with pytest.raises(InputError, match="lists of strings"):
        normalize_reasons(pd.Series([["a"], [1, 2]]), 2)


@settings(max_examples=50, deadline=None)
@given(
    probability=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=40),
    threshold=st.floats(0.0, 1.0),
    top_k=st.integers(0, 50),
)
def test_threshold_budget_property(probability, threshold, top_k):
    # Reference: sort by probability, keep those >= threshold, take the first top_k.
    p = np.asarray(probability)
    order = np.argsort(-p, kind="stable")
    rank = np.empty(len(p), dtype=int)
    rank[order] = np.arange(1, len(p) + 1)
    scores = pd.DataFrame({"customer_id": [f"c{i}" for i in range(len(p))], "churn_probability": p, "rank": rank})
    policy = AlertPolicy(threshold=ThresholdRule(override=threshold), budget=BudgetRule(top_k=top_k))
    alerts = select_alerts(scores, policy)
    expected = [f"c{i}" for i in order if p[i] >= threshold][:top_k]
    assert alerts["customer_id"].tolist() == expected
    assert alerts["rank"].is_monotonic_increasing
