"""Discrete-time hazard head: likelihood, survival curves and the trained head end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from conftest import make_events

from seqchurn.data.labels import ChurnDefinition, make_snapshot
from seqchurn.models.hazard import expected_days, hazard_nll, survival_at


def test_nll_matches_hand_computation():
    logits = torch.tensor([[0.2, -1.0, 0.5], [1.0, 0.0, -0.3]])
    h = torch.sigmoid(logits)
    # Customer 0: activity in bin 1 (day 9 of 7-day bins). Customer 1: censored after 15 days (2 full bins).
    nll = hazard_nll(logits, torch.tensor([9.0, 15.0]), torch.tensor([1.0, 0.0]), bin_days=7.0)
    by_hand = -(torch.log(1 - h[0, 0]) + torch.log(h[0, 1]) + torch.log(1 - h[1, 0]) + torch.log(1 - h[1, 1])) / 2
    assert torch.allclose(nll, by_hand, atol=1e-6)


def test_survival_is_monotone_and_matches_cumprod():
    torch.manual_seed(0)
    logits = torch.randn(5, 8)
    days = torch.arange(0, 70, 0.5)
    surv = survival_at(logits, days, bin_days=7.0)
    assert torch.all(surv[:, 1:] <= surv[:, :-1] + 1e-7)
    edges = survival_at(logits, torch.tensor([7.0, 14.0, 21.0]), bin_days=7.0)
    cumprod = torch.cumprod(1 - torch.sigmoid(logits), dim=1)[:, :3]
    assert torch.allclose(edges, cumprod, atol=1e-6)


def test_expected_days_matches_numeric_integral():
    torch.manual_seed(1)
    logits = torch.randn(4, 6)
    grid = torch.linspace(0, 42, 42001)
    curve = survival_at(logits, grid[:-1], bin_days=7.0)
    numeric = curve.sum(1) * (grid[1] - grid[0])
    assert torch.allclose(expected_days(logits, 7.0), numeric, rtol=1e-3)


def test_time_to_event_targets_stop_at_observation_end():
    churn = ChurnDefinition(("purchase",), lookback_days=30, horizon_days=10)
    events = make_events(
        [("a", "2021-01-05", "purchase", 1), ("a", "2021-01-14", "purchase", 1), ("b", "2021-01-05", "purchase", 1), ("b", "2021-03-01", "purchase", 1)]
    )
    snap = make_snapshot(events, "2021-01-10", churn, observe_until=pd.Timestamp("2021-02-09", tz="UTC"))
    assert snap["activity_observed"].tolist() == [1, 0]
    np.testing.assert_allclose(snap["days_to_activity"], [4.0, 30.0])


def test_hazard_head_trains_and_reports(cfg_train):
    from omegaconf import open_dict

    from seqchurn.train import train

    with open_dict(cfg_train):
        cfg_train.model.hazard_bins = 26
    summary = train(cfg_train)
    metrics = summary["hazard"]["test_metrics"]
    assert 0.0 <= metrics["c_index_uno"] <= 1.0
    assert 0.0 <= metrics["integrated_brier"] <= 1.0
    assert summary["net_config"]["n_outputs"] == 27

    # The exported model returns the horizon probabilities, monotone in the horizon.
    from pathlib import Path

    import onnxruntime as ort

    from seqchurn.export import export

    onnx_path = export(Path(cfg_train.paths.checkpoint_dir))
    session = ort.InferenceSession(str(onnx_path))
    assert [o.name for o in session.get_outputs()] == ["churn_probability", "horizon_probability", "expected_days_to_activity"]
    rng = np.random.default_rng(0)
    b, t = 5, 6
    feed = {
        "event_type": rng.integers(0, 6, (b, t)).astype(np.int64),
        "item": np.zeros((b, t), dtype=np.int64),
        "numeric": rng.normal(size=(b, t, 8)).astype(np.float32),
        "mask": np.ones((b, t), dtype=bool),
        "static": rng.normal(size=(b, len(summary["feature_spec"]["static_features"]))).astype(np.float32),
    }
    _, horizon, days = session.run(None, feed)
    assert horizon.shape == (b, 3)
    assert np.all(np.diff(horizon, axis=1) <= 1e-7)
    assert np.all((days > 0) & (days <= 26 * 7))

    # The scorer writes the horizon probabilities as columns beside the binary probability.
    from seqchurn.data.io import LogSpec
    from seqchurn.score import load_model, score_log

    scores, _, _ = score_log(LogSpec.from_config(cfg_train.data), load_model(onnx_path.parent), "2011-12-09", progress=False)
    columns = ["churn_probability_30d", "churn_probability_60d", "churn_probability_90d"]
    assert set(columns + ["expected_days_to_activity"]) <= set(scores.columns)
    assert np.all(np.diff(scores[columns].to_numpy(), axis=1) <= 1e-7)
