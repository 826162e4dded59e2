"""Aggregate (RFM-style) features per snapshot row, for the baselines and as a side input.

Every feature of a snapshot row ``(customer_id, cutoff)`` uses only that customer's events
with ``ts < cutoff``, so an event exactly at the cutoff is future. A purchase whose
``cancelled_at`` is before the cutoff is a *cancelled purchase*: it is not a purchase, an
order or activity at that cutoff.

Terms used below: an *order* is a distinct purchase timestamp of a customer, because the
lines of one order share their timestamp. *Spend* is the summed ``amount`` of
(non-cancelled) purchases. *Activity* is an event of ``churn.activity_types``. All
durations are in days. A window ``w`` covers ``[cutoff - w days, cutoff)``.

==================================  =================================================  =======================
column                              value                                              when undefined
==================================  =================================================  =======================
days_since_last_activity            cutoff - last activity                             see "days since" fill
days_since_last_event               cutoff - last event of any type                    see "days since" fill
days_since_last_order               cutoff - last order (the current gap)              see "days since" fill
tenure_days                         cutoff - first event of any type                   0 (no event)
n_orders, spend                     orders and spend over the whole history            (0 is defined)
mean_order_value                    spend / n_orders                                   0 (no order)
order_gap_mean_days,                mean, population std and median of the             0 (fewer than 2 orders)
order_gap_std_days,                 gaps between consecutive orders
order_gap_median_days
order_gap_ratio                     days_since_last_order / max(median gap, 1 day)     0 (fewer than 2 orders)
return_count_share,                 returns / all purchase lines, by count and         0 (no purchase line)
return_amount_share                 by amount
cancel_count_share,                 cancelled / all purchase lines, by count and       0 (no purchase line)
cancel_amount_share                 by amount
n_orders_{w}d, spend_{w}d,          orders, spend and activity events in window w      (0 is defined)
n_activity_{w}d
n_{type}_{w}d                       events of each type in window w; for ``purchase``  (0 is defined)
                                    the non-cancelled purchase lines
trend_{orders,spend,activity}_{t}d  (a - b) / (a + b), where a is the value over the   0 (a + b = 0)
                                    last t days and b over the t days before
has_history, has_activity,          1 when the customer has any event, any activity,   (indicator)
has_order, has_gap                  any order, at least 2 orders before the cutoff
==================================  =================================================  =======================

"Days since" fill: when there is no such event before the cutoff, the value is
``max(tenure_days, churn.lookback_days)``: no shorter than the customer's visible history
and no shorter than the lookback. The ``has_*`` indicators mark these rows.

Shares can exceed 1 because a return may refer to a purchase made before the log starts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from seqchurn.baselines.history import DAY_NS, NOT_CANCELLED_NS, HistoryChunk, HistoryIndex, check_snapshots, timestamps_to_ns
from seqchurn.data.labels import ChurnDefinition
from seqchurn.data.schema import EVENT_TYPES

log = logging.getLogger(__name__)

DEFAULT_WINDOWS: tuple[int, ...] = (30, 90, 180, 365)
DEFAULT_TREND_DAYS = 90
# Keys of the `aggregate_features` section of a data config.
OPTION_KEYS: tuple[str, ...] = ("windows", "trend_days")

_PURCHASE = EVENT_TYPES.index("purchase")
_RETURN = EVENT_TYPES.index("return")
# Event-type code for a cancelled purchase, one past the canonical codes.
_CANCELLED = len(EVENT_TYPES)

_STATIC_FEATURES: tuple[str, ...] = (
    "days_since_last_activity",
    "days_since_last_event",
    "days_since_last_order",
    "tenure_days",
    "n_orders",
    "spend",
    "mean_order_value",
    "order_gap_mean_days",
    "order_gap_std_days",
    "order_gap_median_days",
    "order_gap_ratio",
    "return_count_share",
    "return_amount_share",
    "cancel_count_share",
    "cancel_amount_share",
)
_INDICATORS: tuple[str, ...] = ("has_history", "has_activity", "has_order", "has_gap")


def feature_names(windows: Sequence[int] = DEFAULT_WINDOWS, trend_days: int | None = DEFAULT_TREND_DAYS) -> list[str]:
    """Return the columns of ``aggregate_features`` in their order."""
    names = list(_STATIC_FEATURES)
    for w in _check_windows(windows):
        names += [f"n_orders_{w}d", f"spend_{w}d", f"n_activity_{w}d"]
        names += [f"n_{event_type}_{w}d" for event_type in EVENT_TYPES]
    if trend_days is not None:
        names += [f"trend_{what}_{trend_days}d" for what in ("orders", "spend", "activity")]
    return names + list(_INDICATORS)


def aggregate_features(
    events: pd.DataFrame,
    snapshots: pd.DataFrame,
    churn: ChurnDefinition,
    windows: Sequence[int] = DEFAULT_WINDOWS,
    *,
    trend_days: int | None = DEFAULT_TREND_DAYS,
    max_events_per_chunk: int = 4_000_000,
) -> pd.DataFrame:
    """Compute the aggregate features of every snapshot row (see the module docstring).

    ``events`` is a canonical event frame and ``snapshots`` has ``customer_id`` and
    ``cutoff`` (UTC), with any number of cutoffs. Returns float32 columns named by
    ``feature_names(windows, trend_days)``, with the index and row order of
    ``snapshots`` and no NaN. A customer without events gets the "no history" values.
    ``max_events_per_chunk`` bounds the flattened (snapshot row, event) pairs held at once.
    """
    windows = _check_windows(windows)
    if trend_days is not None and not trend_days > 0:
        raise ValueError(f"Expected `trend_days` to be positive or None, but got {trend_days}")
    check_snapshots(snapshots)
    names = feature_names(windows, trend_days)
    if len(snapshots) == 0:
        return pd.DataFrame({name: pd.Series([], dtype="float32") for name in names}, index=snapshots.index)

    index = HistoryIndex(events)
    columns = _SortedColumns.from_events(events, index, churn)
    out = np.zeros((len(snapshots), len(names)), dtype=np.float32)
    for chunk in index.chunks(snapshots, max_events=max_events_per_chunk):
        values = _chunk_features(chunk, columns, churn, windows, trend_days)
        out[chunk.rows] = np.column_stack([values[name] for name in names])

    no_history = int((out[:, names.index("has_history")] == 0).sum())
    if no_history:
        log.info("aggregate_features: %d of %d snapshot rows have no event before their cutoff", no_history, len(snapshots))
    if not np.isfinite(out).all():
        bad = names[int(np.flatnonzero(~np.isfinite(out).all(axis=0))[0])]
        raise RuntimeError(f"aggregate_features produced a non-finite value in column {bad!r}; this is a bug")
    return pd.DataFrame(out, index=snapshots.index, columns=names)


def feature_options(data_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Return the ``windows`` and ``trend_days`` that a data config sets for ``aggregate_features``.

    They come from the config's optional ``aggregate_features`` section, with
    ``DEFAULT_WINDOWS`` and ``DEFAULT_TREND_DAYS`` for keys it leaves out. The logreg and
    LightGBM baselines and the sequence models' aggregate side input read the same options,
    so they see the same features. ``trend_days: null`` turns the trend features off.
    """
    section = data_cfg.get("aggregate_features") or {}
    if not isinstance(section, Mapping):
        raise ValueError(f"Expected `aggregate_features` in the data config to be a mapping with {list(OPTION_KEYS)}, but got {section!r}")
    unknown = sorted(str(key) for key in section if key not in OPTION_KEYS)
    if unknown:
        raise ValueError(f"Unknown key(s) {unknown} under `aggregate_features` in the data config; valid keys are {list(OPTION_KEYS)}")
    windows = _check_windows(section.get("windows", DEFAULT_WINDOWS))
    trend_days = section.get("trend_days", DEFAULT_TREND_DAYS)
    if trend_days is not None and (not isinstance(trend_days, (int, np.integer)) or trend_days <= 0):
        raise ValueError(f"Expected `aggregate_features.trend_days` to be a positive whole number of days or null, but got {trend_days!r}")
    return {"windows": list(windows), "trend_days": None if trend_days is None else int(trend_days)}


