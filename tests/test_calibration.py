"""Threshold choice and temperature scaling, against sklearn and brute force."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, log_loss, precision_score

from seqchurn.models.calibration import choose_threshold, fit_temperature


@pytest.fixture
def val_data():
    rng = np.random.default_rng(0)
    y = rng.random(500) < 0.4
    p = np.clip(0.4 + 0.3 * (y - 0.4) + rng.normal(0, 0.2, 500), 0, 1).round(3)  # ties on purpose
    return p, y.astype(int)


def test_max_f1_threshold_matches_brute_force(val_data):
    p, y = val_data
    th = choose_threshold(p, y, "max_f1")
    best = max(f1_score(y, p >= t) for t in np.unique(p))
    assert f1_score(y, p >= th) == pytest.approx(best)


def test_target_precision_is_lowest_threshold_reaching_it(val_data):
    p, y = val_data
    th = choose_threshold(p, y, "target_precision", target_precision=0.7)
    assert precision_score(y, p >= th) >= 0.7
    lower = [t for t in np.unique(p) if t < th]
    assert all(precision_score(y, p >= t, zero_division=0) < 0.7 for t in lower)


def test_top_k_percent_alerts_that_share(val_data):
    p, y = val_data
    th = choose_threshold(p, y, "top_k_percent", top_k_percent=10)
    share = (p >= th).mean()
    assert 0.08 <= share <= 0.12


@pytest.mark.parametrize("kwargs", [{"strategy": "best"}, {"strategy": "target_precision", "target_precision": 1.5}, {"strategy": "top_k_percent"}])
def test_invalid_threshold_options_raise(val_data, kwargs):
    p, y = val_data
    with pytest.raises(ValueError, match="Expected"):
        choose_threshold(p, y, **kwargs)


def test_temperature_minimises_log_loss():
    rng = np.random.default_rng(1)
    y = (rng.random(2000) < 0.5).astype(int)
    logits = 3.0 * (2 * y - 1) + rng.normal(0, 4, 2000)  # overconfident: the best temperature is > 1
    t = fit_temperature(logits, y)
    assert t > 1.0
    loss = lambda temp: log_loss(y, 1 / (1 + np.exp(-logits / temp)))  # noqa: E731
    assert loss(t) <= min(loss(t * 0.9), loss(t * 1.1)) + 1e-9
