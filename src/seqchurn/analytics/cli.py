"""``seqchurn metrics``: churn, retention, cohort, CLV and segment tables from an event log.

``seqchurn metrics --data online_retail --freq M --out outputs/metrics/online_retail``
reads the log with the data config's loader and writes to ``--out``:

- ``periods.csv`` / ``.md``: customers, churn, retention and revenue per period
  (``seqchurn.analytics.periods.period_metrics`` defines every column).
- ``cohort_retention.csv`` / ``.md``: share of each acquisition cohort that buys k periods later.
- ``clv.csv``: one row per customer with a purchase before ``--as-of``, with the historical
  value (net spend) and the value predicted over ``--clv-horizon-days``.
- ``segments.csv`` / ``.md`` and ``customer_segments.csv``: K-Means RFM segments of the
  customers the churn label covers at ``--segment-cutoff``, with each segment's size,
  observed churn rate in the churn horizon after that cutoff and mean predicted CLV.
- ``run_summary.json``: rows read and dropped, fallbacks used, outputs and timings.

The predicted CLV is BG/NBD (lifetimes ``BetaGeoFitter``, in weeks) for the number of
purchase days times Gamma-Gamma (``seqchurn.analytics.clv``) for the spend per purchase day.
Where a model cannot be fitted or returns a non-finite value, the population rate of the
calibration data is used instead (see ``predict_customer_value``), so the output has no NaN.

Exit codes: 0 success, 2 invalid input (the message names the value and the fix), 1 internal failure.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from seqchurn.analytics.clv import GammaGammaFit, fit_gamma_gamma, lifetimes_expected_purchases, predict_clv, rfm_summary
from seqchurn.analytics.periods import cohort_retention, period_metrics
from seqchurn.analytics.segments import Segmentation, segment_customers, segment_summary
from seqchurn.analytics.tables import write_table
from seqchurn.conf_utils import REPO_ROOT
from seqchurn.data.config_file import read_data_config
from seqchurn.data.datamodule import churn_from_config, sample_customers
from seqchurn.data.io import load_events
from seqchurn.data.labels import ChurnDefinition, make_snapshot, to_utc
from seqchurn.data.schema import InputError
from seqchurn.errors import run_command
from seqchurn.utils.run_summary import RunSummary, as_input_error

log = logging.getLogger(__name__)

DEFAULT_CLV_HORIZON_DAYS = 365.0
BGNBD_TIME_UNIT_DAYS = 7.0
"""BG/NBD is fitted in weeks, as the churn baselines in ``seqchurn.baselines.bgnbd`` are."""
BGNBD_RETRY_PENALIZER = 0.001
"""L2 penalty on the BG/NBD parameters for a second fit when the unpenalised one fails."""
MIN_REPEAT_CUSTOMERS = 3
"""Fewer customers with a repeat purchase than this and BG/NBD is not fitted."""
SEGMENT_K_RANGE = (3, 6)


# -- data config -------------------------------------------------------------------------


def load_data_config(data: str) -> dict[str, Any]:
    """Return the resolved data config named by ``data`` as a plain dict.

    ``data`` is the name of a config in ``conf/data/`` (``online_retail``) or the path of a
    YAML file with the same layout; ``${paths.*}`` values resolve as in ``seqchurn train``.
    Raises ``InputError`` when the config is not found, does not resolve or has no sources.
    """
    resolved = read_data_config(data)
    is_file = Path(data).suffix in (".yaml", ".yml")
    if not resolved.get("sources"):
        raise InputError("the data config lists no `sources`", file=data, hint="See conf/data/online_retail.yaml")
    resolved.setdefault("name", Path(data).stem if is_file else data)
    return resolved


def load_log(data_cfg: Mapping[str, Any]) -> tuple[pd.DataFrame, Any]:
    """Load the events of a data config as training does, including its ``sample_fraction``."""
    events, report = load_events(data_cfg)
    events = sample_customers(events, float(data_cfg.get("sample_fraction", 1.0)))
    if events.empty:
        raise InputError("the log has no events after loading", file=", ".join(report.files), hint="Check the loader's drop counts above")
    return events, report


def log_end(events: pd.DataFrame) -> pd.Timestamp:
    """Return the end of the last UTC day with an event: the default cutoff that uses the whole log."""
    return events["ts"].max().floor("D") + pd.Timedelta(days=1)


# -- customer value ----------------------------------------------------------------------


@dataclass
class CustomerValue:
    """Predicted CLV per customer and how it was computed.

    ``table`` is indexed by ``customer_id`` with the ``rfm_summary`` columns, then
    ``historical_value``, ``expected_purchases``, ``expected_spend``, ``predicted_clv``,
    and ``purchases_model`` / ``spend_model`` naming the model behind each customer's value.
    ``fallbacks`` counts the customers whose value used a fallback, by reason.
    """

    table: pd.DataFrame
    cutoff: pd.Timestamp
    horizon_days: float
    bgnbd_params: dict[str, float] | None
    gamma_gamma: GammaGammaFit | None
    fallbacks: dict[str, int] = field(default_factory=dict)


def fit_bgnbd(summary: pd.DataFrame, time_unit_days: float = BGNBD_TIME_UNIT_DAYS) -> Any | None:
    """Fit lifetimes' ``BetaGeoFitter`` on an ``rfm_summary`` frame; return None when it cannot be fitted.

    Identical ``(frequency, recency, T)`` rows are fitted once with their count as weight.
    A fit that fails to converge is retried once with ``BGNBD_RETRY_PENALIZER``.
    """
    from seqchurn.baselines.bgnbd import BetaGeoFitter, ConvergenceError, compress_summary

    n_repeat = int((summary["frequency"] > 0).sum())
    if n_repeat < MIN_REPEAT_CUSTOMERS:
        log.warning("BG/NBD not fitted: %d customers have a repeat purchase, %d are needed", n_repeat, MIN_REPEAT_CUSTOMERS)
        return None
    frequency, recency, age, weights = compress_summary(
        summary["frequency"], summary["recency"] / time_unit_days, summary["T"] / time_unit_days
    )
    for penalizer in (0.0, BGNBD_RETRY_PENALIZER):
        # lifetimes 0.11.3 prints the optimizer result to stdout when the fit fails. The
        # result goes to the debug log instead, so stdout keeps only the command's output.
        printed = io.StringIO()
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"), contextlib.redirect_stdout(printed):
                warnings.simplefilter("ignore", RuntimeWarning)
                fitter = BetaGeoFitter(penalizer_coef=penalizer).fit(frequency, recency, age, weights=weights)
        except ConvergenceError as err:
            log.warning("BG/NBD fit with penalizer %g did not converge: %s", penalizer, " ".join(str(err).split()))
            log.debug("BG/NBD optimizer result:\n%s", printed.getvalue())
            continue
        params = {k: float(v) for k, v in fitter.params_.items()}
        if all(np.isfinite(v) and v > 0 for v in params.values()):
            log.info("BG/NBD fitted on %d customers (penalizer %g): %s", len(summary), penalizer, params)
            return fitter
        log.warning("BG/NBD fit with penalizer %g gave invalid parameters %s", penalizer, params)
    return None


def predict_customer_value(
    summary: pd.DataFrame,
    cutoff: pd.Timestamp,
    horizon_days: float = DEFAULT_CLV_HORIZON_DAYS,
    *,
    annual_discount_rate: float = 0.0,
    fitter: Any | None = None,
    time_unit_days: float = BGNBD_TIME_UNIT_DAYS,
) -> CustomerValue:
    """Predict each customer's value over ``horizon_days`` after ``cutoff`` with BG/NBD and Gamma-Gamma.

    ``summary`` is ``rfm_summary(events, cutoff)``. ``fitter`` is a fitted lifetimes
    BG/NBD or Pareto/NBD model in units of ``time_unit_days``; by default BG/NBD is fitted
    on ``summary``. The fallbacks, each counted in ``CustomerValue.fallbacks`` and logged:

    - purchases: where the purchase model is missing or returns a non-finite or negative
      value, the population's repeat purchase rate, ``sum(frequency) / sum(T)`` per day,
      times the time. lifetimes 0.11.3 returns NaN for customers without repeat purchases
      when ``a + b < 1`` (see ``lifetimes_expected_purchases``).
    - spend: where Gamma-Gamma cannot be fitted (fewer than 3 repeat customers) or has
      ``q <= 1`` (no finite mean), the population's mean spend per purchase day,
      ``sum(max(net_spend, 0)) / sum(purchase_days)``.

    NOTE: the purchase fallback ignores recency, so a lapsed customer gets the same
    expected purchases as an active one.
    """
    if summary.empty:
        raise ValueError(f"Expected customers with a purchase before {cutoff}, but the rfm summary is empty")
    fallbacks: dict[str, int] = {}
    if fitter is None:
        fitter = fit_bgnbd(summary, time_unit_days)
    model_purchases = lifetimes_expected_purchases(fitter, time_unit_days) if fitter is not None else None
    population_rate = float(summary["frequency"].sum() / summary["T"].sum())
    purchase_fallback = np.full(len(summary), model_purchases is None)

    def expected_purchases(rows: pd.DataFrame, t_days: float) -> np.ndarray:
        fallback = np.full(len(rows), population_rate * t_days)
        if model_purchases is None:
            return fallback
        with np.errstate(all="ignore"):
            values = np.asarray(model_purchases(rows, t_days), dtype=float)
        purchase_fallback[~np.isfinite(values) | (values < 0)] = True
        return np.where(purchase_fallback, fallback, values)

    spend_model = _fit_spend_model(summary)
    spend = spend_model if spend_model is not None else _PooledSpend(summary)
    table = predict_clv(summary, spend, expected_purchases, horizon_days, annual_discount_rate=annual_discount_rate)
    if model_purchases is not None and purchase_fallback.any():
        # A customer flagged at a later step got model values at the earlier steps, so the
        # second pass uses the fallback at every step for all flagged customers.
        table = predict_clv(summary, spend, expected_purchases, horizon_days, annual_discount_rate=annual_discount_rate)

    if purchase_fallback.any():
        fallbacks["purchases_population_rate"] = int(purchase_fallback.sum())
    if spend_model is None:
        fallbacks["spend_population_mean"] = len(summary)
    for reason, count in fallbacks.items():
        log.warning("CLV at %s: %d of %d customers use the fallback %s", cutoff, count, len(summary), reason)
    if not np.isfinite(table["predicted_clv"]).all():
        raise RuntimeError(f"predicted CLV is not finite for {int((~np.isfinite(table['predicted_clv'])).sum())} customers despite the fallbacks")

    table["purchases_model"] = np.where(purchase_fallback, "population_rate", type(fitter).__name__ if fitter is not None else "")
    table["spend_model"] = "gamma_gamma" if spend_model is not None else "population_mean"
    table = summary.drop(columns=["net_spend"]).join(table)
    params = {k: float(v) for k, v in fitter.params_.items()} if fitter is not None else None
    return CustomerValue(table, cutoff, float(horizon_days), params, spend_model, fallbacks)


def _fit_spend_model(summary: pd.DataFrame) -> GammaGammaFit | None:
    try:
        fit = fit_gamma_gamma(summary["frequency"], summary["monetary_value"])
    except ValueError as err:
        log.warning("Gamma-Gamma not fitted: %s", err)
        return None
    if fit.q <= 1.0:
        log.warning("Gamma-Gamma fit has q = %.3f <= 1, so its mean spend is not finite; not used", fit.q)
        return None
    return fit


class _PooledSpend:
    """Stand-in for ``GammaGammaFit`` that gives every customer the population's mean spend per purchase day."""

    def __init__(self, summary: pd.DataFrame) -> None:
        self.mean = float(summary["net_spend"].clip(lower=0).sum() / summary["purchase_days"].sum())

    def expected_spend(self, frequency: np.ndarray, monetary_value: np.ndarray) -> np.ndarray:
        return np.full(len(frequency), self.mean)


