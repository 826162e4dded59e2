"""Read a shop's event log (Parquet or CSV) into the canonical event frame.

The data config names, per source file, which column holds the customer id, timestamp,
event type, amount (or quantity and unit price), item, category and order id, and how to
map the shop's event names onto ``EVENT_TYPES``. Every row that is dropped is counted by
reason in a :class:`LoadReport`; every value that cannot be read raises
:class:`InputError` with the file, 1-based data row, column and value.
``docs/input-format.md`` describes the whole input contract.

With a pseudonymisation key configured (``SEQCHURN_PSEUDONYM_KEY`` or
``privacy.key_file``), customer ids are replaced by keyed tokens right after they are
parsed, so nothing downstream of :func:`canonicalise` sees a raw id.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import hmac
import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads

from seqchurn.data import columns as parse
from seqchurn.data.columns import TimeRules
from seqchurn.data.schema import COLUMNS, EVENT_TYPE_DTYPE, EVENT_TYPES, InputError, LoadReport, empty_events
from seqchurn.privacy import KEY_ENV_VAR, load_key, pseudonymise

log = logging.getLogger(__name__)

ROLES = ("customer_id", "timestamp", "event_type", "amount", "quantity", "unit_price", "item_id", "category_id", "order_id")
PRIVACY_KEYS = ("key_file",)
CSV_OPTIONS = ("header", "names", "delimiter", "invalid_rows")
INVALID_ROW_ACTIONS = ("error", "skip")
# The warning of a read that skipped malformed rows shows at most this many of them.
_LOGGED_INVALID_ROWS = 5
_ROW = "__row__"
_KEY_ID_LABEL = b"seqchurn pseudonym key id"


@dataclass
class SourceSpec:
    """One input file or Parquet dataset directory and how to read it."""

    path: str
    columns: dict[str, str | None]
    format: str | None = None  # parquet | csv; None = from the file extension
    csv_header: bool = True
    csv_names: list[str] | None = None
    csv_delimiter: str = ","
    csv_invalid_rows: str = "error"  # error | skip: a row with the wrong number of fields
    encoding: str = "utf8"
    hash_buckets: int | None = None  # bucket=b contains the customers with shard_of(id, hash_buckets) == b
    start: str | None = None  # keep rows at or after this local time
    before: str | None = None  # keep rows before this local time


@dataclass
class LogSpec:
    """How to turn a shop's log into canonical events (mirrors ``conf/data/*.yaml``)."""

    sources: list[SourceSpec]
    timestamp_unit: str | None = None  # None: strings/datetimes; s | ms | us | ns: epoch numbers
    timezone: str = "UTC"  # zone of naive timestamps
    ambiguous: str = "raise"  # DST fall-back times: raise | earliest | latest
    nonexistent: str = "shift_forward"  # DST spring-forward gap times: shift_forward | raise
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
    key_file: str | None = None  # privacy.key_file: path of the pseudonymisation key
    # The key itself: never printed, compared or serialised with the spec.
    pseudonym_key: bytes | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> LogSpec:
        """Build from a data config mapping (a Hydra ``DictConfig`` or a plain dict).

        Also loads the pseudonymisation key from ``privacy.key_file`` or else from the
        environment variable ``SEQCHURN_PSEUDONYM_KEY`` (see :func:`seqchurn.privacy.load_key`).
        """
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
            csv_options = src.get("csv") or {}
            if not isinstance(csv_options, Mapping):
                raise InputError(f"Expected `csv` of data source {src['path']} to be a mapping of options, but got {csv_options!r}", hint=f"Use keys from {list(CSV_OPTIONS)}")
            unknown_csv = sorted(str(k) for k in csv_options if k not in CSV_OPTIONS)
            if unknown_csv:
                raise InputError(f"data source {src['path']} has unknown `csv` option(s) {unknown_csv}; valid options are {list(CSV_OPTIONS)}")
            specs.append(
                SourceSpec(
                    path=str(src["path"]),
                    columns=dict(src["columns"]),
                    format=src.get("format"),
                    csv_header=csv_options.get("header", True),
                    csv_names=csv_options.get("names"),
                    csv_delimiter=csv_options.get("delimiter", ","),
                    csv_invalid_rows=str(csv_options.get("invalid_rows", "error")),
                    encoding=src.get("encoding", "utf8"),
                    hash_buckets=src.get("hash_buckets"),
                    start=src.get("start"),
                    before=src.get("before"),
                )
            )
        ts = cfg.get("timestamp") or {}
        ev = cfg.get("event_types") or {}
        ret = cfg.get("returns") or {}
        key_file = _privacy_key_file(cfg.get("privacy"))
        spec = cls(
            sources=specs,
            timestamp_unit=ts.get("unit"),
            timezone=ts.get("timezone", "UTC"),
            ambiguous=ts.get("ambiguous", "raise"),
            nonexistent=ts.get("nonexistent", "shift_forward"),
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
            key_file=key_file,
        )
        spec.validate()
        spec.pseudonym_key = load_key(KEY_ENV_VAR, key_file)
        return spec

    @property
    def time_rules(self) -> TimeRules:
        return TimeRules(
            unit=self.timestamp_unit, timezone=self.timezone, ambiguous=self.ambiguous, nonexistent=self.nonexistent,
            min_date=self.min_date, max_date=self.max_date,
        )

    @property
    def pseudonymised(self) -> bool:
        """Whether customer ids are replaced by tokens at load."""
        return self.pseudonym_key is not None

    @property
    def pseudonym_key_id(self) -> str | None:
        """Public id of the pseudonymisation key (None without a key); see :func:`pseudonym_key_id`."""
        return pseudonym_key_id(self.pseudonym_key) if self.pseudonym_key is not None else None

    def validate(self) -> None:
        self.time_rules.validate()
        if self.unknown_event_type not in ("error", "other"):
            raise InputError(f"Expected `event_types.unknown` to be error or other, but got {self.unknown_event_type!r}")
        targets = set(self.event_type_map.values()) | {self.default_event_type}
        bad = sorted(str(t) for t in targets if t not in EVENT_TYPES)
        if bad:
            raise InputError(f"event type mapping targets {bad} are not canonical types; use one of {list(EVENT_TYPES)}")
        for src in self.sources:
            for role in ("customer_id", "timestamp"):
                if not src.columns.get(role):
                    raise InputError(f"data source {src.path} does not map the required role `{role}` to a column")
            try:
                codecs.lookup(src.encoding)
            except LookupError:
                raise InputError(f"unknown text encoding {src.encoding!r}", file=src.path, hint="Use a Python codec name such as utf8 or latin-1") from None
            buckets = src.hash_buckets
            if buckets is not None and (isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1):
                raise InputError(
                    f"Expected `hash_buckets` to be a positive integer (the number of bucket= partitions), but got {buckets!r}",
                    file=src.path, hint="Set it only when bucket=b holds exactly the customers with seqchurn.data.sharding.shard_of(id, n) == b",
                )
            if not isinstance(src.csv_header, bool):
                raise InputError(f"Expected `csv.header` to be true or false, but got {src.csv_header!r}", file=src.path)
            if not isinstance(src.csv_delimiter, str) or len(src.csv_delimiter) != 1:
                raise InputError(f"Expected `csv.delimiter` to be one character, but got {src.csv_delimiter!r}", file=src.path, hint='Use "," or ";" or "\\t"')
            if src.csv_invalid_rows not in INVALID_ROW_ACTIONS:
                raise InputError(f"Expected `csv.invalid_rows` to be error or skip, but got {src.csv_invalid_rows!r}", file=src.path)
            if not src.columns.get("amount") and not (src.columns.get("quantity") and src.columns.get("unit_price")):
                log.info("source %s has no amount column (nor quantity x unit_price): amounts are set to 0", src.path)


