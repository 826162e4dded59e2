"""Charts that evaluate churn probabilities against labels (1 = churned).

Each ``plot_*`` function draws into a matplotlib ``Axes`` it is given, so the report and
the README figure compose the same drawings. Curves come from scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from seqchurn.analytics.tables import format_count, format_percent
from seqchurn.report import style


@dataclass(frozen=True)
class BinaryScores:
    """Checked labels and probabilities with the decision threshold."""

    y_true: np.ndarray
    y_prob: np.ndarray
    threshold: float

    @property
    def predicted(self) -> np.ndarray:
        """Return the predicted labels: 1 where ``y_prob >= threshold``."""
        return (self.y_prob >= self.threshold).astype(np.int64)

    @property
    def has_both_classes(self) -> bool:
        return len(np.unique(self.y_true)) == 2


def check_binary_scores(y_true: object, y_prob: object, threshold: float) -> BinaryScores:
    """Validate labels in {0, 1}, probabilities in [0, 1] of the same length, and the threshold.

    Raises ``ValueError`` that names the first invalid position and value.
    """
    true = np.asarray(y_true)
    prob = np.asarray(y_prob, dtype=float)
    if true.ndim != 1 or prob.ndim != 1 or len(true) != len(prob):
        raise ValueError(f"Expected 1-d `y_true` and `y_prob` of equal length, but got shapes {true.shape} and {prob.shape}")
    if len(true) == 0:
        raise ValueError("Expected at least one labelled prediction, but `y_true` is empty")
    true_float = pd.to_numeric(pd.Series(true), errors="coerce").to_numpy(dtype=float)
    bad_label = ~np.isin(true_float, (0.0, 1.0))
    if bad_label.any():
        i = int(np.argmax(bad_label))
        raise ValueError(f"Expected `y_true` values 0 or 1 (1 = churned), but position {i} is {true[i]!r}")
    bad_prob = ~(np.isfinite(prob) & (prob >= 0) & (prob <= 1))
    if bad_prob.any():
        i = int(np.argmax(bad_prob))
        raise ValueError(f"Expected `y_prob` values in [0, 1], but position {i} is {prob[i]!r}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"Expected `threshold` in [0, 1], but got {threshold!r}")
    return BinaryScores(true_float.astype(np.int64), prob, float(threshold))


def summary_metrics(scores: BinaryScores) -> dict[str, float]:
    """Compute the headline numbers: ROC AUC, average precision, Brier score and threshold metrics."""
    y, p, predicted = scores.y_true, scores.y_prob, scores.predicted
    metrics = {
        "customers": float(len(y)),
        "churn_rate": float(y.mean()),
        "threshold": scores.threshold,
        "flagged_share": float(predicted.mean()),
        "precision": float(precision_score(y, predicted, zero_division=0)),
        "recall": float(recall_score(y, predicted, zero_division=0)),
        "f1": float(f1_score(y, predicted, zero_division=0)),
        "brier_score": float(brier_score_loss(y, p)),
    }
    if scores.has_both_classes:
        metrics["roc_auc"] = float(roc_auc_score(y, p))
        metrics["average_precision"] = float(average_precision_score(y, p))
    return metrics


def _threshold_point(scores: BinaryScores) -> tuple[float, float, float]:
    """Return (false positive rate, recall, precision) of the predictions at the threshold."""
    y, predicted = scores.y_true, scores.predicted
    tn, fp, fn, tp = confusion_matrix(y, predicted, labels=[0, 1]).ravel()
    fpr = fp / (fp + tn) if fp + tn else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    precision = tp / (tp + fp) if tp + fp else 1.0
    return float(fpr), float(recall), float(precision)


def _percent_axes(ax: Axes) -> None:
    ax.xaxis.set_major_formatter(style.PERCENT_AXIS)
    ax.yaxis.set_major_formatter(style.PERCENT_AXIS)


def plot_roc(ax: Axes, scores: BinaryScores) -> None:
    """Draw the ROC curve with the threshold's operating point."""
    fpr, tpr, _ = roc_curve(scores.y_true, scores.y_prob)
    auc = roc_auc_score(scores.y_true, scores.y_prob)
    ax.plot(fpr, tpr, color=style.BLUE, lw=2, label=f"model (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color=style.GREY, lw=1, ls="--", label="random")
    point_fpr, point_recall, _ = _threshold_point(scores)
    ax.scatter([point_fpr], [point_recall], color=style.ORANGE, zorder=3, s=50, label=f"threshold {scores.threshold:.2f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate (% of retained flagged)", ylabel="Recall (% of churners flagged)")
    ax.set_title("ROC curve")
    _percent_axes(ax)
    ax.legend(loc="lower right")


def plot_precision_recall(ax: Axes, scores: BinaryScores) -> None:
    """Draw the precision-recall curve with the churn base rate and the threshold's point."""
    precision, recall, _ = precision_recall_curve(scores.y_true, scores.y_prob)
    ap = average_precision_score(scores.y_true, scores.y_prob)
    ax.plot(recall, precision, color=style.BLUE, lw=2, label=f"model (AP {ap:.3f})")
    base = scores.y_true.mean()
    ax.axhline(base, color=style.GREY, lw=1, ls="--", label=f"base rate {format_percent(base)}")
    _, point_recall, point_precision = _threshold_point(scores)
    ax.scatter([point_recall], [point_precision], color=style.ORANGE, zorder=3, s=50, label=f"threshold {scores.threshold:.2f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="Recall (% of churners flagged)", ylabel="Precision (% of flagged who churn)")
    ax.set_title("Precision-recall curve")
    _percent_axes(ax)
    ax.legend(loc="upper right")


def plot_calibration(ax: Axes, scores: BinaryScores, n_bins: int = 10) -> None:
    """Draw the reliability curve (quantile bins) with the Brier score, and a histogram of predictions."""
    observed, predicted = calibration_curve(scores.y_true, scores.y_prob, n_bins=n_bins, strategy="quantile")
    brier = brier_score_loss(scores.y_true, scores.y_prob)
    ax.plot([0, 1], [0, 1], color=style.GREY, lw=1, ls="--", label="perfectly calibrated")
    ax.plot(predicted, observed, color=style.BLUE, lw=2, marker="o", ms=5, label=f"model (Brier {brier:.4f})")
    hist_ax = ax.twinx()
    hist_ax.hist(scores.y_prob, bins=20, range=(0, 1), color=style.LIGHT_BLUE, alpha=0.5)
    hist_ax.set_ylabel("Customers per bin", color=style.GREY)
    hist_ax.yaxis.set_major_formatter(style.THOUSANDS_AXIS)
    hist_ax.grid(False)
    hist_ax.spines["right"].set_visible(True)
    ax.set_zorder(hist_ax.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="Mean predicted churn probability (%)", ylabel="Observed churn rate (%)")
    ax.set_title("Calibration")
    _percent_axes(ax)
    ax.legend(loc="upper left")


def gain_curve(scores: BinaryScores) -> tuple[np.ndarray, np.ndarray]:
    """Return (share of customers contacted, share of churners captured), riskiest first.

    Ties in ``y_prob`` are broken by the stable sort order, which is the input order.
    """
    order = np.argsort(-scores.y_prob, kind="stable")
    captured = np.cumsum(scores.y_true[order])
    n, positives = len(order), max(int(scores.y_true.sum()), 1)
    contacted = np.concatenate([[0.0], np.arange(1, n + 1) / n])
    gain = np.concatenate([[0.0], captured / positives])
    return contacted, gain


def plot_gain(ax: Axes, scores: BinaryScores) -> None:
    """Draw the cumulative gain chart with the random and perfect models."""
    contacted, gain = gain_curve(scores)
    base = scores.y_true.mean()
    ax.plot(contacted, gain, color=style.BLUE, lw=2, label="model")
    ax.plot([0, base, 1], [0, 1, 1], color=style.GREEN, lw=1, ls=":", label="perfect")
    ax.plot([0, 1], [0, 1], color=style.GREY, lw=1, ls="--", label="random")
    flagged = scores.predicted.mean()
    ax.axvline(flagged, color=style.ORANGE, lw=1, label=f"threshold flags {format_percent(flagged)}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="Customers contacted, riskiest first (%)", ylabel="Churners captured (%)")
    ax.set_title("Cumulative gain")
    _percent_axes(ax)
    ax.legend(loc="lower right")


def plot_lift(ax: Axes, scores: BinaryScores) -> None:
    """Draw the cumulative lift: churn rate among the top x% divided by the overall churn rate."""
    contacted, gain = gain_curve(scores)
    contacted, gain = contacted[1:], gain[1:]
    lift = gain / contacted
    ax.plot(contacted, lift, color=style.BLUE, lw=2, label="model")
    ax.axhline(1.0, color=style.GREY, lw=1, ls="--", label="random (lift 1)")
    flagged = scores.predicted.mean()
    ax.axvline(flagged, color=style.ORANGE, lw=1, label=f"threshold flags {format_percent(flagged)}")
    ax.set(xlim=(0, 1), ylim=(0, max(float(lift.max()) * 1.05, 1.5)), xlabel="Customers contacted, riskiest first (%)")
    ax.set_ylabel("Cumulative lift (x base rate)")
    ax.xaxis.set_major_formatter(style.PERCENT_AXIS)
    ax.set_title("Cumulative lift")
    ax.legend(loc="upper right")


def plot_score_distribution(ax: Axes, scores: BinaryScores) -> None:
    """Draw histograms of the predicted probability for churned and retained customers."""
    bins = np.linspace(0, 1, 41)
    for label, name, colour in ((0, "retained", style.BLUE), (1, "churned", style.ORANGE)):
        values = scores.y_prob[scores.y_true == label]
        ax.hist(values, bins=bins, color=colour, alpha=0.55, label=f"{name} ({format_count(len(values))})")
    ax.axvline(scores.threshold, color=style.RED, lw=1.2, ls="--", label=f"threshold {scores.threshold:.2f}")
    ax.set(xlim=(0, 1), xlabel="Predicted churn probability (%)", ylabel="Customers")
    ax.xaxis.set_major_formatter(style.PERCENT_AXIS)
    ax.yaxis.set_major_formatter(style.THOUSANDS_AXIS)
    ax.set_title("Score distribution by outcome")
    ax.legend(loc="upper right")


def plot_confusion(ax: Axes, scores: BinaryScores) -> None:
    """Draw the confusion matrix at the threshold with counts and shares of each true class."""
    matrix = confusion_matrix(scores.y_true, scores.predicted, labels=[0, 1])
    row_share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(row_share, cmap=style.HEATMAP_CMAP, vmin=0, vmax=1.4)
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, f"{format_count(count)}\n{format_percent(row_share[i, j])} of row", ha="center", va="center", fontsize=11)
    ax.set_xticks([0, 1], labels=["predicted retained", "predicted churned"])
    ax.set_yticks([0, 1], labels=["retained", "churned"])
    ax.set_xlabel(f"Prediction at threshold {scores.threshold:.2f}")
    ax.set_ylabel("Outcome (customers)")
    ax.grid(False)
    ax.set_title("Confusion matrix")
