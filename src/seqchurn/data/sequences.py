"""Turn canonical events plus snapshots into padded model inputs, vectorised.

For each snapshot row ``(customer_id, cutoff)`` the input holds the customer's last
``max_len`` events with ``ts < cutoff``, right-padded, plus a few per-customer static
features. Everything that has to match between training and scoring (vocabularies,
normalisation constants, feature names) lives in a :class:`FeatureSpec`, which is fitted on
training data only and exported beside the ONNX model.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from seqchurn.data.schema import EVENT_TYPES

log = logging.getLogger(__name__)

PAD_ID = 0
UNKNOWN_ID = 1

NUMERIC_FEATURES = (
    "log_amount",
    "log_quantity",
    "log_hours_since_prev",
    "log_days_before_cutoff",
    "is_first_in_window",
    "log_lines",
    "day_of_week_sin",
    "day_of_week_cos",
)
STATIC_FEATURES = (
    "log_days_since_last_activity",
    "log_days_since_last_event",
    "log_tenure_days",
    "log_n_events",
    "log_n_activity_90d",
    "log_spend_90d",
    "log_spend_365d",
    "return_share",
    "log_mean_gap_days",
    "gap_ratio",
)


@dataclass
class FeatureSpec:
    """Everything needed to rebuild model inputs exactly; JSON-serialisable."""

    max_len: int
    activity_types: list[str]
    event_types: list[str] = field(default_factory=lambda: list(EVENT_TYPES))
    item_vocab: list[str] = field(default_factory=list)
    collapse_orders: bool = True
    # Append the baselines' aggregate (RFM, windows, gaps, trends) features to the static input.
    aggregate_features: bool = False
    lookback_days: float = 365.0
    numeric_features: list[str] = field(default_factory=lambda: list(NUMERIC_FEATURES))
    static_features: list[str] = field(default_factory=lambda: list(STATIC_FEATURES))
    numeric_mean: list[float] = field(default_factory=list)
    numeric_std: list[float] = field(default_factory=list)
    static_mean: list[float] = field(default_factory=list)
    static_std: list[float] = field(default_factory=list)

    @property
    def n_items(self) -> int:
        """Embedding rows for items: padding, unknown, then the vocabulary (0 disables items)."""
        return len(self.item_vocab) + 2 if self.item_vocab else 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FeatureSpec:
        return cls(**d)


@dataclass
class SequenceArrays:
    """Model inputs for N snapshot rows, padded to ``T = max_len``."""

    event_type: np.ndarray  # (N, T) int64
    item: np.ndarray  # (N, T) int64
    numeric: np.ndarray  # (N, T, F) float32
    mask: np.ndarray  # (N, T) bool, True at real events
    static: np.ndarray  # (N, S) float32
    unknown_items: int = 0

    def __len__(self) -> int:
        return len(self.event_type)

    def take(self, idx: np.ndarray) -> SequenceArrays:
        return SequenceArrays(self.event_type[idx], self.item[idx], self.numeric[idx], self.mask[idx], self.static[idx])

    def as_inputs(self) -> dict[str, np.ndarray]:
        return {"event_type": self.event_type, "item": self.item, "numeric": self.numeric, "mask": self.mask, "static": self.static}


def collapse_orders(events: pd.DataFrame) -> pd.DataFrame:
    """Merge the lines of one order (same customer, order id and event type) into one event.

    Line-level logs (one row per invoice line) otherwise fill ``max_len`` with a couple of
    orders. The merged event keeps the earliest time, the summed amount and quantity, the
    first line's item, the number of lines and the latest ``cancelled_at``. Rows without an
    order id stay as they are.
    """
    has_order = events["order_id"].notna().to_numpy()
    if not has_order.any():
        return events.assign(n_lines=np.ones(len(events), dtype=np.float64))
    orders = events.loc[has_order]
    grouped = orders.groupby(["customer_id", "order_id", "event_type"], sort=False, observed=True)
    merged = grouped.agg(
        ts=("ts", "min"),
        amount=("amount", "sum"),
        quantity=("quantity", "sum"),
        item_id=("item_id", "first"),
        category_id=("category_id", "first"),
        cancelled_at=("cancelled_at", "max"),
        n_lines=("ts", "size"),
    ).reset_index()
    rest = events.loc[~has_order].assign(n_lines=1)
    out = pd.concat([merged, rest], ignore_index=True)
    out["n_lines"] = out["n_lines"].astype("float64")
    out["event_type"] = out["event_type"].astype(events["event_type"].dtype)
    return out.sort_values(["customer_id", "ts"], kind="stable", ignore_index=True)[[*events.columns, "n_lines"]]


def _history(events: pd.DataFrame, snapshots: pd.DataFrame) -> pd.DataFrame:
    """Events strictly before each snapshot's cutoff, one block per snapshot row.

    Returns the events with a ``row`` column (position in ``snapshots``) and ``cutoff``,
    sorted by ``(row, ts)``.
    """
    snaps = pd.DataFrame({"customer_id": snapshots["customer_id"].to_numpy(), "cutoff": snapshots["cutoff"].to_numpy(), "row": np.arange(len(snapshots))})
    snaps["cutoff"] = pd.to_datetime(snaps["cutoff"], utc=True)
    if snaps["cutoff"].nunique() == 1:
        # One cutoff (scoring): a filter and an inner join on the id are enough.
        cutoff = snaps["cutoff"].iloc[0]
        past = events[events["ts"] < cutoff]
        hist = past.merge(snaps, on="customer_id", how="inner", sort=False)
    else:
        hist = events.merge(snaps, on="customer_id", how="inner", sort=False)
        hist = hist[hist["ts"] < hist["cutoff"]]
    return hist.sort_values(["row", "ts"], kind="stable", ignore_index=True)


def _days(delta: pd.Series) -> np.ndarray:
    return delta.dt.total_seconds().to_numpy(dtype=np.float64) / 86400.0


def static_features(hist: pd.DataFrame, n_rows: int, activity_types: list[str]) -> np.ndarray:
    """Per-snapshot features over the whole history before the cutoff: ``(N, S)`` float64 (raw)."""
    out = np.zeros((n_rows, len(STATIC_FEATURES)), dtype=np.float64)
    if hist.empty:
        return out
    row = hist["row"].to_numpy()
    age = _days(hist["cutoff"] - hist["ts"])  # days before the cutoff
    cancelled_before = (hist["cancelled_at"].notna() & (hist["cancelled_at"] < hist["cutoff"])).to_numpy()
    is_act = hist["event_type"].isin(activity_types).to_numpy() & ~cancelled_before
    is_purchase = (hist["event_type"] == "purchase").to_numpy() & ~cancelled_before
    is_return = (hist["event_type"] == "return").to_numpy()
    amount = hist["amount"].to_numpy()

    def per_row(values: np.ndarray, how: str, fill: float) -> np.ndarray:
        s = pd.Series(values).groupby(row).agg(how)
        res = np.full(n_rows, fill)
        res[s.index.to_numpy()] = s.to_numpy()
        return res

    big = 10_000.0  # days; "never" for customers without an activity event in their history
    last_act = per_row(np.where(is_act, age, np.inf), "min", big)
    last_act[np.isinf(last_act)] = big
    out[:, 0] = np.log1p(last_act)
    out[:, 1] = np.log1p(per_row(age, "min", big))
    out[:, 2] = np.log1p(per_row(age, "max", 0.0))
    out[:, 3] = np.log1p(np.bincount(row, minlength=n_rows))
    out[:, 4] = np.log1p(np.bincount(row, weights=(is_act & (age < 90)).astype(float), minlength=n_rows))
    out[:, 5] = np.log1p(np.bincount(row, weights=np.where(is_purchase & (age < 90), amount, 0.0), minlength=n_rows))
    out[:, 6] = np.log1p(np.bincount(row, weights=np.where(is_purchase & (age < 365), amount, 0.0), minlength=n_rows))
    n_buy = np.bincount(row, weights=is_purchase.astype(float), minlength=n_rows)
    n_ret = np.bincount(row, weights=is_return.astype(float), minlength=n_rows)
    out[:, 7] = n_ret / np.maximum(n_buy + n_ret, 1.0)
    # Mean gap between activity events = span / (count - 1); 0 for customers with one event.
    act_count = np.bincount(row, weights=is_act.astype(float), minlength=n_rows)
    first_act = per_row(np.where(is_act, age, -np.inf), "max", 0.0)
    first_act[np.isinf(first_act)] = 0.0
    span = np.maximum(first_act - np.where(last_act >= big, 0.0, last_act), 0.0)
    mean_gap = np.where(act_count > 1, span / np.maximum(act_count - 1, 1.0), 0.0)
    out[:, 8] = np.log1p(mean_gap)
    # How overdue the customer is against their own rhythm; 0 when there is no rhythm yet.
    out[:, 9] = np.where(act_count > 1, np.minimum(last_act / np.maximum(mean_gap, 1.0), 50.0), 0.0)
    return out


def aggregate_static(events: pd.DataFrame, snapshots: pd.DataFrame, spec: FeatureSpec) -> np.ndarray:
    """The baselines' aggregate features as extra static inputs, signed-log1p compressed: ``(N, A)``."""
    from seqchurn.baselines.features import aggregate_features
    from seqchurn.data.labels import ChurnDefinition

    # The features read only the activity types and the lookback; the horizon is unused.
    churn = ChurnDefinition(tuple(spec.activity_types), spec.lookback_days, 1.0)
    snaps = pd.DataFrame({"customer_id": snapshots["customer_id"].to_numpy(), "cutoff": pd.to_datetime(snapshots["cutoff"], utc=True).to_numpy()})
    snaps["cutoff"] = pd.to_datetime(snaps["cutoff"], utc=True)
    values = aggregate_features(events, snaps, churn).to_numpy(dtype=np.float64)
    return np.sign(values) * np.log1p(np.abs(values))


