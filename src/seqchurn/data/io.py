"""Read a shop's event log (Parquet or CSV) into the canonical event frame.

The data config names, per source file, which column holds the customer id, timestamp,
event type, amount (or quantity and unit price), item, category and order id, and how to
map the shop's event names onto ``EVENT_TYPES``. Every row that is dropped is counted by
reason in a :class:`LoadReport`; every value that cannot be read raises
:class:`InputError` with the file, 1-based data row, column and value.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pads

from seqchurn.data.schema import COLUMNS, EVENT_TYPE_DTYPE, EVENT_TYPES, InputError, LoadReport, empty_events

log = logging.getLogger(__name__)

ROLES = ("customer_id", "timestamp", "event_type", "amount", "quantity", "unit_price", "item_id", "category_id", "order_id")
_OFFSET_RE = r"(?:[zZ]|[+-]\d{2}(?::?\d{2})?)$"
_ROW = "__row__"


@dataclass
class SourceSpec:
    """One input file or Parquet dataset directory and how to read it."""

    path: str
    columns: dict[str, str | None]
    format: str | None = None  # parquet | csv; None = from the file extension
    csv_header: bool = True
    csv_names: list[str] | None = None
    csv_delimiter: str = ","
    encoding: str = "utf8"
    start: str | None = None  # keep rows at or after this local time
    before: str | None = None  # keep rows before this local time


@dataclass
class LogSpec:
    """How to turn a shop's log into canonical events (mirrors ``conf/data/*.yaml``)."""

    sources: list[SourceSpec]
    timestamp_unit: str | None = None  # None: strings/datetimes; s | ms | us | ns: epoch numbers
    timezone: str = "UTC"  # zone of naive timestamps
    ambiguous: str = "raise"  # DST fall-back times: raise | earliest | latest
    min_date: str = "1990-01-01"
    max_date: str | None = None  # default: now + 1 day
    event_type_map: dict[str, str] = field(default_factory=dict)
    default_event_type: str = "purchase"
    unknown_event_type: str = "error"  # error | other
    return_order_prefixes: tuple[str, ...] = ()
    drop_order_prefixes: tuple[str, ...] = ()
    exclude_items: tuple[str, ...] = ()
    negative_quantity_is_return: bool = True
    strict: bool = False

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> LogSpec:
        """Build from a data config mapping (a Hydra ``DictConfig`` or a plain dict)."""
        cfg = _plain(cfg)
        sources = cfg.get("sources")
        if not sources:
            raise InputError("the data config lists no `sources`", hint="Add at least one source with a `path` and `columns`")
        specs = []
        for i, src in enumerate(sources):
            if "path" not in src or "columns" not in src:
                raise InputError(f"data source #{i} needs `path` and `columns`", value=src)
            unknown = set(src["columns"]) - set(ROLES)
            if unknown:
                raise InputError(f"data source {src['path']} maps unknown roles {sorted(unknown)}; valid roles are {list(ROLES)}")
            csv = src.get("csv") or {}
            specs.append(
                SourceSpec(
                    path=str(src["path"]),
                    columns=dict(src["columns"]),
                    format=src.get("format"),
                    csv_header=bool(csv.get("header", True)),
                    csv_names=csv.get("names"),
                    csv_delimiter=csv.get("delimiter", ","),
                    encoding=src.get("encoding", "utf8"),
                    start=src.get("start"),
                    before=src.get("before"),
                )
            )
        ts = cfg.get("timestamp") or {}
        ev = cfg.get("event_types") or {}
        ret = cfg.get("returns") or {}
        spec = cls(
            sources=specs,
            timestamp_unit=ts.get("unit"),
            timezone=ts.get("timezone", "UTC"),
            ambiguous=ts.get("ambiguous", "raise"),
            min_date=ts.get("min_date", "1990-01-01"),
            max_date=ts.get("max_date"),
            event_type_map={str(k): v for k, v in (ev.get("map") or {}).items()},
            default_event_type=ev.get("default", "purchase"),
            unknown_event_type=ev.get("unknown", "error"),
            return_order_prefixes=tuple(ret.get("order_prefixes") or ()),
            drop_order_prefixes=tuple(cfg.get("drop_order_prefixes") or ()),
            exclude_items=tuple(str(x) for x in (cfg.get("exclude_items") or ())),
            negative_quantity_is_return=bool(ret.get("negative_quantity", True)),
            strict=bool(cfg.get("strict", False)),
        )
        spec.validate()
        return spec

    def validate(self) -> None:
        if self.timestamp_unit not in (None, "s", "ms", "us", "ns"):
            raise InputError(f"Expected `timestamp.unit` to be null, s, ms, us or ns, but got {self.timestamp_unit!r}")
        if self.ambiguous not in ("raise", "earliest", "latest"):
            raise InputError(f"Expected `timestamp.ambiguous` to be raise, earliest or latest, but got {self.ambiguous!r}")
        if self.unknown_event_type not in ("error", "other"):
            raise InputError(f"Expected `event_types.unknown` to be error or other, but got {self.unknown_event_type!r}")
        targets = set(self.event_type_map.values()) | {self.default_event_type}
        bad = sorted(t for t in targets if t not in EVENT_TYPES)
        if bad:
            raise InputError(f"event type mapping targets {bad} are not canonical types; use one of {list(EVENT_TYPES)}")
        for src in self.sources:
            for role in ("customer_id", "timestamp"):
                if not src.columns.get(role):
                    raise InputError(f"data source {src.path} does not map the required role `{role}` to a column")
            if not src.columns.get("amount") and not (src.columns.get("quantity") and src.columns.get("unit_price")):
                log.info("source %s has no amount column (nor quantity x unit_price): amounts are set to 0", src.path)