def customer_value_at(events: pd.DataFrame, cutoff: str | pd.Timestamp, horizon_days: float, **options: Any) -> CustomerValue:
    """Return ``predict_customer_value`` for the customers with a purchase before ``cutoff``."""
    cutoff = to_utc(cutoff)
    summary = rfm_summary(events, cutoff)
    if summary.empty:
        raise InputError(f"no customer has a purchase before the cutoff {cutoff}", hint="Choose a later cutoff")
    return predict_customer_value(summary, cutoff, horizon_days, **options)


# -- segments ----------------------------------------------------------------------------


@dataclass
class SegmentResult:
    """K-Means RFM segments at ``cutoff`` and their summary with outcomes."""

    cutoff: pd.Timestamp
    segmentation: Segmentation
    summary: pd.DataFrame


def default_segment_cutoff(events: pd.DataFrame, churn: ChurnDefinition) -> pd.Timestamp:
    """Return the latest cutoff whose churn horizon the log covers: the log's end minus the horizon."""
    return log_end(events) - churn.horizon


def segments_at(
    events: pd.DataFrame,
    cutoff: str | pd.Timestamp,
    churn: ChurnDefinition,
    *,
    clv_horizon_days: float = DEFAULT_CLV_HORIZON_DAYS,
    annual_discount_rate: float = 0.0,
    predictions: pd.DataFrame | None = None,
    k_range: tuple[int, int] = SEGMENT_K_RANGE,
    seed: int = 0,
) -> SegmentResult:
    """Segment the customers that the churn label covers at ``cutoff`` and summarise each segment.

    The customers are those of ``make_snapshot(events, cutoff, churn)``: active in the
    lookback before ``cutoff``. They are clustered on their RFM features at ``cutoff``. The
    summary adds ``churn_rate`` (no activity in the horizon after ``cutoff``),
    ``mean_predicted_clv`` (CLV over ``clv_horizon_days`` predicted at ``cutoff``) and, when
    ``predictions`` (``customer_id``, ``churn_probability``) is given,
    ``mean_churn_probability``. Raises ``InputError`` when the log ends before the horizon
    does or there are too few customers to form segments.
    """
    cutoff = to_utc(cutoff)
    end = log_end(events)
    if cutoff + churn.horizon > end:
        raise InputError(
            f"segment cutoff {cutoff} plus the churn horizon of {churn.horizon_days:g} days ends after the log ({end})",
            hint=f"Choose a cutoff at or before {end - churn.horizon}",
        )

    snapshot = make_snapshot(events, cutoff, churn)
    if snapshot.empty:
        raise InputError(f"no customer is active in the {churn.lookback_days:g} days before the segment cutoff {cutoff}", hint="Choose a later cutoff")
    rfm = rfm_summary(events, cutoff)
    value = predict_customer_value(rfm, cutoff, clv_horizon_days, annual_discount_rate=annual_discount_rate)
    labelled = rfm.index.isin(snapshot["customer_id"])
    log.info(
        "segments at %s: %d customers active in the lookback are segmented; %d with only older purchases are not",
        cutoff, int(labelled.sum()), int((~labelled).sum()),
    )
    with as_input_error(f"segmentation at {cutoff}"):
        segmentation = segment_customers(rfm.loc[labelled], k_range=k_range, seed=seed)

    customers = snapshot[["customer_id", "label"]].merge(
        value.table["predicted_clv"].rename_axis("customer_id").reset_index(), on="customer_id", how="left"
    )
    if predictions is not None:
        customers = customers.merge(predictions[["customer_id", "churn_probability"]], on="customer_id", how="left")
    summary = segment_summary(segmentation, customers)
    return SegmentResult(cutoff, segmentation, summary)


