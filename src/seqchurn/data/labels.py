"""Churn labels at a cutoff, and rolling cutoffs for train / val / test.

A snapshot at cutoff ``T`` contains the customers who are *active*: at least one activity
event in ``[T - lookback, T)``. An active customer is *churned* (label 1) when they have
no activity event in ``[T, T + horizon)``. Inputs may use only events with ``ts < T``; an
event exactly at ``T`` belongs to the future.

A purchase whose whole order was cancelled does not count as activity at a moment ``t``
once the cancellation happened before ``t``, so a label never uses a cancellation that
would be unknown at the end of its own window.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from seqchurn.data.schema import EVENT_TYPES, InputError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ChurnDefinition:
    """What "active" and "churned" mean; it travels with the exported model."""

    activity_types: tuple[str, ...] = ("purchase",)
    lookback_days: float = 365.0
    horizon_days: float = 90.0

    def __post_init__(self) -> None:
        bad = [t for t in self.activity_types if t not in EVENT_TYPES]
        if bad or not self.activity_types:
            raise ValueError(f"Expected `activity_types` to be a non-empty subset of {EVENT_TYPES}, but got {list(self.activity_types)}")
        if not self.lookback_days > 0 or not self.horizon_days > 0:
            raise ValueError(
                f"Expected `lookback_days` and `horizon_days` to be positive, but got {self.lookback_days} and {self.horizon_days}"
            )

    @property
    def lookback(self) -> pd.Timedelta:
        return pd.Timedelta(days=self.lookback_days)

    @property
    def horizon(self) -> pd.Timedelta:
        return pd.Timedelta(days=self.horizon_days)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["activity_types"] = list(self.activity_types)
        return d


def to_utc(value: str | pd.Timestamp) -> pd.Timestamp:
    """Parse a cutoff; a naive value is read as UTC."""
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _activity_mask(events: pd.DataFrame, churn: ChurnDefinition, known_at: pd.Timestamp) -> np.ndarray:
    """Rows that count as activity for someone who looks at the log at ``known_at``."""
    is_activity = events["event_type"].isin(churn.activity_types).to_numpy()
    cancelled = events["cancelled_at"]
    cancelled_before = (cancelled.notna() & (cancelled < known_at)).to_numpy()
    return is_activity & ~cancelled_before


def active_customers(events: pd.DataFrame, cutoff: pd.Timestamp, churn: ChurnDefinition) -> pd.Index:
    """Customers with an activity event in ``[cutoff - lookback, cutoff)``, sorted."""
    ts = events["ts"]
    in_window = ((ts >= cutoff - churn.lookback) & (ts < cutoff)).to_numpy()
    mask = in_window & _activity_mask(events, churn, cutoff)
    return pd.Index(np.sort(events.loc[mask, "customer_id"].unique()), name="customer_id")


def make_snapshot(
    events: pd.DataFrame,
    cutoff: str | pd.Timestamp,
    churn: ChurnDefinition,
    *,
    with_labels: bool = True,
    observe_until: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Build the snapshot at ``cutoff``: one row per active customer.

    Returns a frame with ``customer_id``, ``cutoff`` and, when ``with_labels``, ``label``
    (1 = churned, 0 = retained). Labels need the log to reach ``cutoff + horizon``.

    With ``observe_until``, time-to-event targets are added for the hazard head:
    ``days_to_activity`` (days from the cutoff to the next activity, or to ``observe_until``
    when none happened before it) and ``activity_observed`` (1 or 0 = censored).
    """
    cutoff = to_utc(cutoff)
    customers = active_customers(events, cutoff, churn)
    snap = pd.DataFrame({"customer_id": customers.astype("str"), "cutoff": cutoff})
    if not with_labels:
        return snap
    end = cutoff + churn.horizon
    ts = events["ts"]
    in_horizon = ((ts >= cutoff) & (ts < end)).to_numpy() & _activity_mask(events, churn, end)
    returned = pd.Index(events.loc[in_horizon, "customer_id"].unique())
    snap["label"] = (~snap["customer_id"].isin(returned)).astype("int8")
    if observe_until is not None:
        _add_time_to_event(snap, events, churn, cutoff, to_utc(observe_until))
    return snap


