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
    # Grouping on one integer per (customer, order, event type) is much faster than on the
    # strings. Groups are numbered in the order of their first row, as groupby(sort=False) does.
    group = _group_codes(orders["customer_id"], orders["order_id"], orders["event_type"])
    merged = orders[["ts", "amount", "quantity", "cancelled_at"]].groupby(group, sort=False).agg(
        ts=("ts", "min"),
        amount=("amount", "sum"),
        quantity=("quantity", "sum"),
        cancelled_at=("cancelled_at", "max"),
        n_lines=("ts", "size"),
    )
    merged = merged.reset_index(drop=True)
    first_row = _first_positions(group, np.ones(len(group), dtype=bool))
    for i, key in enumerate(("customer_id", "order_id", "event_type")):
        merged.insert(i, key, orders[key].array.take(first_row))
    # Like groupby "first": the first non-missing item and category of the order.
    for i, key in ((6, "item_id"), (7, "category_id")):
        merged.insert(i, key, orders[key].array.take(_first_positions(group, orders[key].notna().to_numpy()), allow_fill=True))
    rest = events.loc[~has_order].assign(n_lines=1)
    out = pd.concat([merged, rest], ignore_index=True)
    out["n_lines"] = out["n_lines"].astype("float64")
    out["event_type"] = out["event_type"].astype(events["event_type"].dtype)
    order = _customer_time_order(out["customer_id"], out["ts"])
    return out[[*events.columns, "n_lines"]].take(order).reset_index(drop=True)


def _group_codes(*keys: pd.Series) -> np.ndarray:
    """Number each distinct combination of ``keys`` with one int64 code (a missing value counts as a value)."""
    codes = np.zeros(len(keys[0]), dtype=np.int64)
    for key in keys:
        key_codes, uniques = pd.factorize(key, use_na_sentinel=False)
        # Renumbering after each key keeps codes below the row count, so the product cannot overflow.
        codes = pd.factorize(codes * len(uniques) + key_codes)[0]
    return codes


def _first_positions(group: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Find, for group codes ``0..max``, the position of each group's first row where ``usable`` is True (-1 if none)."""
    n_groups = int(group.max()) + 1 if len(group) else 0
    first = np.full(n_groups, -1, dtype=np.int64)
    positions = np.flatnonzero(usable)
    codes, at = np.unique(group[positions], return_index=True)
    first[codes] = positions[at]
    return first


def _customer_time_order(customer_id: pd.Series, ts: pd.Series) -> np.ndarray:
    """Return the positions that sort rows stably by customer id, then time (the order ``sort_values`` gives)."""
    customer_rank = pd.factorize(customer_id, sort=True)[0]
    return np.lexsort((ts.to_numpy(dtype="datetime64[ns]").view(np.int64), customer_rank))


def _history(events: pd.DataFrame, snapshots: pd.DataFrame) -> pd.DataFrame:
    """Events strictly before each snapshot's cutoff, one block per snapshot row.

    Returns the events with a ``row`` column (position in ``snapshots``) and ``cutoff``,
    sorted by ``(row, ts)``.
    """
    snaps = pd.DataFrame({"customer_id": snapshots["customer_id"].to_numpy(), "cutoff": snapshots["cutoff"].to_numpy(), "row": np.arange(len(snapshots))})
    snaps["cutoff"] = pd.to_datetime(snaps["cutoff"], utc=True)
    if snaps["cutoff"].nunique() == 1 and snaps["customer_id"].is_unique:
        # One cutoff (scoring): a filter and a lookup of each event's customer are enough.
        cutoff = snaps["cutoff"].iloc[0]
        before = (events["ts"] < cutoff).to_numpy()
        past = events if before.all() else events.loc[before]
        row = pd.Index(snaps["customer_id"]).get_indexer(past["customer_id"])
        found = row >= 0
        hist = past.loc[found].reset_index(drop=True)
        hist["cutoff"] = snaps["cutoff"].array.take(row[found])
        hist["row"] = row[found]
    else:
        hist = events.merge(snaps, on="customer_id", how="inner", sort=False)
        hist = hist[hist["ts"] < hist["cutoff"]]
    row, ts = hist["row"].to_numpy(), hist["ts"].to_numpy(dtype="datetime64[ns]")
    in_order = np.all((row[1:] > row[:-1]) | ((row[1:] == row[:-1]) & (ts[1:] >= ts[:-1])))
    if in_order:
        return hist.reset_index(drop=True)
    return hist.take(np.lexsort((ts.view(np.int64), row))).reset_index(drop=True)


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
    # Only these columns are read below; leaving out the other string columns saves copying them.
    used = [c for c in ("customer_id", "ts", "event_type", "amount", "quantity", "item_id", "cancelled_at", "n_lines") if c in events.columns]
    hist = _history(events[used], snapshots)
    # Keep the last max_len events per row: count from the end within each row block
    # (_history returns the rows sorted by row, so each block is contiguous).
    block_size = np.bincount(hist["row"].to_numpy(), minlength=n)
    block_end = np.cumsum(block_size)
    from_end = block_end[hist["row"].to_numpy()] - 1 - np.arange(len(hist))
    keep = from_end < T
    static = static_features(hist, n, spec.activity_types)
    if spec.aggregate_features:
        static = np.concatenate([static, aggregate_static(events, snapshots, spec)], axis=1)
    hist = hist.loc[keep].reset_index(drop=True)
    from_end = from_end[keep]

    row = hist["row"].to_numpy()
    lengths = np.bincount(row, minlength=n)
    pos = (lengths[row] - 1 - from_end).astype(np.int64)  # right padding: events at [0, length)

    type_codes = _lookup(pd.Index(spec.event_types), hist["event_type"])
    type_codes[type_codes < 0] = spec.event_types.index("other")
    event_type = np.zeros((n, T), dtype=np.int64)
    event_type[row, pos] = type_codes

    item = np.zeros((n, T), dtype=np.int64)
    unknown = 0
    if spec.item_vocab:
        codes = _lookup(pd.Index(spec.item_vocab), hist["item_id"])
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


def _lookup(vocabulary: pd.Index, values: pd.Series) -> np.ndarray:
    """Find each value's position in ``vocabulary`` (-1 when absent), looking up each distinct value once."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        codes, distinct = values.cat.codes.to_numpy(), values.cat.categories.astype(str)
    else:
        codes, distinct = pd.factorize(values)
    # The slot after the last distinct value serves code -1 (a missing value).
    return np.append(vocabulary.get_indexer(distinct), -1).astype(np.int64)[codes]


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