def fit_item_vocab(events: pd.DataFrame, before: pd.Timestamp, size: int) -> list[str]:
    """Most frequent items among events before ``before`` (training data only)."""
    if size <= 0 or events["item_id"].isna().all():
        return []
    counts = events.loc[events["ts"] < before, "item_id"].value_counts()
    # Ties are broken by the item id so the vocabulary does not depend on row order.
    top = counts.rename_axis("item").reset_index().sort_values(["count", "item"], ascending=[False, True]).head(size)
    return top["item"].astype(str).tolist()


def build_arrays(events: pd.DataFrame, snapshots: pd.DataFrame, spec: FeatureSpec, *, raw: bool = False) -> SequenceArrays:
    """Build padded inputs for every snapshot row (in the order of ``snapshots``).

    Only events with ``ts < cutoff`` are read. With ``raw=True`` features are returned
    before normalisation (used to fit the normalisation constants).
    """
    n, T = len(snapshots), spec.max_len
    hist = _history(events, snapshots)
    # Keep the last max_len events per row: count from the end within each row block.
    from_end = hist.groupby("row", sort=False).cumcount(ascending=False).to_numpy()
    keep = from_end < T
    static = static_features(hist, n, spec.activity_types)
    if spec.aggregate_features:
        static = np.concatenate([static, aggregate_static(events, snapshots, spec)], axis=1)
    hist = hist.loc[keep].reset_index(drop=True)
    from_end = from_end[keep]

    row = hist["row"].to_numpy()
    lengths = np.bincount(row, minlength=n)
    pos = (lengths[row] - 1 - from_end).astype(np.int64)  # right padding: events at [0, length)

    type_codes = pd.Index(spec.event_types).get_indexer(hist["event_type"].astype(str)).astype(np.int64)
    type_codes[type_codes < 0] = spec.event_types.index("other")
    event_type = np.zeros((n, T), dtype=np.int64)
    event_type[row, pos] = type_codes

    item = np.zeros((n, T), dtype=np.int64)
    unknown = 0
    if spec.item_vocab:
        codes = pd.Index(spec.item_vocab).get_indexer(hist["item_id"]).astype(np.int64)
        unknown = int((codes < 0).sum())
        item[row, pos] = np.where(codes < 0, UNKNOWN_ID, codes + 2)

    ts_sec = hist["ts"].astype("int64").to_numpy() / 1e9
    prev_sec = np.roll(ts_sec, 1)
    first = np.ones(len(hist), dtype=bool)
    if len(hist):
        first[1:] = row[1:] != row[:-1]
    gap_hours = np.where(first, 0.0, (ts_sec - prev_sec) / 3600.0)
    age_days = _days(hist["cutoff"] - hist["ts"])
    dow = hist["ts"].dt.day_of_week.to_numpy() * (2 * np.pi / 7)
    n_lines = hist["n_lines"].to_numpy() if "n_lines" in hist else np.ones(len(hist))
    feats = np.stack(
        [
            np.log1p(hist["amount"].to_numpy()),
            np.log1p(np.nan_to_num(hist["quantity"].to_numpy(), nan=0.0)),
            np.log1p(np.maximum(gap_hours, 0.0)),
            np.log1p(age_days),
            first.astype(np.float64),
            np.log1p(n_lines),
            np.sin(dow),
            np.cos(dow),
        ],
        axis=1,
    )
    numeric = np.zeros((n, T, len(NUMERIC_FEATURES)), dtype=np.float32)
    mask = np.zeros((n, T), dtype=bool)
    mask[row, pos] = True
    if not raw and spec.numeric_mean:
        feats = (feats - np.asarray(spec.numeric_mean)) / np.asarray(spec.numeric_std)
        static = (static - np.asarray(spec.static_mean)) / np.asarray(spec.static_std)
    numeric[row, pos] = feats.astype(np.float32)
    if unknown:
        log.info("%d of %d events have items outside the training vocabulary (unknown id %d)", unknown, len(hist), UNKNOWN_ID)
    return SequenceArrays(event_type, item, numeric, mask, static.astype(np.float32), unknown_items=unknown)