def _plain(cfg: Any) -> Any:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(cfg, (DictConfig, ListConfig)):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with hydra-core
        pass
    return cfg


# --------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------


def _format_of(src: SourceSpec) -> str:
    if src.format:
        if src.format not in ("parquet", "csv"):
            raise InputError(f"Expected `format` to be parquet or csv, but got {src.format!r}", file=src.path)
        return src.format
    path = Path(src.path)
    if path.is_dir() or path.suffix == ".parquet":
        return "parquet"
    if path.name.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt", ".txt.gz")):
        return "csv"
    raise InputError("cannot tell the file format from the name", file=src.path, hint="Set `format: parquet` or `format: csv` on the source")


def _needed_columns(src: SourceSpec) -> list[str]:
    return sorted({c for c in src.columns.values() if c})


def iter_source_tables(src: SourceSpec, *, batch_rows: int | None = None) -> Iterator[tuple[pa.Table, str, int]]:
    """Yield ``(table, file, first_row)`` pieces of one source with only the mapped columns.

    ``first_row`` is the 0-based position of the piece's first row in ``file``, so errors can
    name the row. Parquet datasets are read file by file.
    """
    path = Path(src.path)
    if not path.exists():
        raise InputError("file not found", file=src.path, hint="Check the `path` of this source in the data config")
    needed = _needed_columns(src)
    fmt = _format_of(src)
    if fmt == "parquet":
        try:
            dataset = pads.dataset(str(path), format="parquet", partitioning="hive")
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"cannot read as Parquet: {exc}", file=src.path) from exc
        _check_columns(dataset.schema.names, needed, src.path)
        if not path.is_dir():
            try:
                table = dataset.to_table(columns=needed)
            except (pa.ArrowInvalid, OSError) as exc:
                raise InputError(f"cannot read as Parquet: {exc}", file=src.path) from exc
            yield from _slices(table, src.path, batch_rows)
            return
        fragments = sorted(dataset.get_fragments(), key=lambda f: f.path)
        if not fragments:
            raise InputError("the Parquet dataset directory contains no files", file=src.path)
        for fragment in fragments:
            try:
                # The dataset schema lets hive partition columns (e.g. bucket=7) be read too.
                table = fragment.to_table(columns=needed, schema=dataset.schema)
            except (pa.ArrowInvalid, OSError) as exc:
                raise InputError(f"cannot read as Parquet: {exc}", file=fragment.path) from exc
            yield from _slices(table, fragment.path, batch_rows)
    else:
        yield from _slices(_read_csv(src, needed), src.path, batch_rows)


