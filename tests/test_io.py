"""Loading event logs: formats, ids, timestamps, returns, and errors that name the problem."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqchurn.data.io import load_events
from seqchurn.data.labels import ChurnDefinition, make_snapshot
from seqchurn.data.schema import COLUMNS, InputError

COLS = {"customer_id": "cid", "timestamp": "ts", "event_type": "type", "amount": "amt"}


def cfg(path: Path, **extra) -> dict:
    source = {"path": str(path), "columns": extra.pop("columns", COLS)}
    source.update(extra.pop("source", {}))
    base = {"sources": [source], "event_types": {"map": {"buy": "purchase", "pv": "view"}}}
    base.update(extra)
    return base


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_ids_stay_strings(tmp_path):
    p = write_csv(tmp_path / "log.csv", "cid,ts,type,amt\n00123,2021-01-01T10:00:00Z,buy,5\n123,2021-01-02T10:00:00Z,buy,7\n")
    events, _ = load_events(cfg(p))
    assert list(COLUMNS) == list(events.columns)
    assert sorted(events["customer_id"]) == ["00123", "123"]
    assert events["customer_id"].nunique() == 2


def test_parquet_float_ids_lose_the_dot_zero(tmp_path):
    p = tmp_path / "log.parquet"
    pd.DataFrame({"cid": [17850.0, np.nan, 12.0], "ts": pd.to_datetime(["2021-01-01", "2021-01-02", "2021-01-03"]), "type": ["buy"] * 3, "amt": [1.0, 2.0, 3.0]}).to_parquet(p)
    events, report = load_events(cfg(p))
    assert sorted(events["customer_id"]) == ["12", "17850"]
    assert report.dropped["missing_customer_id"] == 1


def test_gzip_csv_and_partitioned_parquet(tmp_path):
    text = "cid,ts,type,amt\na,2021-01-01T10:00:00Z,buy,5\nb,2021-01-02T10:00:00Z,pv,0\n"
    gz = tmp_path / "log.csv.gz"
    with gzip.open(gz, "wt") as f:
        f.write(text)
    events_gz, _ = load_events(cfg(gz))
    ds = tmp_path / "ds"
    for bucket, cid in ((0, "a"), (1, "b")):
        (ds / f"bucket={bucket}").mkdir(parents=True)
        pq.write_table(pa.table({"cid": [cid], "ts": ["2021-01-01T10:00:00Z"], "type": ["buy"], "amt": [1.0]}), ds / f"bucket={bucket}" / "part-0.parquet")
    events_ds, report = load_events(cfg(ds))
    assert len(events_gz) == 2
    assert sorted(events_ds["customer_id"]) == ["a", "b"]
    assert len(report.files) == 2


def test_timestamps_offsets_dates_and_zones(tmp_path):
    p = write_csv(
        tmp_path / "log.csv",
        "cid,ts,type,amt\n"
        "a,2021-06-01T12:00:00+02:00,buy,1\n"  # offset
        "a,2021-06-01T12:00:00,buy,1\n"  # naive: Europe/London (BST, UTC+1)
        "a,2021-01-15,buy,1\n",  # date: London midnight in winter is UTC midnight
    )
    events, _ = load_events(cfg(p, timestamp={"timezone": "Europe/London"}))
    got = sorted(events["ts"].astype(str))
    assert got == ["2021-01-15 00:00:00+00:00", "2021-06-01 10:00:00+00:00", "2021-06-01 11:00:00+00:00"]


@pytest.mark.parametrize("unit,value,expected", [("s", 1511544070, "2017-11-24 17:21:10"), ("ms", 1511544070123, "2017-11-24 17:21:10.123")])
def test_epoch_units(tmp_path, unit, value, expected):
    p = write_csv(tmp_path / "log.csv", f"cid,ts,type,amt\na,{value},buy,1\n")
    events, _ = load_events(cfg(p, timestamp={"unit": unit}))
    assert events["ts"].iloc[0] == pd.Timestamp(expected, tz="UTC")


def test_wrong_epoch_unit_names_row_value_and_unit(tmp_path):
    p = write_csv(tmp_path / "log.csv", "cid,ts,type,amt\na,1511544070,buy,1\nb,1511544070,buy,1\n")
    with pytest.raises(InputError) as err:
        load_events(cfg(p, timestamp={"unit": "ms"}))  # seconds read as ms -> 1970
    msg = str(err.value)
    assert "row 1" in msg
    assert "1511544070" in msg
    assert "ms" in msg
    assert str(p) in msg


@pytest.mark.parametrize(
    "body,needle",
    [
        ("cid,ts,type,amt\na,not-a-date,buy,1\n", "cannot parse timestamp"),
        ("cid,ts,type,amt\na,2021-01-01,buy,abc\n", "amount is not a number"),
        ("cid,ts,type,amt\na,2021-01-01,teleport,1\n", "unknown event type"),
    ],
)
def test_bad_values_name_file_row_column_value(tmp_path, body, needle):
    p = write_csv(tmp_path / "log.csv", body)
    with pytest.raises(InputError) as err:
        load_events(cfg(p))
    msg = str(err.value)
    assert needle in msg
    assert "row 1" in msg
    assert str(p) in msg
    assert "column" in msg


def test_missing_column_lists_available(tmp_path):
    p = write_csv(tmp_path / "log.csv", "cid,when,type,amt\na,2021-01-01,buy,1\n")
    with pytest.raises(InputError, match=r"missing column.*'ts'.*\['cid', 'when', 'type', 'amt'\]"):
        load_events(cfg(p))


def test_empty_files(tmp_path):
    empty = write_csv(tmp_path / "empty.csv", "")
    header_only = write_csv(tmp_path / "header.csv", "cid,ts,type,amt\n")
    with pytest.raises(InputError, match="empty"):
        load_events(cfg(empty))
    with pytest.raises(InputError, match="no rows"):
        load_events(cfg(header_only))


def test_non_utf8_text_is_reported(tmp_path):
    p = tmp_path / "log.csv"
    p.write_bytes(b"cid,ts,type,amt\n\xff\xfeab,2021-01-01,buy,1\n")
    with pytest.raises(InputError, match="encoding"):
        load_events(cfg(p))
    events, _ = load_events(cfg(p, source={"encoding": "latin-1"}))
    assert events["customer_id"].iloc[0] == "ÿþab"


def test_missing_ids_counted_or_strict_error(tmp_path):
    p = write_csv(tmp_path / "log.csv", "cid,ts,type,amt\na,2021-01-01,buy,1\n,2021-01-02,buy,1\n   ,2021-01-03,buy,1\n")
    events, report = load_events(cfg(p))
    assert len(events) == 1
    assert report.dropped["missing_customer_id"] == 2
    with pytest.raises(InputError, match="row 2.*no customer id|2 rows have no customer id"):
        load_events(cfg(p, strict=True))


def test_exact_duplicates_removed_and_counted(tmp_path):
    p = write_csv(tmp_path / "log.csv", "cid,ts,type,amt\na,2021-01-01,buy,1\na,2021-01-01,buy,1\na,2021-01-01,buy,2\n")
    events, report = load_events(cfg(p))
    assert len(events) == 2
    assert report.dropped["exact_duplicate"] == 1


def retail_cfg(path: Path) -> dict:
    return {
        "sources": [{"path": str(path), "columns": {"customer_id": "cid", "timestamp": "ts", "quantity": "qty", "unit_price": "price", "item_id": "sku", "order_id": "inv"}}],
        "returns": {"order_prefixes": ["C"]},
    }


def test_cancellations_become_returns_and_void_the_order(tmp_path):
    p = write_csv(
        tmp_path / "log.csv",
        "cid,ts,qty,price,sku,inv\n"
        "a,2021-01-10T10:00:00,2,3.5,X,100\n"  # order 100, two lines
        "a,2021-01-10T10:00:00,1,4.0,Y,100\n"
        "a,2021-01-11T09:00:00,-2,3.5,X,C200\n"  # cancels both lines of order 100
        "a,2021-01-11T09:00:00,-1,4.0,Y,C200\n"
        "b,2021-01-10T10:00:00,5,1.0,X,101\n"  # order 101 partly returned: still a purchase
        "b,2021-01-12T10:00:00,-2,1.0,X,C201\n",
    )
    events, _ = load_events(retail_cfg(p))
    returns = events[events["event_type"] == "return"]
    assert len(returns) == 3
    assert (events["amount"] >= 0).all()
    assert returns["amount"].round(2).tolist() == [7.0, 4.0, 2.0]
    cancelled = events.loc[events["cancelled_at"].notna(), ["customer_id", "order_id"]]
    assert cancelled.drop_duplicates().values.tolist() == [["a", "100"]]

    churn = ChurnDefinition(("purchase",), lookback_days=30, horizon_days=30)
    # At a cutoff after the cancellation, a's only purchase no longer counts: a is not active.
    snap = make_snapshot(events, "2021-01-20", churn, with_labels=False)
    assert snap["customer_id"].tolist() == ["b"]
    # Before the cancellation happened, a's order did count (no knowledge of the future).
    snap_before = make_snapshot(events, "2021-01-11T00:00:00", churn, with_labels=False)
    assert snap_before["customer_id"].tolist() == ["a", "b"]


def test_source_time_range_filters_are_counted(tmp_path):
    p = write_csv(tmp_path / "log.csv", "cid,ts,type,amt\na,2021-01-01,buy,1\na,2021-02-01,buy,1\n")
    events, report = load_events(cfg(p, source={"before": "2021-01-15"}))
    assert len(events) == 1
    assert report.dropped["outside_source_time_range"] == 1


def test_bundled_retail_loads_with_counted_drops():
    from omegaconf import OmegaConf

    from seqchurn.conf_utils import CONFIG_DIR, REPO_ROOT

    data = OmegaConf.load(CONFIG_DIR / "data" / "online_retail.yaml")
    data = OmegaConf.merge({"paths": {"data_dir": str(REPO_ROOT / "data"), "cache_dir": "x"}}, {"d": data}).d
    events, report = load_events(data)
    assert report.rows_read == 1_067_370
    assert report.rows_read == report.rows_kept + sum(report.dropped.values())
    assert report.dropped["outside_source_time_range"] == 22_523
    assert events["customer_id"].str.contains(r"\.").sum() == 0
    assert events["ts"].min() >= pd.Timestamp("2009-12-01", tz="UTC")
    assert (events.loc[events["event_type"] == "purchase", "amount"] >= 0).all()


def test_row_order_does_not_change_events(tmp_path):
    rows = "cid,ts,qty,price,sku,inv\n" + "".join(
        f"c{i % 7},2021-01-{1 + i % 5:02d}T10:00:00,{1 + i % 3},{1.5 + i % 4},S{i % 11},{100 + i % 5}\n" for i in range(200)
    )
    lines = rows.splitlines(keepends=True)
    shuffled = [lines[0], *np.random.default_rng(0).permutation(lines[1:])]
    a = write_csv(tmp_path / "a.csv", rows)
    b = write_csv(tmp_path / "b.csv", "".join(shuffled))
    events_a, _ = load_events(retail_cfg(a))
    events_b, _ = load_events(retail_cfg(b))
    pd.testing.assert_frame_equal(events_a, events_b)


def test_truncated_gzip_names_the_file(tmp_path):
    text = "cid,ts,type,amt\n" + "".join(f"c{i},2021-01-01T10:00:00Z,buy,{i}\n" for i in range(50_000))
    raw = gzip.compress(text.encode())
    p = tmp_path / "log.csv.gz"
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="Truncated compressed stream") as err:
        load_events(cfg(p))
    assert str(p) in str(err.value)


TRUNCATED = "cid,ts,type,amt\na,2021-01-01,buy,1\nb,2021-01-02,buy,2\nc,2021-01-03,buy,3\nd,2021-01-04"


def test_truncated_line_is_an_error_by_default(tmp_path):
    p = write_csv(tmp_path / "log.csv", TRUNCATED)
    with pytest.raises(InputError) as err:
        load_events(cfg(p))
    msg = str(err.value)
    assert "expected 4 fields but found 2" in msg
    assert "row 4" in msg
    assert "'d,2021-01-04'" in msg
    assert "csv.invalid_rows: skip" in msg


def test_truncated_line_skipped_and_counted(tmp_path, caplog):
    p = write_csv(tmp_path / "log.csv", TRUNCATED.replace("b,2021-01-02,buy,2", "b,2021-01-02,buy,2,extra"))
    with caplog.at_level("WARNING", logger="seqchurn.data.io"):
        events, report = load_events(cfg(p, source={"csv": {"invalid_rows": "skip"}}))
    assert sorted(events["customer_id"]) == ["a", "c"]
    assert report.dropped["malformed_csv_row"] == 2
    assert report.rows_read == 4
    assert report.rows_read == report.rows_kept + sum(report.dropped.values())
    assert "skipped 2 malformed row(s)" in caplog.text
    assert "row 2: expected 4 fields but found 5" in caplog.text
    assert "row 4: expected 4 fields but found 2 ('d,2021-01-04')" in caplog.text


def test_skip_without_header_numbers_every_line(tmp_path, caplog):
    p = tmp_path / "log.csv.gz"
    p.write_bytes(gzip.compress(TRUNCATED.split("\n", 1)[1].encode()))
    source = {"csv": {"header": False, "names": ["cid", "ts", "type", "amt"], "invalid_rows": "skip"}}
    with caplog.at_level("WARNING", logger="seqchurn.data.io"):
        events, report = load_events(cfg(p, source=source))
    assert len(events) == 3
    assert report.dropped["malformed_csv_row"] == 1
    assert "row 4: expected 4 fields" in caplog.text


def test_every_row_malformed_is_an_error(tmp_path):
    p = write_csv(tmp_path / "log.csv", "cid,ts,type,amt\na,2021-01-01\nb,2021-01-02\n")
    with pytest.raises(InputError, match=r"every row of the file is malformed \(2 skipped\)"):
        load_events(cfg(p, source={"csv": {"invalid_rows": "skip"}}))


@pytest.mark.parametrize(
    "csv_options,needle",
    [
        ({"invalid_rows": "drop"}, "Expected `csv.invalid_rows` to be error or skip, but got 'drop'"),
        ({"invalid_row": "skip"}, r"unknown `csv` option\(s\) \['invalid_row'\]"),
    ],
)
def test_invalid_csv_options_rejected(tmp_path, csv_options, needle):
    p = write_csv(tmp_path / "log.csv", "cid,ts,type,amt\na,2021-01-01,buy,1\n")
    with pytest.raises(InputError, match=needle):
        load_events(cfg(p, source={"csv": csv_options}))


def test_skipped_row_text_not_logged_with_pseudonymisation(tmp_path, caplog):
    p = write_csv(tmp_path / "log.csv", TRUNCATED.replace("\nd,2021-01-04", "\nsecret-id,2021-01-04"))
    key_file = tmp_path / "pseudonym.key"
    key_file.write_bytes(b"k" * 32)
    key_file.chmod(0o600)
    with caplog.at_level("WARNING", logger="seqchurn.data.io"):
        _, report = load_events(cfg(p, source={"csv": {"invalid_rows": "skip"}}, privacy={"key_file": str(key_file)}))
    assert report.dropped["malformed_csv_row"] == 1
    assert "row 4: expected 4 fields but found 2" in caplog.text
    assert "secret-id" not in caplog.text


@pytest.mark.parametrize(
    ("csv_options", "message"),
    [
        ("skip", "to be a mapping"),
        ({"header": "no"}, "csv.header` to be true or false"),
        ({"delimiter": ";;"}, "csv.delimiter` to be one character"),
        ({"delimiter": ""}, "csv.delimiter` to be one character"),
    ],
)
def test_invalid_csv_options_rejected(tmp_path, csv_options, message):
    p = write_csv(tmp_path / "log.csv", "cid,ts,type,amt\nc0,2021-01-01T10:00:00Z,buy,1\n")
    with pytest.raises(InputError, match=message):
        load_events(cfg(p, source={"csv": csv_options}))
