"""Recency rule: the longer since a customer's last activity, the likelier they churned."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression

from seqchurn.baselines.base import Baseline, check_training_snapshots
from seqchurn.baselines.features import aggregate_features
from seqchurn.data.labels import ChurnDefinition

log = logging.getLogger(__name__)

# Weight of the strictly increasing rank score mixed into the isotonic fit. Isotonic
# regression is flat on stretches, and the mix keeps the raw recency order there, so the
# ranking metrics are those of the rule itself. It moves a probability by at most 1e-6.
_RANK_WEIGHT = 1e-6


class RecencyBaseline(Baseline):
    """Score = days since the last activity event before the cutoff, made a probability.

    Without calibration the score is ``d / (d + horizon_days)`` for ``d`` days, which is
    monotone but not a calibrated probability. With ``calibration="isotonic"``, ``fit``
    maps ``d`` to the churn rate of the training snapshots by isotonic regression, so that
    log loss and Brier score are meaningful. A customer without activity before the cutoff
    gets ``d = max(tenure, lookback)`` (see ``seqchurn.baselines.features``).
    """

    name = "recency"

    def __init__(self, churn: ChurnDefinition, calibration: str | None = "isotonic") -> None:
        super().__init__(churn)
        if calibration not in ("isotonic", None):
            raise ValueError(f"Expected `calibration` to be 'isotonic' or None, but got {calibration!r}")
        self.calibration = calibration
        self.isotonic_: IsotonicRegression | None = None

    def recency_days(self, events: pd.DataFrame, snaps: pd.DataFrame) -> np.ndarray:
        """Return the days since the last activity event before each row's cutoff."""
        features = aggregate_features(events, snaps, self.churn, windows=(), trend_days=None)
        return features["days_since_last_activity"].to_numpy(dtype=np.float64)

    def fit(self, events: pd.DataFrame, train_snaps: pd.DataFrame, val_snaps: pd.DataFrame | None = None) -> RecencyBaseline:
        labels = check_training_snapshots(train_snaps, "training")
        if self.calibration == "isotonic":
            days = self.recency_days(events, train_snaps)
            self.isotonic_ = IsotonicRegression(increasing=True, y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(days, labels)
            log.info("recency: isotonic calibration fitted on %d training snapshots", len(labels))
        self.is_fitted = True
        return self

    def predict_proba(self, events: pd.DataFrame, snaps: pd.DataFrame) -> np.ndarray:
        if self.calibration is not None:
            self._check_fitted()
        days = self.recency_days(events, snaps)
        rank_score = days / (days + self.churn.horizon_days)
        if self.isotonic_ is None:
            return rank_score
        calibrated = self.isotonic_.predict(days)
        return np.clip((1 - _RANK_WEIGHT) * calibrated + _RANK_WEIGHT * rank_score, 0.0, 1.0)
