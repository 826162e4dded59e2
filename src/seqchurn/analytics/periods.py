"""Churn, retention and revenue per calendar period, and acquisition-cohort retention.

Definitions used by ``period_metrics`` for a period ``[s, e)``, with the activity event types
and the lookback ``L`` of a ``ChurnDefinition`` (the same rule the model labels use):

- A customer *exists* at a moment ``t`` when they have an activity event in ``[t - L, t)``.
  A purchase whose whole order was cancelled before ``t`` does not count at ``t``.
- ``customers_start`` / ``customers_end``: customers existing at ``s`` / at ``e``.
- ``active_customers``: customers with an activity event in ``[s, e)``. Cancellations
  known at ``e`` are applied.
- ``new_customers``: active customers with no activity event before ``s``. Those events
  are the ones that still count at ``e``.
- ``churned_customers``: customers existing at ``s`` who are not active in ``[s, e)``. This
  is the model's label with a horizon of one period.
- ``churn_rate_activity`` = churned / customers_start, and ``retention_rate`` = 1 - that.
- ``churn_rate_headcount`` = (customers_start - customers_end) / customers_start, the
  head-count formula. It mixes churn with acquisition and is negative when new customers
  outnumber leavers. With ``L`` longer than a period, a customer who skipped one
  period still exists at ``e``, so it also lags the activity rate.
- ``purchases``: orders of active customers in the period (distinct ``order_id`` per
  customer; a purchase event without ``order_id`` counts as one order). ``events``: all
  events of active customers in the period. The ``*_per_active`` columns divide both by
  ``active_customers``.
- ``revenue``: sum of purchase amounts minus sum of return amounts with ``ts`` in the period,
  over all customers. The schema records cancellations as return events, so cancelled
  orders net out here without using ``cancelled_at``.

Rates are NaN where their denominator is 0. The log is taken to cover whole UTC days, from
the day of its first event to the day of its last. ``complete`` is False for a period that
reaches outside that span. ``lookback_covered`` is False while ``s - L`` is before the first
day, because ``customers_start`` is undercounted there.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from seqchurn.data.labels import ChurnDefinition
from seqchurn.data.schema import validate_events

log = logging.getLogger(__name__)

PERIOD_COLUMNS: tuple[str, ...] = (
    "period",
    "period_start",
    "period_end",
    "complete",
    "lookback_covered",
    "customers_start",
    "customers_end",
    "new_customers",
    "active_customers",
    "churned_customers",
    "churn_rate_headcount",
    "churn_rate_activity",
    "retention_rate",
    "purchases",
    "events",
    "purchases_per_active",
    "events_per_active",
    "revenue",
)

# Stands in for "never cancelled" in int64 nanosecond arrays.
_NEVER = np.iinfo(np.int64).max


def _check_events(events: pd.DataFrame) -> None:
    validate_events(events)
    if events.empty:
        raise ValueError("Expected a non-empty event frame, but got 0 events")
    missing_ts = int(events["ts"].isna().sum())
    if missing_ts:
        raise ValueError(f"Expected every event to have a timestamp, but {missing_ts} rows have a missing `ts`")


def _ns(values: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    """Return UTC timestamps as int64 nanoseconds; NaT becomes ``_NEVER``."""
    series = pd.Series(values).dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
    out = series.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    out[series.isna().to_numpy()] = _NEVER
    return out


def _period_index(ts: pd.Series, freq: str) -> pd.PeriodIndex:
    naive = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    try:
        first, last = naive.min().to_period(freq), naive.max().to_period(freq)
    except ValueError as err:
        raise ValueError(f"Expected `freq` to be a pandas period frequency such as 'M', 'W' or 'Q', but got {freq!r}") from err
    return pd.period_range(first, last, freq=freq)


def _bounds(periods: pd.PeriodIndex) -> tuple[pd.DatetimeIndex, pd.DatetimeIndex]:
    starts = periods.start_time.tz_localize("UTC")
    ends = (periods + 1).start_time.tz_localize("UTC")
    return starts, ends


class _ActivityIndex:
    """Activity events sorted by time, for fast "who was active in [lo, hi)" queries."""

    def __init__(self, events: pd.DataFrame, codes: np.ndarray, n_customers: int, churn: ChurnDefinition) -> None:
        is_activity = events["event_type"].isin(churn.activity_types).to_numpy()
        ts = _ns(events["ts"])[is_activity]
        order = np.argsort(ts, kind="stable")
        self.ts = ts[order]
        self.codes = codes[is_activity][order]
        self.cancelled = _ns(events["cancelled_at"])[is_activity][order]
        self.n_customers = n_customers

    def customers(self, lo: int | None, hi: int, known_at: int) -> np.ndarray:
        """Return a boolean mask over customer codes: activity in ``[lo, hi)`` that still counts at ``known_at``."""
        i0 = 0 if lo is None else np.searchsorted(self.ts, lo, side="left")
        i1 = np.searchsorted(self.ts, hi, side="left")
        counts = self.cancelled[i0:i1] >= known_at
        mask = np.zeros(self.n_customers, dtype=bool)
        mask[self.codes[i0:i1][counts]] = True
        return mask


def _order_keys(events: pd.DataFrame, codes: np.ndarray) -> np.ndarray:
    """Return an int64 order key per row; rows without ``order_id`` get keys of their own."""
    has_order = events["order_id"].notna().to_numpy()
    keys = np.empty(len(events), dtype=np.int64)
    pairs = pd.MultiIndex.from_arrays([codes[has_order], events["order_id"].to_numpy()[has_order]])
    keys[has_order] = pd.factorize(pairs)[0]
    keys[~has_order] = -1 - np.arange(int((~has_order).sum()), dtype=np.int64)
    return keys


def period_metrics(events: pd.DataFrame, freq: str = "M", churn: ChurnDefinition | None = None) -> pd.DataFrame:
    """Compute customer counts, churn, retention and revenue per calendar period.

    ``freq`` is a pandas period frequency ("M" months, "W" weeks, "Q" quarters). Periods
    are in UTC and run from the period of the first event to that of the last. ``churn``
    supplies the activity types and lookback (default ``ChurnDefinition()``). The module
    docstring defines every column of ``PERIOD_COLUMNS``.
    """
    churn = churn or ChurnDefinition()
    _check_events(events)
    periods = _period_index(events["ts"], freq)
    starts, ends = _bounds(periods)

    codes, uniques = pd.factorize(events["customer_id"])
    if (codes < 0).any():
        raise ValueError(f"Expected every event to have a `customer_id`, but {(codes < 0).sum()} rows have none")
    activity = _ActivityIndex(events, codes, len(uniques), churn)

    ts = _ns(events["ts"])
    by_time = np.argsort(ts, kind="stable")
    ts_sorted = ts[by_time]
    codes_sorted = codes[by_time]
    event_type = events["event_type"].to_numpy()[by_time]
    is_purchase = event_type == "purchase"
    is_return = event_type == "return"
    amount = events["amount"].to_numpy(dtype=float)[by_time]
    orders = _order_keys(events, codes)[by_time]

    first_day = events["ts"].min().floor("D")
    last_day_end = events["ts"].max().floor("D") + pd.Timedelta(days=1)
    lookback_ns = churn.lookback.value

    rows = []
    # One step per period; each step is vectorised over all events.
    for period, start, end in zip(periods, starts, ends):
        s, e = start.value, end.value
        at_start = activity.customers(s - lookback_ns, s, known_at=s)
        at_end = activity.customers(e - lookback_ns, e, known_at=e)
        active = activity.customers(s, e, known_at=e)
        seen_before = activity.customers(None, s, known_at=e)

        i0 = np.searchsorted(ts_sorted, s, side="left")
        i1 = np.searchsorted(ts_sorted, e, side="left")
        window = slice(i0, i1)
        of_active = active[codes_sorted[window]]
        purchase_orders = orders[window][of_active & is_purchase[window]]

        rows.append(
            {
                "period": str(period),
                "period_start": start,
                "period_end": end,
                "complete": bool(start >= first_day and end <= last_day_end),
                "lookback_covered": bool(start - churn.lookback >= first_day),
                "customers_start": int(at_start.sum()),
                "customers_end": int(at_end.sum()),
                "new_customers": int((active & ~seen_before).sum()),
                "active_customers": int(active.sum()),
                "churned_customers": int((at_start & ~active).sum()),
                "purchases": int(np.unique(purchase_orders).size),
                "events": int(of_active.sum()),
                "revenue": float(amount[window][is_purchase[window]].sum() - amount[window][is_return[window]].sum()),
            }
        )

    table = pd.DataFrame(rows)
    start_count = table["customers_start"].where(table["customers_start"] > 0)
    active_count = table["active_customers"].where(table["active_customers"] > 0)
    table["churn_rate_headcount"] = (table["customers_start"] - table["customers_end"]) / start_count
    table["churn_rate_activity"] = table["churned_customers"] / start_count
    table["retention_rate"] = 1.0 - table["churn_rate_activity"]
    table["purchases_per_active"] = table["purchases"] / active_count
    table["events_per_active"] = table["events"] / active_count
    log.info("period metrics: %d periods of %r over %d customers", len(table), freq, len(uniques))
    return table[list(PERIOD_COLUMNS)]


def cohort_retention(events: pd.DataFrame, freq: str = "M") -> pd.DataFrame:
    """Build the acquisition-cohort retention table.

    A customer's cohort is the period of their first purchase. Cell ``(cohort, k)`` is the
    share of the cohort with a purchase in the ``k``-th period after it, so column 0 is 1.0.
    Purchases whose whole order was cancelled (``cancelled_at`` set) are ignored. Cells after
    the period of the last event in the log are NaN (not observed yet), and the last period
    may be partial. Returns a frame indexed by cohort label ("2011-01") with a ``customers``
    column (cohort size) followed by integer columns ``0, 1, 2, ...``.
    """
    _check_events(events)
    last_period = _period_index(events["ts"], freq)[-1]

    is_purchase = events["event_type"] == "purchase"
    counted = is_purchase & events["cancelled_at"].isna()
    purchases = events.loc[counted, ["customer_id", "ts"]]
    skipped = int((is_purchase & ~counted).sum())
    if skipped:
        log.info("cohort retention: ignored %d purchase events of cancelled orders", skipped)
    if purchases.empty:
        raise ValueError("Expected at least one purchase that was not cancelled, but found none; cohort retention needs purchases")

    period = purchases["ts"].dt.tz_convert("UTC").dt.tz_localize(None).dt.to_period(freq)
    ordinal = pd.Series(pd.PeriodIndex(period).asi8, index=purchases.index)
    frame = pd.DataFrame({"customer_id": purchases["customer_id"].to_numpy(), "ordinal": ordinal.to_numpy()})
    frame = frame.drop_duplicates()
    frame["cohort"] = frame.groupby("customer_id")["ordinal"].transform("min")
    frame["offset"] = frame["ordinal"] - frame["cohort"]

    counts = frame.groupby(["cohort", "offset"]).size().unstack("offset", fill_value=0)
    max_offset = int(last_period.ordinal - counts.index.min())
    counts = counts.reindex(columns=range(max_offset + 1), fill_value=0)
    sizes = counts[0]
    shares = counts.div(sizes, axis=0).astype(float)

    # Cells whose period is after the last observed one are unknown, not zero.
    observed_to = last_period.ordinal - shares.index.to_numpy()
    unobserved = np.arange(max_offset + 1)[None, :] > observed_to[:, None]
    shares = shares.mask(unobserved)

    cohort_labels = pd.PeriodIndex.from_ordinals(shares.index.to_numpy(), freq=freq).astype(str)
    shares.index = pd.Index(cohort_labels, name="cohort")
    shares.columns = pd.Index([int(c) for c in shares.columns], name=None)
    shares.insert(0, "customers", sizes.to_numpy().astype(np.int64))
    return shares
