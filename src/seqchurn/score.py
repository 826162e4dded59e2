"""Batch scoring with onnxruntime: event log + exported model + as-of date -> scores and alerts.

``seqchurn score model_dir=checkpoints/online_retail_gru as_of=2011-12-09`` reads the log
named by the data config with the same loader and sequence code as training, scores
every customer active at ``as_of`` and writes:

- ``scores.parquet``: customer_id, churn_probability, rank (1 = highest risk), alert,
  days_since_last_activity, n_events (events in the model's input sequence, at most
  ``max_len``), model_version, as_of;
- ``alerts.csv``: the customers at or above the model's threshold, highest risk first;
- ``run_summary.json``: rows read and dropped by reason, customers scored, alerts, timings.

Streaming: a single-source Parquet dataset partitioned by customer (``bucket=``
directories, as ``seqchurn synth`` writes) is scored one partition at a time, so memory
is bounded by the largest partition, not by the log. Every customer's history must then
sit in one partition. A customer found in two partitions stops the run with an error,
so no customer is scored on half a history. Other logs are read whole (``stream=false``).

Partitions are scored side by side in ``workers`` processes (default: one per core); each
reads, prepares and scores one partition at a time. With ``workers=1`` (or a log read
whole) one process does it all, and while its main thread prepares partition ``k``, a
reader thread reads partition ``k + 1`` and an inference thread runs onnxruntime on
partition ``k - 1`` (pyarrow and onnxruntime release the GIL).

Sharding: ``shard=i/n`` scores only the customers whose hash (``seqchurn.data.sharding``)
falls in shard ``i`` and writes ``-part-i-of-n`` files, so many processes or machines can
split one log with no coordination. A shard of a log that ``seqchurn synth`` partitioned
by the same hash reads only its own partitions. Ranks are per shard; docs/scaling.md shows
how to merge the parts.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import onnxruntime as ort
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from omegaconf import DictConfig, OmegaConf

from seqchurn.conf_utils import CONFIG_DIR, register_resolvers
from seqchurn.data.io import LogSpec, SourceSpec, canonicalise, finalise, iter_source_tables
from seqchurn.data.labels import ChurnDefinition, make_snapshot, to_utc
from seqchurn.data.schema import InputError, LoadReport
from seqchurn.data.sequences import FeatureSpec, build_arrays, collapse_orders, length_batches
from seqchurn.data.sharding import customer_hash, parse_shard, shard_of
from seqchurn.errors import exits_on_error
from seqchurn.model_files import CARD_FILE, INPUT_NAMES, MODEL_FILE, OUTPUT_NAME, model_digest
from seqchurn.utils.atomic import atomic_to_csv, atomic_write_parquet
from seqchurn.utils.run_summary import track_run

log = logging.getLogger(__name__)
register_resolvers()

SCORE_COLUMNS = ("customer_id", "churn_probability", "rank", "alert", "days_since_last_activity", "n_events", "model_version", "as_of")


@dataclass
class LoadedModel:
    """An exported model: its onnxruntime session and its card (``model.json``)."""

    session: ort.InferenceSession
    card: dict[str, Any]
    spec: FeatureSpec
    churn: ChurnDefinition
    model_dir: Path | None = None  # where load_model read it; worker processes load it again from here

    @property
    def threshold(self) -> float:
        return float(self.card["threshold"])

    @property
    def version(self) -> str:
        return str(self.card["model_version"])


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    """onnxruntime options for scoring: basic graph optimisations, ``intra_op_threads`` threads (0 = one per core).

    The basic level (constant folding, redundant node removal) was faster than the extended
    and layout levels for the GRU and the transformer on the CPU; docs/performance.md has the
    measurement.
    """
    if intra_op_threads < 0:
        raise ValueError(f"Expected `threads` to be 0 (one per core) or a positive number, but got {intra_op_threads}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return opts


def use_system_memory_pool() -> None:
    """Make pyarrow allocate with the C library's malloc in this process, as numpy and pandas do.

    pyarrow's default pool (mimalloc in the pip wheels, pyarrow 26) returns freed pages to the
    OS between partitions, so the next partition faults them in again. On a 5 M-event
    synthetic log (one process, 2-core Xeon) the system pool cut the CPU time of reading,
    preparing and scoring from about 6.0 to 5.3 s, most of it system time.
    """
    pa.set_memory_pool(pa.system_memory_pool())


def load_model(model_dir: str | Path, *, intra_op_threads: int = 1, verify: bool = True) -> LoadedModel:
    """Open ``model.onnx`` + ``model.json``; reject a tampered or mismatched pair.

    ``intra_op_threads`` sets onnxruntime's threads per inference call (0 = one per core).
    One thread is fastest for ``seqchurn score``, which runs inference beside its data
    preparation; docs/performance.md has the measurement.
    """
    model_dir = Path(model_dir)
    onnx_path, card_path = model_dir / MODEL_FILE, model_dir / CARD_FILE
    for p in (onnx_path, card_path):
        if not p.exists():
            raise InputError("model file not found", file=str(p), hint="Run `seqchurn export` first, or fix `model_dir`")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"the model card is not valid JSON: {exc}", file=str(card_path), hint="Re-export the model") from None
    if not isinstance(card, dict):
        raise InputError("the model card is not a JSON object", file=str(card_path), hint="Re-export the model")
    onnx_bytes = onnx_path.read_bytes()
    if verify and model_digest(onnx_bytes, card) != card.get("sha256"):
        raise InputError(
            "model digest mismatch: model.onnx or model.json changed after export", file=str(model_dir),
            hint="Re-export the model; never edit model.json by hand",
        )
    session = ort.InferenceSession(onnx_bytes, sess_options=session_options(intra_op_threads), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    if names != list(INPUT_NAMES) or names != card.get("input_names"):
        raise InputError(f"the ONNX model has inputs {names}, expected {list(INPUT_NAMES)}", file=str(onnx_path), hint="Re-export with this seqchurn version")
    try:
        spec = FeatureSpec.from_dict(card["feature_spec"])
        churn = ChurnDefinition(**{**card["churn_definition"], "activity_types": tuple(card["churn_definition"]["activity_types"])})
        threshold = float(card["threshold"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"the model card is incomplete or invalid: {exc!r}", file=str(card_path), hint="Re-export the model") from None
    if not 0.0 <= threshold <= 1.0 or spec.max_len < 1:
        raise InputError(f"the model card has an invalid threshold {threshold} or max_len {spec.max_len}", file=str(card_path), hint="Re-export the model")
    return LoadedModel(session, card, spec, churn, model_dir)


def check_log_matches(model: LoadedModel, log_spec: LogSpec) -> None:
    """Reject a log that lacks inputs the model was trained with."""
    for src in log_spec.sources:
        mapped = {role for role, column in src.columns.items() if column}
        if src.columns.get("quantity") and src.columns.get("unit_price"):
            mapped.add("amount")
        missing = sorted(set(model.card.get("input_roles") or []) - mapped)
        if missing:
            raise InputError(
                f"the model was trained with the column roles {missing}, which this data config does not map", file=src.path,
                hint="Map the same roles under `columns:` as in training (see model.json, input_roles)",
            )
    if model.spec.item_vocab:
        missing = [s.path for s in log_spec.sources if not s.columns.get("item_id")]
        if missing:
            raise InputError(
                "the model uses item ids but the data config maps no `item_id` column", file=missing[0],
                hint="Map the item column under `columns:` (the same one used in training)",
            )


def predict(model: LoadedModel, inputs: dict[str, np.ndarray], batch_size: int) -> np.ndarray:
    """P(churn) for every row; rows are batched by length and padding beyond it is cut."""
    return run_session(model.session, inputs, batch_size)


def run_session(session: ort.InferenceSession, inputs: dict[str, np.ndarray], batch_size: int) -> np.ndarray:
    """Run an exported model's session over every row, in length-sorted batches of ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"Expected `batch_size` to be a positive integer, but got {batch_size}")
    out = np.empty(len(inputs["mask"]), dtype=np.float32)
    for idx, length in length_batches(inputs["mask"], batch_size):
        # One fancy index copies only the first `length` steps of the batch's rows.
        feed = {k: np.ascontiguousarray(inputs[k][idx, :length]) for k in ("event_type", "item", "numeric", "mask")}
        feed["static"] = np.ascontiguousarray(inputs["static"][idx])
        out[idx] = session.run([OUTPUT_NAME], feed)[0]
    return out


