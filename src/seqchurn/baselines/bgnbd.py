"""BG/NBD and Pareto/NBD ("buy till you die") models as churn baselines.

Both models use ``lifetimes`` 0.11.3 and are fitted on the calibration period, which is
every customer's transactions before the latest training cutoff. A *transaction* is a distinct
UTC day with an activity event (``churn.activity_types``), which is the convention of
``lifetimes.utils.summary_data_from_transaction_data``. A purchase cancelled before the
cutoff is no transaction at that cutoff.

The churn score of a snapshot row is P(no transaction in ``(T, T + horizon]``) given the
customer's ``(frequency, recency, T)`` at the row's cutoff. For BG/NBD (Fader, Hardie and
Lee 2005, "Counting your customers the easy way") a customer who is alive at ``T`` has
posterior purchase rate ``lambda ~ Gamma(r + x, alpha + T)`` and can only drop out right
after a purchase, so

    P(none in (T, T + h]) = 1 - P(alive) * (1 - ((alpha + T) / (alpha + T + h)) ** (r + x))

with ``P(alive)`` from ``BetaGeoFitter.conditional_probability_alive``. For Pareto/NBD,
``ParetoNBDFitter.conditional_probability_of_n_purchases_up_to_time`` with ``n = 0``
gives the score. The tests check both against simulations from known parameters.

BG/NBD is fitted by ``BetaGeoFitter.fit``. Pareto/NBD is not fitted by
``ParetoNBDFitter.fit``, because in lifetimes 0.11.3 that method starts Nelder-Mead from
random parameters (global numpy RNG) and ignores whether it converged. ``fit_paretonbd``
minimises the same lifetimes log-likelihood with L-BFGS-B on log-parameters instead.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from seqchurn.baselines.base import Baseline, check_training_snapshots
from seqchurn.baselines.history import DAY_NS, NOT_CANCELLED_NS, HistoryIndex, check_snapshots, timestamps_to_ns
from seqchurn.data.labels import ChurnDefinition

with warnings.catch_warnings():
    # NOTE: lifetimes 0.11.3 sets pd.options.mode.chained_assignment when imported. pandas 3
    # warns that the option does nothing and pandas 4 removes it, which will break the import.
    warnings.filterwarnings("ignore", message=".*mode.chained_assignment.*")
    from lifetimes import BetaGeoFitter, ParetoNBDFitter
    from lifetimes.utils import ConvergenceError

log = logging.getLogger(__name__)

MODELS = ("bgnbd", "paretonbd")


def transaction_summary(events: pd.DataFrame, snapshots: pd.DataFrame, churn: ChurnDefinition, time_unit_days: float = 7.0) -> pd.DataFrame:
    """Compute ``frequency``, ``recency`` and ``T`` of each snapshot row in ``time_unit_days`` units.

    ``frequency`` is the number of transaction days after the first, ``recency`` the time
    from the first to the last transaction day and ``T`` from the first transaction day to
    the cutoff, so ``T > recency``. A row without any transaction gets ``has_transaction``
    False and zeros. Returns a frame with the index of ``snapshots``.
    """
    check_snapshots(snapshots)
    if not time_unit_days > 0:
        raise ValueError(f"Expected `time_unit_days` to be positive, but got {time_unit_days}")
    n_rows = len(snapshots)
    first_day = np.zeros(n_rows)
    last_day = np.zeros(n_rows)
    n_days = np.zeros(n_rows, dtype=np.int64)
    cutoff_day = timestamps_to_ns(snapshots["cutoff"], "cutoff") / DAY_NS

    activity = events[events["event_type"].isin(churn.activity_types).to_numpy()]
    index = HistoryIndex(activity)
    cancelled_ns = timestamps_to_ns(activity["cancelled_at"], "cancelled_at")
    cancelled_ns[cancelled_ns == np.iinfo(np.int64).min] = NOT_CANCELLED_NS
    cancelled_ns = index.sorted(cancelled_ns)
    day = index.ts_ns // DAY_NS

    for chunk in index.chunks(snapshots):
        not_cancelled = cancelled_ns[chunk.position] >= chunk.cutoff_ns[chunk.row]
        row, row_day = chunk.row[not_cancelled], day[chunk.position[not_cancelled]]
        new_day = np.ones(len(row), dtype=bool)
        new_day[1:] = (row[1:] != row[:-1]) | (row_day[1:] != row_day[:-1])
        row, row_day = row[new_day], row_day[new_day]
        if len(row) == 0:
            continue
        starts = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
        ends = np.r_[starts[1:], len(row)] - 1
        rows_here = chunk.rows.start + row[starts]
        first_day[rows_here] = row_day[starts]
        last_day[rows_here] = row_day[ends]
        n_days[rows_here] = ends - starts + 1

    has = n_days > 0
    summary = pd.DataFrame(
        {
            "frequency": np.where(has, n_days - 1, 0).astype(np.float64),
            "recency": np.where(has, (last_day - first_day) / time_unit_days, 0.0),
            "T": np.where(has, (cutoff_day - first_day) / time_unit_days, 0.0),
            "has_transaction": has,
        },
        index=snapshots.index,
    )
    return summary


def bgnbd_prob_no_transaction(fitter: BetaGeoFitter, frequency, recency, T, horizon: float) -> np.ndarray:
    """Return BG/NBD P(no transaction in ``(T, T + horizon]``) for each customer (formula in the module docstring)."""
    r, alpha = fitter.params_["r"], fitter.params_["alpha"]
    x, T = np.asarray(frequency, dtype=np.float64), np.asarray(T, dtype=np.float64)
    p_alive = fitter.conditional_probability_alive(x, np.asarray(recency, dtype=np.float64), T)
    # log((alpha + T) / (alpha + T + h)) = log1p(-h / (alpha + T + h)), stable for small h.
    p_none_if_alive = np.exp((r + x) * np.log1p(-horizon / (alpha + T + horizon)))
    return 1.0 - p_alive * (1.0 - p_none_if_alive)


def paretonbd_prob_no_transaction(fitter: ParetoNBDFitter, frequency, recency, T, horizon: float) -> np.ndarray:
    """Return Pareto/NBD P(no transaction in ``(T, T + horizon]``) for each customer.

    NOTE: lifetimes 0.11.3 evaluates this through ``hyp2f1``, which overflows to NaN for
    large ``frequency`` (a few hundred) when ``s`` and ``beta`` are large, so callers must
    handle non-finite values.
    """
    return np.asarray(
        fitter.conditional_probability_of_n_purchases_up_to_time(
            0, horizon, np.asarray(frequency, dtype=np.float64), np.asarray(recency, dtype=np.float64), np.asarray(T, dtype=np.float64)
        ),
        dtype=np.float64,
    )


def compress_summary(frequency, recency, T) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return the distinct ``(frequency, recency, T)`` rows and their counts, for a weighted fit."""
    rows = np.column_stack([np.asarray(frequency, dtype=np.float64), np.asarray(recency, dtype=np.float64), np.asarray(T, dtype=np.float64)])
    unique, counts = np.unique(rows, axis=0, return_counts=True)
    return unique[:, 0], unique[:, 1], unique[:, 2], counts


