"""Tests for seqchurn.metrics against sklearn and straightforward reference code."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from seqchurn import metrics


def random_case(seed: int, n: int = 400, ties: bool = False, extremes: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_prob = rng.random(n)
    if ties:
        y_prob = np.round(y_prob * 8) / 8
    if extremes:
        y_prob[: n // 10] = 0.0
        y_prob[n // 10 : n // 5] = 1.0
    y_true = (rng.random(n) < 0.2 + 0.6 * y_prob).astype(int)
    return y_true, y_prob


CASES = [
    pytest.param(dict(seed=0), id="random"),
    pytest.param(dict(seed=1, n=7), id="tiny"),
    pytest.param(dict(seed=2, ties=True), id="ties"),
    pytest.param(dict(seed=3, extremes=True), id="extremes"),
    pytest.param(dict(seed=4, ties=True, extremes=True), id="ties-extremes"),
]


@pytest.mark.parametrize("case", CASES)
def test_auroc_matches_sklearn(case):
    y_true, y_prob = random_case(**case)
    assert metrics.auroc(y_true, y_prob) == pytest.approx(skm.roc_auc_score(y_true, y_prob), abs=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_average_precision_matches_sklearn(case):
    y_true, y_prob = random_case(**case)
    assert metrics.average_precision(y_true, y_prob) == pytest.approx(skm.average_precision_score(y_true, y_prob), abs=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_log_loss_matches_sklearn(case):
    y_true, y_prob = random_case(**case)
    assert metrics.log_loss(y_true, y_prob) == pytest.approx(skm.log_loss(y_true, y_prob, labels=[0, 1]), rel=1e-10)


@pytest.mark.parametrize("case", CASES)
def test_brier_matches_sklearn(case):
    y_true, y_prob = random_case(**case)
    assert metrics.brier(y_true, y_prob) == pytest.approx(skm.brier_score_loss(y_true, y_prob), rel=1e-12)


def test_log_loss_confident_mistake_is_finite():
    loss = metrics.log_loss([1, 0], [0.0, 1.0])
    assert math.isfinite(loss)
    assert loss == pytest.approx(-math.log(np.finfo(np.float64).eps), rel=1e-9)


def test_all_tied_scores_give_chance_auroc():
    assert metrics.auroc([0, 1, 0, 1, 1], [0.3] * 5) == 0.5
    assert metrics.average_precision([0, 1, 0, 1, 1], [0.3] * 5) == pytest.approx(0.6)


@pytest.mark.parametrize("function", [metrics.auroc, metrics.average_precision])
@pytest.mark.parametrize("y_true", [[0, 0, 0], [1, 1, 1]])
def test_one_class_gives_nan_and_warning(function, y_true, caplog):
    with caplog.at_level(logging.WARNING, logger="seqchurn.metrics"):
        value = function(y_true, [0.2, 0.5, 0.9])
    assert math.isnan(value)
    assert "only one class" in caplog.text


def reference_ece(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int) -> float:
    """Loop over bins; bin b is [b/n, (b+1)/n), and 1.0 belongs to the last bin."""
    total = 0.0
    for b in range(n_bins):
        low, high = b / n_bins, (b + 1) / n_bins
        members = [i for i, p in enumerate(y_prob) if low <= p < high or (b == n_bins - 1 and p == 1.0)]
        if members:
            accuracy = sum(y_true[i] for i in members) / len(members)
            confidence = sum(y_prob[i] for i in members) / len(members)
            total += len(members) / len(y_prob) * abs(accuracy - confidence)
    return total


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_ece_matches_reference(case, n_bins):
    y_true, y_prob = random_case(**case)
    assert metrics.expected_calibration_error(y_true, y_prob, n_bins) == pytest.approx(reference_ece(y_true, y_prob, n_bins), abs=1e-12)


def test_ece_on_bin_edges():
    y_prob = np.array([k / 15 for k in range(16)])
    y_true = np.array([k % 2 for k in range(16)])
    # Computed with the same 1/15 floats as the metric, so every edge lands in the same bin.
    assert metrics.expected_calibration_error(y_true, y_prob) == pytest.approx(reference_ece(y_true, y_prob, 15), abs=1e-12)


def test_ece_zero_when_calibrated_per_bin():
    y_prob = np.array([0.25] * 4 + [0.75] * 4)
    y_true = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    assert metrics.expected_calibration_error(y_true, y_prob) == pytest.approx(0.0, abs=1e-15)


def test_precision_at_top_without_ties():
    y_prob = np.arange(20) / 20
    y_true = np.zeros(20, dtype=int)
    y_true[[19, 17]] = 1  # the top 2 are 19 and 18
    assert metrics.precision_at_top(y_true, y_prob, frac=0.1) == 0.5
    assert metrics.precision_at_top(y_true, y_prob, frac=0.15) == pytest.approx(2 / 3)


def test_precision_at_top_ties_enter_by_share():
    y_prob = np.array([0.9, 0.5, 0.5, 0.5, 0.1])
    y_true = np.array([1, 1, 0, 0, 1])
    # k = 2: the 0.9 (positive) plus one of three tied samples, of which one is positive.
    assert metrics.precision_at_top(y_true, y_prob, frac=0.4) == pytest.approx((1 + 1 / 3) / 2)


def test_precision_at_top_independent_of_order():
    y_true, y_prob = random_case(5, n=200, ties=True)
    order = np.random.default_rng(0).permutation(200)
    assert metrics.precision_at_top(y_true, y_prob) == pytest.approx(metrics.precision_at_top(y_true[order], y_prob[order]))


def test_precision_at_top_k_rounds_up_exactly():
    # 0.1 * 30 is 3.0000000000000004 in floats; k must still be 3.
    y_prob = np.arange(30) / 30
    y_true = np.zeros(30, dtype=int)
    y_true[[29, 28, 27]] = 1
    assert metrics.precision_at_top(y_true, y_prob, frac=0.1) == 1.0


def test_lift_at_top():
    y_prob = np.arange(20) / 20
    y_true = np.zeros(20, dtype=int)
    y_true[[19, 0]] = 1
    assert metrics.lift_at_top(y_true, y_prob, frac=0.1) == pytest.approx(0.5 / 0.1)


def test_lift_without_positive_is_nan(caplog):
    with caplog.at_level(logging.WARNING, logger="seqchurn.metrics"):
        assert math.isnan(metrics.lift_at_top([0, 0, 0], [0.1, 0.2, 0.3]))
    assert "no positive" in caplog.text


def test_binary_report_contains_every_metric():
    y_true, y_prob = random_case(6)
    report = metrics.binary_report(y_true, y_prob, top_frac=0.2)
    assert report["n"] == len(y_true)
    assert report["positive_rate"] == pytest.approx(y_true.mean())
    assert report["auroc"] == pytest.approx(skm.roc_auc_score(y_true, y_prob))
    assert report["average_precision"] == pytest.approx(skm.average_precision_score(y_true, y_prob))
    assert report["log_loss"] == pytest.approx(skm.log_loss(y_true, y_prob))
    assert report["brier"] == pytest.approx(skm.brier_score_loss(y_true, y_prob))
    assert report["ece"] == pytest.approx(reference_ece(y_true, y_prob, 15))
    assert report["precision_at_top"] == pytest.approx(metrics.precision_at_top(y_true, y_prob, 0.2))
    assert report["lift_at_top"] == pytest.approx(report["precision_at_top"] / y_true.mean())
    assert report["top_frac"] == 0.2


@pytest.mark.parametrize(
    ("y_true", "y_prob", "message"),
    [
        ([0, 1], [0.5, 1.2], r"Expected `y_prob` to be in \[0, 1\], but got values in \[0.5, 1.2\]"),
        ([0, 1], [-0.1, 0.5], r"Expected `y_prob` to be in \[0, 1\], but got values in \[-0.1, 0.5\]"),
        ([0, 1], [0.5, np.nan], r"Expected `y_prob` to be in \[0, 1\], but got nan at index 1"),
        ([0, 1], [0.5, np.inf], r"Expected `y_prob` to be in \[0, 1\], but got inf at index 1"),
        ([0, 2], [0.5, 0.5], r"Expected `y_true` to contain only 0 and 1, but got values such as \[2\]"),
        (["no", "yes"], [0.5, 0.5], r"Expected `y_true` to contain only 0 and 1"),
        ([0, 1, 1], [0.5, 0.5], r"same length, but got 3 and 2"),
        ([], [], r"at least one sample"),
        ([[0, 1]], [[0.5, 0.5]], r"to be 1-D, but got shapes \(1, 2\) and \(1, 2\)"),
        ([0, 1], ["a", "b"], r"Expected `y_prob` to be numeric"),
    ],
)
@pytest.mark.parametrize("function", [metrics.auroc, metrics.log_loss, metrics.expected_calibration_error, metrics.binary_report])
def test_invalid_input_rejected(function, y_true, y_prob, message):
    with pytest.raises(ValueError, match=message):
        function(y_true, y_prob)


@pytest.mark.parametrize("frac", [0, -0.1, 1.5])
def test_invalid_frac_rejected(frac):
    with pytest.raises(ValueError, match=r"Expected `frac` to be in \(0, 1\]"):
        metrics.precision_at_top([0, 1], [0.2, 0.8], frac=frac)


def test_invalid_bins_rejected():
    with pytest.raises(ValueError, match="Expected `n_bins` to be a positive integer"):
        metrics.expected_calibration_error([0, 1], [0.2, 0.8], n_bins=0)


def test_boolean_labels_accepted():
    assert metrics.auroc(np.array([False, True]), np.array([0.1, 0.9])) == 1.0