def run_outputs(session: ort.InferenceSession, inputs: dict[str, np.ndarray], batch_size: int, names: list[str]) -> dict[str, np.ndarray]:
    """Like :func:`run_session`, but return every output in ``names`` (rows in input order)."""
    if batch_size < 1:
        raise ValueError(f"Expected `batch_size` to be a positive integer, but got {batch_size}")
    n = len(inputs["mask"])
    out: dict[str, np.ndarray] = {}
    for idx, length in length_batches(inputs["mask"], batch_size):
        feed = {k: np.ascontiguousarray(inputs[k][idx, :length]) for k in ("event_type", "item", "numeric", "mask")}
        feed["static"] = np.ascontiguousarray(inputs["static"][idx])
        for name, values in zip(names, session.run(names, feed)):
            if name not in out:
                out[name] = np.empty((n, *values.shape[1:]), dtype=np.float32)
            out[name][idx] = values
    return out


def horizon_columns(model: LoadedModel) -> list[str]:
    """Score columns a hazard model adds: P(no activity within each horizon), expected days."""
    hazard = model.card.get("hazard")
    if not hazard:
        return []
    return [f"churn_probability_{int(h)}d" for h in hazard["horizons_days"]] + ["expected_days_to_activity"]


def predict_frame(model: LoadedModel, features: Features, batch_size: int) -> pd.DataFrame:
    """Score ``features``: churn_probability, plus the horizon columns of a hazard model."""
    names = list(model.card.get("output_names") or [OUTPUT_NAME])
    outputs = run_outputs(model.session, features.inputs, batch_size, names)
    prob = outputs[OUTPUT_NAME]
    bad = ~np.isfinite(prob) | (prob < 0) | (prob > 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"the model returned {int(bad.sum())} probabilities that are not finite or outside [0, 1], e.g. {prob[i]!r} "
            f"for customer {features.frame['customer_id'].iloc[i]!r}",
            file=str(model.model_dir), hint="The model file is broken; re-export it from its checkpoint",
        )
    out = features.frame.copy()
    out.insert(1, "churn_probability", outputs[OUTPUT_NAME])
    extra = horizon_columns(model)
    if extra:
        horizon = outputs["horizon_probability"]
        for j, column in enumerate(extra[:-1]):
            out[column] = horizon[:, j]
        out["expected_days_to_activity"] = outputs["expected_days_to_activity"]
    return out