def _slices(table: pa.Table, file: str, batch_rows: int | None) -> Iterator[tuple[pa.Table, str, int]]:
    if not batch_rows or table.num_rows <= batch_rows:
        yield table, file, 0
        return
    for start in range(0, table.num_rows, batch_rows):
        yield table.slice(start, batch_rows), file, start


def _check_columns(available: list[str], needed: list[str], file: str) -> None:
    missing = [c for c in needed if c not in available]
    if missing:
        raise InputError(
            f"missing column(s) {missing}; the file has {available}",
            file=file,
            column=missing[0],
            hint="Fix the column names under `columns:` in the data config",
        )


def _read_csv(src: SourceSpec, needed: list[str]) -> pa.Table:
    read_opts = pacsv.ReadOptions(encoding=src.encoding, block_size=1 << 24)
    if not src.csv_header:
        if not src.csv_names:
            raise InputError("a CSV source without a header needs `csv.names`", file=src.path)
        read_opts.column_names = list(src.csv_names)
    parse_opts = pacsv.ParseOptions(delimiter=src.csv_delimiter)
    _check_columns(_csv_header(src) if src.csv_header else list(src.csv_names), needed, src.path)
    # Read every column as text so ids keep their leading zeros and errors can show raw values.
    convert_opts = pacsv.ConvertOptions(
        column_types={c: pa.string() for c in needed},
        include_columns=needed,
        strings_can_be_null=True,
        null_values=[""],
    )
    try:
        table = pacsv.read_csv(src.path, read_options=read_opts, parse_options=parse_opts, convert_options=convert_opts)
    except pa.ArrowInvalid as exc:
        text = str(exc)
        if "Empty CSV file" in text:
            raise InputError("the file is empty", file=src.path, hint="Point the source at a log with a header and rows") from exc
        if "UTF8" in text or "utf8" in text.lower():
            raise InputError(
                f"text is not valid {src.encoding}: {text}", file=src.path, hint="Set `encoding:` on the source (e.g. latin-1)"
            ) from exc
        raise InputError(f"cannot parse CSV: {text}", file=src.path, hint="Check the delimiter, quoting and header settings") from exc
    if table.num_rows == 0:
        raise InputError("the file has a header but no rows", file=src.path)
    return table


def _csv_header(src: SourceSpec) -> list[str]:
    opts = pacsv.ReadOptions(encoding=src.encoding, block_size=1 << 16)
    # Every column as text, so the header read never fails on a value's type.
    convert = pacsv.ConvertOptions(auto_dict_encode=False, strings_can_be_null=True)
    try:
        with pacsv.open_csv(src.path, read_options=opts, parse_options=pacsv.ParseOptions(delimiter=src.csv_delimiter), convert_options=convert) as reader:
            return reader.schema.names
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            raise InputError("the file is empty", file=src.path, hint="Point the source at a log with a header and rows") from exc
        if "utf8" in str(exc).lower():
            raise InputError(f"text is not valid {src.encoding}: {exc}", file=src.path, hint="Set `encoding:` on the source (e.g. latin-1)") from exc
        raise InputError(f"cannot parse CSV header: {exc}", file=src.path, hint="Check the delimiter and header settings") from exc


# --------------------------------------------------------------------------------------
# Turning raw columns into canonical ones
# --------------------------------------------------------------------------------------


def _first_bad(mask: np.ndarray, raw: pd.Series, rows: np.ndarray) -> tuple[int, object]:
    i = int(np.flatnonzero(mask)[0])
    return int(rows[i]) + 1, raw.iloc[i]