# Bounds of the log-parameters in time units scaled to max(T) = 1. Without them, data with
# nearly equal dropout rates drive s and beta towards infinity.
_PARETONBD_LOG_BOUND = 10.0


def fit_paretonbd(frequency, recency, T, weights=None, *, max_iterations: int = 500) -> ParetoNBDFitter:
    """Fit Pareto/NBD by maximum likelihood and return a ``ParetoNBDFitter`` with the parameters.

    Starts from r = alpha = s = beta = 1 (time scaled so that max(T) = 1) and logs a
    warning when L-BFGS-B does not converge or a parameter ends on its bound.
    """
    x, t_x, age = (np.asarray(v, dtype=np.float64) for v in (frequency, recency, T))
    weights = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=np.float64)
    scale = 1.0 / age.max()

    def negative_log_likelihood(log_params: np.ndarray) -> float:
        with np.errstate(all="ignore"):
            log_likelihood = ParetoNBDFitter._conditional_log_likelihood(np.exp(log_params), x, t_x * scale, age * scale)
        value = -float(np.sum(weights * log_likelihood)) / weights.sum()
        # A non-finite value (overflow in hyp2f1) counts as a very poor fit.
        return value if np.isfinite(value) else 1e10

    bounds = [(-_PARETONBD_LOG_BOUND, _PARETONBD_LOG_BOUND)] * 4
    result = minimize(negative_log_likelihood, x0=np.zeros(4), method="L-BFGS-B", bounds=bounds, options={"maxiter": max_iterations})
    r, alpha, s, beta = np.exp(result.x)
    if not result.success:
        log.warning("paretonbd: L-BFGS-B did not converge after %d iterations (%s)", result.nit, result.message)
    if np.any(np.abs(result.x) >= _PARETONBD_LOG_BOUND - 1e-6):
        log.warning("paretonbd: a parameter reached its bound (log-parameters %s); the data may not identify the model", np.round(result.x, 3))

    fitter = ParetoNBDFitter()
    fitter.params_ = pd.Series({"r": r, "alpha": alpha / scale, "s": s, "beta": beta / scale})
    return fitter


