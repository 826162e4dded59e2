"""Evaluation metrics for binary churn scores, as pure functions on numpy arrays.

``y_true`` contains labels 0/1 (1 = churned) and ``y_prob`` the predicted probability of
label 1. Every function checks both and raises ``ValueError`` on invalid input. AUROC,
average precision, log loss and the Brier score follow the definitions of
``sklearn.metrics`` (the tests compare them on random and tied inputs).
``expected_calibration_error`` bins like ``BinaryCalibrationError(norm="l1")`` of
torchmetrics 1.9, except that a probability of exactly 1.0 joins the last bin, where
torchmetrics gives it a bin of its own.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy.stats import rankdata

log = logging.getLogger(__name__)

DEFAULT_N_BINS = 15
DEFAULT_TOP_FRAC = 0.1


def _check_inputs(y_true, y_prob) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(y_true as int64, y_prob as float64)`` or raise ``ValueError``."""
    y_true = np.asarray(y_true)
    y_prob = np.asarray(y_prob)
    if y_true.ndim != 1 or y_prob.ndim != 1:
        raise ValueError(f"Expected `y_true` and `y_prob` to be 1-D, but got shapes {y_true.shape} and {y_prob.shape}")
    if len(y_true) != len(y_prob):
        raise ValueError(f"Expected `y_true` and `y_prob` to have the same length, but got {len(y_true)} and {len(y_prob)}")
    if len(y_true) == 0:
        raise ValueError("Expected at least one sample, but got empty `y_true` and `y_prob`")
    if not (np.issubdtype(y_prob.dtype, np.floating) or np.issubdtype(y_prob.dtype, np.integer) or y_prob.dtype == bool):
        raise ValueError(f"Expected `y_prob` to be numeric, but got dtype {y_prob.dtype}")
    y_prob = y_prob.astype(np.float64)
    not_finite = np.flatnonzero(~np.isfinite(y_prob))
    if not_finite.size:
        raise ValueError(f"Expected `y_prob` to be in [0, 1], but got {y_prob[not_finite[0]]} at index {not_finite[0]}")
    if y_prob.min() < 0 or y_prob.max() > 1:
        raise ValueError(f"Expected `y_prob` to be in [0, 1], but got values in [{y_prob.min():.6g}, {y_prob.max():.6g}]")
    try:
        is_binary = bool(np.isin(y_true, (0, 1)).all())
    except TypeError:
        is_binary = False
    if not is_binary:
        bad = np.unique(y_true[~np.isin(y_true, (0, 1))])[:5] if y_true.dtype != object else y_true[:5]
        raise ValueError(f"Expected `y_true` to contain only 0 and 1, but got values such as {bad.tolist()}")
    return y_true.astype(np.int64), y_prob


def _both_classes(y_true: np.ndarray, metric: str) -> bool:
    n_pos = int(y_true.sum())
    if n_pos == 0 or n_pos == len(y_true):
        log.warning("%s is undefined when `y_true` has only one class (%d of %d positive); returning NaN", metric, n_pos, len(y_true))
        return False
    return True


def auroc(y_true, y_prob) -> float:
    """Area under the ROC curve; tied scores count half. NaN (with a warning) for one class.

    Computed as the Mann-Whitney U statistic from average ranks.
    """
    y_true, y_prob = _check_inputs(y_true, y_prob)
    if not _both_classes(y_true, "AUROC"):
        return math.nan
    n_pos = int(y_true.sum())
    n_neg = len(y_true) - n_pos
    ranks = rankdata(y_prob, method="average")
    u_statistic = ranks[y_true == 1].sum() - n_pos * (n_pos + 1) / 2
    return float(u_statistic / (n_pos * n_neg))


