"""Customer lifetime value: historical net spend, and predicted value over a horizon.

Predicted value = expected number of purchases in the horizon x expected spend per purchase.
The spend per purchase comes from the Gamma-Gamma model of Fader, Hardie & Lee, "RFM and
CLV: Using Iso-Value Curves for Customer Base Analysis", Journal of Marketing Research 42
(2005), fitted here with scipy. The number of purchases comes from any callable with the
``ExpectedPurchases`` signature, such as a BG/NBD model or a sequence model's horizon output.

The customer summary follows the BG/NBD conventions, which the ``lifetimes`` package uses
too. A *purchase* is a UTC calendar day with at least one purchase event. ``frequency`` is
the number of purchase days after the first, and ``recency`` and ``T`` are in days.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, special

from seqchurn.data.labels import to_utc
from seqchurn.data.schema import validate_events

log = logging.getLogger(__name__)

ExpectedPurchases = Callable[[pd.DataFrame, float], np.ndarray]
"""``f(summary, t_days)``: expected number of purchases (purchase days) per row of ``summary``
in ``[cutoff, cutoff + t_days)``. It must be cumulative in ``t`` and 0 at ``t = 0``."""

_DAY = pd.Timedelta(days=1)


def rfm_summary(events: pd.DataFrame, cutoff: str | pd.Timestamp) -> pd.DataFrame:
    """Summarise each customer's purchases before ``cutoff``, one row per buying customer.

    Uses events with ``ts < cutoff``. A purchase whose whole order was cancelled before the
    cutoff is ignored, as in the churn labels. Returns a frame indexed by ``customer_id``:

    - ``first_purchase``, ``last_purchase``: timestamps of the first and last purchase day.
    - ``purchase_days``: number of distinct UTC days with a purchase.
    - ``frequency``: ``purchase_days - 1``, the repeat purchases.
    - ``recency``: days from the first to the last purchase day.
    - ``T``: days from the first purchase day to the cutoff.
    - ``days_since_last``: ``T - recency``.
    - ``monetary_value``: mean purchase amount per repeat purchase day (the first day is left
      out, as Gamma-Gamma expects); NaN when ``frequency == 0``.
    - ``net_spend``: historical value, the sum of purchase amounts minus return amounts
      before the cutoff. Cancelled orders enter it through their return events.

    Customers whose events before the cutoff include no counted purchase get no row; their
    number is logged.
    """
    validate_events(events)
    cutoff = to_utc(cutoff)
    before = events.loc[events["ts"] < cutoff]

    is_purchase = before["event_type"] == "purchase"
    cancelled = before["cancelled_at"].notna() & (before["cancelled_at"] < cutoff)
    purchases = before.loc[is_purchase & ~cancelled, ["customer_id", "ts", "amount"]]
    day = purchases["ts"].dt.floor("D")
    daily = (
        purchases.assign(day=day)
        .groupby(["customer_id", "day"], sort=True, observed=True)["amount"]
        .sum()
        .reset_index()
    )

    grouped = daily.groupby("customer_id", sort=True)
    summary = pd.DataFrame(
        {
            "first_purchase": grouped["day"].min(),
            "last_purchase": grouped["day"].max(),
            "purchase_days": grouped.size().astype(np.int64),
        }
    )
    summary["frequency"] = summary["purchase_days"] - 1
    summary["recency"] = (summary["last_purchase"] - summary["first_purchase"]) / _DAY
    summary["T"] = (cutoff - summary["first_purchase"]) / _DAY
    summary["days_since_last"] = summary["T"] - summary["recency"]

    # Repeat purchase days: every day after the customer's first one.
    repeat = daily.loc[daily["day"] > daily.groupby("customer_id")["day"].transform("min")]
    summary["monetary_value"] = repeat.groupby("customer_id")["amount"].mean().reindex(summary.index)

    signed = before["amount"].where(before["event_type"] == "purchase", 0.0) - before["amount"].where(
        before["event_type"] == "return", 0.0
    )
    net = signed.groupby(before["customer_id"], sort=True).sum()
    summary["net_spend"] = net.reindex(summary.index).astype(float)

    without_purchase = int(before["customer_id"].nunique()) - len(summary)
    if without_purchase:
        log.info("rfm summary at %s: %d customers have events but no counted purchase and get no row", cutoff, without_purchase)
    summary.index.name = "customer_id"
    return summary


@dataclass(frozen=True)
class GammaGammaFit:
    """Fitted Gamma-Gamma spend model.

    A customer's purchase values are Gamma(``p``, ``nu``) with ``nu`` ~ Gamma(``q``,
    ``gamma``) across customers (shape, rate). ``correlation`` is the Pearson correlation of
    frequency and monetary value on the fitted customers. The model assumes they are
    independent, so a large value means its predictions are biased.
    """

    p: float
    q: float
    gamma: float
    n_customers: int
    log_likelihood: float
    converged: bool
    correlation: float

    @property
    def population_mean_spend(self) -> float:
        """Mean spend per purchase across customers, ``p * gamma / (q - 1)``, or inf when ``q <= 1``."""
        return self.p * self.gamma / (self.q - 1.0) if self.q > 1.0 else float("inf")

    def expected_spend(self, frequency: np.ndarray, monetary_value: np.ndarray) -> np.ndarray:
        """Return each customer's expected spend per purchase given their history.

        Customers with ``frequency == 0`` get the population mean.
        """
        return conditional_expected_spend(self.p, self.q, self.gamma, frequency, monetary_value)


def gamma_gamma_log_likelihood(p: float, q: float, gamma: float, frequency: np.ndarray, monetary_value: np.ndarray) -> np.ndarray:
    """Return the per-customer log-likelihood of mean spend ``monetary_value`` over ``frequency`` purchases.

    This is the density of the mean of ``x`` Gamma(p, nu) values with nu ~ Gamma(q, gamma)
    integrated out (Fader, Hardie & Lee 2005). Needs ``frequency >= 1`` and ``monetary_value > 0``.
    """
    x = np.asarray(frequency, dtype=float)
    m = np.asarray(monetary_value, dtype=float)
    px = p * x
    return (
        special.gammaln(px + q)
        - special.gammaln(px)
        - special.gammaln(q)
        + q * np.log(gamma)
        + (px - 1.0) * np.log(m)
        + px * np.log(x)
        - (px + q) * np.log(gamma + m * x)
    )


def _negative_log_likelihood(log_params: np.ndarray, x: np.ndarray, m: np.ndarray) -> tuple[float, np.ndarray]:
    """Return the mean negative log-likelihood and its gradient in log-parameter space."""
    p, q, gamma = np.exp(log_params)
    px = p * x
    log_total = np.log(gamma + m * x)
    ll = gamma_gamma_log_likelihood(p, q, gamma, x, m)
    psi_sum = special.digamma(px + q)
    d_p = x * (psi_sum - special.digamma(px) + np.log(m) + np.log(x) - log_total)
    d_q = psi_sum - special.digamma(q) + np.log(gamma) - log_total
    d_gamma = q / gamma - (px + q) / (gamma + m * x)
    # Chain rule: d/d(log a) = a * d/da.
    grad = np.array([p * d_p.mean(), q * d_q.mean(), gamma * d_gamma.mean()])
    return -float(ll.mean()), -grad


def fit_gamma_gamma(frequency: np.ndarray | pd.Series, monetary_value: np.ndarray | pd.Series) -> GammaGammaFit:
    """Fit the Gamma-Gamma model by maximum likelihood on customers with repeat purchases.

    Rows with ``frequency < 1`` or a ``monetary_value`` that is not positive and finite are
    not used, and their count is logged. Raises ``ValueError`` when fewer than 3 rows remain
    or the inputs differ in length.
    """
    x = np.asarray(frequency, dtype=float)
    m = np.asarray(monetary_value, dtype=float)
    if x.shape != m.shape or x.ndim != 1:
        raise ValueError(f"Expected 1-d `frequency` and `monetary_value` of equal length, but got shapes {x.shape} and {m.shape}")
    usable = (x >= 1) & np.isfinite(m) & (m > 0)
    skipped = int((~usable).sum())
    if skipped:
        log.info("gamma-gamma fit: skipped %d of %d customers without repeat purchases of positive value", skipped, len(x))
    x, m = x[usable], m[usable]
    if len(x) < 3:
        raise ValueError(
            f"Expected at least 3 customers with repeat purchases of positive value to fit Gamma-Gamma, but got {len(x)}"
        )

    # Start from p = 1, q = 2 and the gamma that matches the sample mean spend.
    start = np.log([1.0, 2.0, float(np.mean(m))])
    result = optimize.minimize(_negative_log_likelihood, start, args=(x, m), jac=True, method="L-BFGS-B")
    p, q, gamma = (float(v) for v in np.exp(result.x))
    if not result.success:
        log.warning("gamma-gamma fit did not converge: %s", result.message)
    if q <= 1.0:
        log.warning("gamma-gamma fit gave q = %.3f <= 1: the population mean spend is undefined", q)
    correlation = float(np.corrcoef(x, m)[0, 1]) if len(x) > 1 and np.std(x) > 0 and np.std(m) > 0 else float("nan")
    if abs(correlation) > 0.3:
        log.warning("frequency and monetary value correlate (r = %.2f), but Gamma-Gamma assumes they are independent", correlation)
    fit = GammaGammaFit(
        p=p,
        q=q,
        gamma=gamma,
        n_customers=len(x),
        log_likelihood=-float(result.fun) * len(x),
        converged=bool(result.success),
        correlation=correlation,
    )
    log.info("gamma-gamma fit on %d customers: p=%.4g q=%.4g gamma=%.4g", len(x), p, q, gamma)
    return fit


def conditional_expected_spend(p: float, q: float, gamma: float, frequency: np.ndarray, monetary_value: np.ndarray) -> np.ndarray:
    """Return E[spend per purchase | x purchases with mean m] = p (gamma + m x) / (p x + q - 1).

    This weights the population mean against the customer's own mean by ``x``. Rows with
    ``x == 0`` or a missing ``m`` get the population mean ``p gamma / (q - 1)``.
    """
    x = np.asarray(frequency, dtype=float)
    m = np.asarray(monetary_value, dtype=float)
    no_history = (x <= 0) | ~np.isfinite(m)
    x = np.where(no_history, 0.0, x)
    m = np.where(no_history, 0.0, m)
    return p * (gamma + m * x) / (p * x + q - 1.0)


def lifetimes_expected_purchases(fitter: object, time_unit_days: float = 1.0) -> ExpectedPurchases:
    """Wrap a fitted ``lifetimes`` BG/NBD or Pareto/NBD fitter as an ``ExpectedPurchases`` callable.

    ``fitter`` needs ``conditional_expected_number_of_purchases_up_to_time(t, frequency,
    recency, T)``, as ``BetaGeoFitter`` and ``ParetoNBDFitter`` of lifetimes 0.11 have. It
    must have been fitted on ``rfm_summary`` columns with ``recency`` and ``T`` divided by
    ``time_unit_days``.

    NOTE: lifetimes 0.11.3 takes the log of a hypergeometric term that is negative when
    ``a + b + frequency < 1``, so BG/NBD fits with ``a + b < 1`` return NaN for customers
    without repeat purchases. ``predict_clv`` then raises ``ValueError``.
    """
    if not time_unit_days > 0:
        raise ValueError(f"Expected `time_unit_days` > 0, but got {time_unit_days}")

    def expected_purchases(summary: pd.DataFrame, t_days: float) -> np.ndarray:
        values = fitter.conditional_expected_number_of_purchases_up_to_time(
            t_days / time_unit_days,
            summary["frequency"].to_numpy(dtype=float),
            summary["recency"].to_numpy(dtype=float) / time_unit_days,
            summary["T"].to_numpy(dtype=float) / time_unit_days,
        )
        return np.asarray(values, dtype=float)

    return expected_purchases


def predict_clv(
    summary: pd.DataFrame,
    spend_model: GammaGammaFit,
    expected_purchases: ExpectedPurchases,
    horizon_days: float,
    *,
    annual_discount_rate: float = 0.0,
    step_days: float = 30.0,
    margin: float = 1.0,
) -> pd.DataFrame:
    """Predict each customer's value over ``[cutoff, cutoff + horizon_days)``.

    ``summary`` is an ``rfm_summary`` frame. The horizon is cut into steps of ``step_days``.
    The purchases expected in each step (``expected_purchases`` at the step's end minus at
    its start) are multiplied by the Gamma-Gamma expected spend and by ``margin``. The
    result is discounted at ``annual_discount_rate`` to the step's end and summed. Returns
    a frame indexed like ``summary`` with ``historical_value`` (net spend so far),
    ``expected_purchases``, ``expected_spend`` (per purchase) and ``predicted_clv``.
    """
    if not horizon_days > 0:
        raise ValueError(f"Expected `horizon_days` > 0, but got {horizon_days}")
    if not step_days > 0:
        raise ValueError(f"Expected `step_days` > 0, but got {step_days}")
    if not annual_discount_rate > -1:
        raise ValueError(f"Expected `annual_discount_rate` > -1, but got {annual_discount_rate}")
    missing = [c for c in ("frequency", "monetary_value", "net_spend") if c not in summary.columns]
    if missing:
        raise ValueError(f"Expected an rfm_summary frame, but columns {missing} are missing")

    spend = spend_model.expected_spend(summary["frequency"].to_numpy(), summary["monetary_value"].to_numpy())
    n_steps = int(np.ceil(horizon_days / step_days - 1e-9))
    ends = np.minimum(step_days * np.arange(1, n_steps + 1), horizon_days)

    value = np.zeros(len(summary))
    previous = np.zeros(len(summary))
    for t in ends:
        cumulative = _call_expected_purchases(expected_purchases, summary, float(t))
        discount = (1.0 + annual_discount_rate) ** (t / 365.0)
        value += (cumulative - previous) * spend * margin / discount
        previous = cumulative

    return pd.DataFrame(
        {
            "historical_value": summary["net_spend"].to_numpy(dtype=float),
            "expected_purchases": previous,
            "expected_spend": spend,
            "predicted_clv": value,
        },
        index=summary.index,
    )


def _call_expected_purchases(expected_purchases: ExpectedPurchases, summary: pd.DataFrame, t: float) -> np.ndarray:
    values = np.asarray(expected_purchases(summary, t), dtype=float).reshape(-1)
    if values.shape != (len(summary),):
        raise ValueError(f"Expected `expected_purchases` to return {len(summary)} values (one per customer), but got {values.shape}")
    finite = np.isfinite(values)
    if not finite.all():
        first = summary.index[np.argmax(~finite)]
        raise ValueError(
            f"Expected `expected_purchases` to return finite values, but {int((~finite).sum())} are not at t={t} days "
            f"(first: customer {first!r}); check the purchase model's fitted parameters"
        )
    if (values < 0).any():
        raise ValueError(f"Expected `expected_purchases` to return values >= 0, but got min {values.min()} at t={t} days")
    return values
