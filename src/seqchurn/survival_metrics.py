"""Time-to-event metrics for the hazard head, computed with scikit-survival.

``c_index_uno`` is Uno's concordance with inverse-probability-of-censoring weights,
truncated at ``tau`` (the longest evaluated horizon), using P(activity within tau) as the
risk. ``time_auc_*`` is the cumulative/dynamic AUC at each horizon, and
``integrated_brier`` is the IPCW Brier score integrated over the horizons. Censoring
weights come from the training targets, as scikit-survival expects.
"""

from __future__ import annotations

import logging

import numpy as np
from sksurv.metrics import concordance_index_ipcw, cumulative_dynamic_auc, integrated_brier_score
from sksurv.util import Surv

log = logging.getLogger(__name__)


def survival_report(
    train_time: np.ndarray,
    train_observed: np.ndarray,
    time: np.ndarray,
    observed: np.ndarray,
    survival: np.ndarray,
    horizons: np.ndarray,
) -> dict[str, float]:
    """Metrics for survival curves ``survival`` ``(N, H)`` = P(no activity within ``horizons[h]`` days).

    Horizons at or beyond the last observed test time are dropped (IPCW needs follow-up
    there) and reported as NaN.
    """
    horizons = np.asarray(horizons, dtype=np.float64)
    survival = np.asarray(survival, dtype=np.float64)
    if survival.shape != (len(time), len(horizons)):
        raise ValueError(f"Expected survival of shape {(len(time), len(horizons))}, but got {survival.shape}")
    train = Surv.from_arrays(np.asarray(train_observed).astype(bool), np.asarray(train_time, dtype=np.float64))
    test = Surv.from_arrays(np.asarray(observed).astype(bool), np.asarray(time, dtype=np.float64))
    usable = (horizons < np.max(time)) & (horizons < np.max(train_time))
    out: dict[str, float] = {}
    if not usable.any() or np.asarray(observed).sum() == 0:
        log.warning("survival metrics undefined: no follow-up beyond the horizons or no observed activity")
        return {"c_index_uno": float("nan"), "integrated_brier": float("nan")}
    h, surv = horizons[usable], survival[:, usable]
    risk = 1.0 - surv[:, -1]
    out["c_index_uno"] = float(concordance_index_ipcw(train, test, risk, tau=float(h[-1]))[0])
    auc, _ = cumulative_dynamic_auc(train, test, 1.0 - surv, h)
    for horizon, value in zip(horizons, np.where(usable, 0.0, np.nan)):
        out[f"time_auc_{int(horizon)}d"] = float(value)
    for horizon, value in zip(h, auc):
        out[f"time_auc_{int(horizon)}d"] = float(value)
    if len(h) >= 2:
        out["integrated_brier"] = float(integrated_brier_score(train, test, surv, h))
    else:
        out["integrated_brier"] = float("nan")
    return out
