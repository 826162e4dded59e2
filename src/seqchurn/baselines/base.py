"""The interface every baseline implements, so that they are scored on the same snapshots."""

from __future__ import annotations

from abc import ABC, abstractmethod
import numpy as np
import pandas as pd

from seqchurn.baselines.history import check_snapshots
from seqchurn.data.labels import ChurnDefinition


class Baseline(ABC):
    """A churn model fitted on labelled snapshots that scores snapshot rows.

    ``fit`` receives the full event frame and uses, for each snapshot row, only the
    events before that row's cutoff. ``val_snaps`` serves model selection (early stopping,
    regularisation) and is never trained on.
    """

    name: str
    """Short name used in reports and in ``make_baseline``."""

    def __init__(self, churn: ChurnDefinition) -> None:
        self.churn = churn
        self.is_fitted = False

    @abstractmethod
    def fit(self, events: pd.DataFrame, train_snaps: pd.DataFrame, val_snaps: pd.DataFrame | None = None) -> Baseline:
        """Fit on the labelled ``train_snaps``; return ``self``."""

    @abstractmethod
    def predict_proba(self, events: pd.DataFrame, snaps: pd.DataFrame) -> np.ndarray:
        """Return P(churn) in [0, 1] for each row of ``snaps``, in row order, as float64."""

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() before predict_proba()")


def check_training_snapshots(snaps: pd.DataFrame, what: str) -> np.ndarray:
    """Return the labels of ``snaps`` as int64, or raise ``ValueError`` when they cannot train a model."""
    check_snapshots(snaps, require_label=True)
    labels = snaps["label"].to_numpy().astype(np.int64)
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == len(labels):
        raise ValueError(f"Expected {what} snapshots with both labels, but got {len(labels)} rows with {n_pos} churned")
    return labels