def pseudonym_key_id(key: bytes) -> str:
    """Return a public id of a pseudonymisation key: 16 hex digits of HMAC-SHA256(key, a fixed label).

    It lets a model card record which key made its tokens, so scoring can check it uses
    the same key, without storing the key. Like any keyed hash it allows checking guessed
    keys offline, which is infeasible for random keys of ``MIN_KEY_BYTES`` or more.
    """
    return hmac.new(key, _KEY_ID_LABEL, sha256).hexdigest()[:16]


def check_same_pseudonymisation(trained_key_id: str | None, spec: LogSpec) -> None:
    """Raise InputError when scoring would pseudonymise ids differently from training.

    ``trained_key_id`` is the model card's ``pseudonym_key_id``. A model trained on
    pseudonymised ids must be scored with the same key, because otherwise the outputs
    would carry raw ids or tokens that match no earlier run. Scoring with a key a model
    trained on raw ids is allowed: the ids never enter the model.
    """
    current = spec.pseudonym_key_id
    if trained_key_id is None or trained_key_id == current:
        return
    if current is None:
        raise InputError(
            "the model was trained on pseudonymised customer ids, but no pseudonymisation key is configured, "
            "so the scores would carry raw ids",
            hint=f"Set {KEY_ENV_VAR} or `privacy.key_file` in the data config to the key used in training",
        )
    raise InputError(
        f"the configured pseudonymisation key (id {current}) is not the one used in training (id {trained_key_id})",
        hint="Use the training key, so that tokens match the model's earlier runs and alerts",
    )