def average_precision(y_true, y_prob) -> float:
    """Area under the precision-recall curve as sklearn's step sum. NaN (with a warning) for one class.

    ``AP = sum_k (R_k - R_{k-1}) * P_k`` over the distinct score thresholds, highest first,
    so that tied scores enter together.
    """
    y_true, y_prob = _check_inputs(y_true, y_prob)
    if not _both_classes(y_true, "average precision"):
        return math.nan
    order = np.argsort(-y_prob, kind="mergesort")
    score, label = y_prob[order], y_true[order]
    threshold_end = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]
    true_positives = np.cumsum(label)[threshold_end]
    predicted_positives = threshold_end + 1
    precision = true_positives / predicted_positives
    recall = true_positives / true_positives[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def log_loss(y_true, y_prob) -> float:
    """Mean negative log-likelihood, natural log; ``y_prob`` is clipped to ``[eps, 1 - eps]`` (float64 eps) as in sklearn."""
    y_true, y_prob = _check_inputs(y_true, y_prob)
    eps = np.finfo(np.float64).eps
    p = np.clip(y_prob, eps, 1 - eps)
    return float(-np.mean(y_true * np.log(p) + (1 - y_true) * np.log1p(-p)))


def brier(y_true, y_prob) -> float:
    """Mean squared difference between ``y_prob`` and ``y_true``."""
    y_true, y_prob = _check_inputs(y_true, y_prob)
    return float(np.mean((y_prob - y_true) ** 2))


def expected_calibration_error(y_true, y_prob, n_bins: int = DEFAULT_N_BINS) -> float:
    """Expected calibration error of the positive-class probability, with equal-width bins.

    Bin ``b`` of ``n_bins`` covers ``[b / n_bins, (b + 1) / n_bins)``, and the last bin
    also contains 1.0. ``ECE = sum_b (n_b / n) * |mean(y_true in b) - mean(y_prob in b)|``,
    and empty bins add nothing.
    """
    y_true, y_prob = _check_inputs(y_true, y_prob)
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"Expected `n_bins` to be a positive integer, but got {n_bins!r}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_index = np.clip(np.searchsorted(edges, y_prob, side="right") - 1, 0, n_bins - 1)
    residual_sum = np.bincount(bin_index, weights=y_true - y_prob, minlength=n_bins)
    return float(np.abs(residual_sum).sum() / len(y_true))


def _check_frac(frac: float) -> None:
    if not 0 < frac <= 1:
        raise ValueError(f"Expected `frac` to be in (0, 1], but got {frac!r}")


def precision_at_top(y_true, y_prob, frac: float = DEFAULT_TOP_FRAC) -> float:
    """Share of positives among the ``k = ceil(frac * n)`` highest scores (at least 1).

    Scores tied at the k-th place enter by their share: the result is the mean
    precision over all orders of the tied samples, so it does not depend on sort order.
    """
    y_true, y_prob = _check_inputs(y_true, y_prob)
    _check_frac(frac)
    n = len(y_true)
    # Subtracting 1e-9 keeps products such as 0.1 * 30 = 3.0000000000000004 at 3.
    k = max(1, math.ceil(frac * n - 1e-9))
    threshold = np.sort(y_prob)[n - k]
    above = y_prob > threshold
    tied = y_prob == threshold
    n_above = int(above.sum())
    positives_in_tie = y_true[tied].sum() * (k - n_above) / tied.sum()
    return float((y_true[above].sum() + positives_in_tie) / k)


def lift_at_top(y_true, y_prob, frac: float = DEFAULT_TOP_FRAC) -> float:
    """``precision_at_top`` divided by the positive rate; NaN (with a warning) when there is no positive."""
    y_true, y_prob = _check_inputs(y_true, y_prob)
    base_rate = y_true.mean()
    if base_rate == 0:
        log.warning("lift is undefined when `y_true` has no positive; returning NaN")
        return math.nan
    return precision_at_top(y_true, y_prob, frac) / float(base_rate)


def binary_report(y_true, y_prob, *, top_frac: float = DEFAULT_TOP_FRAC, n_bins: int = DEFAULT_N_BINS) -> dict[str, float | int]:
    """Compute every metric of this module, plus the sample count ``n`` and the positive rate."""
    y_true, y_prob = _check_inputs(y_true, y_prob)
    return {
        "n": len(y_true),
        "positive_rate": float(y_true.mean()),
        "auroc": auroc(y_true, y_prob),
        "average_precision": average_precision(y_true, y_prob),
        "log_loss": log_loss(y_true, y_prob),
        "brier": brier(y_true, y_prob),
        "ece": expected_calibration_error(y_true, y_prob, n_bins),
        "precision_at_top": precision_at_top(y_true, y_prob, top_frac),
        "lift_at_top": lift_at_top(y_true, y_prob, top_frac),
        "top_frac": float(top_frac),
    }
