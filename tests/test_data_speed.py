"""The vectorised loader and sequence steps give the same results as their plain pandas references."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from seqchurn.data.io import _ROW, LogSpec, SourceSpec, canonicalise, cancelled_order_times, finalise
from seqchurn.data.schema import COLUMNS, EVENT_TYPE_DTYPE, InputError, LoadReport


def reference_finalise(parts: list[pd.DataFrame], report: LoadReport) -> pd.DataFrame:
    """The straightforward version: drop duplicates (first kept), sort with the tie-break, mark cancelled orders."""
    events = pd.concat(parts, ignore_index=True)
    before = len(events)
    events = events.drop_duplicates(subset=list(COLUMNS[:-1]), keep="first")
    report.drop("exact_duplicate", before - len(events))
    keys = ["customer_id", "ts", "event_type", "order_id", "item_id", "amount", "quantity"]
    events = events.drop(columns=[_ROW]).sort_values(keys, kind="stable", ignore_index=True, na_position="last")
    events["cancelled_at"] = cancelled_order_times(events)
    return events


def random_parts(seed: int, n: int = 600, sorted_rows: bool = False) -> list[pd.DataFrame]:
    """Canonical frames with repeated times, exact duplicates, near duplicates and missing values."""
    rng = np.random.default_rng(seed)
    customers = np.array([f"c{i:02d}" for i in range(25)] + ["", "Z", "ä"], dtype=object)
    ts = pd.Timestamp("2021-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 40, n), unit="D")
    frame = pd.DataFrame(
        {
            "customer_id": pd.Series(rng.choice(customers, n), dtype="str"),
            "ts": ts.astype("datetime64[ns, UTC]"),
            "event_type": pd.Series(rng.choice(["purchase", "return", "view"], n)).astype(EVENT_TYPE_DTYPE),
            "amount": rng.choice([1.0, 2.5, 10.0], n),
            "quantity": rng.choice([1.0, 2.0, np.nan], n),
            "item_id": pd.Series(rng.choice(["i1", "i2", None], n), dtype="str"),
            "category_id": pd.Series([None] * n, dtype="str"),
            "order_id": pd.Series(rng.choice(["o1", "o2", "o3", None], n), dtype="str"),
            "cancelled_at": pd.Series(pd.NaT, index=range(n), dtype="datetime64[ns, UTC]"),
        }
    )
    copies = frame.sample(n // 5, random_state=seed)  # exact duplicates
    near = frame.sample(n // 10, random_state=seed + 1).assign(amount=lambda d: d["amount"] + 0.5)  # not duplicates
    frame = pd.concat([frame, copies, near], ignore_index=True)
    if sorted_rows:
        frame = frame.sort_values(["customer_id", "ts"], kind="stable", ignore_index=True)
    frame[_ROW] = np.arange(len(frame))
    cut = len(frame) // 3
    return [frame.iloc[:cut].reset_index(drop=True), frame.iloc[cut:].reset_index(drop=True)]


@pytest.mark.parametrize("sorted_rows", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_finalise_matches_reference(seed, sorted_rows):
    got_report, expected_report = LoadReport(), LoadReport()
    got = finalise(random_parts(seed, sorted_rows=sorted_rows), got_report)
    expected = reference_finalise(random_parts(seed, sorted_rows=sorted_rows), expected_report)
    pd.testing.assert_frame_equal(got, expected)
    assert got_report.dropped == expected_report.dropped
    assert expected_report.dropped["exact_duplicate"] > 0


def test_finalise_single_row_and_no_duplicates():
    part = random_parts(3, n=1)[1]
    assert len(part) == 1
    report = LoadReport()
    got = finalise([part], report)
    assert len(got) == 1
    assert report.dropped["exact_duplicate"] == 0


def event_table(values: list) -> tuple[pa.Table, SourceSpec]:
    n = len(values)
    table = pa.table(
        {
            "c": pa.array([f"c{i}" for i in range(n)]),
            "t": pa.array(pd.date_range("2021-01-01", periods=n, freq="D", tz="UTC")),
            "e": pa.array(values, type=pa.string()),
            "a": pa.array([1.0] * n),
        }
    )
    return table, SourceSpec(path="events.parquet", columns={"customer_id": "c", "timestamp": "t", "event_type": "e", "amount": "a"})


def spec_with(unknown: str) -> LogSpec:
    return LogSpec(sources=[], event_type_map={"Buy": "purchase", "add": "cart"}, unknown_event_type=unknown)


def test_event_types_mapped_per_distinct_value():
    table, src = event_table(["Buy", " add ", "view", "Buy", "return", "weird", None])
    report = LoadReport()
    frame = canonicalise(table, src, spec_with("other"), report, file="events.parquet")
    assert frame["event_type"].astype(str).tolist() == ["purchase", "cart", "view", "purchase", "return", "other", "other"]
    assert frame["event_type"].dtype == EVENT_TYPE_DTYPE
    assert report.changed["unknown_event_type_mapped_to_other"] == 2


def test_unknown_event_type_names_row_and_value():
    table, src = event_table(["Buy", "view", " weird "])
    with pytest.raises(InputError, match=r"row 3, column 'e': unknown event type.*value: ' weird '"):
        canonicalise(table, src, spec_with("error"), LoadReport(), file="events.parquet")


def test_missing_event_type_is_named_missing():
    table, src = event_table(["Buy", None])
    with pytest.raises(InputError, match="row 2, column 'e': event type is missing"):
        canonicalise(table, src, spec_with("error"), LoadReport(), file="events.parquet")


# --------------------------------------------------------------------------------------
# Sequences
# --------------------------------------------------------------------------------------


def reference_collapse_orders(events: pd.DataFrame) -> pd.DataFrame:
    """The straightforward version: group on the string keys, concatenate, sort."""
    has_order = events["order_id"].notna().to_numpy()
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


def random_events(seed: int) -> pd.DataFrame:
    """A finalised log: order lines with missing items and categories, rows without orders, time ties."""
    parts = random_parts(seed)
    events = finalise(parts, LoadReport())
    rng = np.random.default_rng(seed)
    events["category_id"] = pd.Series(rng.choice(["k1", "k2", None], len(events)), dtype="str")
    events["cancelled_at"] = events["ts"].where(rng.random(len(events)) < 0.1) + pd.Timedelta(days=3)
    return events


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_collapse_orders_matches_reference(seed):
    from seqchurn.data.sequences import collapse_orders

    events = random_events(seed)
    pd.testing.assert_frame_equal(collapse_orders(events), reference_collapse_orders(events))


def test_collapse_orders_unsorted_with_extra_column():
    from seqchurn.data.sequences import collapse_orders

    events = random_events(5).sample(frac=1.0, random_state=5).reset_index(drop=True)
    events["channel"] = np.arange(len(events)) % 3
    pd.testing.assert_frame_equal(collapse_orders(events), reference_collapse_orders(events))


def test_collapse_orders_without_orders():
    from seqchurn.data.sequences import collapse_orders

    events = random_events(0).assign(order_id=lambda d: pd.Series([None] * len(d), dtype="str"))
    collapsed = collapse_orders(events)
    pd.testing.assert_frame_equal(collapsed.drop(columns=["n_lines"]), events)
    assert (collapsed["n_lines"] == 1.0).all()


def reference_history(events: pd.DataFrame, snapshots: pd.DataFrame) -> pd.DataFrame:
    """The straightforward version: inner join on the id, keep events before the cutoff, sort."""
    snaps = pd.DataFrame({"customer_id": snapshots["customer_id"].to_numpy(), "cutoff": snapshots["cutoff"].to_numpy(), "row": np.arange(len(snapshots))})
    snaps["cutoff"] = pd.to_datetime(snaps["cutoff"], utc=True)
    hist = events.merge(snaps, on="customer_id", how="inner", sort=False)
    hist = hist[hist["ts"] < hist["cutoff"]]
    return hist.sort_values(["row", "ts"], kind="stable", ignore_index=True)


@pytest.mark.parametrize(
    "customers",
    [
        ["c03", "c01", "zz-unknown", "c07", "ä"],  # not sorted, one without events
        ["c01", "c02", "c01"],  # a repeated customer takes the join path
        ["c%02d" % i for i in range(25)],
    ],
)
def test_history_matches_reference(customers):
    from seqchurn.data.sequences import _history

    events = random_events(4)
    snapshots = pd.DataFrame({"customer_id": pd.Series(customers, dtype="str"), "cutoff": pd.Timestamp("2021-01-25", tz="UTC")})
    got = _history(events, snapshots)
    expected = reference_history(events, snapshots)
    pd.testing.assert_frame_equal(got, expected[got.columns.tolist()])
    assert sorted(got.columns) == sorted(expected.columns)
    assert len(got) > 0


def test_sort_puts_missing_time_last():
    from seqchurn.data.io import _sort_by_customer_time

    # In customer order, and NaT is the smallest int64, so only the NaT check sends it last.
    events = pd.DataFrame(
        {
            "customer_id": pd.Series(["a", "a", "a", "b"], dtype="str"),
            "ts": pd.to_datetime([None, "2021-01-02", "2021-01-02", "2021-01-01"], utc=True).astype("datetime64[ns, UTC]"),
            "event_type": pd.Series(["view"] * 4).astype(EVENT_TYPE_DTYPE),
            "amount": [1.0, 3.0, 2.0, 1.0],
        }
    )
    expected = events.sort_values(["customer_id", "ts", "event_type", "amount"], kind="stable", ignore_index=True, na_position="last")
    pd.testing.assert_frame_equal(_sort_by_customer_time(events), expected)