def _privacy_key_file(section: Any) -> str | None:
    if section is None:
        return None
    if not isinstance(section, Mapping):
        raise InputError(f"Expected `privacy` to be a mapping with `key_file`, but got a {type(section).__name__}")
    unknown = sorted(str(k) for k in section if k not in PRIVACY_KEYS)
    if unknown:
        # Only the names are shown: a misplaced key value must not reach logs.
        raise InputError(
            f"unknown setting(s) {unknown} under `privacy`; only `key_file` is read",
            hint=f"Never put the key itself in a config: write it to a file named by `privacy.key_file` or set {KEY_ENV_VAR}",
        )
    key_file = section.get("key_file")
    return None if key_file in (None, "") else str(key_file)


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


def iter_source_tables(
    src: SourceSpec, *, batch_rows: int | None = None, report: LoadReport | None = None, log_values: bool = False
) -> Iterator[tuple[pa.Table, str, int]]:
    """Yield ``(table, file, first_row)`` pieces of one source with only the mapped columns.

    ``first_row`` is the 0-based position of the piece's first row in ``file``, so errors can
    name the row. Parquet datasets are read file by file; a file of a dataset may have no
    rows, but a single file must have some. CSV rows skipped under ``csv.invalid_rows:
    skip`` are added to ``report`` (read and dropped as ``malformed_csv_row``) when one is
    given, and always logged: their row numbers, and their text only with ``log_values``
    (the text may contain a raw customer id).
    """
    path = Path(src.path)
    if not path.exists():
        raise InputError("file not found", file=src.path, hint="Check the `path` of this source in the data config")
    needed = _needed_columns(src)
    fmt = _format_of(src)
    if fmt == "csv":
        yield from _slices(_read_csv(src, needed, report, log_values), src.path, batch_rows)
        return
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
        if table.num_rows == 0:
            raise InputError("the file has no rows", file=src.path, hint="Point the source at a non-empty log")
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


