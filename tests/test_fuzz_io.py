"""Property-based tests of the loader on malformed and edge-case logs, as CSV and Parquet.

Every generated log either loads into exactly the events that a plain-Python oracle in
this file computes (UTC times from ``zoneinfo``, drops by reason, duplicates, returns), or
fails with InputError naming the file, a row that really holds a bad value, its column
and the value as written. Nothing else is accepted: no other exception type, no NaN in
the canonical columns and no row that is neither kept nor counted as dropped.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from seqchurn.data.io import load_events
from seqchurn.data.schema import COLUMNS, InputError

ZONE = "Europe/London"
LONDON = ZoneInfo(ZONE)
UTC = dt.timezone.utc
MIN_DATE, MAX_DATE = "1995-01-01", "2031-01-01"
LOWER = dt.datetime(1995, 1, 1, tzinfo=UTC)
UPPER = dt.datetime(2031, 1, 1, tzinfo=UTC)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
TYPE_MAP = {"buy": "purchase", "pv": "view", "ret": "return"}
CANONICAL_TYPES = ("purchase", "return", "view", "cart", "favourite", "other")
# SEQCHURN_FUZZ_EXAMPLES raises the example count for a longer local search.
FUZZ = settings(max_examples=int(os.environ.get("SEQCHURN_FUZZ_EXAMPLES", 60)), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

OK, MISSING, BAD = "ok", "missing", "bad"


@dataclass
class Cell:
    """One value as written to the file and what the loader must make of it."""

    written: object  # text for CSV and text columns, a typed value for typed Parquet columns
    status: str  # OK, MISSING or BAD
    expected: object = None  # the parsed value when status is OK


@dataclass
class Case:
    fmt: str  # csv | parquet
    ts_mode: str  # text | epoch_s | epoch_ms | typed_utc | typed_local
    ambiguous: str
    nonexistent: str
    unknown_types: str  # error | other
    rows: list[dict[str, Cell]] = field(default_factory=list)


# --------------------------------------------------------------------------------------
# The oracle: plain Python, independent of pandas
# --------------------------------------------------------------------------------------


def _exists(naive: dt.datetime) -> bool:
    aware = naive.replace(tzinfo=LONDON)
    return aware.astimezone(UTC).astimezone(LONDON).replace(tzinfo=None) == naive


def local_to_utc(naive: dt.datetime, ambiguous: str, nonexistent: str) -> tuple[str, dt.datetime | None, bool]:
    """Return (status, UTC time, shifted) for a London wall-clock time under the DST rules."""
    first = naive.replace(tzinfo=LONDON, fold=0).astimezone(UTC)
    second = naive.replace(tzinfo=LONDON, fold=1).astimezone(UTC)
    if first == second:
        return OK, first, False
    if _exists(naive):  # the fall-back hour: the wall-clock time occurs twice
        if ambiguous == "raise":
            return BAD, None, False
        return OK, (min(first, second) if ambiguous == "earliest" else max(first, second)), False
    if nonexistent == "raise":
        return BAD, None, False
    # The spring-forward gap: move to the first wall-clock time after the gap.
    moved = naive.replace(second=0, microsecond=0)
    while not _exists(moved):
        moved += dt.timedelta(minutes=1)
    return OK, moved.replace(tzinfo=LONDON).astimezone(UTC), True


def in_range(instant: dt.datetime) -> bool:
    return LOWER <= instant <= UPPER


# --------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------

IDS = ["007", "7", "0", " 7", "a", "Zoë", "c-1", "123456789012345678901234567890"]


@st.composite
def customer_cells(draw) -> Cell:
    choice = draw(st.sampled_from([*IDS, "", "   ", None]))
    if choice is None or not choice.strip():
        return Cell(choice, MISSING)
    return Cell(choice, OK, choice)


def _dst_edge_times() -> st.SearchStrategy[dt.datetime]:
    """Wall-clock times on the days London changes clocks, within the hours around the change."""

    @st.composite
    def edge(draw) -> dt.datetime:
        year = draw(st.integers(1996, 2029))
        month = draw(st.sampled_from([3, 10]))
        last = dt.date(year, month, 31)
        sunday = last - dt.timedelta(days=(last.weekday() + 1) % 7)
        minute = draw(st.integers(0, 179))
        second = draw(st.integers(0, 59))
        return dt.datetime.combine(sunday, dt.time(0)) + dt.timedelta(minutes=minute, seconds=second)

    return edge()


NAIVE_TIMES = st.one_of(
    st.datetimes(min_value=dt.datetime(1996, 1, 1), max_value=dt.datetime(2029, 12, 31)),
    _dst_edge_times(),
)
INSTANTS = st.datetimes(min_value=dt.datetime(1996, 1, 1), max_value=dt.datetime(2029, 12, 31), timezones=st.just(UTC))
FAR_INSTANTS = st.sampled_from(
    [dt.datetime(1900, 1, 1, tzinfo=UTC), dt.datetime(1994, 12, 31, tzinfo=UTC), dt.datetime(2100, 1, 1, tzinfo=UTC)]
)
BAD_TIME_TEXT = ["not-a-date", "2021-13-01", "2021-02-30", "2021-01-01T25:00:00", "yesterday", "NaT", "nan", "2021-01-01T10:00:00+25:00"]
OFFSETS = [dt.timedelta(hours=h, minutes=m) for h, m in ((0, 0), (1, 0), (-8, 0), (5, 30), (14, 0), (0, -30), (-3, -30))]


def _offset_text(offset: dt.timedelta, style: str) -> str:
    sign = "-" if offset < dt.timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    hours, rest = divmod(minutes, 60)
    if style == "colon":
        return f"{sign}{hours:02d}:{rest:02d}"
    if style == "compact":
        return f"{sign}{hours:02d}{rest:02d}"
    return f"{sign}{hours:02d}"  # hours only; used for whole-hour offsets


def _iso(naive: dt.datetime, sep: str) -> str:
    text = naive.strftime(f"%Y-%m-%d{sep}%H:%M:%S")
    return text + (f".{naive.microsecond:06d}" if naive.microsecond else "")


@st.composite
def text_time_cells(draw, ambiguous: str, nonexistent: str, allow_bad: bool) -> tuple[Cell, bool]:
    """A time as ISO 8601 text in one of several forms; returns the cell and whether it was DST-shifted."""
    kind = draw(st.sampled_from(["z", "offset", "naive", "naive", "date", "missing"] + (["far", "far_text", "bad"] if allow_bad else [])))
    sep = draw(st.sampled_from(["T", " "]))
    if kind == "missing":
        return Cell(draw(st.sampled_from([None, "", "  "])), MISSING), False
    if kind == "bad":
        return Cell(draw(st.sampled_from(BAD_TIME_TEXT)), BAD), False
    if kind == "far_text":
        return Cell(draw(st.sampled_from(["1066-10-14T09:00:00Z", "2300-01-01", "9999-12-31T23:59:59+00:00", "1899-12-31 23:00:00"])), BAD), False
    if kind in ("z", "far"):
        instant = draw(INSTANTS if kind == "z" else FAR_INSTANTS)
        text = _iso(instant.replace(tzinfo=None), sep) + draw(st.sampled_from(["Z", "+00:00"]))
        return Cell(text, OK if in_range(instant) else BAD, instant), False
    if kind == "offset":
        instant = draw(INSTANTS)
        offset = draw(st.sampled_from(OFFSETS))
        style = draw(st.sampled_from(["colon", "compact"] + (["hours"] if offset.total_seconds() % 3600 == 0 else [])))
        text = _iso((instant + offset).replace(tzinfo=None), sep) + _offset_text(offset, style)
        return Cell(text, OK, instant), False
    if kind == "date":
        day = draw(st.dates(min_value=dt.date(1996, 1, 1), max_value=dt.date(2029, 12, 31)))
        naive = dt.datetime.combine(day, dt.time(0))
        status, utc, shifted = local_to_utc(naive, ambiguous, nonexistent)
        return Cell(day.isoformat(), status, utc), shifted
    naive = draw(NAIVE_TIMES)
    status, utc, shifted = local_to_utc(naive, ambiguous, nonexistent)
    if status == BAD and not allow_bad:
        return Cell(_iso(naive, sep) + "Z", OK, naive.replace(tzinfo=UTC)), False
    return Cell(_iso(naive, sep), status, utc), shifted and status == OK


@st.composite
def epoch_cells(draw, unit: str, typed: bool, allow_bad: bool) -> Cell:
    scale = 1 if unit == "s" else 1000
    kind = draw(st.sampled_from(["ok", "ok", "missing"] + ([] if typed else ["fraction"]) + (["far"] if allow_bad else []) + (["bad"] if allow_bad and not typed else [])))
    if kind == "missing":
        return Cell(None if typed else draw(st.sampled_from([None, "", " "])), MISSING)
    if kind == "bad":
        return Cell(draw(st.sampled_from(["12a", "1.2.3", "2021-01-01", "one"])), BAD)
    if kind == "far":
        value = draw(st.sampled_from([-1, 0, 10**15, 10**18, 9 * 10**18]))
        return Cell(value if typed else str(value), BAD)
    instant = draw(INSTANTS).replace(microsecond=0)
    whole = int(instant.timestamp()) * scale + (draw(st.integers(0, 999)) if unit == "ms" else 0)
    expected = EPOCH + (dt.timedelta(seconds=whole) if unit == "s" else dt.timedelta(milliseconds=whole))
    if kind == "fraction":  # "1511544070.5" seconds: half a second later
        expected = expected + dt.timedelta(milliseconds=500 if unit == "s" else 0)
        text = f"{whole}.5" if unit == "s" else f"{whole}.0"
        return Cell(text, OK, expected)
    return Cell(whole if typed else str(whole), OK, expected)


@st.composite
def amount_cells(draw, typed: bool, allow_bad: bool) -> Cell:
    kind = draw(st.sampled_from(["number", "number", "huge", "missing"] + (["bad", "overflow"] if allow_bad else [])))
    if kind == "missing":
        return Cell(None if typed else draw(st.sampled_from([None, "", " "])), MISSING)
    if kind == "bad":
        if typed:
            return Cell(math.inf, BAD)
        return Cell(draw(st.sampled_from(["abc", "1,5", "€5", "1 000", "inf", "nan", "--1"])), BAD)
    if kind == "overflow":
        return Cell(-math.inf if typed else "1e400", BAD)
    value = draw(st.sampled_from([1e300, -1e300, 1.7976931348623157e308])) if kind == "huge" else draw(st.floats(-1e6, 1e6, allow_nan=False))
    return Cell(value if typed else repr(value), OK, value)


@st.composite
def event_type_cells(draw, unknown: str, allow_bad: bool) -> Cell:
    unknown_names = ["teleport", "", None] if allow_bad or unknown == "other" else []
    choice = draw(st.sampled_from([*TYPE_MAP, *CANONICAL_TYPES, " buy ", *unknown_names]))
    if choice is None or not str(choice).strip() or choice == "teleport":
        return Cell(choice, OK, "other") if unknown == "other" else Cell(choice, BAD)
    name = choice.strip()
    return Cell(choice, OK, TYPE_MAP.get(name, name))


@st.composite
def cases(draw) -> Case:
    fmt = draw(st.sampled_from(["csv", "parquet"]))
    modes = ["text", "epoch_s", "epoch_ms"] + (["typed_utc", "typed_local"] if fmt == "parquet" else [])
    case = Case(
        fmt=fmt,
        ts_mode=draw(st.sampled_from(modes)),
        ambiguous=draw(st.sampled_from(["raise", "earliest", "latest"])),
        nonexistent=draw(st.sampled_from(["shift_forward", "raise"])),
        unknown_types=draw(st.sampled_from(["error", "other"])),
    )
    typed_amounts = fmt == "parquet" and draw(st.booleans())
    # Half of the logs hold only valid values, so both outcomes are well covered.
    allow_bad = draw(st.booleans())
    n = draw(st.integers(1, 25))
    for _ in range(n):
        row = {
            "cid": draw(customer_cells()),
            "amt": draw(amount_cells(typed_amounts, allow_bad)),
            "type": draw(event_type_cells(case.unknown_types, allow_bad)),
        }
        shifted = False
        if case.ts_mode == "text":
            row["ts"], shifted = draw(text_time_cells(case.ambiguous, case.nonexistent, allow_bad))
        elif case.ts_mode in ("epoch_s", "epoch_ms"):
            row["ts"] = draw(epoch_cells("s" if case.ts_mode == "epoch_s" else "ms", typed=fmt == "parquet", allow_bad=allow_bad))
        elif case.ts_mode == "typed_utc":
            instant = draw(st.one_of(INSTANTS, FAR_INSTANTS) if allow_bad else INSTANTS)
            row["ts"] = Cell(instant, OK if in_range(instant) else BAD, instant)
        else:
            naive = draw(NAIVE_TIMES)
            status, utc, shifted = local_to_utc(naive, case.ambiguous, case.nonexistent)
            if status == BAD and not allow_bad:
                naive = naive + dt.timedelta(hours=3)  # outside the changeover hours
                status, utc, shifted = local_to_utc(naive, case.ambiguous, case.nonexistent)
            row["ts"] = Cell(naive, status, utc)
        row["shifted"] = Cell(None, OK, shifted and row["ts"].status == OK)
        case.rows.append(row)
    # Exact copies of some rows, then everything out of order.
    copies = draw(st.lists(st.integers(0, n - 1), max_size=4))
    case.rows.extend(dict(case.rows[i]) for i in copies)
    case.rows = draw(st.permutations(case.rows))
    return case


# --------------------------------------------------------------------------------------
# Writing and checking
# --------------------------------------------------------------------------------------


def write_case(case: Case, directory: Path) -> tuple[Path, dict]:
    columns = {"customer_id": "cid", "timestamp": "ts", "event_type": "type", "amount": "amt"}
    if case.fmt == "csv":
        path = directory / "log.csv"
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["cid", "ts", "type", "amt"])
        for row in case.rows:
            writer.writerow(["" if row[c].written is None else row[c].written for c in ("cid", "ts", "type", "amt")])
        path.write_bytes(buffer.getvalue().encode("utf-8"))
    else:
        path = directory / "log.parquet"
        ts_values = [row["ts"].written for row in case.rows]
        if case.ts_mode == "typed_utc":
            ts_array = pa.array(ts_values, type=pa.timestamp("us", tz="UTC"))
        elif case.ts_mode == "typed_local":
            ts_array = pa.array(ts_values, type=pa.timestamp("us"))
        elif case.ts_mode.startswith("epoch"):
            ts_array = pa.array(ts_values, type=pa.int64())
        else:
            ts_array = pa.array(ts_values, type=pa.string())
        amounts = [row["amt"].written for row in case.rows]
        amount_type = pa.float64() if any(isinstance(a, float) for a in amounts) else pa.string()
        table = pa.table(
            {
                "cid": pa.array([row["cid"].written for row in case.rows], type=pa.string()),
                "ts": ts_array,
                "type": pa.array([row["type"].written for row in case.rows], type=pa.string()),
                "amt": pa.array(amounts, type=amount_type),
            }
        )
        pq.write_table(table, path)
    unit = {"epoch_s": "s", "epoch_ms": "ms"}.get(case.ts_mode)
    config = {
        "sources": [{"path": str(path), "columns": columns}],
        "timestamp": {"unit": unit, "timezone": ZONE, "ambiguous": case.ambiguous, "nonexistent": case.nonexistent, "min_date": MIN_DATE, "max_date": MAX_DATE},
        "event_types": {"map": TYPE_MAP, "unknown": case.unknown_types},
    }
    return path, config


def expected_rows(case: Case) -> tuple[Counter, dict[str, int], int]:
    """Return the kept canonical rows, the drops by reason and the DST-shifted count."""
    dropped = {"missing_customer_id": 0, "missing_timestamp": 0, "exact_duplicate": 0}
    kept: Counter = Counter()
    shifted = 0
    for row in case.rows:
        shifted += int(bool(row["shifted"].expected))
        if row["cid"].status == MISSING:
            dropped["missing_customer_id"] += 1
            continue
        if row["ts"].status == MISSING:
            dropped["missing_timestamp"] += 1
            continue
        amount = row["amt"].expected if row["amt"].status == OK else 0.0
        event = row["type"].expected
        if event == "purchase" and amount < 0:
            event = "return"
        key = (row["cid"].expected, pd.Timestamp(row["ts"].expected).value, event, abs(amount))
        if key in kept:
            dropped["exact_duplicate"] += 1
        kept[key] += 1
    return Counter({key: 1 for key in kept}), dropped, shifted


def bad_cells(case: Case) -> dict[str, dict[int, object]]:
    """Map each column to {1-based row: written value} of its invalid values."""
    bad: dict[str, dict[int, object]] = {}
    for row_number, row in enumerate(case.rows, start=1):
        for column in ("cid", "ts", "type", "amt"):
            if row[column].status == BAD:
                bad.setdefault(column, {})[row_number] = row[column].written
    return bad


def check_error(err: InputError, path: Path, bad: dict[str, dict[int, object]]) -> None:
    message = str(err)
    assert str(path) in message
    assert err.column in bad, f"{message} names column {err.column!r}, but the bad values are in {sorted(bad)}"
    assert err.row in bad[err.column], f"{message} names row {err.row}, but the bad rows are {sorted(bad[err.column])}"
    assert f"row {err.row}" in message
    written = bad[err.column][err.row]
    if written is None or (isinstance(written, str) and not written.strip()):
        # An empty CSV field is read as a missing value; blank text may be shown as it is.
        assert err.value is None or not str(err.value).strip()
    elif isinstance(written, float) and math.isinf(written):
        assert math.isinf(err.value)
    elif isinstance(written, dt.datetime):
        assert str(err.value).startswith(written.strftime("%Y-%m-%d"))
    else:
        assert err.value == written


def check_events(events: pd.DataFrame, report, case: Case) -> None:
    kept, dropped, shifted = expected_rows(case)

    assert report.rows_read == len(case.rows)
    assert report.rows_read == report.rows_kept + sum(report.dropped.values())
    assert len(events) == report.rows_kept
    for reason, count in dropped.items():
        assert report.dropped.get(reason, 0) == count, reason
    assert report.changed.get("nonexistent_local_time_shifted_forward", 0) == shifted

    assert list(events.columns) == list(COLUMNS)
    assert str(events["ts"].dtype) == "datetime64[ns, UTC]"
    for column in ("customer_id", "ts", "event_type", "amount"):
        assert not events[column].isna().any(), column
    assert (events["amount"] >= 0).all()
    order = list(zip(events["customer_id"], events["ts"]))
    assert order == sorted(order)

    got = Counter(zip(events["customer_id"], events["ts"].astype("int64"), events["event_type"].astype(str), events["amount"]))
    assert got == kept


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------


@FUZZ
@given(case=cases())
def test_generated_logs_load_or_fail_cleanly(case, tmp_path_factory):
    directory = tmp_path_factory.mktemp("fuzz")
    path, config = write_case(case, directory)
    bad = bad_cells(case)
    try:
        events, report = load_events(config)
    except InputError as err:
        event(f"InputError in column {err.column}")
        assert bad, f"no bad value was written, but loading raised: {err}"
        check_error(err, path, bad)
        return
    event(f"loaded ({case.fmt}, {case.ts_mode})")
    assert not bad, f"bad values {bad} were loaded without an error"
    check_events(events, report, case)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ids=st.lists(st.sampled_from(IDS), min_size=1, max_size=10),
    bad_row=st.integers(0, 9),
    bad_bytes=st.sampled_from([b"\xff", b"\xe9", b"\xc3(", b"\x80abc"]),
)
def test_non_utf8_bytes_name_their_row(ids, bad_row, bad_bytes, tmp_path_factory):
    assume(bad_row < len(ids))
    directory = tmp_path_factory.mktemp("encoding")
    lines = [b"cid,ts,type,amt"]
    for i, customer in enumerate(ids):
        raw_id = customer.encode("utf-8") + (bad_bytes if i == bad_row else b"")
        lines.append(b'"' + raw_id + b'",2021-01-01T10:00:00Z,buy,1')
    path = directory / "log.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    config = {"sources": [{"path": str(path), "columns": {"customer_id": "cid", "timestamp": "ts", "event_type": "type", "amount": "amt"}}], "event_types": {"map": TYPE_MAP}}

    with pytest.raises(InputError) as err:
        load_events(config)

    assert err.value.row == bad_row + 1
    assert err.value.column == "cid"
    assert str(path) in str(err.value)

    config["sources"][0]["encoding"] = "latin-1"
    events, report = load_events(config)
    expected = (ids[bad_row].encode("utf-8") + bad_bytes).decode("latin-1")
    assert expected in set(events["customer_id"])
    assert report.rows_read == len(ids)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["00042", "42", "0042 ", "A1"]),
            st.sampled_from(["123", "C123", "A9", "0123"]),
            st.sampled_from(["85123A", "POST", "0001", "22423"]),
            st.integers(-5, 5),
            st.sampled_from(["2.55", "0", "1e6", "-1.5", ""]),
        ),
        min_size=1,
        max_size=20,
    ),
    fmt=st.sampled_from(["csv", "parquet"]),
)
def test_retail_lines_match_oracle(rows, fmt, tmp_path_factory):
    """Quantity x unit price, cancellation prefixes, excluded items and ids with leading zeros."""
    directory = tmp_path_factory.mktemp("retail")
    frame = pd.DataFrame(rows, columns=["cid", "inv", "sku", "qty", "price"]).astype(str)
    frame.insert(1, "ts", [f"2021-01-{1 + i % 28:02d}T10:00:00Z" for i in range(len(frame))])
    if fmt == "csv":
        path = directory / "log.csv"
        frame.to_csv(path, index=False)
    else:
        path = directory / "log.parquet"
        frame.replace({"": None}).to_parquet(path, index=False)
    config = {
        "sources": [{"path": str(path), "columns": {"customer_id": "cid", "timestamp": "ts", "quantity": "qty", "unit_price": "price", "item_id": "sku", "order_id": "inv"}}],
        "returns": {"order_prefixes": ["C"], "negative_quantity": True},
        "drop_order_prefixes": ["A"],
        "exclude_items": ["POST"],
    }

    events, report = load_events(config)

    expected: Counter = Counter()
    dropped = Counter()
    missing_amount = 0
    for i, (cid, inv, sku, qty, price) in enumerate(rows):
        missing_amount += int(not price)
        if inv.startswith("A"):
            dropped["order_prefix_excluded"] += 1
            continue
        if sku == "POST":
            dropped["item_excluded"] += 1
            continue
        amount = qty * float(price) if price else 0.0
        is_return = inv.startswith("C") or qty < 0 or amount < 0
        ts = pd.Timestamp(frame["ts"].iloc[i]).value
        key = (cid, ts, "return" if is_return else "purchase", abs(amount), float(abs(qty)), sku, inv)
        if key in expected:
            dropped["exact_duplicate"] += 1
        expected[key] = 1
    got = Counter(
        zip(
            events["customer_id"], events["ts"].astype("int64"), events["event_type"].astype(str), events["amount"],
            events["quantity"], events["item_id"], events["order_id"],
        )
    )
    assert got == expected
    assert report.rows_read == len(rows) == report.rows_kept + sum(report.dropped.values())
    for reason, count in dropped.items():
        assert report.dropped[reason] == count, reason
    assert report.changed.get("amount_missing_set_to_zero", 0) == missing_amount


@pytest.mark.parametrize(
    "content,needle",
    [
        (b"", "empty"),
        (b"   \n", "empty"),
        (b"cid,ts,type,amt\n", "no rows"),
        (b"cid,ts,type,amt\na,2021-01-01T10:00:00Z,buy,1\nb,2021-01-01T10:00:00Z,buy\n", "row 2"),
        (b"cid,ts,type,amt\na,2021-01-01T10:00:00Z,buy,1,9\n", "row 1"),
    ],
)
def test_broken_csv_files(tmp_path, content, needle):
    path = tmp_path / "log.csv"
    path.write_bytes(content)
    config = {"sources": [{"path": str(path), "columns": {"customer_id": "cid", "timestamp": "ts", "event_type": "type", "amount": "amt"}}], "event_types": {"map": TYPE_MAP}}

    with pytest.raises(InputError) as err:
        load_events(config)

    assert needle in str(err.value)
    assert str(path) in str(err.value)


def test_empty_parquet_file(tmp_path):
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"cid": pa.array([], pa.string()), "ts": pa.array([], pa.string())}), path)

    with pytest.raises(InputError, match="no rows"):
        load_events({"sources": [{"path": str(path), "columns": {"customer_id": "cid", "timestamp": "ts"}}]})


def test_cp1252_undefined_byte_names_row(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(b"cid,ts\na,2021-01-01T10:00:00Z\nb\x81,2021-01-01T10:00:00Z\n")
    config = {"sources": [{"path": str(path), "encoding": "cp1252", "columns": {"customer_id": "cid", "timestamp": "ts"}}]}

    with pytest.raises(InputError) as err:
        load_events(config)

    assert err.value.row == 2
    assert "cp1252" in str(err.value)


@pytest.mark.parametrize(
    "arrow_type,values,needle",
    [
        (pa.timestamp("s"), [dt.datetime(2021, 1, 1), dt.datetime(3000, 1, 1)], "outside the plausible range"),
        (pa.date32(), [dt.date(2021, 1, 1), dt.date(2500, 1, 1)], "outside the plausible range"),
        (pa.float64(), [1.6e9, 1e30], "contains numbers but `timestamp.unit` is not set"),
        (pa.time64("us"), [dt.time(1), dt.time(2)], "expected date-times"),
    ],
)
def test_typed_parquet_timestamps(tmp_path, arrow_type, values, needle):
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"cid": ["a", "b"], "ts": pa.array(values, type=arrow_type)}), path)

    with pytest.raises(InputError) as err:
        load_events({"sources": [{"path": str(path), "columns": {"customer_id": "cid", "timestamp": "ts"}}]})

    assert needle in str(err.value)


def test_epoch_beyond_datetime_range_is_an_error(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("cid,ts\na,1e30\n")

    with pytest.raises(InputError, match="row 1.*outside the plausible range"):
        load_events({"sources": [{"path": str(path), "columns": {"customer_id": "cid", "timestamp": "ts"}}], "timestamp": {"unit": "s"}})


def test_date_only_text_is_local_midnight(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("cid,ts\na,2021-06-15\n")

    events, _ = load_events({"sources": [{"path": str(path), "columns": {"customer_id": "cid", "timestamp": "ts"}}], "timestamp": {"timezone": ZONE}})

    # Midnight in London in June is 23:00 UTC the day before (BST, UTC+1).
    assert events["ts"].iloc[0] == pd.Timestamp("2021-06-14T23:00:00", tz="UTC")


def test_unknown_timezone_is_an_input_error(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("cid,ts\na,2021-06-15\n")

    with pytest.raises(InputError, match="Mars/Olympus"):
        load_events({"sources": [{"path": str(path), "columns": {"customer_id": "cid", "timestamp": "ts"}}], "timestamp": {"timezone": "Mars/Olympus"}})


def test_oracle_dst_rules():
    gap = dt.datetime(2021, 3, 28, 1, 30)
    fold = dt.datetime(2021, 10, 31, 1, 30)

    assert local_to_utc(gap, "raise", "shift_forward") == (OK, dt.datetime(2021, 3, 28, 1, 0, tzinfo=UTC), True)
    assert local_to_utc(gap, "raise", "raise")[0] == BAD
    assert local_to_utc(fold, "raise", "raise")[0] == BAD
    assert local_to_utc(fold, "earliest", "raise")[1] == dt.datetime(2021, 10, 31, 0, 30, tzinfo=UTC)
    assert local_to_utc(fold, "latest", "raise")[1] == dt.datetime(2021, 10, 31, 1, 30, tzinfo=UTC)
