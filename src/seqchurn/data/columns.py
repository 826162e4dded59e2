"""Parse raw log columns (pyarrow arrays) into the columns of the canonical event frame.

Each parser takes the raw column of one piece of a file, the file name, the 0-based
positions of the piece's rows in that file and the source column name. It raises
:class:`InputError` naming the file, the 1-based data row, the column and the value for
the first value that it cannot read. Blank text (empty or only whitespace) counts as a
missing value in every column.
"""

from __future__ import annotations

import datetime as dt
import logging
import zoneinfo
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from seqchurn.data.schema import InputError, LoadReport

log = logging.getLogger(__name__)

EPOCH_UNITS = ("s", "ms", "us", "ns")
AMBIGUOUS_RULES = ("raise", "earliest", "latest")
NONEXISTENT_RULES = ("shift_forward", "raise")

# A UTC offset counts only after a time of day, so the "-01" that ends a date such as
# "2021-06-01" is never read as an offset.
_OFFSET_RE = r"\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:[zZ]|[+-]\d{2}(?::?\d{2})?)$"
_EPOCH = pd.Timestamp("1970-01-01", tz="UTC")


@dataclass(frozen=True)
class TimeRules:
    """Timestamp reading rules: epoch unit, zone of naive times, DST rules and plausible range."""

    unit: str | None = None
    timezone: str = "UTC"
    ambiguous: str = "raise"
    nonexistent: str = "shift_forward"
    min_date: str = "1990-01-01"
    max_date: str | None = None

    def validate(self) -> None:
        """Raise InputError for a setting outside the documented choices."""
        if self.unit not in (None, *EPOCH_UNITS):
            raise InputError(f"Expected `timestamp.unit` to be null, s, ms, us or ns, but got {self.unit!r}")
        if self.ambiguous not in AMBIGUOUS_RULES:
            raise InputError(f"Expected `timestamp.ambiguous` to be raise, earliest or latest, but got {self.ambiguous!r}")
        if self.nonexistent not in NONEXISTENT_RULES:
            raise InputError(f"Expected `timestamp.nonexistent` to be shift_forward or raise, but got {self.nonexistent!r}")
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
            raise InputError(
                f"unknown time zone {self.timezone!r} in `timestamp.timezone`",
                hint="Use an IANA zone name such as Europe/London or UTC",
            ) from None
        for name in ("min_date", "max_date"):
            value = getattr(self, name)
            if value is None:
                continue
            try:
                pd.Timestamp(value, tz="UTC").as_unit("ns")
            except (ValueError, TypeError, OverflowError):
                # Nanosecond timestamps cover 1677-09-22 .. 2262-04-11.
                raise InputError(
                    f"Expected `timestamp.{name}` to be a date such as 2009-01-01 between {pd.Timestamp.min.date()} "
                    f"and {pd.Timestamp.max.date()}, but got {value!r}"
                ) from None

    def bounds(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        """Return the plausible UTC range; the upper end defaults to one day after now."""
        lower = pd.Timestamp(self.min_date, tz="UTC")
        upper = pd.Timestamp(self.max_date, tz="UTC") if self.max_date else pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=1)
        return lower, upper


def first_bad(mask: np.ndarray, values: Any, rows: np.ndarray) -> tuple[int, Any]:
    """Return the 1-based data row and the raw value of the first True entry of ``mask``."""
    i = int(np.flatnonzero(mask)[0])
    value = values.iloc[i] if isinstance(values, pd.Series) else values[i]
    if isinstance(value, pa.Scalar):
        value = value.as_py()
    if value is not None and pd.api.types.is_scalar(value) and pd.isna(value):
        value = None  # a missing value is shown as None, not as nan or NaT
    return int(rows[i]) + 1, value