def _read_csv(src: SourceSpec, needed: list[str], report: LoadReport | None = None, log_values: bool = False) -> pa.Table:
    names = _csv_header(src) if src.csv_header else _configured_names(src)
    _check_columns(names, needed, src.path)
    read_opts = pacsv.ReadOptions(encoding=src.encoding, block_size=1 << 24)
    if not src.csv_header:
        read_opts.column_names = names
    skipped = _SkippedRowCounter()
    handler = skipped.skip if src.csv_invalid_rows == "skip" else None
    parse_opts = pacsv.ParseOptions(delimiter=src.csv_delimiter, invalid_row_handler=handler)
    # Columns are read as bytes: ids keep their leading zeros, errors can show raw values,
    # and the column parsers report the exact row of a value that is not valid UTF-8.
    convert_opts = pacsv.ConvertOptions(
        column_types={c: pa.binary() for c in needed},
        include_columns=needed,
        strings_can_be_null=True,
        null_values=[""],
    )
    try:
        table = pacsv.read_csv(src.path, read_options=read_opts, parse_options=parse_opts, convert_options=convert_opts)
    except UnicodeDecodeError as exc:
        raise _decode_error(src, exc) from None
    except OSError as exc:
        # e.g. a truncated gzip file: "Truncated compressed stream"
        raise InputError(f"cannot read the file: {exc}", file=src.path, hint="Check that the file is complete (re-copy or re-compress it)") from None
    except pa.ArrowInvalid as exc:
        text = str(exc)
        if "Empty CSV file" in text:
            raise InputError("the file is empty", file=src.path, hint="Point the source at a log with a header and rows") from None
        if "CSV parse error" in text:
            raise _parse_error(src, read_opts, parse_opts, convert_opts, text) from None
        raise InputError(f"cannot parse CSV: {text}", file=src.path, hint="Check the delimiter, quoting and header settings") from None
    # NOTE: the table has no gaps where rows were skipped, so errors raised later for a row
    # after a skipped one name a row number that is too small by the rows skipped before it.
    if skipped.count:
        _log_skipped_rows(src, read_opts, parse_opts, convert_opts, skipped.count, log_values)
        if report is not None:
            report.rows_read += skipped.count
            report.drop("malformed_csv_row", skipped.count)
    if table.num_rows == 0:
        if skipped.count:
            raise InputError(f"every row of the file is malformed ({skipped.count} skipped)", file=src.path, hint="Check the delimiter and `csv.names`")
        raise InputError("the file has a header but no rows", file=src.path)
    return table


class _SkippedRowCounter:
    """``invalid_row_handler`` for pyarrow that skips malformed rows and counts them.

    pyarrow calls the handler from its reader threads, so the count is taken under a lock.
    """

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def skip(self, row: Any) -> str:
        with self._lock:
            self.count += 1
        return "skip"


def _configured_names(src: SourceSpec) -> list[str]:
    if not src.csv_names:
        raise InputError("a CSV source without a header needs `csv.names`", file=src.path)
    return [str(name) for name in src.csv_names]


def _csv_header(src: SourceSpec) -> list[str]:
    """Read the column names from the first line, decoded with the source's encoding."""
    first = b""
    with pa.input_stream(src.path, compression="detect") as stream:
        while b"\n" not in first:
            chunk = stream.read(1 << 16)
            if not chunk:
                break
            first += chunk
    line = first.split(b"\n", 1)[0].rstrip(b"\r")
    encoding = "utf-8-sig" if codecs.lookup(src.encoding).name == "utf-8" else src.encoding
    try:
        text = line.decode(encoding)
    except UnicodeDecodeError as exc:
        raise InputError(
            f"the header line is not valid {src.encoding}: {exc.reason} at byte {exc.start}", file=src.path, value=line[:200],
            hint="Set `encoding:` on the source (e.g. latin-1)",
        ) from None
    if not text.strip():
        raise InputError("the file is empty", file=src.path, hint="Point the source at a log with a header and rows")
    return next(csv.reader([text], delimiter=src.csv_delimiter))


def _decode_error(src: SourceSpec, exc: UnicodeDecodeError) -> InputError:
    """Build an InputError that names the line whose bytes the encoding cannot decode."""
    line_number, line = _locate_decode_error(src.path, src.encoding)
    row = None
    if line_number is not None:
        row = line_number - 1 if src.csv_header else line_number
    return InputError(
        f"text is not valid {src.encoding}: {exc.reason}", file=src.path, row=row, value=line,
        hint="Set `encoding:` on the source to the file's encoding (e.g. latin-1 or cp1252)",
    )


def _locate_decode_error(path: str, encoding: str) -> tuple[int | None, bytes | None]:
    """Return the 1-based physical line and its bytes where decoding first fails, streaming the file."""
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    line_number = 1
    with pa.input_stream(path, compression="detect") as stream:
        while chunk := stream.read(1 << 20):
            pending = decoder.getstate()[0]
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                data = pending + chunk
                line_number += data.count(b"\n", 0, exc.start)
                start = data.rfind(b"\n", 0, exc.start) + 1
                end = data.find(b"\n", exc.start)
                return line_number, data[start : end if end >= 0 else len(data)][:200]
            line_number += chunk.count(b"\n")
    return None, None