def _customer_ids(col: pa.ChunkedArray, file: str, rows: np.ndarray) -> pd.Series:
    """Ids as strings exactly as written; integral floats (a Parquet artefact) lose the ``.0``."""
    if pa.types.is_floating(col.type):
        values = col.to_numpy(zero_copy_only=False)
        present = ~np.isnan(values)
        fractional = present & (np.mod(values, 1) != 0)
        if fractional.any():
            i = int(np.flatnonzero(fractional)[0])
            raise InputError("customer id is not a whole number", file=file, row=int(rows[i]) + 1, column="customer_id", value=values[i])
        out = pd.Series(pd.array(values, dtype="Int64")).astype("str")
        out[~present] = None
        return out.astype("str")
    if pa.types.is_integer(col.type):
        return pd.Series(col.to_pandas()).astype("str").where(pd.Series(col.is_valid().to_numpy(zero_copy_only=False)))
    ids = pd.Series(col.cast(pa.string()).to_pandas(), dtype="str")
    blank = ids.str.strip() == ""
    return ids.mask(blank.fillna(False).astype(bool))


def _parse_timestamps(raw: pa.ChunkedArray, spec: LogSpec, file: str, rows: np.ndarray, column: str) -> pd.Series:
    unit = spec.timestamp_unit
    n = len(raw)
    if unit is not None:
        raw_s = pd.Series(raw.to_pandas())
        if pa.types.is_integer(raw.type):
            numbers = raw_s.astype("Int64")
        else:
            # Integers in text stay exact (int64); float64 would round nanosecond epochs.
            numbers = pd.to_numeric(raw_s, errors="coerce", dtype_backend="numpy_nullable")
        bad = (numbers.isna() & raw_s.notna()).to_numpy()
        if bad.any():
            row, value = _first_bad(bad, raw_s, rows)
            raise InputError(
                f"timestamp is not a number of epoch {unit}", file=file, row=row, column=column, value=value,
                hint="Fix the value, or set `timestamp.unit: null` if the column holds date strings",
            )
        out = pd.to_datetime(numbers, unit=unit, utc=True, errors="coerce")
    elif pa.types.is_timestamp(raw.type):
        out = pd.Series(raw.to_pandas())
        if out.dt.tz is None:
            out = _localize(out, spec, file, rows, column)
        else:
            out = out.dt.tz_convert("UTC")
    elif pa.types.is_date(raw.type):
        out = _localize(pd.to_datetime(pd.Series(raw.to_pandas())), spec, file, rows, column)
    else:
        raw_s = pd.Series(raw.cast(pa.string()).to_pandas(), dtype="str").str.strip()
        has_offset = raw_s.str.contains(_OFFSET_RE, regex=True, na=False).to_numpy()
        parts = [pd.Series(pd.NaT, index=raw_s.index[raw_s.isna().to_numpy()], dtype="datetime64[ns, UTC]")]
        if has_offset.any():
            parts.append(pd.to_datetime(raw_s[has_offset], format="ISO8601", utc=True, errors="coerce").astype("datetime64[ns, UTC]"))
        naive = ~has_offset & raw_s.notna().to_numpy()
        if naive.any():
            parsed = pd.to_datetime(raw_s[naive], format="ISO8601", errors="coerce")
            parts.append(_localize(parsed, spec, file, rows[naive], column).astype("datetime64[ns, UTC]"))
        out = pd.concat([p for p in parts if len(p)] or parts[:1]).reindex(raw_s.index)
        bad = (out.isna() & raw_s.notna()).to_numpy()
        if bad.any():
            row, value = _first_bad(bad, raw_s, rows)
            raise InputError(
                "cannot parse timestamp as an ISO 8601 date or date-time", file=file, row=row, column=column, value=value,
                hint="Use ISO 8601 (e.g. 2011-03-01T14:05:00+00:00), or set `timestamp.unit` to s or ms for epoch numbers",
            )
    out = out.astype("datetime64[ns, UTC]") if n else pd.Series([], dtype="datetime64[ns, UTC]")
    _check_plausible(out, raw, spec, file, rows, column)
    return out.reset_index(drop=True)