class BuyTillYouDieBaseline(Baseline):
    """BG/NBD (``model="bgnbd"``) or Pareto/NBD (``model="paretonbd"``) churn score.

    ``fit`` uses only the events before the latest training cutoff and the training
    labels' churn rate. That rate is the score of a row whose customer has no transaction
    before its cutoff, and of any row where the model's formula is not finite (both are
    counted in the log). ``val_snaps`` is not used. ``penalizer_coef`` is the L2 penalty
    of lifetimes' ``BetaGeoFitter`` and applies to BG/NBD only.
    """

    def __init__(self, churn: ChurnDefinition, model: str = "bgnbd", *, time_unit_days: float = 7.0, penalizer_coef: float = 0.0) -> None:
        super().__init__(churn)
        if model not in MODELS:
            raise ValueError(f"Expected `model` to be one of {MODELS}, but got {model!r}")
        self.model = model
        self.name = model
        self.time_unit_days = time_unit_days
        self.penalizer_coef = penalizer_coef
        self.fitter_: BetaGeoFitter | ParetoNBDFitter | None = None
        self.fallback_: float | None = None
        self.calibration_cutoff_: pd.Timestamp | None = None

    @property
    def params_(self) -> dict[str, float]:
        self._check_fitted()
        return {k: float(v) for k, v in self.fitter_.params_.items()}

    def fit(self, events: pd.DataFrame, train_snaps: pd.DataFrame, val_snaps: pd.DataFrame | None = None) -> BuyTillYouDieBaseline:
        labels = check_training_snapshots(train_snaps, "training")
        cutoff = train_snaps["cutoff"].max()
        before = (events["ts"] < cutoff).to_numpy() & events["event_type"].isin(self.churn.activity_types).to_numpy()
        population = pd.DataFrame({"customer_id": pd.unique(events.loc[before, "customer_id"]), "cutoff": cutoff})
        summary = transaction_summary(events, population, self.churn, self.time_unit_days)
        summary = summary[summary["has_transaction"]]
        if not (summary["frequency"] > 0).any():
            raise ValueError(
                f"Cannot fit {self.model}: none of the {len(summary)} customers has a repeat transaction before the "
                f"calibration cutoff {cutoff}; move the training cutoffs later or use a longer log"
            )

        frequency, recency, T, weights = compress_summary(summary["frequency"], summary["recency"], summary["T"])
        if self.model == "paretonbd":
            fitter = fit_paretonbd(frequency, recency, T, weights)
        else:
            fitter = BetaGeoFitter(penalizer_coef=self.penalizer_coef)
            try:
                fitter.fit(frequency, recency, T, weights=weights)
            except ConvergenceError as error:
                raise ValueError(
                    f"The BG/NBD fit did not converge on {len(summary)} customers before {cutoff}: {str(error).strip()} "
                    "Try a small `penalizer_coef` such as 0.001"
                ) from error
        self.fitter_, self.calibration_cutoff_ = fitter, cutoff
        self.fallback_ = float(labels.mean())
        self.is_fitted = True
        log.info("%s: fitted on %d customers before %s, parameters %s", self.model, len(summary), cutoff, self.params_)
        return self

    def predict_proba(self, events: pd.DataFrame, snaps: pd.DataFrame) -> np.ndarray:
        self._check_fitted()
        summary = transaction_summary(events, snaps, self.churn, self.time_unit_days)
        horizon = self.churn.horizon_days / self.time_unit_days
        has = summary["has_transaction"].to_numpy()
        score = np.full(len(summary), self.fallback_, dtype=np.float64)
        if has.any():
            args = (summary.loc[has, "frequency"].to_numpy(), summary.loc[has, "recency"].to_numpy(), summary.loc[has, "T"].to_numpy(), horizon)
            with np.errstate(all="ignore"):
                if self.model == "bgnbd":
                    score[has] = bgnbd_prob_no_transaction(self.fitter_, *args)
                else:
                    score[has] = paretonbd_prob_no_transaction(self.fitter_, *args)
        not_finite = ~np.isfinite(score)
        if not_finite.any():
            log.warning("%s: %d of %d scores were not finite and got the training churn rate %.4f", self.model, int(not_finite.sum()), len(score), self.fallback_)
            score[not_finite] = self.fallback_
        if not has.all():
            log.info("%s: %d of %d snapshot rows have no transaction before the cutoff and got the training churn rate", self.model, int((~has).sum()), len(score))
        return np.clip(score, 0.0, 1.0)