def _parse_error(src: SourceSpec, read_opts: Any, parse_opts: Any, convert_opts: Any, text: str) -> InputError:
    """Build an InputError that names the first malformed row."""
    invalid = _number_invalid_rows(src, read_opts, parse_opts, convert_opts, limit=1)
    if invalid:
        bad = invalid[0]
        return InputError(
            f"expected {bad.expected_columns} fields but found {bad.actual_columns}", file=src.path, row=_data_row(src, bad), value=bad.text,
            hint="Check the delimiter and the quoting of values that contain it, or set `csv.invalid_rows: skip` on the source "
            "to skip such rows with a logged count",
        )
    return InputError(f"cannot parse CSV: {text}", file=src.path, hint="Check the delimiter, quoting and header settings")


def _log_skipped_rows(src: SourceSpec, read_opts: Any, parse_opts: Any, convert_opts: Any, count: int, log_values: bool) -> None:
    located = _number_invalid_rows(src, read_opts, parse_opts, convert_opts, limit=min(count, _LOGGED_INVALID_ROWS))
    examples = "; ".join(
        f"row {_data_row(src, row)}: expected {row.expected_columns} fields but found {row.actual_columns}"
        + (f" ({row.text[:200]!r})" if log_values else "")
        for row in located
    )
    log.warning(
        "%s: skipped %d malformed row(s) (csv.invalid_rows: skip), counted as malformed_csv_row; first %d: %s",
        src.path, count, len(located), examples or "row numbers not found",
    )


def _number_invalid_rows(src: SourceSpec, read_opts: Any, parse_opts: Any, convert_opts: Any, limit: int) -> list[Any]:
    """Return the first ``limit`` malformed rows, re-reading single-threaded, where pyarrow numbers the rows.

    The read stops at the ``limit``-th malformed row.
    """
    found: list[Any] = []

    def remember(row: Any) -> str:
        if row.number is None:
            return "error"
        found.append(row)
        return "error" if len(found) >= limit else "skip"

    read_opts = pacsv.ReadOptions(
        encoding=read_opts.encoding, block_size=read_opts.block_size, column_names=read_opts.column_names, use_threads=False
    )
    parse_opts = pacsv.ParseOptions(delimiter=parse_opts.delimiter, invalid_row_handler=remember)
    try:
        pacsv.read_csv(src.path, read_options=read_opts, parse_options=parse_opts, convert_options=convert_opts)
    except (pa.ArrowInvalid, UnicodeDecodeError):
        pass
    return found


def _data_row(src: SourceSpec, row: Any) -> int:
    """Return the 1-based data row of a pyarrow ``InvalidRow``, whose ``number`` counts the header line too."""
    return row.number - 1 if src.csv_header else row.number


# --------------------------------------------------------------------------------------
# Turning raw columns into canonical ones
# --------------------------------------------------------------------------------------


def canonicalise(table: pa.Table, src: SourceSpec, spec: LogSpec, report: LoadReport, *, file: str, first_row: int = 0) -> pd.DataFrame:
    """Map one raw table to canonical columns (no deduplication or sorting yet).

    Customer ids are pseudonymised here when ``spec`` carries a key.
    """
    n = table.num_rows
    rows = np.arange(first_row, first_row + n, dtype=np.int64)
    cols = src.columns
    if n == 0:
        return empty_events().assign(**{_ROW: pd.Series([], dtype="int64")})

    def col(role: str) -> pa.ChunkedArray | None:
        name = cols.get(role)
        return table.column(name) if name else None

    customer = parse.customer_ids(col("customer_id"), file, rows, cols["customer_id"], hide_values=spec.pseudonymised)
    if spec.pseudonym_key is not None:
        customer = pseudonymise(customer, spec.pseudonym_key)
    ts = parse.timestamps(col("timestamp"), spec.time_rules, file, rows, cols["timestamp"], report)
    quantity, amount = _quantity_and_amount(col, cols, n, file, rows, report)
    order = parse.strings(col("order_id"), n, file, rows, cols.get("order_id"))
    item = parse.strings(col("item_id"), n, file, rows, cols.get("item_id"))
    category = parse.strings(col("category_id"), n, file, rows, cols.get("category_id"))
    event = _event_types(col("event_type"), cols.get("event_type"), spec, n, file, rows, report)
    event = _mark_returns(event, order, quantity, amount, spec, report, has_quantity=bool(cols.get("quantity")))

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


