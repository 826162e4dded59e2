"""Scoring at scale: streaming by partition, shards, the progress bar and the light model files.

The model is a small hand-built ONNX graph with the exported model's inputs and output,
so these tests need no training. Its score depends on every input tensor, so a customer
scored on part of their history gets a different probability.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from onnx import TensorProto, helper

from seqchurn import score
from seqchurn.conf_utils import CONFIG_DIR
from seqchurn.data.io import LogSpec, load_events
from seqchurn.data.labels import ChurnDefinition, make_snapshot
from seqchurn.data.schema import InputError
from seqchurn.data.sequences import fit_spec
from seqchurn.data.sharding import shard_of
from seqchurn.model_files import CARD_FILE, INPUT_NAMES, MODEL_FILE, OUTPUT_NAME, model_digest
from seqchurn.synth import generate

AS_OF = "2023-12-01"
CHURN = ChurnDefinition(("purchase",), lookback_days=365, horizon_days=90)
N_PARTITIONS = 4


def synthetic_data_config(path: Path) -> dict:
    """conf/data/synthetic.yaml pointed at ``path`` (a plain dict)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONFIG_DIR / "data" / "synthetic.yaml")
    cfg.cache_dir = None
    cfg.sources[0].path = str(path)
    return OmegaConf.to_container(cfg, resolve=True)


