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
import pyarrow as pa
import pyarrow.compute as pc

from seqchurn.data.schema import EVENT_TYPES

log = logging.getLogger(__name__)

PAD_ID = 0
UNKNOWN_ID = 1
_DAY_NS = 86_400 * 10**9

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
    # Keyword arguments of seqchurn.baselines.features.aggregate_features (windows,
    # trend_days); empty in specs written before they were configurable, which means its defaults.
    aggregate_options: dict = field(default_factory=dict)
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
    order id stay as they are. The result is sorted stably by customer id and time, merged
    events before the rows without an order id.
    """
    has_order = events["order_id"].notna().to_numpy()
    if not has_order.any():
        return events.assign(n_lines=np.ones(len(events), dtype=np.float64))
    customer = customer_ranks(events["customer_id"])
    order_rows, rest_rows = np.flatnonzero(has_order), np.flatnonzero(~has_order)
    # Grouping on one integer per (customer, order, event type) is much faster than on the
    # strings. Groups are numbered in the order of their first row, as groupby(sort=False) does.
    order_codes = pd.factorize(events["order_id"])[0]
    event_type = events["event_type"]
    type_codes = event_type.cat.codes.to_numpy() if isinstance(event_type.dtype, pd.CategoricalDtype) else pd.factorize(event_type)[0]
    group = _group_codes(customer[order_rows], order_codes[order_rows], type_codes[order_rows])
    sums = events[["ts", "amount", "quantity", "cancelled_at"]].take(order_rows).groupby(group, sort=False).agg(
        ts=("ts", "min"),
        amount=("amount", "sum"),
        quantity=("quantity", "sum"),
        cancelled_at=("cancelled_at", "max"),
        n_lines=("ts", "size"),
    )

    # Each output row reads its id columns from one input row: a merged order from its
    # first line (item and category: from the first line that has one, like groupby
    # "first"), any other row from itself. Output rows are merged orders, then the rest.
    def source_rows(usable: np.ndarray | None) -> np.ndarray:
        first = _first_positions(group, np.ones(len(group), dtype=bool) if usable is None else usable[order_rows])
        return np.concatenate([np.where(first >= 0, order_rows[first], -1), rest_rows])

    first_line = source_rows(None)
    order = _merged_order(events["ts"].to_numpy(dtype="datetime64[ns]").view(np.int64), customer, first_line, sums["ts"], len(sums))

    out = {}
    for column in events.columns:
        values = events[column]
        if column in ("customer_id", "order_id", "event_type"):
            out[column] = values.array.take(first_line[order])
        elif column in ("item_id", "category_id"):
            out[column] = values.array.take(source_rows(values.notna().to_numpy())[order], allow_fill=True)
        elif column in sums.columns:
            out[column] = pd.concat([sums[column], values.iloc[rest_rows]], ignore_index=True).array.take(order)
        else:
            # Other columns have no merged value: missing for merged orders, as pd.concat would leave them.
            filled = pd.concat([pd.DataFrame(index=range(len(sums))), events[[column]].iloc[rest_rows]], ignore_index=True)[column]
            out[column] = filled.array.take(order)
    n_lines = np.concatenate([sums["n_lines"].to_numpy(dtype=np.float64), np.ones(len(rest_rows))])
    out["n_lines"] = n_lines[order]
    return pd.DataFrame(out, copy=False)


def _merged_order(ts: np.ndarray, customer: np.ndarray, first_line: np.ndarray, merged_ts: pd.Series, n_merged: int) -> np.ndarray:
    """Return the positions that sort merged orders and the other rows stably by customer, then time.

    ``first_line`` is each output row's first input row; the first ``n_merged`` output rows
    are merged orders, with their earliest time in ``merged_ts``.
    """
    in_order = np.ones(len(ts), dtype=bool)
    in_order[1:] = (customer[1:] > customer[:-1]) | ((customer[1:] == customer[:-1]) & (ts[1:] >= ts[:-1]))
    if not in_order.all():
        out_ts = np.concatenate([merged_ts.to_numpy(dtype="datetime64[ns]").view(np.int64), ts[first_line[n_merged:]]])
        return np.lexsort((out_ts, customer[first_line]))
    # In customer and time order, an order's first line is its earliest, so each output row
    # sorts like its first line's run of equal customer and time. Within a run, merged orders
    # go first; a stable sort of this key, which is two ascending runs, is a linear merge.
    new_run = np.ones(len(ts), dtype=bool)
    new_run[1:] = (customer[1:] != customer[:-1]) | (ts[1:] != ts[:-1])
    key = 2 * (np.cumsum(new_run)[first_line] - 1)
    key[n_merged:] += 1
    return np.argsort(key, kind="stable")


def customer_ranks(ids: pd.Series) -> np.ndarray:
    """Number customer ids ``0, 1, ...`` in sorted order, equal ids alike and missing ids last.

    A frame sorted by customer, as :func:`seqchurn.data.io.finalise` returns, is numbered
    by counting the runs of equal ids, which needs no sorting or hashing of strings.
    """
    if len(ids) == 0:
        return np.zeros(0, dtype=np.int64)
    arrow = _arrow(ids)
    if arrow.null_count == 0 and len(arrow) > 1:
        this, previous = arrow.slice(1), arrow.slice(0, len(arrow) - 1)
        if not pc.any(pc.less(this, previous)).as_py():
            new_run = np.concatenate([[False], pc.not_equal(this, previous).to_numpy(zero_copy_only=False)])
            return np.cumsum(new_run)
    return pc.rank(arrow, sort_keys="ascending", tiebreaker="dense").to_numpy().astype(np.int64) - 1


def _arrow(values: pd.Series) -> pa.Array:
    """Return a Series' values as one pyarrow array (zero-copy for pandas' ``str`` dtype)."""
    return pa.chunked_array(pa.array(values.array)).combine_chunks()


def _group_codes(*keys: np.ndarray) -> np.ndarray:
    """Number each distinct combination of integer ``keys`` with one int64 code, in order of first appearance."""
    codes = np.zeros(len(keys[0]), dtype=np.int64)
    for key in keys:
        key_codes, uniques = pd.factorize(key)
        # Renumbering after each key keeps codes below the row count, so the product cannot overflow.
        codes = pd.factorize(codes * len(uniques) + key_codes)[0]
    return codes


def _first_positions(group: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Find, for group codes ``0..max``, the position of each group's first row where ``usable`` is True (-1 if none)."""
    n_groups = int(group.max()) + 1 if len(group) else 0
    first = np.full(n_groups, len(group), dtype=np.int64)
    positions = np.flatnonzero(usable)
    np.minimum.at(first, group[positions], positions)
    first[first == len(group)] = -1
    return first