def _quantity_and_amount(col: Any, cols: Mapping[str, str | None], n: int, file: str, rows: np.ndarray, report: LoadReport) -> tuple[pd.Series, pd.Series]:
    quantity = pd.Series(np.nan, index=range(n))
    if cols.get("quantity"):
        quantity = parse.numbers(col("quantity"), file, rows, cols["quantity"], "quantity")
    if cols.get("amount"):
        amount = parse.numbers(col("amount"), file, rows, cols["amount"], "amount")
    elif cols.get("quantity") and cols.get("unit_price"):
        price = parse.numbers(col("unit_price"), file, rows, cols["unit_price"], "unit price")
        amount = quantity * price
        overflow = np.isinf(amount.to_numpy())
        if overflow.any():
            row, value = parse.first_bad(overflow, price, rows)
            raise InputError(
                "quantity x unit price is too large for a 64-bit float", file=file, row=row, column=cols["unit_price"], value=value
            )
    else:
        amount = pd.Series(0.0, index=range(n))
    missing_amount = amount.isna().to_numpy()
    if missing_amount.any():
        report.change("amount_missing_set_to_zero", int(missing_amount.sum()))
        amount = amount.fillna(0.0)
    return quantity, amount


def _event_types(raw: pa.ChunkedArray | None, column: str | None, spec: LogSpec, n: int, file: str, rows: np.ndarray, report: LoadReport) -> pd.Series:
    """Map raw event types to a categorical of ``EVENT_TYPES``; each distinct raw value is mapped once."""
    if raw is None:
        return pd.Series(pd.Categorical.from_codes(np.full(n, EVENT_TYPES.index(spec.default_event_type)), dtype=EVENT_TYPE_DTYPE))
    shown = parse.as_text(parse.decode_dictionary(raw), file, rows, column)
    mapping = {**{t: t for t in EVENT_TYPES}, **spec.event_type_map}
    distinct_codes, distinct = pd.factorize(shown)  # a missing value gets code -1
    # One more slot at the end, for code -1, maps missing values to no type.
    type_of_distinct = np.append(pd.Index(EVENT_TYPES).get_indexer(pd.Index(distinct).str.strip().map(mapping)), -1)
    codes = type_of_distinct[distinct_codes]
    unknown = codes < 0
    if unknown.any():
        if spec.unknown_event_type == "error":
            row, value = parse.first_bad(unknown, shown, rows)
            message = "event type is missing" if pd.isna(value) or not str(value).strip() else "unknown event type"
            raise InputError(
                f"{message}; mapped types are {sorted(mapping)}", file=file, row=row, column=column, value=value,
                hint="Add it under `event_types.map` in the data config, or set `event_types.unknown: other`",
            )
        report.change("unknown_event_type_mapped_to_other", int(unknown.sum()))
        codes[unknown] = EVENT_TYPES.index("other")
    return pd.Series(pd.Categorical.from_codes(codes, dtype=EVENT_TYPE_DTYPE))