def write_test_model(model_dir: Path, events: pd.DataFrame) -> Path:
    """Write model.onnx + model.json of a tiny graph that reads every input; return ``model_dir``.

    P(churn) = sigmoid(0.01 * sum(masked numeric) + 0.05 * sum(static) + 0.002 * sum(masked event type)
    + 0.0002 * sum(masked item)), with a feature spec fitted on ``events``.
    """
    snaps = make_snapshot(events, "2023-06-01", CHURN)
    spec = fit_spec(events, snaps, max_len=16, item_vocab_size=50, activity_types=["purchase"], collapse=True)

    def masked_sum(name: str, source: str, weight: float) -> list:
        return [
            helper.make_node("Cast", [source], [f"{name}_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{name}_f", "mask_f"], [f"{name}_m"]),
            helper.make_node("ReduceSum", [f"{name}_m", "axis1"], [f"{name}_s"], keepdims=0),
            helper.make_node("Mul", [f"{name}_s", helper_const(weight)], [f"{name}_w"]),
        ]

    consts: list = []

    def helper_const(value: float) -> str:
        name = f"c{len(consts)}"
        consts.append(helper.make_tensor(name, TensorProto.FLOAT, [], [value]))
        return name

    nodes = [
        helper.make_node("Cast", ["mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["numeric", "axis2"], ["numeric_t"], keepdims=0),
        *masked_sum("num", "numeric_t", 0.01),
        *masked_sum("type", "event_type", 0.002),
        *masked_sum("item", "item", 0.0002),
        helper.make_node("ReduceSum", ["static", "axis1"], ["static_s"], keepdims=0),
        helper.make_node("Mul", ["static_s", helper_const(0.05)], ["static_w"]),
        helper.make_node("Sum", ["num_w", "type_w", "item_w", "static_w"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], [OUTPUT_NAME]),
    ]
    axes = [helper.make_tensor("axis1", TensorProto.INT64, [1], [1]), helper.make_tensor("axis2", TensorProto.INT64, [1], [2])]
    inputs = [
        helper.make_tensor_value_info("event_type", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("item", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("numeric", TensorProto.FLOAT, ["batch", "seq", len(spec.numeric_features)]),
        helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", "seq"]),
        helper.make_tensor_value_info("static", TensorProto.FLOAT, ["batch", len(spec.static_features)]),
    ]
    assert [i.name for i in inputs] == list(INPUT_NAMES)
    graph = helper.make_graph(nodes, "test_model", inputs, [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch"])], initializer=axes + consts)
    onnx_bytes = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()
    card = {
        "model_version": "test-model",
        "input_names": list(INPUT_NAMES),
        "output_names": [OUTPUT_NAME],
        "feature_spec": spec.to_dict(),
        "churn_definition": CHURN.to_dict(),
        "threshold": 0.5,
    }
    card["sha256"] = model_digest(onnx_bytes, card)
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / MODEL_FILE).write_bytes(onnx_bytes)
    (model_dir / CARD_FILE).write_text(json.dumps(card))
    return model_dir


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A partitioned synthetic log (400 customers, 4 buckets) and a test model fitted on it."""
    root = tmp_path_factory.mktemp("stream")
    log_dir = root / "log"
    generate(log_dir, 400, events_per_customer=30, n_partitions=N_PARTITIONS)
    events, _ = load_events(synthetic_data_config(log_dir))
    return log_dir, write_test_model(root / "model", events)


def score_frame(log_dir: Path, model_dir: Path, **options) -> tuple[pd.DataFrame, object, score.ScoreStats]:
    spec = LogSpec.from_config(synthetic_data_config(log_dir))
    return score.score_log(spec, score.load_model(model_dir), AS_OF, progress=False, **options)


def partition_rows(log_dir: Path) -> list[int]:
    return [sum(pq.read_metadata(f).num_rows for f in d.glob("*.parquet")) for d in sorted(log_dir.glob("bucket=*"))]


# --------------------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_stream_equals_whole_log(synthetic, workers):
    log_dir, model_dir = synthetic
    streamed, streamed_report, streamed_stats = score_frame(log_dir, model_dir, workers=workers)
    whole, whole_report, whole_stats = score_frame(log_dir, model_dir, stream=False)
    assert streamed_stats.pieces == N_PARTITIONS
    assert whole_stats.pieces == 1
    assert len(streamed) > 50
    pd.testing.assert_frame_equal(streamed, whole)
    assert streamed_report.to_dict() == whole_report.to_dict()
    assert streamed_stats.customers_seen == whole_stats.customers_seen == 400
    # Every row read is either an input row or counted as dropped, future rows included.
    assert whole_report.dropped["at_or_after_as_of"] > 0
    assert whole_report.rows_read == whole_report.rows_kept + sum(whole_report.dropped.values())


def test_stream_holds_one_partition_at_a_time(synthetic, monkeypatch):
    log_dir, model_dir = synthetic
    seen_rows = []
    featurise = score.featurise

    def recording_featurise(events, model, as_of):
        seen_rows.append(len(events))
        return featurise(events, model, as_of)

    monkeypatch.setattr(score, "featurise", recording_featurise)
    _, report, stats = score_frame(log_dir, model_dir, workers=1)
    sizes = partition_rows(log_dir)
    assert len(seen_rows) == N_PARTITIONS
    assert max(seen_rows) <= max(sizes)
    assert stats.largest_piece_rows == max(sizes)
    assert report.rows_read == sum(sizes)


def test_customer_split_across_partitions_is_rejected(synthetic, tmp_path):
    log_dir, model_dir = synthetic
    broken = tmp_path / "broken"
    shutil.copytree(log_dir, broken)
    # Move the second half of the rows of the last customer in bucket 0 into bucket 1.
    first = broken / "bucket=00000" / "part-00000.parquet"
    table = pq.read_table(first)
    ids = table.column("customer_id").to_pandas()
    rows = np.flatnonzero(ids == ids.iloc[-1])
    moved = rows[len(rows) // 2 :]
    assert 0 < len(moved) < len(rows)
    pq.write_table(table.take(np.setdiff1d(np.arange(len(ids)), moved)), first)
    pq.write_table(table.take(moved), broken / "bucket=00001" / "part-00009.parquet")

    for workers in (1, 2):
        with pytest.raises(InputError, match=f"customer '{ids.iloc[-1]}' appears in partition"):
            score_frame(broken, model_dir, workers=workers)
    whole, _, stats = score_frame(broken, model_dir, stream=False)
    expected, _, _ = score_frame(log_dir, model_dir, stream=False)
    assert stats.pieces == 1
    pd.testing.assert_frame_equal(whole, expected)


def test_flat_directory_is_read_whole(synthetic, tmp_path):
    log_dir, model_dir = synthetic
    flat = tmp_path / "flat"
    flat.mkdir()
    # Sorted by time, so most customers have events in both files.
    table = pq.read_table(log_dir).drop_columns(["bucket"]).sort_by("event_time")
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), flat / "a.parquet")
    pq.write_table(table.slice(half), flat / "b.parquet")

    spec = LogSpec.from_config(synthetic_data_config(flat))
    assert not score.is_customer_partitioned(spec)
    flat_scores, _, stats = score_frame(flat, model_dir)
    expected, _, _ = score_frame(log_dir, model_dir, stream=False)
    assert stats.pieces == 1
    pd.testing.assert_frame_equal(flat_scores, expected)
    with pytest.raises(InputError, match="appears in partition"):
        score_frame(flat, model_dir, stream=True)


def test_skipped_csv_rows_are_counted(synthetic, tmp_path, caplog):
    log_dir, model_dir = synthetic
    table = pq.read_table(log_dir).drop_columns(["bucket"])
    frame = table.to_pandas()
    frame["event_time"] = frame["event_time"].dt.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
    csv_path = tmp_path / "log.csv"
    frame.to_csv(csv_path, index=False)
    with open(csv_path, "a") as handle:
        handle.write("cut-short-customer,2023-05-01\n")  # a truncated last line
    cfg = synthetic_data_config(csv_path)
    cfg["sources"][0].update(format="csv", csv={"invalid_rows": "skip"})

    with caplog.at_level("WARNING", logger="seqchurn.data.io"):
        scored, report, _ = score.score_log(LogSpec.from_config(cfg), score.load_model(model_dir), AS_OF, progress=False)
    expected, expected_report, _ = score_frame(log_dir, model_dir, stream=False)

    assert report.dropped["malformed_csv_row"] == 1
    assert report.rows_read == expected_report.rows_read + 1
    assert report.rows_kept == expected_report.rows_kept
    assert report.rows_read == report.rows_kept + sum(report.dropped.values())
    assert "skipped 1 malformed row(s)" in caplog.text
    merged = expected.merge(scored, on="customer_id", suffixes=("", "_csv"))
    assert len(merged) == len(expected) == len(scored)
    np.testing.assert_allclose(merged["churn_probability_csv"], merged["churn_probability"], rtol=0, atol=1e-6)


def test_two_sources_are_not_streamed(synthetic):
    log_dir, _ = synthetic
    cfg = synthetic_data_config(log_dir)
    cfg["sources"] = [cfg["sources"][0], dict(cfg["sources"][0])]
    assert not score.is_customer_partitioned(LogSpec.from_config(cfg))
    assert score.is_customer_partitioned(LogSpec.from_config(synthetic_data_config(log_dir)))


def test_partition_guard():
    guard = score.PartitionGuard()
    guard.add(np.array(["a", "b"], dtype=object), "p0")
    guard.add(np.array(["c"], dtype=object), "p1")
    assert guard.customers == 3
    with pytest.raises(InputError, match="customer 'b' appears in partition p2"):
        guard.add(np.array(["d", "b"], dtype=object), "p2")


def test_invalid_stream_value(synthetic):
    log_dir, model_dir = synthetic
    with pytest.raises(ValueError, match="Expected `stream` to be auto, true or false"):
        score_frame(log_dir, model_dir, stream="yes")


def test_progress_bar_shows_events_and_customers(synthetic, capsys):
    log_dir, model_dir = synthetic
    spec = LogSpec.from_config(synthetic_data_config(log_dir))
    score.score_log(spec, score.load_model(model_dir), AS_OF, progress=True)
    from tqdm import tqdm

    err = capsys.readouterr().err
    rows = tqdm.format_sizeof(sum(partition_rows(log_dir)))
    assert f"{rows}/{rows}" in err
    assert "events/s" in err
    assert "customers_per_s=" in err


# --------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------


def test_union_of_shards_equals_unsharded(synthetic):
    log_dir, model_dir = synthetic
    full, full_report, _ = score_frame(log_dir, model_dir)
    parts, rows_kept = [], 0
    for i in range(3):
        part, report, _ = score_frame(log_dir, model_dir, shard=(i, 3))
        assert part["rank"].tolist() == list(range(1, len(part) + 1))
        assert (shard_of(part["customer_id"], 3) == i).all()
        parts.append(part)
        rows_kept += report.rows_kept
    union = pd.concat(parts, ignore_index=True)
    assert union["customer_id"].is_unique
    assert set(union["customer_id"]) == set(full["customer_id"])
    merged = full.merge(union, on="customer_id", suffixes=("", "_shard"))
    # Batches differ between runs, so onnxruntime may round differently in the last bits.
    np.testing.assert_allclose(merged["churn_probability_shard"], merged["churn_probability"], rtol=0, atol=1e-6)
    assert merged["churn_probability"].std() > 0.01
    assert rows_kept == full_report.rows_kept


def test_shard_run_writes_its_own_files(synthetic, tmp_path):
    log_dir, model_dir = synthetic
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="score",
            overrides=[
                "data=synthetic", f"data.sources.0.path={log_dir}", "data.cache_dir=null", f"model_dir={model_dir}",
                f"as_of={AS_OF}", f"output_dir={tmp_path}", "shard=1/3", "progress=false",
                # Outside a Hydra app the ${hydra:...} defaults of these paths cannot resolve.
                f"paths.output_dir={tmp_path}", f"paths.work_dir={tmp_path}",
            ],
        )
    GlobalHydra.instance().clear()
    summary = score.run(cfg)
    suffix = "-part-00001-of-00003"
    scores = pd.read_parquet(tmp_path / f"scores{suffix}.parquet")
    alerts = pd.read_csv(tmp_path / f"alerts{suffix}.csv", dtype={"customer_id": str})
    on_disk = json.loads((tmp_path / f"run_summary{suffix}.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{kind}{suffix}.{ext}" for kind, ext in (("scores", "parquet"), ("alerts", "csv"), ("run_summary", "json")))
    assert (shard_of(scores["customer_id"], 3) == 1).all()
    assert alerts["customer_id"].tolist() == scores.loc[scores["alert"], "customer_id"].tolist()
    assert on_disk["status"] == "ok"
    assert on_disk["customers_scored"] == len(scores) == summary["customers_scored"]
    assert on_disk["details"]["shard"] == "1/3"
    assert on_disk["details"]["pieces"] == N_PARTITIONS


@pytest.mark.parametrize("workers", [1, 2])
def test_shard_reads_only_its_buckets(synthetic, workers):
    log_dir, model_dir = synthetic
    full, full_report, _ = score_frame(log_dir, model_dir)
    parts, rows_read, rows_kept = [], 0, 0
    for i in range(2):
        part, report, stats = score_frame(log_dir, model_dir, shard=(i, 2), workers=workers)
        # 4 buckets made by shard_of(id, 4): shard i of 2 needs buckets i and i + 2 only.
        assert stats.pieces == N_PARTITIONS // 2
        assert sorted(Path(f).parent.name for f in report.files) == sorted({f"bucket={b:05d}" for b in (i, i + 2)})
        assert (shard_of(part["customer_id"], 2) == i).all()
        parts.append(part)
        rows_read += report.rows_read
        rows_kept += report.rows_kept
    union = pd.concat(parts, ignore_index=True)
    assert union["customer_id"].is_unique
    assert set(union["customer_id"]) == set(full["customer_id"])
    merged = full.merge(union, on="customer_id", suffixes=("", "_shard"))
    np.testing.assert_allclose(merged["churn_probability_shard"], merged["churn_probability"], rtol=0, atol=1e-6)
    assert rows_read == full_report.rows_read
    assert rows_kept == full_report.rows_kept


def test_shard_rejects_bucket_not_made_by_hash(synthetic, tmp_path):
    log_dir, model_dir = synthetic
    moved = tmp_path / "log"
    shutil.copytree(log_dir, moved)
    # Bucket 1's customers now sit in bucket 3, which shard 1 of 2 reads, but their hash is bucket 1.
    for f in (moved / "bucket=00001").glob("*.parquet"):
        f.rename(moved / "bucket=00003" / f"moved-{f.name}")
    with pytest.raises(InputError, match=r"bucket=3, but seqchurn's customer hash puts it in bucket 1 of 4"):
        score_frame(moved, model_dir, shard=(1, 2), workers=1)


def test_shard_reads_every_partition_without_hash_buckets(synthetic, tmp_path):
    log_dir, model_dir = synthetic
    copied = tmp_path / "log"
    shutil.copytree(log_dir, copied)
    (copied / score.HASH_PARTITIONED_FILE).unlink()
    _, _, stats = score_frame(copied, model_dir, shard=(0, 2))
    assert stats.pieces == N_PARTITIONS
    spec = LogSpec.from_config(synthetic_data_config(log_dir))
    assert score.hash_bucket_count(spec) == N_PARTITIONS
    spec.pseudonym_key = b"k" * 32
    # Buckets were made from raw ids, shards from tokens: no partition can be skipped.
    assert score.hash_bucket_count(spec) is None


def test_declared_hash_buckets_let_shards_skip(synthetic, tmp_path):
    log_dir, model_dir = synthetic
    copied = tmp_path / "log"
    shutil.copytree(log_dir, copied)
    (copied / score.HASH_PARTITIONED_FILE).unlink()
    cfg = synthetic_data_config(copied)
    cfg["sources"][0]["hash_buckets"] = N_PARTITIONS
    model = score.load_model(model_dir)

    part, report, stats = score.score_log(LogSpec.from_config(cfg), model, AS_OF, progress=False, shard=(1, 2))

    assert stats.pieces == N_PARTITIONS // 2
    assert sorted(Path(f).parent.name for f in report.files) == ["bucket=00001", "bucket=00003"]
    assert (shard_of(part["customer_id"], 2) == 1).all()
    assert report.rows_read == report.rows_kept + sum(report.dropped.values())
    # A wrong declaration is caught: with 8 declared buckets, bucket=00001 also contains customers of bucket 5.
    cfg["sources"][0]["hash_buckets"] = 8
    with pytest.raises(InputError, match="Correct `hash_buckets`"):
        score.score_log(LogSpec.from_config(cfg), model, AS_OF, progress=False, shard=(1, 2))


def test_too_few_declared_buckets_warn(synthetic, tmp_path, caplog):
    log_dir, model_dir = synthetic
    cfg = synthetic_data_config(log_dir)
    cfg["sources"][0]["hash_buckets"] = 2  # the log has 4 bucket= partitions
    with caplog.at_level("WARNING", logger="seqchurn.score"):
        part, report, stats = score.score_log(LogSpec.from_config(cfg), score.load_model(model_dir), AS_OF, progress=False, shard=(0, 2))
    assert stats.pieces == N_PARTITIONS
    assert "not one of the 2 declared hash buckets" in caplog.text
    # Every partition was read, so the other shard's rows are counted as dropped.
    assert report.dropped["other_shard"] > 0
    assert report.rows_read == report.rows_kept + sum(report.dropped.values())
    assert (shard_of(part["customer_id"], 2) == 0).all()


@pytest.mark.parametrize("value", [0, -1, "4", True, 2.5])
def test_invalid_hash_buckets_rejected(synthetic, value):
    log_dir, _ = synthetic
    cfg = synthetic_data_config(log_dir)
    cfg["sources"][0]["hash_buckets"] = value
    with pytest.raises(InputError, match="hash_buckets"):
        LogSpec.from_config(cfg)


# --------------------------------------------------------------------------------------
# Light model files
# --------------------------------------------------------------------------------------


def test_model_files_agree_with_export():
    from seqchurn import export
    from seqchurn.models import churn_module

    assert (export.MODEL_FILE, export.CARD_FILE, export.OUTPUT_NAME) == (MODEL_FILE, CARD_FILE, OUTPUT_NAME)
    assert churn_module.INPUT_NAMES == INPUT_NAMES
    card = {"threshold": 0.3, "sha256": "old", "nested": {"b": 1, "a": [1, 2]}}
    assert export.model_digest(b"onnx bytes", card) == model_digest(b"onnx bytes", card)


def test_score_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, seqchurn.score; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("sort", [True, False])
def test_may_be_active_keeps_every_active_customer(synthetic, sort):
    from seqchurn.data.sequences import collapse_orders

    log_dir, _ = synthetic
    events, _ = load_events(synthetic_data_config(log_dir))
    if not sort:
        events = events.sample(frac=1.0, random_state=0).reset_index(drop=True)
    as_of = pd.Timestamp(AS_OF, tz="UTC")
    keep = score.may_be_active(events, as_of, CHURN)
    kept = set(events.loc[keep, "customer_id"])
    active = set(make_snapshot(collapse_orders(events), as_of, CHURN, with_labels=False)["customer_id"])
    assert active <= kept
    assert set(make_snapshot(events, as_of, CHURN, with_labels=False)["customer_id"]) <= kept
    assert not keep.all()
    # Whole customers are kept or dropped.
    assert not (set(events.loc[~keep, "customer_id"]) & kept)