@dataclass
class ScoreStats:
    """Counts and timings for the run summary.

    ``seconds`` sums the time of each stage over all pieces. In one process these are the
    main thread's ``read_wait``, ``prepare``, ``features`` and ``inference_wait`` plus the
    inference thread's ``inference``, which overlaps them. With worker processes they are
    the workers' ``read``, ``prepare``, ``features`` and ``inference``, which run side by side.
    """

    rows_read: int = 0
    events: int = 0
    customers_scored: int = 0
    customers_seen: int = 0
    pieces: int = 0
    largest_piece_rows: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def add_time(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds


# --------------------------------------------------------------------------------------
# Pieces: customer-complete groups of raw tables
# --------------------------------------------------------------------------------------


@dataclass
class Piece:
    """Raw tables that together contain the whole history of their customers."""

    name: str
    tables: list[tuple[pa.Table, SourceSpec, str, int]]  # (table, source, file, first row)
    bucket: HashBucket | None = None  # set when the piece was chosen by its customers' hash
    read_report: LoadReport = field(default_factory=LoadReport)
    """Rows that reading itself skipped (``csv.invalid_rows: skip``), already counted as read and dropped."""

    @property
    def rows(self) -> int:
        return sum(t.num_rows for t, _, _, _ in self.tables)


def is_customer_partitioned(log_spec: LogSpec) -> bool:
    """True for a single source that is a directory of ``bucket=`` partitions.

    Two sources are never streamed, because one customer's events may sit in both.
    """
    if len(log_spec.sources) != 1:
        return False
    path = Path(log_spec.sources[0].path)
    return path.is_dir() and any(p.is_dir() for p in path.glob("bucket=*"))


def _partition_of(file: str) -> str:
    """Return the ``bucket=`` directory that contains ``file``, or the file itself outside one."""
    parent = Path(file).parent
    return str(parent) if parent.name.startswith("bucket=") else file


def iter_pieces(log_spec: LogSpec, stream: bool, partitions: list[PartitionRef] | None = None) -> Iterator[Piece]:
    """Yield the log as one piece, or (``stream``) as one piece per partition in path order.

    With ``partitions`` (streaming only), only those partitions are read.
    """
    if partitions is not None:
        for ref in partitions:
            yield read_partition(ref, log_spec)
        return
    log_values = not log_spec.pseudonymised
    if not stream:
        read_report = LoadReport()
        tables = [(t, src, f, r) for src in log_spec.sources for t, f, r in iter_source_tables(src, report=read_report, log_values=log_values)]
        yield Piece("all sources", tables, read_report=read_report)
        return
    for src in log_spec.sources:
        read_report = LoadReport()
        chunks = iter_source_tables(src, report=read_report, log_values=log_values)
        for name, group in itertools.groupby(chunks, key=lambda chunk: _partition_of(chunk[1])):
            yield Piece(name, [(t, src, f, r) for t, f, r in group], read_report=read_report)
            # A CSV file is read whole before its first piece, so its skip counts belong to that piece.
            read_report = LoadReport()


def count_rows(log_spec: LogSpec, partitions: list[PartitionRef] | None = None) -> int | None:
    """Count the log's rows (or those of ``partitions``) from Parquet footers; None when a source is not Parquet."""
    import pyarrow.dataset as pads

    total = 0
    paths = [(log_spec.sources[ref.source], ref.path) for ref in partitions] if partitions is not None else [(s, s.path) for s in log_spec.sources]
    for src, name in paths:
        path = Path(name)
        is_parquet = src.format == "parquet" or (src.format is None and (path.is_dir() or path.suffix == ".parquet"))
        if not is_parquet or not path.exists():
            return None
        try:
            total += pads.dataset(str(path), format="parquet", partitioning="hive").count_rows()
        except (pa.ArrowInvalid, OSError):
            return None  # reading the data reports the problem with its file name
    return total


class PartitionGuard:
    """Raise when a customer turns up in a second streamed piece.

    Keeps the sorted 64-bit hashes of every customer seen so far (8 bytes per customer).

    NOTE: two different ids with the same 64-bit hash would also raise; for a million
    customers the chance is about 3e-8. Scoring with ``stream=false`` avoids the check.
    """

    def __init__(self) -> None:
        self._seen = np.empty(0, dtype=np.uint64)

    @property
    def customers(self) -> int:
        return len(self._seen)

    def add(self, customer_ids: np.ndarray, piece: str) -> None:
        """Record the distinct ``customer_ids`` of ``piece``; raise InputError if one was seen before."""
        hashes = np.sort(customer_hash(customer_ids))
        if len(self._seen):
            pos = np.minimum(np.searchsorted(self._seen, hashes), len(self._seen) - 1)
            again = self._seen[pos] == hashes
            if again.any():
                repeated = customer_ids[np.isin(customer_hash(customer_ids), hashes[again])][0]
                raise InputError(
                    f"customer {repeated!r} appears in partition {piece} and in an earlier partition, so streaming "
                    "would score each part of its history separately",
                    file=piece,
                    hint="Partition the log by customer (every customer's events under one bucket=), or score with stream=false",
                )
        # Stable sort of two sorted runs is a linear merge.
        self._seen = np.sort(np.concatenate([self._seen, hashes]), kind="stable")


def take_shard(events: pd.DataFrame, shard: tuple[int, int], bucket: HashBucket | None = None) -> pd.DataFrame:
    """Keep the rows of customers in shard ``shard[0]`` of ``shard[1]`` (by stable customer hash).

    With ``bucket``, also raise InputError unless every customer hashes to that bucket, because
    the other shards' partitions were skipped on that assumption.
    """
    codes, uniques = pd.factorize(events["customer_id"])
    hashes = customer_hash(np.asarray(uniques, dtype=object))
    if bucket is not None:
        bucket.check(uniques, hashes)
    mine = hashes % np.uint64(shard[1]) == np.uint64(shard[0])
    keep = mine[codes]
    if keep.all():
        return events
    return events.loc[keep].reset_index(drop=True)


# --------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------


def _empty_scores() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": pd.Series([], dtype="str"),
            "churn_probability": pd.Series([], dtype="float32"),
            "days_since_last_activity": pd.Series([], dtype="float32"),
            "n_events": pd.Series([], dtype="int32"),
        }
    )