def _localize(values: pd.Series, spec: LogSpec, file: str, rows: np.ndarray, column: str) -> pd.Series:
    values = values.astype("datetime64[ns]")
    ambiguous = {"raise": "raise", "earliest": True, "latest": False}[spec.ambiguous]
    try:
        return values.dt.tz_localize(spec.timezone, ambiguous=ambiguous, nonexistent="shift_forward").dt.tz_convert("UTC")
    except Exception as exc:  # pytz / zoneinfo errors for ambiguous times or unknown zones
        if "ambiguous" in str(exc).lower():
            raise InputError(
                f"local time is ambiguous in {spec.timezone} (daylight-saving fall-back): {exc}", file=file, column=column,
                hint="Set `timestamp.ambiguous` to earliest or latest, or store times with UTC offsets",
            ) from exc
        raise InputError(f"cannot convert local times from zone {spec.timezone!r}: {exc}", file=file, column=column) from exc


def _check_plausible(ts: pd.Series, raw: pa.ChunkedArray, spec: LogSpec, file: str, rows: np.ndarray, column: str) -> None:
    lo = pd.Timestamp(spec.min_date, tz="UTC")
    hi = pd.Timestamp(spec.max_date, tz="UTC") if spec.max_date else pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=1)
    bad = (ts.notna() & ((ts < lo) | (ts > hi))).to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raw_value = raw[i].as_py()
        raise InputError(
            f"timestamp decodes to {ts.iloc[i]}, outside the plausible range {lo.date()} .. {hi.date()} "
            f"(configured timestamp.unit: {spec.timestamp_unit})",
            file=file, row=int(rows[i]) + 1, column=column, value=raw_value,
            hint="Check `timestamp.unit` (s vs ms) or widen `timestamp.min_date` / `timestamp.max_date`",
        )


def _numbers(raw: pa.ChunkedArray, file: str, rows: np.ndarray, column: str, role: str) -> pd.Series:
    if pa.types.is_floating(raw.type) or pa.types.is_integer(raw.type) or pa.types.is_decimal(raw.type):
        return pd.Series(raw.to_numpy(zero_copy_only=False), dtype="float64")
    raw_s = pd.Series(raw.cast(pa.string()).to_pandas(), dtype="str")
    values = pd.to_numeric(raw_s.str.strip(), errors="coerce").astype("float64")
    bad = (values.isna() & raw_s.notna()).to_numpy()
    if bad.any():
        row, value = _first_bad(bad, raw_s, rows)
        raise InputError(f"{role} is not a number", file=file, row=row, column=column, value=value, hint="Fix or remove the row")
    inf = np.isinf(values.to_numpy())
    if inf.any():
        row, value = _first_bad(inf, raw_s, rows)
        raise InputError(f"{role} is infinite", file=file, row=row, column=column, value=value)
    return values


def _strings(raw: pa.ChunkedArray | None, n: int) -> pd.Series:
    if raw is None:
        return pd.Series([None] * n, dtype="str")
    if pa.types.is_floating(raw.type):
        values = raw.to_numpy(zero_copy_only=False)
        if np.all(np.isnan(values) | (np.mod(values, 1) == 0)):
            out = pd.Series(pd.array(values, dtype="Int64")).astype("str")
            return out.mask(np.isnan(values))
    return pd.Series(raw.cast(pa.string()).to_pandas(), dtype="str")