def fit_spec(
    events: pd.DataFrame,
    train_snapshots: pd.DataFrame,
    *,
    max_len: int,
    item_vocab_size: int,
    activity_types: list[str],
    collapse: bool,
    aggregate: bool = False,
    lookback_days: float = 365.0,
) -> FeatureSpec:
    """Fit vocabularies and normalisation constants on the training snapshots only."""
    last_train_cutoff = pd.to_datetime(train_snapshots["cutoff"], utc=True).max()
    spec = FeatureSpec(
        max_len=max_len,
        activity_types=list(activity_types),
        item_vocab=fit_item_vocab(events, last_train_cutoff, item_vocab_size),
        collapse_orders=collapse,
        aggregate_features=aggregate,
        lookback_days=lookback_days,
    )
    if aggregate:
        from seqchurn.baselines.features import feature_names

        spec.static_features = [*STATIC_FEATURES, *(f"agg_{name}" for name in feature_names())]
    raw = build_arrays(events, train_snapshots, spec, raw=True)
    feats = raw.numeric[raw.mask].astype(np.float64)
    spec.numeric_mean = feats.mean(0).tolist()
    spec.numeric_std = np.maximum(feats.std(0), 1e-6).tolist()
    spec.static_mean = raw.static.astype(np.float64).mean(0).tolist()
    spec.static_std = np.maximum(raw.static.astype(np.float64).std(0), 1e-6).tolist()
    log.info("feature spec: max_len %d, %d items in vocabulary, %d event and %d static features", max_len, len(spec.item_vocab), len(spec.numeric_features), len(spec.static_features))
    return spec


def length_batches(mask: np.ndarray, batch_size: int) -> list[tuple[np.ndarray, int]]:
    """Row indices grouped by sequence length, with each group's longest length.

    Inference over right-padded rows in these groups can cut the time axis to that length,
    which skips most padding; the caller scatters results back by index.
    """
    lengths = np.asarray(mask).sum(1)
    order = np.argsort(lengths, kind="stable")
    out = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        out.append((idx, max(int(lengths[idx[-1]]), 1)))
    return out