def may_be_active(events: pd.DataFrame, as_of: pd.Timestamp, churn: ChurnDefinition) -> np.ndarray:
    """Mark rows of customers with an activity-type event in the lookback window before ``as_of``.

    Every customer that ``make_snapshot`` finds active at ``as_of``, with or without
    merged order lines, is among them: a merged order starts at its earliest line, which
    has the order's event type. Dropping the other customers' rows first changes no score.
    """
    ts = events["ts"]
    recent = ((ts >= as_of - churn.lookback) & (ts < as_of)).to_numpy() & events["event_type"].isin(churn.activity_types).to_numpy()
    if len(events) == 0:
        return recent
    # Finalised events are sorted by customer, so each customer is one run of rows and no
    # string needs hashing. The check on the run starts catches any other order.
    ids = pa.chunked_array(pa.array(events["customer_id"].array)).combine_chunks()
    new_run = np.ones(len(ids), dtype=bool)
    new_run[1:] = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1)).fill_null(True).to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(new_run)
    if not pd.Index(ids.take(starts).to_pandas()).is_unique:
        return events["customer_id"].isin(events.loc[recent, "customer_id"].unique()).to_numpy()
    run_is_recent = np.logical_or.reduceat(recent, starts)
    return run_is_recent[np.cumsum(new_run) - 1]


@dataclass
class Features:
    """Model inputs for the customers active at ``as_of`` plus the columns reported beside their scores."""

    frame: pd.DataFrame  # customer_id, days_since_last_activity, n_events
    inputs: dict[str, np.ndarray]


def featurise(events: pd.DataFrame, model: LoadedModel, as_of: pd.Timestamp) -> Features:
    """Build model inputs for every customer in canonical ``events`` who is active at ``as_of``."""
    keep = may_be_active(events, as_of, model.churn)
    if not keep.all():
        events = events.loc[keep]
    if model.spec.collapse_orders:
        events = collapse_orders(events)
    snap = make_snapshot(events, as_of, model.churn, with_labels=False)
    if snap.empty:
        return Features(_empty_scores().drop(columns=["churn_probability"]), {})
    arrays = build_arrays(events, snap, model.spec)
    recency_col = model.spec.static_features.index("log_days_since_last_activity")
    # Undo the normalisation to report days in plain units.
    log_days = arrays.static[:, recency_col] * model.spec.static_std[recency_col] + model.spec.static_mean[recency_col]
    frame = pd.DataFrame(
        {
            "customer_id": snap["customer_id"].to_numpy(),
            "days_since_last_activity": np.round(np.expm1(log_days), 2).astype(np.float32),
            "n_events": arrays.mask.sum(1).astype(np.int32),
        }
    )
    return Features(frame, arrays.as_inputs())


def score_events(events: pd.DataFrame, model: LoadedModel, as_of: pd.Timestamp, *, batch_size: int = 256) -> pd.DataFrame:
    """Score canonical events: one row per customer active at ``as_of`` (unsorted, no rank)."""
    features = featurise(events, model, to_utc(as_of))
    if features.frame.empty:
        return _empty_scores()
    return predict_frame(model, features, batch_size)


def prepare_piece(piece: Piece, log_spec: LogSpec, report: LoadReport, shard: tuple[int, int] | None) -> pd.DataFrame:
    """Canonicalise, shard and finalise one piece's raw tables."""
    report.rows_read += piece.read_report.rows_read
    for reason, count in piece.read_report.dropped.items():
        report.drop(reason, count)
    frames = []
    for table, src, file, first_row in piece.tables:
        report.rows_read += table.num_rows
        if file not in report.files:
            report.files.append(file)
        frame = canonicalise(table, src, log_spec, report, file=file, first_row=first_row)
        if shard is not None:
            mine = take_shard(frame, shard, piece.bucket)
            # Other shards score these rows; counting them keeps rows_read == rows_kept + sum(dropped).
            report.drop("other_shard", len(frame) - len(mine))
            frame = mine
        frames.append(frame)
    return finalise(frames, report)


@dataclass
class PieceResult:
    """Scores, load report and counts of one scored piece, for the merge step."""

    name: str
    rows: int
    scored: pd.DataFrame
    report: LoadReport
    customers: np.ndarray  # distinct customer ids (object array), for the partition guard
    events_before_as_of: int
    seconds: dict[str, float]


