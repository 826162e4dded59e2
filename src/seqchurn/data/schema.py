"""The canonical event frame every part of seqchurn works on.

Loaders (``seqchurn.data.io``) turn a shop's own log into this frame; everything after
them (labels, sequences, baselines, analytics, scoring) reads only these columns:

=============  ===========================  ==============================================
column         dtype                        meaning
=============  ===========================  ==============================================
customer_id    string (pandas ``str``)      id exactly as written in the source
ts             ``datetime64[ns, UTC]``      event time
event_type     categorical of EVENT_TYPES   canonical event type
amount         float64, >= 0                money value of the event (0 when unknown)
quantity       float64, >= 0 or NaN         units; NaN when the log has none
item_id        string or missing            item / product code; missing when the log has none
category_id    string or missing            item category; missing when the log has none
order_id       string or missing            invoice / order id; missing when the log has none
cancelled_at   ``datetime64[ns, UTC]``/NaT  for purchases: when the whole order was cancelled
=============  ===========================  ==============================================

Returns and cancellations are ``event_type == "return"`` with a positive ``amount``; a
purchase never carries a negative amount. The frame is sorted by ``(customer_id, ts)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

EVENT_TYPES: tuple[str, ...] = ("purchase", "return", "view", "cart", "favourite", "other")
"""Canonical event types; a data config maps the shop's own names onto these."""

COLUMNS: tuple[str, ...] = (
    "customer_id",
    "ts",
    "event_type",
    "amount",
    "quantity",
    "item_id",
    "category_id",
    "order_id",
    "cancelled_at",
)

EVENT_TYPE_DTYPE = pd.CategoricalDtype(list(EVENT_TYPES), ordered=False)


class InputError(ValueError):
    """Invalid user input: a file, row, column or value that the user has to fix.

    The CLI turns it into exit code 2 and prints the message without a traceback.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        row: int | None = None,
        column: str | None = None,
        value: object = None,
        hint: str | None = None,
    ) -> None:
        self.file, self.row, self.column, self.value, self.hint = file, row, column, value, hint
        where = []
        if file is not None:
            where.append(f"file {file}")
        if row is not None:
            # Rows are 1-based data rows (the header of a CSV file is not counted).
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        text = message
        if where:
            text = f"{', '.join(where)}: {message}"
        if value is not None:
            text += f" (value: {value!r})"
        if hint:
            text += f". {hint}"
        super().__init__(text)


@dataclass
class LoadReport:
    """Counts of what loading read, changed and deliberately dropped, by reason."""

    rows_read: int = 0
    rows_kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    changed: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def drop(self, reason: str, count: int) -> None:
        """Record ``count`` rows removed for ``reason`` (zero counts are kept too)."""
        self.dropped[reason] = self.dropped.get(reason, 0) + int(count)

    def change(self, reason: str, count: int) -> None:
        """Record ``count`` rows kept but altered for ``reason`` (e.g. a missing amount set to 0)."""
        self.changed[reason] = self.changed.get(reason, 0) + int(count)

    def to_dict(self) -> dict:
        return {
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "dropped": dict(self.dropped),
            "changed": dict(self.changed),
            "files": list(self.files),
        }


def empty_events() -> pd.DataFrame:
    """Return an empty canonical event frame with the right dtypes."""
    return pd.DataFrame(
        {
            "customer_id": pd.Series([], dtype="str"),
            "ts": pd.Series([], dtype="datetime64[ns, UTC]"),
            "event_type": pd.Series([], dtype=EVENT_TYPE_DTYPE),
            "amount": pd.Series([], dtype="float64"),
            "quantity": pd.Series([], dtype="float64"),
            "item_id": pd.Series([], dtype="str"),
            "category_id": pd.Series([], dtype="str"),
            "order_id": pd.Series([], dtype="str"),
            "cancelled_at": pd.Series([], dtype="datetime64[ns, UTC]"),
        }
    )


def validate_events(events: pd.DataFrame) -> None:
    """Raise ``ValueError`` unless ``events`` is a canonical event frame."""
    missing = [c for c in COLUMNS if c not in events.columns]
    if missing:
        raise ValueError(f"Expected a canonical event frame with columns {list(COLUMNS)}, but {missing} are missing")
    if str(events["ts"].dtype) != "datetime64[ns, UTC]":
        raise ValueError(f"Expected `ts` to be datetime64[ns, UTC], but got {events['ts'].dtype}")
    if not isinstance(events["event_type"].dtype, pd.CategoricalDtype):
        raise ValueError(f"Expected `event_type` to be categorical of {EVENT_TYPES}, but got {events['event_type'].dtype}")