def _check_windows(windows: Sequence[int]) -> tuple[int, ...]:
    windows = tuple(windows)
    if any(not isinstance(w, (int, np.integer)) or w <= 0 for w in windows) or len(set(windows)) != len(windows):
        raise ValueError(f"Expected `windows` to be distinct positive whole days, but got {list(windows)}")
    return tuple(int(w) for w in windows)


class _SortedColumns:
    """Event columns in ``HistoryIndex`` order, as plain numpy arrays."""

    def __init__(self, ts_ns: np.ndarray, type_code: np.ndarray, amount: np.ndarray, cancelled_ns: np.ndarray, is_activity_type: np.ndarray):
        self.ts_ns = ts_ns
        self.type_code = type_code
        self.amount = amount
        self.cancelled_ns = cancelled_ns
        self.is_activity_type = is_activity_type

    @classmethod
    def from_events(cls, events: pd.DataFrame, index: HistoryIndex, churn: ChurnDefinition) -> _SortedColumns:
        # Codes follow EVENT_TYPES, whatever the category order of this frame is.
        type_code = pd.Categorical(events["event_type"], categories=list(EVENT_TYPES)).codes.astype(np.int8)
        unknown = np.flatnonzero(type_code < 0)
        if unknown.size:
            value = events["event_type"].iloc[unknown[0]]
            raise ValueError(f"Expected `event_type` to be one of {EVENT_TYPES}, but event row {unknown[0]} has {value!r}")
        cancelled_ns = timestamps_to_ns(events["cancelled_at"], "cancelled_at")
        cancelled_ns[cancelled_ns == np.iinfo(np.int64).min] = NOT_CANCELLED_NS
        activity_codes = [EVENT_TYPES.index(t) for t in churn.activity_types]
        return cls(
            ts_ns=index.ts_ns,
            type_code=index.sorted(type_code),
            amount=index.sorted(events["amount"].to_numpy(dtype=np.float64, na_value=0.0)),
            cancelled_ns=index.sorted(cancelled_ns),
            is_activity_type=index.sorted(np.isin(type_code, activity_codes)),
        )


