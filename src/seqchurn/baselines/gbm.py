"""Logistic regression and LightGBM on the aggregate features of each snapshot row."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from seqchurn.baselines.base import Baseline, check_training_snapshots
from seqchurn.baselines.features import DEFAULT_TREND_DAYS, DEFAULT_WINDOWS, aggregate_features
from seqchurn.data.labels import ChurnDefinition
from seqchurn.metrics import log_loss

log = logging.getLogger(__name__)


class FeatureBaseline(Baseline):
    """A classifier on ``aggregate_features``; subclasses build and fit the classifier."""

    def __init__(self, churn: ChurnDefinition, windows: Sequence[int] = DEFAULT_WINDOWS, trend_days: int | None = DEFAULT_TREND_DAYS) -> None:
        super().__init__(churn)
        self.windows = tuple(windows)
        self.trend_days = trend_days

    def features(self, events: pd.DataFrame, snaps: pd.DataFrame) -> pd.DataFrame:
        """Return the aggregate features of ``snaps`` with this baseline's windows."""
        return aggregate_features(events, snaps, self.churn, self.windows, trend_days=self.trend_days)


def _signed_log1p(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


class LogisticBaseline(FeatureBaseline):
    """L2 logistic regression on standardised ``sign(x) * log1p(|x|)`` features.

    The log compresses the heavy tails of counts and spend, which a linear model
    otherwise fits poorly. With ``val_snaps``, ``fit`` picks the inverse regularisation
    strength ``C`` from ``c_grid`` by validation log loss; without them it uses ``C = 1``.
    """

    name = "logreg"

    def __init__(self, churn: ChurnDefinition, c_grid: Sequence[float] = (0.01, 0.1, 1.0, 10.0), **feature_options) -> None:
        super().__init__(churn, **feature_options)
        if not c_grid or any(not c > 0 for c in c_grid):
            raise ValueError(f"Expected `c_grid` to be non-empty and positive, but got {list(c_grid)}")
        self.c_grid = tuple(c_grid)
        self.model_: Pipeline | None = None
        self.c_: float | None = None

    @staticmethod
    def _make_model(c: float) -> Pipeline:
        return make_pipeline(
            FunctionTransformer(_signed_log1p, feature_names_out="one-to-one"),
            StandardScaler(),
            LogisticRegression(C=c, max_iter=5000),
        )

    def fit(self, events: pd.DataFrame, train_snaps: pd.DataFrame, val_snaps: pd.DataFrame | None = None) -> LogisticBaseline:
        y_train = check_training_snapshots(train_snaps, "training")
        x_train = self.features(events, train_snaps)
        if val_snaps is None:
            self.c_, self.model_ = 1.0, self._make_model(1.0).fit(x_train, y_train)
        else:
            y_val = check_training_snapshots(val_snaps, "validation")
            x_val = self.features(events, val_snaps)
            best = None
            for c in self.c_grid:
                model = self._make_model(c).fit(x_train, y_train)
                loss = log_loss(y_val, model.predict_proba(x_val)[:, 1])
                log.info("logreg: C=%g validation log loss %.5f", c, loss)
                if best is None or loss < best[0]:
                    best = (loss, c, model)
            _, self.c_, self.model_ = best
        log.info("logreg: fitted with C=%g on %d training snapshots", self.c_, len(y_train))
        self.is_fitted = True
        return self

    def predict_proba(self, events: pd.DataFrame, snaps: pd.DataFrame) -> np.ndarray:
        self._check_fitted()
        return self.model_.predict_proba(self.features(events, snaps))[:, 1].astype(np.float64)


def _eval_arguments(x_val: pd.DataFrame, y_val: np.ndarray) -> dict:
    """Return the validation-set arguments of ``LGBMClassifier.fit`` for the installed lightgbm.

    lightgbm 4.7.0 added ``eval_X``/``eval_y`` and deprecated ``eval_set``, which older
    versions need.
    """
    if "eval_X" in inspect.signature(lgb.LGBMClassifier.fit).parameters:
        return {"eval_X": (x_val,), "eval_y": (y_val,)}
    return {"eval_set": [(x_val, y_val)]}


class LightGBMBaseline(FeatureBaseline):
    """Gradient-boosted trees (``lightgbm.LGBMClassifier``), seeded and deterministic.

    With ``val_snaps``, boosting stops after ``stopping_rounds`` rounds without a better
    validation log loss (at most ``max_rounds``). Without them it runs ``rounds_without_val``.
    ``n_jobs`` is the number of LightGBM threads.
    """

    name = "lightgbm"

    def __init__(
        self,
        churn: ChurnDefinition,
        *,
        seed: int = 0,
        n_jobs: int = 1,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        max_rounds: int = 2000,
        stopping_rounds: int = 50,
        rounds_without_val: int = 300,
        **feature_options,
    ) -> None:
        super().__init__(churn, **feature_options)
        self.seed, self.n_jobs = seed, n_jobs
        self.learning_rate, self.num_leaves = learning_rate, num_leaves
        self.max_rounds, self.stopping_rounds, self.rounds_without_val = max_rounds, stopping_rounds, rounds_without_val
        self.model_: lgb.LGBMClassifier | None = None

    def _make_model(self, n_estimators: int) -> lgb.LGBMClassifier:
        return lgb.LGBMClassifier(
            n_estimators=n_estimators,
            learning_rate=self.learning_rate,
            num_leaves=self.num_leaves,
            min_child_samples=20,
            subsample=0.8,
            subsample_freq=1,
            colsample_bytree=0.8,
            reg_lambda=1.0,
            random_state=self.seed,
            n_jobs=self.n_jobs,
            deterministic=True,
            force_col_wise=True,
            verbose=-1,
        )

    def fit(self, events: pd.DataFrame, train_snaps: pd.DataFrame, val_snaps: pd.DataFrame | None = None) -> LightGBMBaseline:
        y_train = check_training_snapshots(train_snaps, "training")
        x_train = self.features(events, train_snaps)
        if val_snaps is None:
            log.warning("lightgbm: no validation snapshots, so no early stopping; training %d rounds", self.rounds_without_val)
            self.model_ = self._make_model(self.rounds_without_val).fit(x_train, y_train)
        else:
            y_val = check_training_snapshots(val_snaps, "validation")
            x_val = self.features(events, val_snaps)
            self.model_ = self._make_model(self.max_rounds).fit(
                x_train,
                y_train,
                **_eval_arguments(x_val, y_val),
                eval_metric="binary_logloss",
                callbacks=[lgb.early_stopping(self.stopping_rounds, verbose=False)],
            )
            log.info("lightgbm: early stopping kept %d of at most %d rounds", self.model_.best_iteration_, self.max_rounds)
        self.is_fitted = True
        return self

    def predict_proba(self, events: pd.DataFrame, snaps: pd.DataFrame) -> np.ndarray:
        self._check_fitted()
        return self.model_.predict_proba(self.features(events, snaps))[:, 1].astype(np.float64)