def _history_rows(events: pd.DataFrame, snapshots: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, pd.Series]:
    """Find the events strictly before each snapshot's cutoff, one block per snapshot row.

    Returns the events' positions, their snapshot rows and the cutoffs of those rows,
    sorted by ``(row, ts)``.
    """
    customers = pd.Series(snapshots["customer_id"].to_numpy())
    cutoffs = pd.to_datetime(snapshots["cutoff"], utc=True).reset_index(drop=True)
    ts = events["ts"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    if cutoffs.nunique() == 1 and customers.is_unique:
        # One cutoff (scoring): each event's row is a lookup of its customer. Neighbouring
        # rows of one customer share the lookup, so only the first row of each run is looked up.
        ids = _arrow(events["customer_id"])
        new_run = np.ones(len(ids), dtype=bool)
        if len(ids) > 1:
            new_run[1:] = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1)).fill_null(True).to_numpy(zero_copy_only=False)
        starts = np.flatnonzero(new_run)
        run_row = pd.Index(customers).get_indexer(pd.Index(ids.take(starts).to_pandas()))
        row = np.repeat(run_row, np.diff(np.append(starts, len(ids))))
        cutoff = cutoffs.iloc[0] if len(cutoffs) else None
        before = ts < cutoff.value if cutoff is not None else np.zeros(len(ts), dtype=bool)
        positions = np.flatnonzero(before & (row >= 0))
        row = row[positions]
    else:
        snaps = pd.DataFrame({"customer_id": customers, "row": np.arange(len(snapshots))})
        pairs = pd.DataFrame({"customer_id": events["customer_id"].to_numpy(), "position": np.arange(len(events))})
        pairs = pairs.merge(snaps, on="customer_id", how="inner", sort=False)
        positions, row = pairs["position"].to_numpy(), pairs["row"].to_numpy()
        before = ts[positions] < cutoffs.to_numpy(dtype="datetime64[ns]").view(np.int64)[row]
        positions, row = positions[before], row[before]
    hist_ts = ts[positions]
    in_order = np.all((row[1:] > row[:-1]) | ((row[1:] == row[:-1]) & (hist_ts[1:] >= hist_ts[:-1])))
    if not in_order:
        order = np.lexsort((hist_ts, row))
        positions, row = positions[order], row[order]
    return positions, row, cutoffs.iloc[row].reset_index(drop=True)