# -- command line ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqchurn metrics",
        description="Write churn, retention, cohort, CLV and segment tables (CSV and Markdown) for an event log.",
    )
    parser.add_argument("--data", required=True, help="data config: a name in conf/data/ (e.g. online_retail) or the path of a YAML file")
    parser.add_argument("--freq", default="M", help="pandas period frequency of the period and cohort tables: M (month), W (week), Q (quarter); default M")
    parser.add_argument("--out", default=None, help="output folder; default <repository>/outputs/metrics/<data name>")
    parser.add_argument("--as-of", default=None, help="cutoff of the CLV table (date or timestamp, UTC unless it has an offset); default: end of the log's last day")
    parser.add_argument("--clv-horizon-days", type=float, default=DEFAULT_CLV_HORIZON_DAYS, help="days after the cutoff that the predicted CLV covers; default 365")
    parser.add_argument("--discount-rate", type=float, default=0.0, help="annual discount rate of the predicted CLV, e.g. 0.1 for 10%%; default 0")
    parser.add_argument(
        "--segment-cutoff", default=None,
        help="cutoff of the segments, whose churn rate is observed in the churn horizon after it; default: log end minus the horizon",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of K-Means; default 0")
    return parser


def run_metrics(args: argparse.Namespace, out: Path, summary: RunSummary) -> dict[str, str]:
    """Compute and write every table of ``seqchurn metrics``; return the written paths by name."""
    data_cfg = load_data_config(args.data)
    with as_input_error("data config section `churn`"):
        churn = churn_from_config(data_cfg.get("churn") or {})
    with summary.stage("load"):
        events, report = load_log(data_cfg)
    summary.add_load_report(report)
    paths: dict[str, str] = {}

    with summary.stage("periods"), as_input_error(f"--freq {args.freq!r}"):
        periods = period_metrics(events, args.freq, churn)
        cohorts = cohort_retention(events, args.freq)
    paths.update({f"periods_{k}": str(v) for k, v in write_table(periods, out, "periods", index=False).items()})
    paths.update({f"cohort_retention_{k}": str(v) for k, v in write_table(cohorts, out, "cohort_retention").items()})

    with summary.stage("clv"), as_input_error("CLV options"):
        as_of = to_utc(args.as_of) if args.as_of else log_end(events)
        value = customer_value_at(events, as_of, args.clv_horizon_days, annual_discount_rate=args.discount_rate)
    clv_path = out / "clv.csv"
    value.table.to_csv(clv_path)
    paths["clv_csv"] = str(clv_path)

    with summary.stage("segments"), as_input_error("segment options"):
        cutoff = to_utc(args.segment_cutoff) if args.segment_cutoff else default_segment_cutoff(events, churn)
        segments = segments_at(events, cutoff, churn, clv_horizon_days=args.clv_horizon_days, annual_discount_rate=args.discount_rate, seed=args.seed)
    paths.update({f"segments_{k}": str(v) for k, v in write_table(segments.summary, out, "segments", index=False).items()})
    assignments_path = out / "customer_segments.csv"
    segments.segmentation.assignments.to_csv(assignments_path, index=False)
    paths["customer_segments_csv"] = str(assignments_path)

    summary.details.update(
        {
            "data": data_cfg.get("name"),
            "customers": int(events["customer_id"].nunique()),
            "periods": len(periods),
            "clv_as_of": as_of,
            "clv_customers": len(value.table),
            "clv_customers_without_purchase": int(events.loc[events["ts"] < as_of, "customer_id"].nunique()) - len(value.table),
            "clv_fallbacks": value.fallbacks,
            "bgnbd_params": value.bgnbd_params,
            "gamma_gamma": None if value.gamma_gamma is None else {"p": value.gamma_gamma.p, "q": value.gamma_gamma.q, "gamma": value.gamma_gamma.gamma},
            "segment_cutoff": cutoff,
            "segments": segments.segmentation.k,
            "outputs": paths,
        }
    )
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``seqchurn metrics`` with ``argv``; return the exit code."""
    args = build_parser().parse_args(argv)
    out = Path(args.out) if args.out else REPO_ROOT / "outputs" / "metrics" / Path(args.data).stem
    code, paths = run_command("metrics", out / "run_summary.json", vars(args), lambda summary: run_metrics(args, out, summary))
    for name, path in (paths or {}).items():
        print(f"{name}: {path}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