def canonicalise(table: pa.Table, src: SourceSpec, spec: LogSpec, report: LoadReport, *, file: str, first_row: int = 0) -> pd.DataFrame:
    """Map one raw table to canonical columns (no deduplication or sorting yet)."""
    n = table.num_rows
    rows = np.arange(first_row, first_row + n, dtype=np.int64)
    cols = src.columns
    if n == 0:
        return empty_events().assign(**{_ROW: pd.Series([], dtype="int64")})

    def col(role: str) -> pa.ChunkedArray | None:
        name = cols.get(role)
        return table.column(name) if name else None

    customer = _customer_ids(col("customer_id"), file, rows)
    ts = _parse_timestamps(col("timestamp"), spec, file, rows, cols["timestamp"])

    quantity = _numbers(col("quantity"), file, rows, cols["quantity"], "quantity") if cols.get("quantity") else pd.Series(np.nan, index=range(n))
    if cols.get("amount"):
        amount = _numbers(col("amount"), file, rows, cols["amount"], "amount")
    elif cols.get("quantity") and cols.get("unit_price"):
        price = _numbers(col("unit_price"), file, rows, cols["unit_price"], "unit price")
        amount = quantity * price
    else:
        amount = pd.Series(0.0, index=range(n))
    missing_amount = amount.isna().to_numpy()
    if missing_amount.any():
        report.change("amount_missing_set_to_zero", int(missing_amount.sum()))
        amount = amount.fillna(0.0)

    order = _strings(col("order_id"), n)
    item = _strings(col("item_id"), n)
    category = _strings(col("category_id"), n)

    if cols.get("event_type"):
        raw_types = pd.Series(col("event_type").cast(pa.string()).to_pandas(), dtype="str").str.strip()
        mapping = {**{t: t for t in EVENT_TYPES}, **spec.event_type_map}
        event = raw_types.map(mapping)
        unknown = (event.isna()).to_numpy()
        if unknown.any():
            if spec.unknown_event_type == "error":
                row, value = _first_bad(unknown, raw_types, rows)
                raise InputError(
                    f"unknown event type; mapped types are {sorted(mapping)}", file=file, row=row, column=cols["event_type"], value=value,
                    hint="Add it under `event_types.map` in the data config, or set `event_types.unknown: other`",
                )
            report.change("unknown_event_type_mapped_to_other", int(unknown.sum()))
            event = event.fillna("other")
    else:
        event = pd.Series(spec.default_event_type, index=range(n), dtype="str")

    # Returns and cancellations: never purchases with negative amounts.
    is_return = np.array(event == "return", dtype=bool)
    if spec.return_order_prefixes:
        is_return |= order.str.startswith(spec.return_order_prefixes).fillna(False).to_numpy(dtype=bool)
    if spec.negative_quantity_is_return and cols.get("quantity"):
        is_return |= (quantity < 0).to_numpy()
    is_return |= (amount < 0).to_numpy() & (event == "purchase").to_numpy()
    event = event.mask(is_return, "return")

    frame = pd.DataFrame(
        {
            "customer_id": customer,
            "ts": ts,
            "event_type": event.astype(EVENT_TYPE_DTYPE),
            "amount": amount.abs().astype("float64"),
            "quantity": quantity.abs().astype("float64"),
            "item_id": item,
            "category_id": category,
            "order_id": order,
            "cancelled_at": pd.Series(pd.NaT, index=range(n), dtype="datetime64[ns, UTC]"),
            _ROW: rows,
        }
    )
    return _drop_rows(frame, src, spec, report, file)


def _drop_rows(frame: pd.DataFrame, src: SourceSpec, spec: LogSpec, report: LoadReport, file: str) -> pd.DataFrame:
    keep = np.ones(len(frame), dtype=bool)

    def drop(mask: np.ndarray, reason: str) -> None:
        nonlocal keep
        mask = mask & keep
        report.drop(reason, int(mask.sum()))
        keep &= ~mask

    if src.start or src.before:
        local = frame["ts"].dt.tz_convert(spec.timezone)
        if src.start:
            drop((local < pd.Timestamp(src.start, tz=spec.timezone)).to_numpy(), "outside_source_time_range")
        if src.before:
            drop((local >= pd.Timestamp(src.before, tz=spec.timezone)).to_numpy(), "outside_source_time_range")

    no_customer = frame["customer_id"].isna().to_numpy()
    if no_customer.any() and spec.strict:
        i = int(np.flatnonzero(no_customer)[0])
        raise InputError(
            f"{int(no_customer.sum())} rows have no customer id", file=file, row=int(frame[_ROW].iloc[i]) + 1,
            column=src.columns["customer_id"], hint="Fill the ids, or set `strict: false` to drop these rows with a logged count",
        )
    drop(no_customer, "missing_customer_id")

    no_ts = frame["ts"].isna().to_numpy()
    if no_ts.any() and spec.strict:
        i = int(np.flatnonzero(no_ts)[0])
        raise InputError("timestamp is missing", file=file, row=int(frame[_ROW].iloc[i]) + 1, column=src.columns["timestamp"])
    drop(no_ts, "missing_timestamp")

    if spec.drop_order_prefixes:
        drop(frame["order_id"].str.startswith(spec.drop_order_prefixes).fillna(False).to_numpy(dtype=bool), "order_prefix_excluded")
    if spec.exclude_items:
        drop(frame["item_id"].isin(spec.exclude_items).to_numpy(), "item_excluded")
    return frame.loc[keep].reset_index(drop=True)