def _history(events: pd.DataFrame, snapshots: pd.DataFrame) -> pd.DataFrame:
    """Events strictly before each snapshot's cutoff, one block per snapshot row.

    Returns the events with a ``row`` column (position in ``snapshots``) and ``cutoff``,
    sorted by ``(row, ts)``.
    """
    positions, row, cutoff = _history_rows(events, snapshots)
    return events.take(positions).reset_index(drop=True).assign(cutoff=cutoff, row=row)


def _days(delta: pd.Series) -> np.ndarray:
    return delta.dt.total_seconds().to_numpy(dtype=np.float64) / 86400.0


def static_features(hist: pd.DataFrame, n_rows: int, activity_types: list[str]) -> np.ndarray:
    """Per-snapshot features over the whole history before the cutoff: ``(N, S)`` float64 (raw).

    ``hist`` contains the history rows sorted by ``row``, as :func:`_history` returns them,
    plus an ``age_days`` column (days before the cutoff).
    """
    out = np.zeros((n_rows, len(STATIC_FEATURES)), dtype=np.float64)
    if hist.empty:
        return out
    row = hist["row"].to_numpy()
    age = hist["age_days"].to_numpy()
    cancelled_before = (hist["cancelled_at"].notna() & (hist["cancelled_at"] < hist["cutoff"])).to_numpy()
    is_act = hist["event_type"].isin(activity_types).to_numpy() & ~cancelled_before
    is_purchase = (hist["event_type"] == "purchase").to_numpy() & ~cancelled_before
    is_return = (hist["event_type"] == "return").to_numpy()
    amount = hist["amount"].to_numpy()

    # Each row's events are one contiguous block, so a reduction per block is one reduceat.
    starts = np.flatnonzero(np.concatenate([[True], row[1:] != row[:-1]]))

    def per_row(values: np.ndarray, reduce: np.ufunc, fill: float) -> np.ndarray:
        res = np.full(n_rows, fill)
        res[row[starts]] = reduce.reduceat(values, starts)
        return res

    big = 10_000.0  # days; "never" for customers without an activity event in their history
    last_act = per_row(np.where(is_act, age, np.inf), np.minimum, big)
    last_act[np.isinf(last_act)] = big
    out[:, 0] = np.log1p(last_act)
    out[:, 1] = np.log1p(per_row(age, np.minimum, big))
    out[:, 2] = np.log1p(per_row(age, np.maximum, 0.0))
    out[:, 3] = np.log1p(np.bincount(row, minlength=n_rows))
    out[:, 4] = np.log1p(np.bincount(row, weights=(is_act & (age < 90)).astype(float), minlength=n_rows))
    out[:, 5] = np.log1p(np.bincount(row, weights=np.where(is_purchase & (age < 90), amount, 0.0), minlength=n_rows))
    out[:, 6] = np.log1p(np.bincount(row, weights=np.where(is_purchase & (age < 365), amount, 0.0), minlength=n_rows))
    n_buy = np.bincount(row, weights=is_purchase.astype(float), minlength=n_rows)
    n_ret = np.bincount(row, weights=is_return.astype(float), minlength=n_rows)
    out[:, 7] = n_ret / np.maximum(n_buy + n_ret, 1.0)
    # Mean gap between activity events = span / (count - 1); 0 for customers with one event.
    act_count = np.bincount(row, weights=is_act.astype(float), minlength=n_rows)
    first_act = per_row(np.where(is_act, age, -np.inf), np.maximum, 0.0)
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
    values = aggregate_features(events, snaps, churn, **spec.aggregate_options).to_numpy(dtype=np.float64)
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
    positions, row, cutoff = _history_rows(events, snapshots)
    # Only these columns are read below; the string columns are not copied (items are looked up by position).
    used = [c for c in ("ts", "event_type", "amount", "quantity", "cancelled_at", "n_lines") if c in events.columns]
    hist = events[used].take(positions).reset_index(drop=True)
    hist["row"] = row
    hist["cutoff"] = cutoff
    hist["age_days"] = _days(cutoff - hist["ts"])
    # Keep the last max_len events per row: count from the end within each row block
    # (_history_rows returns the rows sorted by row, so each block is contiguous).
    block_size = np.bincount(row, minlength=n)
    block_end = np.cumsum(block_size)
    from_end = block_end[row] - 1 - np.arange(len(hist))
    keep = from_end < T
    static = static_features(hist, n, spec.activity_types)
    if spec.aggregate_features:
        static = np.concatenate([static, aggregate_static(events, snapshots, spec)], axis=1)
    hist = hist.loc[keep].reset_index(drop=True)
    positions, from_end = positions[keep], from_end[keep]

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
        codes = _vocabulary_codes(spec.item_vocab, events["item_id"], positions)
        unknown = int((codes < 0).sum())
        item[row, pos] = np.where(codes < 0, UNKNOWN_ID, codes + 2)

    ts_ns = hist["ts"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    ts_sec = ts_ns / 1e9
    prev_sec = np.roll(ts_sec, 1)
    first = np.ones(len(hist), dtype=bool)
    if len(hist):
        first[1:] = row[1:] != row[:-1]
    gap_hours = np.where(first, 0.0, (ts_sec - prev_sec) / 3600.0)
    age_days = hist["age_days"].to_numpy()
    # Monday = 0, as pandas' day_of_week; 1970-01-01 (day 0 of the epoch) was a Thursday.
    dow = ((ts_ns // _DAY_NS + 3) % 7) * (2 * np.pi / 7)
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
        # In place: the same arithmetic without two more arrays of every event's features.
        feats -= np.asarray(spec.numeric_mean)
        feats /= np.asarray(spec.numeric_std)
        static = (static - np.asarray(spec.static_mean)) / np.asarray(spec.static_std)
    numeric[row, pos] = feats.astype(np.float32)
    if unknown:
        log.info("%d of %d events have items outside the training vocabulary (unknown id %d)", unknown, len(hist), UNKNOWN_ID)
    return SequenceArrays(event_type, item, numeric, mask, static.astype(np.float32), unknown_items=unknown)


def _vocabulary_codes(vocabulary: list[str], values: pd.Series, positions: np.ndarray) -> np.ndarray:
    """Find the position in ``vocabulary`` of ``values`` at ``positions`` (-1 when absent or missing)."""
    arrow = _arrow(values)
    if not (pa.types.is_string(arrow.type) or pa.types.is_large_string(arrow.type)):
        return _lookup(pd.Index(vocabulary), values.iloc[positions])
    # pyarrow hashes the vocabulary once and looks every value up in C, with no copy of the strings.
    found = pc.index_in(arrow, value_set=pa.array(vocabulary, type=arrow.type))
    return found.fill_null(-1).to_numpy().astype(np.int64)[positions]


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
    aggregate_options: dict | None = None,
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
        aggregate_options=dict(aggregate_options or {}),
        lookback_days=lookback_days,
    )
    if aggregate:
        from seqchurn.baselines.features import feature_names

        spec.static_features = [*STATIC_FEATURES, *(f"agg_{name}" for name in feature_names(**spec.aggregate_options))]
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