def _last_per_row(row: np.ndarray, values: np.ndarray, n_rows: int, fill: float = np.nan) -> np.ndarray:
    """Return the last of ``values`` per row; ``row`` must be sorted."""
    out = np.full(n_rows, fill, dtype=np.float64)
    if len(row):
        last = np.flatnonzero(np.r_[row[1:] != row[:-1], True])
        out[row[last]] = values[last]
    return out


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Return numerator / denominator, and 0 where the denominator is 0."""
    out = np.zeros_like(numerator, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _trend(last: np.ndarray, before: np.ndarray) -> np.ndarray:
    return _safe_ratio(last - before, last + before)


def _chunk_features(chunk: HistoryChunk, columns: _SortedColumns, churn: ChurnDefinition, windows: tuple[int, ...], trend_days: int | None) -> dict[str, np.ndarray]:
    n_rows, row, pos = chunk.n_rows, chunk.row, chunk.position
    cutoff = chunk.cutoff_ns[row]
    age_ns = cutoff - columns.ts_ns[pos]
    amount = columns.amount[pos]
    cancelled = columns.cancelled_ns[pos] < cutoff
    type_code = columns.type_code[pos].copy()
    type_code[(type_code == _PURCHASE) & cancelled] = _CANCELLED
    is_purchase = type_code == _PURCHASE
    is_activity = columns.is_activity_type[pos] & ~cancelled
    f: dict[str, np.ndarray] = {}

    def per_row_sum(mask: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        w = None if weights is None else weights[mask]
        return np.bincount(row[mask], weights=w, minlength=n_rows).astype(np.float64)

    # History span and the "days since" features.
    has_history = chunk.count > 0
    tenure = np.zeros(n_rows)
    tenure[has_history] = age_ns[chunk.first[has_history]] / DAY_NS
    days_since_fill = np.maximum(tenure, churn.lookback_days)
    age_days = age_ns / DAY_NS
    last_event = _last_per_row(row, age_days, n_rows)
    last_activity = _last_per_row(row[is_activity], age_days[is_activity], n_rows)

    # Orders: distinct timestamps among the non-cancelled purchase lines of a row.
    purchase_row, purchase_age = row[is_purchase], age_ns[is_purchase]
    new_order = np.ones(len(purchase_row), dtype=bool)
    new_order[1:] = (purchase_row[1:] != purchase_row[:-1]) | (purchase_age[1:] != purchase_age[:-1])
    order_row, order_age_ns = purchase_row[new_order], purchase_age[new_order]
    n_orders = np.bincount(order_row, minlength=n_rows).astype(np.float64)
    last_order = _last_per_row(order_row, order_age_ns / DAY_NS, n_rows)
    spend = per_row_sum(is_purchase, amount)

    f["days_since_last_activity"] = np.where(np.isnan(last_activity), days_since_fill, last_activity)
    f["days_since_last_event"] = np.where(np.isnan(last_event), days_since_fill, last_event)
    f["days_since_last_order"] = np.where(np.isnan(last_order), days_since_fill, last_order)
    f["tenure_days"] = tenure
    f["n_orders"] = n_orders
    f["spend"] = spend
    f["mean_order_value"] = _safe_ratio(spend, n_orders)
    f.update(_gap_features(order_row, order_age_ns, n_rows, f["days_since_last_order"]))

    # Returns and cancellations against all purchase lines, cancelled ones included.
    any_purchase = is_purchase | (type_code == _CANCELLED)
    purchase_lines, purchase_amount = per_row_sum(any_purchase), per_row_sum(any_purchase, amount)
    is_return, is_cancelled = type_code == _RETURN, type_code == _CANCELLED
    f["return_count_share"] = _safe_ratio(per_row_sum(is_return), purchase_lines)
    f["return_amount_share"] = _safe_ratio(per_row_sum(is_return, amount), purchase_amount)
    f["cancel_count_share"] = _safe_ratio(per_row_sum(is_cancelled), purchase_lines)
    f["cancel_amount_share"] = _safe_ratio(per_row_sum(is_cancelled, amount), purchase_amount)

    # Windowed counts: one bincount over (row, type code) per window.
    n_codes = _CANCELLED + 1
    for w in windows:
        in_window = age_ns <= w * DAY_NS
        by_type = np.bincount(row[in_window] * n_codes + type_code[in_window], minlength=n_rows * n_codes)
        by_type = by_type.reshape(n_rows, n_codes).astype(np.float64)
        f[f"n_orders_{w}d"] = np.bincount(order_row[order_age_ns <= w * DAY_NS], minlength=n_rows).astype(np.float64)
        f[f"spend_{w}d"] = per_row_sum(is_purchase & in_window, amount)
        f[f"n_activity_{w}d"] = per_row_sum(is_activity & in_window)
        for code, event_type in enumerate(EVENT_TYPES):
            f[f"n_{event_type}_{w}d"] = by_type[:, code]

    if trend_days is not None:
        t_ns = trend_days * DAY_NS
        last, before = age_ns <= t_ns, (age_ns > t_ns) & (age_ns <= 2 * t_ns)
        order_last, order_before = order_age_ns <= t_ns, (order_age_ns > t_ns) & (order_age_ns <= 2 * t_ns)
        f[f"trend_orders_{trend_days}d"] = _trend(
            np.bincount(order_row[order_last], minlength=n_rows).astype(np.float64),
            np.bincount(order_row[order_before], minlength=n_rows).astype(np.float64),
        )
        f[f"trend_spend_{trend_days}d"] = _trend(per_row_sum(is_purchase & last, amount), per_row_sum(is_purchase & before, amount))
        f[f"trend_activity_{trend_days}d"] = _trend(per_row_sum(is_activity & last), per_row_sum(is_activity & before))

    f["has_history"] = has_history.astype(np.float64)
    f["has_activity"] = (~np.isnan(last_activity)).astype(np.float64)
    f["has_order"] = (n_orders > 0).astype(np.float64)
    f["has_gap"] = (n_orders > 1).astype(np.float64)
    return f


def _gap_features(order_row: np.ndarray, order_age_ns: np.ndarray, n_rows: int, current_gap: np.ndarray) -> dict[str, np.ndarray]:
    """Gap statistics between consecutive orders; ``order_row`` is sorted, ages decrease within a row."""
    same_row = order_row[1:] == order_row[:-1]
    gap = (order_age_ns[:-1] - order_age_ns[1:])[same_row] / DAY_NS
    gap_row = order_row[1:][same_row]
    n_gaps = np.bincount(gap_row, minlength=n_rows).astype(np.float64)
    mean = _safe_ratio(np.bincount(gap_row, weights=gap, minlength=n_rows), n_gaps)
    mean_square = _safe_ratio(np.bincount(gap_row, weights=gap * gap, minlength=n_rows), n_gaps)
    std = np.sqrt(np.maximum(mean_square - mean * mean, 0.0))

    # Median: sort gaps within each row, then average the one or two middle values.
    median = np.zeros(n_rows)
    has_gap = n_gaps > 0
    if has_gap.any():
        sorted_gap = gap[np.lexsort((gap, gap_row))]
        counts = n_gaps.astype(np.int64)
        start = np.cumsum(counts) - counts
        low = start[has_gap] + (counts[has_gap] - 1) // 2
        high = start[has_gap] + counts[has_gap] // 2
        median[has_gap] = (sorted_gap[low] + sorted_gap[high]) / 2

    ratio = np.where(has_gap, current_gap / np.maximum(median, 1.0), 0.0)
    return {"order_gap_mean_days": mean, "order_gap_std_days": std, "order_gap_median_days": median, "order_gap_ratio": ratio}