def decode_dictionary(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Return dictionary-encoded columns (pandas categoricals in Parquet) as plain arrays.

    A column of Arrow type ``null`` (every value missing, as Parquet writers store an
    all-empty column) becomes a string column of nulls, which every parser reads as missing.
    """
    if pa.types.is_dictionary(col.type):
        return col.cast(col.type.value_type)
    if pa.types.is_null(col.type):
        return col.cast(pa.string())
    return col


def _is_text(col: pa.ChunkedArray) -> bool:
    t = col.type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _first_invalid_utf8(col: pa.ChunkedArray) -> int:
    """Return the position of the first value that is not valid UTF-8, by bisecting windows."""
    arr = col.combine_chunks()
    start, stop = 0, len(arr)  # [0, start) is valid; [start, stop) contains an invalid value
    while stop - start > 1:
        middle = (start + stop) // 2
        try:
            arr.slice(start, middle - start).cast(pa.string())
            start = middle
        except pa.ArrowInvalid:
            stop = middle
    return start


def as_text(col: pa.ChunkedArray, file: str, rows: np.ndarray, column: str) -> pd.Series:
    """Convert any column to pandas ``str`` values, raising InputError for invalid UTF-8 bytes."""
    try:
        text = col.cast(pa.string())
    except pa.ArrowInvalid as exc:
        if not (pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type)):
            raise InputError(f"cannot read the values as text: {exc}", file=file, column=column) from None
        i = _first_invalid_utf8(col)
        raise InputError(
            "value is not valid UTF-8 text", file=file, row=int(rows[i]) + 1, column=column, value=col[i].as_py(),
            hint="For a CSV file, set `encoding:` on the source to the file's encoding (e.g. latin-1); otherwise re-encode the data as UTF-8",
        ) from None
    except pa.ArrowNotImplementedError:
        raise InputError(f"cannot read a column of type {col.type} as text", file=file, column=column) from None
    return pd.Series(text.to_pandas(), dtype="str")


def _blank_to_missing(values: pd.Series) -> pd.Series:
    """Strip text and turn empty strings into missing values."""
    stripped = values.str.strip()
    blank = stripped.eq("").fillna(False).astype(bool)
    return stripped.mask(blank) if blank.any() else stripped


# --------------------------------------------------------------------------------------
# Customer ids and other string columns
# --------------------------------------------------------------------------------------


def customer_ids(col: pa.ChunkedArray, file: str, rows: np.ndarray, column: str, *, hide_values: bool = False) -> pd.Series:
    """Read customer ids as strings exactly as written; blank ids become missing.

    Integral floats (a Parquet artefact of integer ids with gaps) lose their ``.0``.
    With ``hide_values`` (pseudonymisation on), errors do not show the id.
    """
    col = decode_dictionary(col)

    def fail(message: str, mask: np.ndarray, values: Any, hint: str | None = None) -> InputError:
        row, value = first_bad(mask, values, rows)
        if hide_values:
            return InputError(f"{message} (value not shown because pseudonymisation is on)", file=file, row=row, column=column, hint=hint)
        return InputError(message, file=file, row=row, column=column, value=value, hint=hint)

    if pa.types.is_floating(col.type):
        values = col.to_numpy()
        present = ~np.isnan(values)
        fractional = present & ~np.isinf(values) & (np.mod(values, 1) != 0)
        if fractional.any():
            raise fail("customer id is not a whole number", fractional, values)
        infinite = np.isinf(values)
        if infinite.any():
            raise fail("customer id is infinite", infinite, values)
        out = pd.Series(pd.array(np.where(present, values, 0), dtype="Int64")).astype("str")
        return out.mask(~present)
    if pa.types.is_integer(col.type):
        valid = col.is_valid().to_numpy()
        return pd.Series(col.cast(pa.string()).to_pandas(), dtype="str").where(valid)
    if not _is_text(col):
        raise InputError(
            f"customer id column has type {col.type}; expected text or integers", file=file, column=column,
            hint="Map `customer_id` to the column that holds the ids",
        )
    try:
        ids = as_text(col, file, rows, column)
    except InputError as exc:
        if hide_values and exc.row is not None:
            raise InputError(
                "customer id is not valid UTF-8 text (value not shown because pseudonymisation is on)",
                file=file, row=exc.row, column=column,
            ) from None
        raise
    blank = ids.str.strip().eq("").fillna(False).astype(bool)
    return ids.mask(blank) if blank.any() else ids


def strings(col: pa.ChunkedArray | None, n: int, file: str, rows: np.ndarray, column: str | None) -> pd.Series:
    """Read an id-like column (item, category, order) as stripped strings; blanks become missing."""
    if col is None:
        return pd.Series(pa.nulls(n, pa.string()).to_pandas(), dtype="str")
    col = decode_dictionary(col)
    if pa.types.is_floating(col.type):
        values = col.to_numpy()
        present = ~np.isnan(values)
        if np.all(~present | (np.isfinite(values) & (np.mod(values, 1) == 0))):
            out = pd.Series(pd.array(np.where(present, values, 0), dtype="Int64")).astype("str")
            return out.mask(~present)
    return _blank_to_missing(as_text(col, file, rows, column))


# --------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------


def numbers(col: pa.ChunkedArray, file: str, rows: np.ndarray, column: str, role: str) -> pd.Series:
    """Read a numeric column (amount, quantity, unit price) as float64; missing stays NaN.

    Raises InputError for text that is not a number and for infinite values.
    """
    col = decode_dictionary(col)
    t = col.type
    if pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_decimal(t) or pa.types.is_boolean(t):
        values = pd.Series(col.cast(pa.float64(), safe=False).to_numpy(), dtype="float64")
        as_written = values
    elif _is_text(col):
        as_written = as_text(col, file, rows, column)
        text = _blank_to_missing(as_written)
        values = pd.to_numeric(text, errors="coerce").astype("float64")
        bad = (values.isna() & text.notna()).to_numpy()
        if bad.any():
            row, value = first_bad(bad, as_written, rows)
            raise InputError(
                f"{role} is not a number", file=file, row=row, column=column, value=value,
                hint="Write plain decimal numbers with a dot (no thousands separators or currency signs), or leave the cell empty",
            )
    else:
        raise InputError(f"{role} column has type {t}; expected numbers", file=file, column=column)
    infinite = np.isinf(values.to_numpy())
    if infinite.any():
        row, value = first_bad(infinite, as_written, rows)
        raise InputError(f"{role} is infinite or too large for a 64-bit float", file=file, row=row, column=column, value=value)
    return values


# --------------------------------------------------------------------------------------
# Timestamps
# --------------------------------------------------------------------------------------


def timestamps(
    col: pa.ChunkedArray, rules: TimeRules, file: str, rows: np.ndarray, column: str, report: LoadReport
) -> pd.Series:
    """Read a timestamp column into ``datetime64[ns, UTC]``; missing values stay NaT.

    - Timestamp columns with a zone are converted to UTC; naive ones and dates are local
      times in ``rules.timezone``.
    - Integers, floats and numeric text with ``rules.unit`` set are epoch times in that unit.
    - Text is ISO 8601. Text with a UTC offset (``Z``, ``+01:00``, ``+0100``, ``+01``) is
      converted with it, text without one is a local time in ``rules.timezone``.

    Local times that fall twice (DST fall-back) follow ``rules.ambiguous``. Local times that
    do not exist (DST spring-forward gap) follow ``rules.nonexistent``: ``shift_forward``
    moves them to the end of the gap and counts them in ``report.changed``.
    Every value must decode into ``rules.bounds()``.
    """
    col = decode_dictionary(col)
    t = col.type
    if pa.types.is_timestamp(t):
        values = pd.Series(col.to_pandas())
        if values.dt.tz is not None:
            return _checked_utc(values.dt.tz_convert("UTC"), col, rules, file, rows, column)
        return _local_to_utc(values, col, rules, file, rows, column, report)
    if pa.types.is_date(t):
        values = pd.Series(col.cast(pa.timestamp("s")).to_pandas())
        return _local_to_utc(values, col, rules, file, rows, column, report)
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        if rules.unit is None:
            present = col.is_valid().to_numpy()
            if not present.any():
                return pd.Series(pd.NaT, index=range(len(col)), dtype="datetime64[ns, UTC]")
            row, value = first_bad(present, col, rows)
            raise InputError(
                "timestamp column contains numbers but `timestamp.unit` is not set", file=file, row=row, column=column, value=value,
                hint="Set `timestamp.unit` to s, ms, us or ns for epoch times",
            )
        if pa.types.is_integer(t):
            try:
                col = col.cast(pa.int64())
            except pa.ArrowInvalid:
                raise InputError("epoch timestamp does not fit a 64-bit integer", file=file, column=column) from None
            values = pd.Series(col.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get))
        else:
            values = pd.Series(col.to_pandas())
        return _epoch_to_utc(values, col, rules, file, rows, column)
    if not _is_text(col):
        raise InputError(
            f"timestamp column has type {t}; expected date-times, dates, epoch numbers or ISO 8601 text", file=file, column=column
        )

    as_written = as_text(col, file, rows, column)
    text = _blank_to_missing(as_written)
    if rules.unit is not None:
        return _epoch_to_utc(text, as_written, rules, file, rows, column)
    return _text_to_utc(text, as_written, rules, file, rows, column, report)


def _epoch_to_utc(values: pd.Series, as_written: Any, rules: TimeRules, file: str, rows: np.ndarray, column: str) -> pd.Series:
    unit = rules.unit
    if pd.api.types.is_integer_dtype(values.dtype):
        epoch = values.astype("Int64")
    else:
        # Integers in text stay exact (Int64), because float64 would round nanosecond epochs.
        epoch = pd.to_numeric(values, errors="coerce", dtype_backend="numpy_nullable")
    bad = (epoch.isna() & values.notna()).to_numpy()
    if bad.any():
        row, value = first_bad(bad, as_written, rows)
        raise InputError(
            f"timestamp is not a number of epoch {unit}", file=file, row=row, column=column, value=value,
            hint="Fix the value, or set `timestamp.unit: null` if the column holds date strings",
        )
    lower, upper = rules.bounds()
    per_unit = pd.Timedelta(1, unit=unit)
    low, high = (lower - _EPOCH) / per_unit, (upper - _EPOCH) / per_unit
    numeric = epoch.astype("Float64")
    outside = (epoch.notna() & ((numeric < low) | (numeric > high))).fillna(False).to_numpy(dtype=bool)
    if outside.any():
        row, value = first_bad(outside, as_written, rows)
        raise InputError(
            f"timestamp {value} read as epoch {unit} is outside the plausible range {lower.date()} .. {upper.date()}",
            file=file, row=row, column=column, value=value,
            hint="Check `timestamp.unit` (s vs ms) or widen `timestamp.min_date` / `timestamp.max_date`",
        )
    return pd.to_datetime(epoch, unit=unit, utc=True).astype("datetime64[ns, UTC]").reset_index(drop=True)


def _text_to_utc(text: pd.Series, as_written: pd.Series, rules: TimeRules, file: str, rows: np.ndarray, column: str, report: LoadReport) -> pd.Series:
    has_offset = text.str.contains(_OFFSET_RE, regex=True, na=False).to_numpy(dtype=bool)
    naive = ~has_offset & text.notna().to_numpy()
    out = np.full(len(text), np.datetime64("NaT"), dtype="datetime64[ns]")

    parsed_offset = pd.to_datetime(text[has_offset], format="ISO8601", utc=True, errors="coerce")
    parsed_naive = pd.to_datetime(text[naive], format="ISO8601", errors="coerce")
    unparsed = np.zeros(len(text), dtype=bool)
    unparsed[has_offset] = parsed_offset.isna().to_numpy()
    unparsed[naive] = parsed_naive.isna().to_numpy()
    if unparsed.any():
        row, value = first_bad(unparsed, as_written, rows)
        raise InputError(
            "cannot parse timestamp as an ISO 8601 date or date-time", file=file, row=row, column=column, value=value,
            hint="Use ISO 8601 (e.g. 2011-03-01T14:05:00+00:00), or set `timestamp.unit` to s or ms for epoch numbers",
        )

    if has_offset.any():
        checked = _checked_utc(parsed_offset, as_written[has_offset], rules, file, rows[has_offset], column)
        out[has_offset] = _naive_utc(checked)
    if naive.any():
        local = _local_to_utc(parsed_naive, as_written[naive], rules, file, rows[naive], column, report)
        out[naive] = _naive_utc(local)
    return pd.Series(out).dt.tz_localize("UTC")


def _naive_utc(values: pd.Series) -> np.ndarray:
    return values.dt.tz_convert(None).to_numpy(dtype="datetime64[ns]")


def _local_to_utc(values: pd.Series, as_written: Any, rules: TimeRules, file: str, rows: np.ndarray, column: str, report: LoadReport) -> pd.Series:
    """Localise naive times in ``rules.timezone`` with the DST rules, then convert to UTC."""
    values = values.reset_index(drop=True)
    n = len(values)
    if n == 0:
        return pd.Series([], dtype="datetime64[ns, UTC]")
    zone = rules.timezone
    ambiguous: Any = "NaT" if rules.ambiguous == "raise" else np.full(n, rules.ambiguous == "earliest")
    local = values.dt.tz_localize(zone, ambiguous=ambiguous, nonexistent="NaT")
    unresolved = (local.isna() & values.notna()).to_numpy()
    if unresolved.any():
        # A time that localises once the fall-back side is given was ambiguous. One that
        # still fails lies in the spring-forward gap.
        probe = values[unresolved].dt.tz_localize(zone, ambiguous=np.ones(int(unresolved.sum()), dtype=bool), nonexistent="NaT")
        gap = np.zeros(n, dtype=bool)
        gap[np.flatnonzero(unresolved)[probe.isna().to_numpy()]] = True
        fall_back = unresolved & ~gap
        if fall_back.any():
            row, value = first_bad(fall_back, as_written, rows)
            raise InputError(
                f"local time occurs twice in {zone} (daylight-saving fall-back)", file=file, row=row, column=column, value=value,
                hint="Set `timestamp.ambiguous` to earliest or latest, or store times with UTC offsets",
            )
        if rules.nonexistent == "raise":
            row, value = first_bad(gap, as_written, rows)
            raise InputError(
                f"local time does not exist in {zone} (daylight-saving spring-forward gap)", file=file, row=row, column=column, value=value,
                hint="Set `timestamp.nonexistent: shift_forward`, or store times with UTC offsets",
            )
        shifted = values[gap].dt.tz_localize(zone, ambiguous=np.ones(int(gap.sum()), dtype=bool), nonexistent="shift_forward")
        local = local.copy()
        local[gap] = shifted.array
        report.change("nonexistent_local_time_shifted_forward", int(gap.sum()))
    return _checked_utc(local.dt.tz_convert("UTC"), as_written, rules, file, rows, column)


def _checked_utc(values: pd.Series, as_written: Any, rules: TimeRules, file: str, rows: np.ndarray, column: str) -> pd.Series:
    """Check the plausible range in the values' own resolution, then convert to nanoseconds."""
    values = values.reset_index(drop=True)
    lower, upper = rules.bounds()
    outside = (values.notna() & ((values < lower) | (values > upper))).to_numpy(dtype=bool)
    if outside.any():
        row, value = first_bad(outside, as_written, rows)
        decoded = values[outside].iloc[0]
        raise InputError(
            f"timestamp {decoded} is outside the plausible range {lower.date()} .. {upper.date()}",
            file=file, row=row, column=column, value=_plain(value),
            hint="Fix the value, or widen `timestamp.min_date` / `timestamp.max_date`",
        )
    return values.astype("datetime64[ns, UTC]")


def _plain(value: Any) -> Any:
    if isinstance(value, (pd.Timestamp, dt.datetime, dt.date)):
        return str(value)
    return value