# --------------------------------------------------------------------------------------
# Finishing the frame: duplicates, cancelled orders, order
# --------------------------------------------------------------------------------------


def finalise(parts: list[pd.DataFrame], report: LoadReport) -> pd.DataFrame:
    """Concatenate canonical pieces, drop exact duplicates, mark cancelled orders, sort."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return empty_events()
    events = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    before = len(events)
    events = events.drop_duplicates(subset=list(COLUMNS[:-1]), keep="first")
    report.drop("exact_duplicate", before - len(events))
    events = events.drop(columns=[_ROW])
    events = events.sort_values(["customer_id", "ts"], kind="stable", ignore_index=True)
    events["cancelled_at"] = cancelled_order_times(events)
    return events


def cancelled_order_times(events: pd.DataFrame) -> pd.Series:
    """For purchase rows of fully cancelled orders, the time the last line was cancelled.

    A purchase line is cancelled by the first unused later return of the same customer,
    item and quantity; an order counts as fully cancelled when every line is matched.
    Rows without an order id or item id are never matched.
    """
    out = pd.Series(pd.NaT, index=events.index, dtype="datetime64[ns, UTC]")
    usable = events["order_id"].notna() & events["item_id"].notna()
    buys = events.loc[usable & (events["event_type"] == "purchase"), ["customer_id", "item_id", "quantity", "ts", "order_id"]]
    rets = events.loc[usable & (events["event_type"] == "return"), ["customer_id", "item_id", "quantity", "ts"]]
    if buys.empty or rets.empty:
        return out
    key = ["customer_id", "item_id", "quantity"]
    buys = buys.assign(k=buys.groupby(key, sort=False).cumcount())
    rets = rets.assign(k=rets.groupby(key, sort=False).cumcount())
    # The k-th purchase of a (customer, item, quantity) pairs with its k-th return.
    matched = buys.reset_index().merge(rets.rename(columns={"ts": "ret_ts"}), on=[*key, "k"], how="left").set_index("index")
    matched = matched[matched["ret_ts"].isna() | (matched["ret_ts"] >= matched["ts"])]
    per_order = matched.groupby(["customer_id", "order_id"], sort=False)["ret_ts"]
    fully = per_order.transform("count") == per_order.transform("size")
    last = per_order.transform("max")
    cancelled = matched.index[fully.to_numpy(dtype=bool)]
    out.loc[cancelled] = last[fully.to_numpy(dtype=bool)].to_numpy()
    # Orders with lines dropped above (return before purchase) are never fully matched.
    return out


def load_events(data_cfg: Mapping[str, Any] | LogSpec, *, report: LoadReport | None = None) -> tuple[pd.DataFrame, LoadReport]:
    """Read every source of a data config into one canonical event frame."""
    spec = data_cfg if isinstance(data_cfg, LogSpec) else LogSpec.from_config(data_cfg)
    report = report or LoadReport()
    parts = []
    for src in spec.sources:
        for table, file, first_row in iter_source_tables(src):
            report.rows_read += table.num_rows
            if file not in report.files:
                report.files.append(file)
            if table.num_rows == 0:
                raise InputError("the file has no rows", file=file, hint="Point the source at a non-empty log")
            parts.append(canonicalise(table, src, spec, report, file=file, first_row=first_row))
    events = finalise(parts, report)
    report.rows_kept = len(events)
    dropped = {k: v for k, v in report.dropped.items() if v}
    log.info(
        "loaded %d events of %d customers from %d rows (%s)",
        len(events), events["customer_id"].nunique(), report.rows_read,
        ", ".join(f"{k}: {v}" for k, v in dropped.items()) or "nothing dropped",
    )
    return events, report