def _add_time_to_event(snap: pd.DataFrame, events: pd.DataFrame, churn: ChurnDefinition, cutoff: pd.Timestamp, until: pd.Timestamp) -> None:
    # NOTE: an order cancelled after `until` counts as activity here but not in the binary
    # label when the cancellation came before cutoff + horizon; the two targets can then disagree.
    ts = events["ts"]
    later = ((ts >= cutoff) & (ts < until)).to_numpy() & _activity_mask(events, churn, until)
    first = events.loc[later].groupby("customer_id", sort=False)["ts"].min()
    first_ts = first.reindex(snap["customer_id"].to_numpy()).reset_index(drop=True)
    observed = first_ts.notna().to_numpy()
    days = np.where(observed, (first_ts - cutoff).dt.total_seconds().to_numpy() / 86400.0, (until - cutoff).total_seconds() / 86400.0)
    snap["days_to_activity"] = days.astype("float32")
    snap["activity_observed"] = observed.astype("int8")


@dataclass(frozen=True)
class SplitPlan:
    """Cutoffs per split. Every label window of a split ends at or before the next split's cutoff."""

    train: tuple[pd.Timestamp, ...]
    val: tuple[pd.Timestamp, ...]
    test: tuple[pd.Timestamp, ...]
    extra: dict = field(default_factory=dict)

    def cutoffs(self, split: str) -> tuple[pd.Timestamp, ...]:
        return getattr(self, split)


def plan_splits(
    *,
    test_cutoff: str,
    val_cutoff: str,
    train_cutoffs: list[str] | None = None,
    train_first_cutoff: str | None = None,
    train_every_days: float = 30.0,
    churn: ChurnDefinition,
) -> SplitPlan:
    """Lay out rolling cutoffs and check they cannot leak labels into a later split.

    Train cutoffs are either listed or generated every ``train_every_days`` from
    ``train_first_cutoff`` up to the last one whose label window ends by ``val_cutoff``.
    """
    test_t, val_t = to_utc(test_cutoff), to_utc(val_cutoff)
    if val_t + churn.horizon > test_t:
        raise ValueError(
            f"Validation cutoff {val_t.date()} + horizon {churn.horizon_days:g} days reaches past the test cutoff "
            f"{test_t.date()}; move `val_cutoff` back to {(test_t - churn.horizon).date()} or earlier"
        )
    if train_cutoffs:
        train = sorted(to_utc(t) for t in train_cutoffs)
    else:
        if train_first_cutoff is None:
            raise ValueError("Expected `train_cutoffs` or `train_first_cutoff` in the split config, but got neither")
        last = val_t - churn.horizon
        train = list(pd.date_range(to_utc(train_first_cutoff), last, freq=pd.Timedelta(days=train_every_days)))
    if not train:
        raise ValueError(f"No training cutoff fits before validation cutoff {val_t.date()} minus the horizon")
    late = [t for t in train if t + churn.horizon > val_t]
    if late:
        raise ValueError(
            f"Training cutoff {late[0].date()} + horizon {churn.horizon_days:g} days reaches past the validation cutoff "
            f"{val_t.date()}; remove it or move the validation cutoff later"
        )
    return SplitPlan(train=tuple(train), val=(val_t,), test=(test_t,))


def make_split_snapshots(events: pd.DataFrame, plan: SplitPlan, churn: ChurnDefinition) -> pd.DataFrame:
    """Snapshots for every cutoff of every split, with a ``split`` column.

    Raises ``InputError`` naming the split when a split lacks one of the two classes.
    """
    # Time-to-event targets stop at the next split's cutoff, so no split sees the next one.
    log_end = events["ts"].max() + pd.Timedelta(seconds=1)
    observe_until = {"train": plan.val[0], "val": plan.test[0], "test": log_end}
    parts = []
    for split in SPLITS:
        for cutoff in plan.cutoffs(split):
            snap = make_snapshot(events, cutoff, churn, observe_until=max(min(observe_until[split], log_end), cutoff))
            snap["split"] = split
            parts.append(snap)
    snaps = pd.concat(parts, ignore_index=True)
    for split in SPLITS:
        labels = snaps.loc[snaps["split"] == split, "label"]
        n_pos, n = int(labels.sum()), len(labels)
        log.info("split %s: %d snapshots over %d cutoffs, churn rate %.3f", split, n, len(plan.cutoffs(split)), n_pos / max(n, 1))
        if n == 0 or n_pos == 0 or n_pos == n:
            raise InputError(
                f"split {split!r} has {n} snapshots with {n_pos} churned: it needs both classes",
                hint="Move the cutoffs, change the horizon or lookback, or point the data config at a longer log",
            )
    return snaps
