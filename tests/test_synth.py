"""Tests for the synthetic event-log generator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from seqchurn import synth
from seqchurn.data.sharding import shard_of

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(n_customers=300, events_per_customer=25.0, seed=3, n_partitions=4, rows_per_file=500)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read(root: Path) -> pd.DataFrame:
    table = ds.dataset(root, format="parquet", partitioning="hive").to_table()
    return table.to_pandas()


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "small"
    summary = synth.generate(out, **SMALL)
    return out, summary


@pytest.fixture(scope="module")
def small_events(small) -> pd.DataFrame:
    return _read(small[0])


@pytest.fixture(scope="module")
def medium(tmp_path_factory) -> tuple[pd.DataFrame, dict]:
    """2000 customers: enough for the statistical checks."""
    out = tmp_path_factory.mktemp("synth") / "medium"
    summary = synth.generate(out, 2000, events_per_customer=30.0, seed=11, n_partitions=2)
    return _read(out), summary


def test_generate_reproducible(small, tmp_path):
    out, _ = small
    synth.generate(tmp_path / "again", **SMALL)
    first, second = _files(out), _files(tmp_path / "again")
    assert sorted(first) == sorted(second)
    assert first == second


def test_output_independent_of_chunk_size(small, tmp_path):
    out, _ = small
    synth.generate(tmp_path / "chunked", **SMALL, chunk_customers=7)
    assert _files(out) == _files(tmp_path / "chunked")


def test_customers_independent_of_dataset_size(tmp_path):
    small_summary = synth.generate(tmp_path / "a", 50, events_per_customer=20.0, seed=5, n_partitions=1)
    synth.generate(tmp_path / "b", 120, events_per_customer=20.0, seed=5, n_partitions=1)
    first = _read(tmp_path / "a")
    second = _read(tmp_path / "b")
    second = second[second["customer_id"].isin(first["customer_id"])].reset_index(drop=True)
    assert small_summary["n_events"] == len(second)
    pd.testing.assert_frame_equal(first, second)


def test_seed_changes_output(small, tmp_path):
    out, _ = small
    synth.generate(tmp_path / "other", **{**SMALL, "seed": 4})
    assert _files(out) != _files(tmp_path / "other")


def test_schema_and_layout(small):
    out, summary = small
    buckets = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert buckets == [f"bucket={b:05d}" for b in range(SMALL["n_partitions"])]
    files = sorted(out.glob("bucket=*/part-*.parquet"))
    assert len(files) == summary["n_files"]
    assert len(files) > len(buckets)  # rows_per_file=500 splits buckets into several files
    for path in files:
        assert pq.read_schema(path).equals(synth.SCHEMA)


def test_pandas_dtypes(small_events):
    events = small_events
    assert str(events["event_time"].dtype) == "datetime64[us, UTC]"
    assert events["amount"].dtype == np.float64
    for column in ("customer_id", "event_type", "item_id", "order_id"):
        assert pd.api.types.is_string_dtype(events[column]), column


def test_summary_matches_data(small, small_events):
    _, summary = small
    events = small_events
    assert summary["n_events"] == len(events)
    assert summary["n_customers"] == SMALL["n_customers"]
    assert events["customer_id"].nunique() == SMALL["n_customers"]
    assert summary["event_counts"] == events["event_type"].value_counts().to_dict()
    assert summary["max_events_per_customer"] == events.groupby("customer_id").size().max()
    on_disk = json.loads((small[0] / synth.SUMMARY_FILE).read_text())
    assert on_disk == {k: v for k, v in summary.items() if k not in ("seconds", "out_dir")}


def test_customer_ids_formatted(small_events):
    expected = {f"C{i:07d}" for i in range(SMALL["n_customers"])}
    assert set(small_events["customer_id"]) == expected
    assert small_events["item_id"].str.fullmatch(r"I\d{5}").all()


def test_partitions_customer_complete(small, small_events):
    events = small_events
    buckets_per_customer = events.groupby("customer_id")["bucket"].nunique()
    assert (buckets_per_customer == 1).all()

    per_customer = events.groupby("customer_id")["bucket"].first()
    expected = shard_of(per_customer.index.to_numpy(), SMALL["n_partitions"])
    np.testing.assert_array_equal(per_customer.to_numpy(), expected)


def test_files_sorted_and_customer_complete(small):
    out, _ = small
    seen: set[str] = set()
    for path in sorted(out.glob("bucket=*/part-*.parquet")):
        frame = pq.read_table(path).to_pandas()
        keys = list(zip(frame["customer_id"], frame["event_time"]))
        assert keys == sorted(keys), path
        customers = set(frame["customer_id"])
        assert not customers & seen, f"{path} continues a customer of another file"
        seen |= customers
        single_customer = len(customers) == 1
        assert len(frame) <= SMALL["rows_per_file"] or single_customer, path


def test_no_exact_duplicate_rows(small_events):
    # Loaders drop exact duplicates as export errors, so the generator must not write any.
    assert not small_events.duplicated().any()


def test_events_inside_window(small, small_events):
    _, summary = small
    times = small_events["event_time"]
    assert times.min() >= pd.Timestamp(summary["start"])
    assert times.max() < pd.Timestamp(summary["end"])


def test_amounts(small_events):
    events = small_events
    money = events["event_type"].isin(["purchase", "return"])
    assert np.isfinite(events["amount"]).all()
    assert (events["amount"] >= 0).all()
    assert (events.loc[money, "amount"] > 0).all()
    assert (events.loc[~money, "amount"] == 0).all()


def test_event_mix_and_funnel(small_events):
    counts = small_events["event_type"].value_counts()
    assert set(counts.index) == {"view", "cart", "purchase", "return"}
    assert counts["view"] > counts["cart"] > counts["return"]
    assert counts["cart"] >= counts["purchase"] > counts["return"]


def test_order_ids_only_on_orders(small_events):
    events = small_events
    money = events["event_type"].isin(["purchase", "return"])
    assert events.loc[money, "order_id"].notna().all()
    assert events.loc[~money, "order_id"].isna().all()

    orders = events.loc[money]
    customer_digits = orders["customer_id"].str.slice(1)
    assert (orders["order_id"].str.slice(1, 1 + customer_digits.str.len().max()) == customer_digits).all()


def test_returns_refer_to_earlier_purchases(small_events):
    events = small_events
    key = ["customer_id", "order_id", "item_id"]
    purchases = events[events["event_type"] == "purchase"][key + ["event_time", "amount"]]
    returns = events[events["event_type"] == "return"][key + ["event_time", "amount"]]
    assert len(returns) > 0
    assert not purchases.duplicated(key).any()

    matched = returns.merge(purchases, on=key, how="left", suffixes=("_return", "_purchase"), validate="one_to_one")
    assert matched["event_time_purchase"].notna().all()
    assert (matched["event_time_return"] - matched["event_time_purchase"] >= pd.Timedelta(days=1)).all()
    np.testing.assert_array_equal(matched["amount_return"], matched["amount_purchase"])


def test_carts_precede_purchases(small_events):
    events = small_events
    key = ["customer_id", "item_id"]
    purchases = events[events["event_type"] == "purchase"]
    carts = events[events["event_type"] == "cart"]
    # Every purchased item was carted by the same customer, and not later than the purchase.
    first_cart = carts.groupby(key)["event_time"].min().rename("first_cart")
    joined = purchases.join(first_cart, on=key)
    assert joined["first_cart"].notna().all()
    assert (joined["first_cart"] <= joined["event_time"]).all()


def test_heavy_tailed_activity(small_events):
    per_customer = small_events.groupby("customer_id").size()
    assert per_customer.max() / per_customer.median() > 10


def test_mean_events_near_target(medium):
    _, summary = medium
    # Sampling noise of the heavy-tailed mean is a few percent at 2000 customers.
    assert summary["events_per_customer"] == pytest.approx(30.0, rel=0.15)


def test_weekly_and_yearly_seasonality(medium):
    events, _ = medium
    sessions = events[events["event_type"] == "view"]
    by_weekday = sessions["event_time"].dt.day_of_week.value_counts().sort_index()
    weekend, weekday = by_weekday.loc[[5, 6]].mean(), by_weekday.loc[[1, 2]].mean()
    assert weekend > 1.05 * weekday

    # Black Friday week against the two weeks before it, summed over the years of the window.
    days = sessions["event_time"].dt.day_of_year
    black_friday = days.between(325, 331).sum() / 7
    before = days.between(305, 318).sum() / 14
    assert black_friday > 1.3 * before


def test_churned_customers_were_declining(medium):
    """Customers whose events stopped early were less active towards their end than those still active."""
    events, summary = medium
    day = events["event_time"].astype("int64") // 86_400_000_000
    active_days = pd.DataFrame({"customer_id": events["customer_id"], "day": day}).drop_duplicates()
    by_customer = active_days.groupby("customer_id")["day"]
    first, last, count = by_customer.min(), by_customer.max(), by_customer.size()

    span = (last - first).clip(lower=1).reindex(active_days["customer_id"]).to_numpy()
    position = (active_days["day"].to_numpy() - first.reindex(active_days["customer_id"]).to_numpy()) / span
    last_quarter_share = pd.Series(position > 0.75, index=active_days.index).groupby(active_days["customer_id"]).mean()

    end_day = pd.Timestamp(summary["end"]).value // 86_400_000_000_000
    enough = count >= 6
    stopped = enough & (last < end_day - 180)
    still_active = enough & (last >= end_day - 30)
    assert stopped.sum() > 50
    assert still_active.sum() > 50
    # Without the pre-churn fade and the trend-dependent hazard, both groups would have
    # about the same share of active days in the last quarter of their span.
    test = stats.mannwhitneyu(last_quarter_share[stopped], last_quarter_share[still_active], alternative="less")
    assert test.pvalue < 1e-3


def test_churn_hazard_depends_on_behaviour():
    window = synth._Window(start_s=pd.Timestamp("2022-01-01", tz="UTC").value / 1e9, days=730)
    customers = synth._draw_customers(synth._derive(synth._root_key(0, salt=1), np.arange(20_000)), window)
    lifetime = customers.churn - customers.join
    longer_with = {"activity": customers.activity, "trend": customers.trend, "p_buy": customers.p_buy, "p_cart": customers.p_cart}
    for name, value in longer_with.items():
        assert stats.spearmanr(lifetime, value).statistic > 0.05, name
    assert stats.spearmanr(lifetime, customers.p_return).statistic < -0.05
    assert (customers.join < customers.stop).all()
    assert (customers.stop <= window.days * synth.DAY).all()


def test_recency_predicts_churn(medium):
    events, summary = medium
    cutoff = pd.Timestamp(summary["end"]) - pd.Timedelta(days=180)
    purchases = events[events["event_type"] == "purchase"]
    in_lookback = purchases["event_time"].between(cutoff - pd.Timedelta(days=365), cutoff, inclusive="left")
    active = pd.Index(purchases.loc[in_lookback, "customer_id"].unique())
    in_horizon = purchases["event_time"].between(cutoff, cutoff + pd.Timedelta(days=90), inclusive="left")
    retained = set(purchases.loc[in_horizon, "customer_id"])
    label = np.array([customer not in retained for customer in active])
    assert 0.2 < label.mean() < 0.95

    last_before = events[events["event_time"] < cutoff].groupby("customer_id")["event_time"].max()
    recency_days = (cutoff - last_before.reindex(active)).dt.total_seconds() / 86_400
    assert roc_auc_score(label, recency_days) > 0.65


def test_uniform_stream_is_uniform():
    keys = synth._derive(synth._root_key(0, salt=1), np.arange(20_000))
    u = synth._uniform(keys, synth._Stream.ACTIVITY)
    assert (u > 0).all()
    assert (u < 1).all()
    assert stats.kstest(u, "uniform").pvalue > 1e-4
    other = synth._uniform(keys, synth._Stream.TREND)
    assert abs(stats.pearsonr(u, other).statistic) < 0.05


def test_file_boundaries_keep_customers_whole():
    customer = np.repeat(np.arange(6), [3, 1, 7, 2, 2, 1])
    bounds = synth._file_boundaries(customer, rows_per_file=4)
    assert bounds[0][0] == 0
    assert bounds[-1][1] == len(customer)
    for (_, end), (start, _) in zip(bounds[:-1], bounds[1:]):
        assert end == start
        assert customer[start] != customer[start - 1]
    for start, end in bounds:
        assert end - start <= 4 or len(set(customer[start:end])) == 1


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("n_customers", 0),
        ("days", 0),
        ("seed", -1),
        ("n_partitions", 0),
        ("rows_per_file", 0),
        ("chunk_customers", 0),
        ("events_per_customer", 1.0),
        ("events_per_customer", float("nan")),
        ("start", "not a date"),
    ],
)
def test_generate_rejects_bad_arguments(tmp_path, argument, value):
    kwargs = {**SMALL, argument: value}
    with pytest.raises(ValueError, match=argument):
        synth.generate(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_generate_rejects_non_empty_dir(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        synth.generate(tmp_path, 20, events_per_customer=20.0)
    with pytest.raises(ValueError, match="notes.txt"):
        synth.generate(tmp_path, 20, events_per_customer=20.0, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_overwrite_replaces_dataset(tmp_path):
    synth.generate(tmp_path, 40, events_per_customer=20.0, n_partitions=3)
    summary = synth.generate(tmp_path, 40, events_per_customer=20.0, n_partitions=2, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["bucket=00000", "bucket=00001"]
    assert len(_read(tmp_path)) == summary["n_events"]


def test_default_partitions_follow_event_count(tmp_path):
    summary = synth.generate(tmp_path, 30, events_per_customer=20.0)
    assert summary["n_partitions"] == 1


def test_main_prints_summary(tmp_path, capsys):
    code = synth.main(["--out", str(tmp_path / "cli"), "--customers", "25", "--events-per-customer", "20", "--partitions", "2"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["n_customers"] == 25
    assert printed["n_partitions"] == 2


def test_main_reports_bad_input(tmp_path, capsys):
    code = synth.main(["--out", str(tmp_path / "cli"), "--customers", "0"])
    assert code == 2
    assert "n_customers" in capsys.readouterr().out


def test_script_runs(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, str(REPO / "scripts" / "make_synthetic.py"), "--out", str(tmp_path / "s"), "--customers", "15", "--events-per-customer", "20"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["n_customers"] == 15
    assert pa.types.is_timestamp(pq.read_schema(next((tmp_path / "s").glob("bucket=*/part-*.parquet"))).field("event_time").type)