def score_log(
    log_spec: LogSpec,
    model: LoadedModel,
    as_of: str | pd.Timestamp,
    *,
    batch_size: int = 256,
    shard: tuple[int, int] | None = None,
    stream: str | bool = "auto",
    workers: int = 1,
    progress: bool = True,
    drift: Any = None,
) -> tuple[pd.DataFrame, LoadReport, ScoreStats]:
    """Score a whole log; return ranked scores, the load report and run statistics.

    ``stream``: ``"auto"`` streams a customer-partitioned log (see
    :func:`is_customer_partitioned`), ``True`` streams any log piece by piece (and raises
    if a customer spans pieces), ``False`` reads the log whole.

    ``workers``: processes that score partitions side by side when streaming (0 = one per
    usable core). With 1, one process overlaps reading, pandas work and inference in
    threads. Each worker keeps one partition in memory at a time.
    """
    as_of = to_utc(as_of)
    check_log_matches(model, log_spec)
    use_system_memory_pool()
    if stream not in ("auto", True, False):
        raise ValueError(f"Expected `stream` to be auto, true or false, but got {stream!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"Expected `workers` to be 0 (one per core) or a positive integer, but got {workers!r}")
    stream_on = is_customer_partitioned(log_spec) if stream == "auto" else bool(stream)
    partitions = list_partitions(log_spec) if stream_on else []
    chosen = None  # the partitions a shard reads, when it can skip the others
    if shard is not None and stream_on:
        own = shard_partitions(log_spec, partitions, shard)
        if own is not partitions:
            log.info("shard %d/%d reads %d of %d partitions: the others hold other shards' customers", shard[0], shard[1], len(own), len(partitions))
            partitions = chosen = own
    n_workers = min(workers or usable_cores(), max(len(partitions), 1)) if stream_on else 1
    log.info(
        "scoring as of %s, %s", as_of,
        f"{len(partitions)} partitions in {n_workers} worker processes" if n_workers > 1
        else "one partition at a time" if stream_on else "reading the whole log at once",
    )
    if n_workers > 1:
        results = _score_in_processes(partitions, log_spec, model, as_of, shard, batch_size, n_workers)
    else:
        results = _score_in_threads(log_spec, model, as_of, shard, batch_size, stream_on, drift, chosen)

    report, stats, guard, parts = LoadReport(), ScoreStats(), PartitionGuard(), []
    bar = _progress(progress, count_rows(log_spec, chosen))
    started = time.perf_counter()
    for result in results:
        if stream_on:
            guard.add(result.customers, result.name)
        _merge_report(report, result.report)
        stats.customers_seen += len(result.customers)
        stats.events += result.events_before_as_of
        stats.pieces += 1
        stats.largest_piece_rows = max(stats.largest_piece_rows, result.rows)
        for stage, seconds in result.seconds.items():
            stats.add_time(stage, seconds)
        parts.append(result.scored)
        if bar is not None:
            bar.update(result.rows)
            elapsed = max(time.perf_counter() - started, 1e-9)
            bar.set_postfix(customers_per_s=f"{stats.customers_seen / elapsed:,.0f}", scored=f"{sum(len(p) for p in parts):,}")
    if bar is not None:
        bar.close()
    stats.rows_read = report.rows_read
    report.rows_kept = stats.events
    scores = pd.concat(parts, ignore_index=True) if parts else _empty_scores()
    scores = rank_scores(scores, model, as_of)
    stats.customers_scored = len(scores)
    return scores, report, stats


def usable_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _merge_report(total: LoadReport, part: LoadReport) -> None:
    total.rows_read += part.rows_read
    for reason, count in part.dropped.items():
        total.drop(reason, count)
    for reason, count in part.changed.items():
        total.change(reason, count)
    total.files.extend(f for f in part.files if f not in total.files)


def _prepared(piece: Piece, log_spec: LogSpec, as_of: pd.Timestamp, shard: tuple[int, int] | None) -> tuple[pd.DataFrame, LoadReport, np.ndarray, int]:
    """Prepare one piece; return its events, load report, distinct customers and events before ``as_of``."""
    report = LoadReport()
    events = prepare_piece(piece, log_spec, report, shard)
    customers = np.asarray(events["customer_id"].unique(), dtype=object)
    before = int((events["ts"] < as_of).sum())
    # Events at or after as_of are the future of this snapshot: no input reads them, so they
    # are counted as dropped and rows_read == rows_kept + sum(dropped) holds for the run.
    report.drop("at_or_after_as_of", len(events) - before)
    return events, report, customers, before


def _score_in_threads(
    log_spec: LogSpec, model: LoadedModel, as_of: pd.Timestamp, shard: tuple[int, int] | None, batch_size: int, stream: bool,
    drift: Any = None, partitions: list[PartitionRef] | None = None,
) -> Iterator[PieceResult]:
    """Score piece by piece in this process: a reader thread reads ahead, an inference thread runs behind.

    ``drift`` (a :class:`seqchurn.drift.ScoreDrift`) receives every piece's inputs and scores.
    With ``partitions``, only those are read.
    """

    def infer(features: Features) -> tuple[pd.DataFrame, float]:
        t0 = time.perf_counter()
        if features.frame.empty:
            return _empty_scores(), 0.0
        scored = predict_frame(model, features, batch_size)
        if drift is not None:
            # One inference thread runs the pieces in turn, so the counts need no lock.
            drift.update(features.inputs, scored["churn_probability"].to_numpy())
        return scored, time.perf_counter() - t0

    def finish(pending: tuple[Future, PieceResult]) -> PieceResult:
        future, result = pending
        t0 = time.perf_counter()
        result.scored, result.seconds["inference"] = future.result()
        result.seconds["inference_wait"] = time.perf_counter() - t0
        return result

    pending: tuple[Future, PieceResult] | None = None
    with ThreadPoolExecutor(1, thread_name_prefix="seqchurn-read") as reader, ThreadPoolExecutor(1, thread_name_prefix="seqchurn-infer") as inferrer:
        pieces = iter_pieces(log_spec, stream, partitions)
        next_piece = reader.submit(next, pieces, None)
        while True:
            t0 = time.perf_counter()
            piece = next_piece.result()
            read_wait = time.perf_counter() - t0
            if piece is None:
                break
            next_piece = reader.submit(next, pieces, None)

            t0 = time.perf_counter()
            events, report, customers, n_events = _prepared(piece, log_spec, as_of, shard)
            name, rows = piece.name, piece.rows
            del piece
            t1 = time.perf_counter()
            features = featurise(events, model, as_of)
            del events
            seconds = {"read_wait": read_wait, "prepare": t1 - t0, "features": time.perf_counter() - t1}

            if pending is not None:
                yield finish(pending)
            result = PieceResult(name, rows, _empty_scores(), report, customers, n_events, seconds)
            pending = (inferrer.submit(infer, features), result)
        if pending is not None:
            yield finish(pending)


# --------------------------------------------------------------------------------------
# Worker processes
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HashBucket:
    """Partition ``index`` of a log whose partition ``b`` contains the customers with ``shard_of(id, count) == b``."""

    index: int
    count: int
    path: str

    def check(self, customer_ids: Any, hashes: np.ndarray) -> None:
        """Raise InputError unless every customer (``hashes`` from ``customer_hash``) hashes to this bucket."""
        wrong = hashes % np.uint64(self.count) != np.uint64(self.index)
        if wrong.any():
            i = int(np.flatnonzero(wrong)[0])
            raise InputError(
                f"customer {customer_ids[i]!r} is in partition bucket={self.index}, but seqchurn's customer hash puts it in "
                f"bucket {int(hashes[i] % np.uint64(self.count))} of {self.count}, so a shard cannot skip the other partitions",
                file=self.path,
                hint=f"Correct `hash_buckets` on the source in the data config, or remove {HASH_PARTITIONED_FILE} if the log was "
                "re-partitioned after `seqchurn synth` wrote it, or score this log without `shard`",
            )


@dataclass(frozen=True)
class PartitionRef:
    """A partition to read: a ``bucket=`` directory or a single file of source ``source``."""

    source: int
    path: str
    bucket: HashBucket | None = None  # set when only the shard's own partitions are read


HASH_PARTITIONED_FILE = "_synthetic.json"
"""Written by ``seqchurn synth`` beside its ``bucket=`` directories; ``n_partitions`` is their count."""


def hash_bucket_count(log_spec: LogSpec) -> int | None:
    """Return the number of ``bucket=`` partitions when they follow seqchurn's customer hash, else None.

    A log declares that bucket ``b`` contains exactly the customers with
    ``shard_of(customer_id, n) == b`` through its source's ``hash_buckets: n`` in the data
    config, or, as ``seqchurn synth`` writes it, through ``n_partitions`` in
    ``_synthetic.json``. Nothing is assumed for other logs. Pseudonymised runs shard by
    token, not by the raw ids the buckets were made from, so they never qualify.
    """
    if len(log_spec.sources) != 1 or log_spec.pseudonymised:
        return None
    if log_spec.sources[0].hash_buckets is not None:
        return log_spec.sources[0].hash_buckets
    marker = Path(log_spec.sources[0].path) / HASH_PARTITIONED_FILE
    try:
        count = json.loads(marker.read_text(encoding="utf-8")).get("n_partitions")
    except (OSError, ValueError, AttributeError):
        return None
    return count if isinstance(count, int) and not isinstance(count, bool) and count >= 1 else None


def shard_partitions(log_spec: LogSpec, partitions: list[PartitionRef], shard: tuple[int, int]) -> list[PartitionRef]:
    """Return the partitions that can hold customers of ``shard``: all of them unless the buckets follow the customer hash.

    With ``n`` buckets made by ``shard_of(id, n)`` and ``n`` a multiple of the shard count,
    shard ``i`` of ``k`` needs only the buckets ``b`` with ``b % k == i``, because
    ``hash % k == (hash % n) % k``. Each such partition is checked while it is read.
    """
    count = hash_bucket_count(log_spec)
    index, shards = shard
    if count is None or count % shards:
        return partitions
    chosen = []
    for ref in partitions:
        name = Path(ref.path).name
        number = name.removeprefix("bucket=")
        if not name.startswith("bucket=") or not number.isdigit() or int(number) >= count:
            log.warning(
                "partition %s is not one of the %d declared hash buckets, so shard %d/%d reads every partition; "
                "check `hash_buckets` in the data config", ref.path, count, index, shards,
            )
            return partitions
        if int(number) % shards == index:
            chosen.append(dataclasses.replace(ref, bucket=HashBucket(int(number), count, ref.path)))
    return chosen


def read_partition(ref: PartitionRef, log_spec: LogSpec) -> Piece:
    """Read one partition into a piece."""
    src = log_spec.sources[ref.source]
    part = dataclasses.replace(src, path=ref.path)
    read_report = LoadReport()
    tables = [(t, src, f, r) for t, f, r in iter_source_tables(part, report=read_report, log_values=not log_spec.pseudonymised)]
    return Piece(ref.path, tables, ref.bucket, read_report)


def list_partitions(log_spec: LogSpec) -> list[PartitionRef]:
    """List every source's partitions in path order, reading only file names."""
    import pyarrow.dataset as pads

    refs = []
    for i, src in enumerate(log_spec.sources):
        path = Path(src.path)
        if not path.is_dir():
            refs.append(PartitionRef(i, str(path)))
            continue
        files = sorted(f.path for f in pads.dataset(str(path), format="parquet", partitioning="hive").get_fragments())
        refs.extend(PartitionRef(i, name) for name, _ in itertools.groupby(files, key=_partition_of))
    return refs


_worker_model: LoadedModel | None = None


def _start_worker(model_dir: Path) -> None:
    global _worker_model
    use_system_memory_pool()
    _worker_model = load_model(model_dir, intra_op_threads=1)


def _score_partition(ref: PartitionRef, log_spec: LogSpec, as_of: pd.Timestamp, shard: tuple[int, int] | None, batch_size: int) -> PieceResult:
    """Read, prepare and score one partition in a worker process."""
    t0 = time.perf_counter()
    piece = read_partition(ref, log_spec)
    t1 = time.perf_counter()
    events, report, customers, n_events = _prepared(piece, log_spec, as_of, shard)
    rows = piece.rows
    del piece
    t2 = time.perf_counter()
    features = featurise(events, _worker_model, as_of)
    del events
    t3 = time.perf_counter()
    scored = predict_frame(_worker_model, features, batch_size) if not features.frame.empty else _empty_scores()
    seconds = {"read": t1 - t0, "prepare": t2 - t1, "features": t3 - t2, "inference": time.perf_counter() - t3}
    return PieceResult(ref.path, rows, scored, report, customers, n_events, seconds)


def _score_in_processes(
    partitions: list[PartitionRef], log_spec: LogSpec, model: LoadedModel, as_of: pd.Timestamp,
    shard: tuple[int, int] | None, batch_size: int, workers: int,
) -> Iterator[PieceResult]:
    """Score partitions in ``workers`` processes; yield the results in partition order."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if model.model_dir is None:
        raise ValueError("Expected a model opened with load_model(model_dir) for scoring in worker processes, or workers=1")
    # spawn, not fork: this process may already run onnxruntime and tqdm threads.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(model.model_dir,)) as pool:
        futures = [pool.submit(_score_partition, ref, log_spec, as_of, shard, batch_size) for ref in partitions]
        try:
            for future in futures:
                yield future.result()
        finally:
            for future in futures:
                future.cancel()


def score_drift_summary(model: LoadedModel, scores: pd.DataFrame, threshold: float) -> list[dict[str, Any]] | None:
    """PSI of this run's score distribution against the validation scores stored at export.

    NOTE: runs that score partitions in worker processes (workers > 1) compare only the
    score distribution, because the workers' model inputs are not sent back; per-feature
    PSI for such a log is available with `seqchurn drift --model-dir`.
    """
    from seqchurn.drift import psi_from_reference

    reference = (model.card.get("drift_reference") or {}).get("score")
    if reference is None or scores.empty:
        return None
    value = float(psi_from_reference(reference, scores["churn_probability"].to_numpy(dtype=np.float64)))
    if value > threshold:
        log.warning("score distribution drifted from validation: PSI %.3f > %.2f", value, threshold)
    return [{"feature": "churn_probability", "kind": "score", "psi": value, "drifted": value > threshold, "threshold": threshold}]


def rank_scores(scores: pd.DataFrame, model: LoadedModel, as_of: pd.Timestamp) -> pd.DataFrame:
    """Sort by risk (ties by customer id), add rank, alert flag, model version and as-of date."""
    scores = scores.sort_values(["churn_probability", "customer_id"], ascending=[False, True], kind="stable", ignore_index=True)
    scores["rank"] = np.arange(1, len(scores) + 1, dtype=np.int64)
    scores["alert"] = scores["churn_probability"] >= model.threshold
    scores["model_version"] = model.version
    scores["as_of"] = as_of
    extra = horizon_columns(model)
    for column in extra:
        if column not in scores:  # an empty result has no horizon columns yet
            scores[column] = pd.Series(dtype="float32")
    return scores[[*SCORE_COLUMNS, *extra]]


def _progress(enabled: bool, total_rows: int | None) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    # The bar counts raw rows (events) read; its rate is events per second.
    return tqdm(total=total_rows, unit=" events", unit_scale=True, desc="scoring", mininterval=1.0)


def shard_suffix(shard: tuple[int, int] | None) -> str:
    """File name suffix of a shard's outputs: ``-part-00002-of-00008`` for shard 2 of 8."""
    return f"-part-{shard[0]:05d}-of-{shard[1]:05d}" if shard else ""


def write_outputs(scores: pd.DataFrame, out_dir: Path, shard: tuple[int, int] | None) -> dict[str, str]:
    """Write scores (Parquet) and alerts (CSV) atomically; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = shard_suffix(shard)
    scores_path = out_dir / f"scores{suffix}.parquet"
    alerts_path = out_dir / f"alerts{suffix}.csv"
    atomic_write_parquet(scores, scores_path)
    alerts = scores[scores["alert"]].drop(columns=["alert"])
    atomic_to_csv(alerts, alerts_path)
    return {"scores": str(scores_path), "alerts": str(alerts_path)}


def parse_as_of(value: Any) -> pd.Timestamp:
    """Parse the as-of date of a scoring run (a date or ISO date-time string) to UTC."""
    hint = "Give as_of as YYYY-MM-DD (or an ISO 8601 date-time); customers are scored as of that moment"
    if value is None or value == "":
        raise InputError("no as-of date given", hint=hint)
    if not isinstance(value, str):
        # Hydra turns as_of=20111209 into an int, which pandas would read as nanoseconds since 1970.
        raise InputError(f"as_of must be a date string, but got the {type(value).__name__} {value!r}", hint=hint)
    try:
        return to_utc(value)
    except (ValueError, TypeError) as exc:
        raise InputError(f"cannot parse as_of {value!r}: {exc}", hint=hint) from None


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the `seqchurn score` task (load, score, write, summarise) and return the run summary."""
    as_of = parse_as_of(cfg.get("as_of"))
    shard = None
    if cfg.get("shard"):
        try:
            shard = parse_shard(str(cfg.shard))
        except ValueError as exc:
            raise InputError(str(exc), hint="Use shard=i/n with 0 <= i < n, e.g. shard=0/4") from None
    if not isinstance(cfg.batch_size, int) or isinstance(cfg.batch_size, bool) or cfg.batch_size < 1:
        raise InputError(f"Expected `batch_size` to be a positive integer, but got {cfg.batch_size!r}")
    out_dir = Path(hydra.utils.to_absolute_path(cfg.output_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    config = OmegaConf.to_container(cfg, resolve=True)
    with track_run("score", out_dir / f"run_summary{shard_suffix(shard)}.json", config=config) as summary:
        summary.details["shard"] = cfg.get("shard")
        with summary.stage("load_model"):
            model = load_model(hydra.utils.to_absolute_path(cfg.model_dir), intra_op_threads=int(cfg.threads))
        log_spec = LogSpec.from_config(cfg.data)
        for src in log_spec.sources:
            src.path = hydra.utils.to_absolute_path(src.path)
        from seqchurn.drift import ScoreDrift

        drift_threshold = float(cfg.get("drift_threshold") or 0.2)
        drift = ScoreDrift.from_card(model.card, threshold=drift_threshold)
        with summary.stage("score"):
            scores, report, stats = score_log(
                log_spec, model, as_of, batch_size=int(cfg.batch_size), shard=shard, stream=cfg.stream,
                workers=int(cfg.workers), progress=bool(cfg.progress), drift=drift,
            )
        summary.add_load_report(report)
        with summary.stage("write"):
            paths = write_outputs(scores, out_dir, shard)
        n_alerts = int(scores["alert"].sum())
        if stats.customers_scored == 0:
            log.warning(
                "no customer is active as of %s in this log (data=%s; the model was trained on data=%s): check as_of and the data config",
                cfg.as_of, cfg.data.get("name"), model.card.get("data_name"),
            )
        elif n_alerts == 0:
            log.warning("no customer reaches the alert threshold %.3f: alerts.csv is empty", model.threshold)
        if drift is not None and drift.n_rows:
            drift_report = drift.compute()
            summary.drift = drift_report["features"]
            summary.details["drift"] = {key: drift_report[key] for key in ("threshold", "drifted", "warnings")}
        else:
            summary.drift = score_drift_summary(model, scores, drift_threshold)
        if cfg.get("alerts") is not None and cfg.alerts.get("enabled", True):
            from seqchurn.alerts.cli import run_alerts

            with summary.stage("alerts"):
                summary.details["alert_run"] = run_alerts(scores, log_spec, model, cfg.as_of, cfg.alerts, shard=shard)
        summary.customers_scored, summary.alerts = stats.customers_scored, n_alerts
        summary.details.update(
            {
                "model_version": model.version,
                "as_of": str(to_utc(cfg.as_of)),
                "threshold": model.threshold,
                "events_before_as_of": stats.events,
                "customers_seen": stats.customers_seen,
                "pieces": stats.pieces,
                "largest_piece_rows": stats.largest_piece_rows,
                "score_seconds": stats.seconds,
                "outputs": paths,
            }
        )
    log.info("scored %d customers (%d alerts at threshold %.3f) in %.1f s", stats.customers_scored, n_alerts, model.threshold, sum(summary.durations_s.values()))
    print(f"scores: {paths['scores']}\nalerts: {paths['alerts']} ({n_alerts} customers at or above threshold {model.threshold:.3f})")
    print(f"report: seqchurn report --model-dir {hydra.utils.to_absolute_path(cfg.model_dir)} --scores {paths['scores']}")
    return summary.to_dict()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="score")
@exits_on_error
def main(cfg: DictConfig) -> None:
    if cfg.threads:
        os.environ.setdefault("OMP_NUM_THREADS", str(cfg.threads))
    run(cfg)


if __name__ == "__main__":
    main()
