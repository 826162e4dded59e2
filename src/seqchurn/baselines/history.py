"""Locate each snapshot's past events in a canonical event frame without a per-row loop.

A snapshot row ``(customer_id, cutoff)`` owns the events of its customer with
``ts < cutoff``. ``HistoryIndex`` sorts the events once by ``(customer, ts)``, so that
these events are one contiguous run of the sorted frame. It finds every run with a single
``np.searchsorted`` and hands the runs out flattened, in chunks of snapshot rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from seqchurn.data.schema import validate_events

DAY_NS = 86_400 * 10**9
"""Nanoseconds per day; every duration in this package is computed in int64 ns first."""

NOT_CANCELLED_NS = np.iinfo(np.int64).max
"""Stand-in for a missing ``cancelled_at``: later than any cutoff."""


def timestamps_to_ns(values: pd.Series, name: str) -> np.ndarray:
    """Return int64 nanoseconds since the epoch; NaT becomes ``iNaT`` (int64 min).

    Raises ``ValueError`` unless ``values`` are timezone-aware UTC timestamps. Any unit
    is accepted, because pandas 3 creates ``datetime64[us, UTC]`` from strings.
    """
    dtype = values.dtype
    if not isinstance(dtype, pd.DatetimeTZDtype) or str(dtype.tz) != "UTC":
        raise ValueError(f"Expected `{name}` to be a UTC datetime column (datetime64[*, UTC]), but got {dtype}")
    return values.dt.as_unit("ns").array.asi8.copy()


def check_snapshots(snapshots: pd.DataFrame, *, require_label: bool = False) -> None:
    """Raise ``ValueError`` unless ``snapshots`` has the snapshot columns with valid values."""
    required = ["customer_id", "cutoff"] + (["label"] if require_label else [])
    missing = [c for c in required if c not in snapshots.columns]
    if missing:
        raise ValueError(f"Expected a snapshot frame with columns {required}, but {missing} are missing")
    cutoff_ns = timestamps_to_ns(snapshots["cutoff"], "cutoff")
    bad = np.flatnonzero(cutoff_ns == np.iinfo(np.int64).min)
    if bad.size:
        raise ValueError(f"Expected every `cutoff` to be set, but {bad.size} are NaT (first at snapshot row {bad[0]})")
    ids = snapshots["customer_id"]
    if not pd.api.types.is_string_dtype(ids):
        raise ValueError(
            f"Expected `customer_id` to be strings like the event frame's, but got dtype {ids.dtype}; convert it with .astype('str')"
        )
    missing_ids = np.flatnonzero(ids.isna().to_numpy())
    if missing_ids.size:
        raise ValueError(f"Expected every `customer_id` to be set, but {missing_ids.size} are missing (first at snapshot row {missing_ids[0]})")
    if require_label:
        labels = snapshots["label"]
        valid = labels.isin([0, 1]).to_numpy()
        if not valid.all():
            first = int(np.flatnonzero(~valid)[0])
            raise ValueError(f"Expected `label` to be 0 or 1, but got {labels.iloc[first]!r} at snapshot row {first}")


@dataclass(frozen=True)
class HistoryChunk:
    """Events before the cutoff for the snapshot rows ``rows``, flattened in (row, ts) order.

    ``row[j]`` is the chunk-local snapshot row (0 for ``rows.start``) of event ``j`` and
    ``position[j]`` its position in the sorted events (see ``HistoryIndex.sorted``).
    ``first[i]`` is where row ``i``'s events start in the flattened arrays and
    ``count[i]`` how many there are.
    """

    rows: slice
    row: np.ndarray
    position: np.ndarray
    first: np.ndarray
    count: np.ndarray
    cutoff_ns: np.ndarray

    @property
    def n_rows(self) -> int:
        return len(self.count)


class HistoryIndex:
    """Events sorted by ``(customer, ts)``, ready to be cut at many cutoffs at once."""

    def __init__(self, events: pd.DataFrame) -> None:
        validate_events(events)
        customer_codes, customers = pd.factorize(events["customer_id"], sort=False)
        if (customer_codes < 0).any():
            first = int(np.flatnonzero(customer_codes < 0)[0])
            raise ValueError(f"Expected every event to have a `customer_id`, but event row {first} has none")
        ts_ns = timestamps_to_ns(events["ts"], "ts")
        self.order = np.lexsort((ts_ns, customer_codes))
        self.customers = pd.Index(customers)
        self.customer_code = customer_codes[self.order].astype(np.int64)
        self.ts_ns = ts_ns[self.order]
        self.customer_start = np.searchsorted(self.customer_code, np.arange(len(customers) + 1), side="left")

    def sorted(self, values: np.ndarray) -> np.ndarray:
        """Return ``values`` (one per event, in frame order) in the index's sorted order."""
        return values[self.order]

    def locate(self, customer_ids: pd.Series, cutoff_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return, per query, the sorted position of the customer's first event and the number before the cutoff."""
        code = self.customers.get_indexer(pd.Index(customer_ids)).astype(np.int64)
        known = code >= 0
        start = np.zeros(len(code), dtype=np.int64)
        count = np.zeros(len(code), dtype=np.int64)
        if not known.any() or len(self.ts_ns) == 0:
            return start, count

        # Replace each time by its rank among all event and cutoff times. Then
        # (customer, rank) packs into one sortable int64 key without overflow,
        # which nanoseconds times customer codes would not.
        all_times = np.concatenate([self.ts_ns, cutoff_ns[known]])
        unique_times, rank = np.unique(all_times, return_inverse=True)
        n_times = len(unique_times) + 1
        if len(self.customers) * n_times >= 2**62:
            raise ValueError(f"Too many customers ({len(self.customers)}) times distinct timestamps ({n_times}) to index at once")
        event_key = self.customer_code * n_times + rank[: len(self.ts_ns)]
        query_key = code[known] * n_times + rank[len(self.ts_ns) :]

        # side="left" puts an event exactly at the cutoff after the cut: it is future.
        end = np.searchsorted(event_key, query_key, side="left")
        start[known] = self.customer_start[code[known]]
        count[known] = end - start[known]
        return start, count

    def chunks(self, snapshots: pd.DataFrame, max_events: int = 4_000_000) -> Iterator[HistoryChunk]:
        """Yield the past events of consecutive blocks of snapshot rows.

        A block contains about ``max_events`` flattened events (more only when one
        snapshot row alone has more), which bounds memory for many cutoffs.
        """
        cutoff_ns = timestamps_to_ns(snapshots["cutoff"], "cutoff")
        start, count = self.locate(snapshots["customer_id"], cutoff_ns)
        n_rows = len(count)
        if n_rows == 0:
            return
        cumulative = np.cumsum(count)
        row_begin = 0
        while row_begin < n_rows:
            done = cumulative[row_begin - 1] if row_begin else 0
            row_end = int(np.searchsorted(cumulative, done + max_events, side="right"))
            row_end = min(max(row_end, row_begin + 1), n_rows)
            yield _flatten(slice(row_begin, row_end), start[row_begin:row_end], count[row_begin:row_end], cutoff_ns[row_begin:row_end])
            row_begin = row_end


def _flatten(rows: slice, start: np.ndarray, count: np.ndarray, cutoff_ns: np.ndarray) -> HistoryChunk:
    total = int(count.sum())
    first = np.cumsum(count) - count
    row = np.repeat(np.arange(len(count), dtype=np.int64), count)
    position = np.repeat(start - first, count) + np.arange(total, dtype=np.int64)
    return HistoryChunk(rows=rows, row=row, position=position, first=first, count=count, cutoff_ns=cutoff_ns)