def _mark_returns(
    event: pd.Series, order: pd.Series, quantity: pd.Series, amount: pd.Series, spec: LogSpec, report: LoadReport, *, has_quantity: bool
) -> pd.Series:
    """Apply the return rules, so a purchase never carries a negative amount; count what changed."""
    is_return = np.array(event == "return", dtype=bool)
    was_return = is_return.copy()
    if spec.return_order_prefixes:
        is_return |= order.str.startswith(spec.return_order_prefixes).fillna(False).to_numpy(dtype=bool)
    if spec.negative_quantity_is_return and has_quantity:
        is_return |= (quantity < 0).to_numpy()
    is_return |= (amount < 0).to_numpy() & (event == "purchase").to_numpy()
    report.change("marked_return", int((is_return & ~was_return).sum()))
    # Amounts and quantities are stored as absolute values; a negative sign on any other
    # row is counted, because only returns carry it by convention.
    report.change("negative_amount_made_positive", int(((amount < 0).to_numpy() & ~is_return).sum()))
    report.change("negative_quantity_made_positive", int(((quantity < 0).to_numpy() & ~is_return).sum()))
    return event.mask(is_return, "return")


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
        raise InputError(
            "timestamp is missing", file=file, row=int(frame[_ROW].iloc[i]) + 1, column=src.columns["timestamp"],
            hint="Fill the timestamps, or set `strict: false` to drop these rows with a logged count",
        )
    drop(no_ts, "missing_timestamp")

    if spec.drop_order_prefixes:
        drop(frame["order_id"].str.startswith(spec.drop_order_prefixes).fillna(False).to_numpy(dtype=bool), "order_prefix_excluded")
    if spec.exclude_items:
        drop(frame["item_id"].isin(spec.exclude_items).to_numpy(), "item_excluded")
    if keep.all():
        return frame
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
    # Sorting before dropping duplicates keeps the same rows: identical rows share customer
    # and time, so the stable sort keeps them in their original order.
    events = _sort_by_customer_time(events)
    duplicate = _exact_duplicates(events)
    report.drop("exact_duplicate", int(duplicate.sum()))
    if duplicate.any():
        events = events.loc[~duplicate].reset_index(drop=True)
    events = events.drop(columns=[_ROW])
    events["cancelled_at"] = cancelled_order_times(events)
    return events


def _neighbours(events: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """For each row after the first: is its customer id before / equal to the previous row's?"""
    ids = pa.chunked_array(pa.array(events["customer_id"].array)).combine_chunks()
    this, previous = ids.slice(1), ids.slice(0, len(ids) - 1)
    earlier = pc.less(this, previous).fill_null(True).to_numpy(zero_copy_only=False)
    same = pc.equal(this, previous).fill_null(False).to_numpy(zero_copy_only=False)
    return earlier, same


# Rows of one customer at the same time (the lines of one invoice) are ordered by these
# columns too, so sequences and scores never depend on the order of rows in the file.
_TIE_BREAK = ["event_type", "order_id", "item_id", "amount", "quantity"]


def _sort_by_customer_time(events: pd.DataFrame) -> pd.DataFrame:
    """Sort stably by ``(customer_id, ts)`` and the tie-break columns, missing values last, with a fresh index.

    Rows already in customer and time order, as a log sorted by customer is, are not sorted
    again. Only their runs of rows with equal customer and time, such as the lines of one
    order, are sorted by the tie-break columns.
    """
    events = events.reset_index(drop=True)
    if len(events) < 2:
        return events
    earlier, same = _neighbours(events)
    ts = events["ts"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    tie_break = [c for c in _TIE_BREAK if c in events.columns]
    # A missing time (NaT, the smallest int64) sorts last, so it never counts as in order.
    if earlier.any() or (same & (ts[1:] < ts[:-1])).any() or (ts == np.iinfo(np.int64).min).any():
        order = _lexsort([_sort_key(events[c]) for c in ("customer_id", "ts", *tie_break)])
    else:
        tied = same & (ts[1:] == ts[:-1])
        if not tied.any():
            return events
        in_run = np.zeros(len(events), dtype=bool)
        in_run[1:] |= tied
        in_run[:-1] |= tied
        rows = np.flatnonzero(in_run)
        # A row of a run that is not tied to the row before it starts the next run.
        run = np.cumsum(~np.concatenate([[False], tied])[rows])
        runs = events.iloc[rows]
        order = np.arange(len(events))
        order[rows] = rows[_lexsort([run, *(_sort_key(runs[c]) for c in tie_break)])]
        if np.array_equal(order, np.arange(len(events))):
            return events
        # Rows only move within their run, where customer and time are equal, so those columns stay.
        moved = events.columns.difference(["customer_id", "ts"], sort=False)
        return events.assign(**{c: events[c].array.take(order) for c in moved})
    return events.take(order).reset_index(drop=True)


def _lexsort(keys: list[np.ndarray]) -> np.ndarray:
    """Return the positions that sort stably by ``keys``, the first key most significant."""
    return np.lexsort(keys[::-1])


def _sort_key(values: pd.Series) -> np.ndarray:
    """Return numbers that order like ``values`` in ``sort_values(na_position="last")``.

    Categoricals order by their codes. Columns other than dates and floats are ranked by
    pyarrow, which orders text by Unicode code points as pandas' ``str`` dtype does.
    np.lexsort already puts NaN after every float.
    """
    if isinstance(values.dtype, pd.CategoricalDtype):
        codes = values.cat.codes.to_numpy(dtype=np.int64)
        return np.where(codes < 0, len(values.cat.categories), codes)
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        ns = values.to_numpy(dtype="datetime64[ns]").view(np.int64)
        return np.where(values.isna().to_numpy(), np.iinfo(np.int64).max, ns)
    if pd.api.types.is_float_dtype(values.dtype):
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    arrow = pa.chunked_array(pa.array(values.array)).combine_chunks()
    # Dense ranks put equal values together and missing values after the rest.
    return pc.rank(arrow, sort_keys="ascending", tiebreaker="dense").to_numpy()


def _exact_duplicates(events: pd.DataFrame) -> np.ndarray:
    """Mark rows equal to an earlier row in every canonical column; ``events`` sorted by customer and time.

    Only rows that share customer and time with a neighbour can be duplicates, so the
    full comparison runs on those rows alone.
    """
    duplicate = np.zeros(len(events), dtype=bool)
    if len(events) < 2:
        return duplicate
    _, same = _neighbours(events)
    ts = events["ts"].to_numpy(dtype="datetime64[ns]")
    same_as_previous = same & (ts[1:] == ts[:-1])
    candidate = np.zeros(len(events), dtype=bool)
    candidate[1:] |= same_as_previous
    candidate[:-1] |= same_as_previous
    if candidate.any():
        duplicate[candidate] = events.loc[candidate, list(COLUMNS[:-1])].duplicated(keep="first").to_numpy()
    return duplicate


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
    out.loc[cancelled] = last[fully.to_numpy(dtype=bool)].array
    # Orders with lines dropped above (return before purchase) are never fully matched.
    return out


def load_events(data_cfg: Mapping[str, Any] | LogSpec, *, report: LoadReport | None = None) -> tuple[pd.DataFrame, LoadReport]:
    """Read every source of a data config into one canonical event frame."""
    spec = data_cfg if isinstance(data_cfg, LogSpec) else LogSpec.from_config(data_cfg)
    report = report or LoadReport()
    parts = []
    for src in spec.sources:
        source_rows = 0
        for table, file, first_row in iter_source_tables(src, report=report, log_values=not spec.pseudonymised):
            report.rows_read += table.num_rows
            source_rows += table.num_rows
            if file not in report.files:
                report.files.append(file)
            parts.append(canonicalise(table, src, spec, report, file=file, first_row=first_row))
        if source_rows == 0:
            raise InputError("the source has no rows", file=src.path, hint="Point the source at a non-empty log")
    events = finalise(parts, report)
    report.rows_kept = len(events)
    dropped = {k: v for k, v in report.dropped.items() if v}
    changed = {k: v for k, v in report.changed.items() if v}
    log.info(
        "loaded %d events of %d customers from %d rows (dropped: %s; changed: %s)%s",
        len(events), events["customer_id"].nunique(), report.rows_read,
        ", ".join(f"{k} {v}" for k, v in dropped.items()) or "none",
        ", ".join(f"{k} {v}" for k, v in changed.items()) or "none",
        "; customer ids pseudonymised" if spec.pseudonymised else "",
    )
    return events, report


def read_customer_ids(spec: LogSpec) -> pd.Series:
    """Return the distinct raw customer ids of every source, never pseudonymised.

    Reads only the customer id column and parses it as :func:`canonicalise` does, so the
    result contains every id that a token made from this log can stand for.
    """
    parts = []
    for src in spec.sources:
        id_only = dataclasses.replace(src, columns={"customer_id": src.columns["customer_id"]})
        for table, file, first_row in iter_source_tables(id_only):
            rows = np.arange(first_row, first_row + table.num_rows, dtype=np.int64)
            ids = parse.customer_ids(table.column(src.columns["customer_id"]), file, rows, src.columns["customer_id"], hide_values=True)
            parts.append(ids.dropna().drop_duplicates())
    if not parts:
        return pd.Series([], dtype="str", name="customer_id")
    return pd.concat(parts, ignore_index=True).drop_duplicates().reset_index(drop=True).rename("customer_id")
