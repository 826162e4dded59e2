"""Batch scoring with onnxruntime: event log + exported model + as-of date -> scores and alerts.

``seqchurn score model_dir=checkpoints/online_retail_gru as_of=2011-12-09`` reads the log
named by the data config with the same loader and sequence code as training, scores
every customer active at ``as_of`` and writes:

- ``scores.parquet``: customer_id, churn_probability, rank (1 = highest risk), alert,
  days_since_last_activity, n_events, model_version, as_of;
- ``alerts.csv``: the customers at or above the model's threshold, highest risk first;
- ``run_summary.json``: rows read and dropped by reason, customers scored, alerts, timings.

A Parquet dataset partitioned by customer hash (``bucket=`` directories, as ``seqchurn
synth`` writes) is streamed one partition at a time, so memory stays bounded by the
largest partition. ``shard=i/n`` scores only the customers whose hash falls in shard ``i``
and writes ``part-i-of-n`` files, so many machines can split one log with no coordination.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import onnxruntime as ort
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from seqchurn.conf_utils import CONFIG_DIR, register_resolvers
from seqchurn.data.io import LogSpec, canonicalise, finalise, iter_source_tables
from seqchurn.data.labels import ChurnDefinition, make_snapshot, to_utc
from seqchurn.data.schema import InputError, LoadReport
from seqchurn.data.sequences import FeatureSpec, build_arrays, collapse_orders, length_batches
from seqchurn.errors import exits_on_error
from seqchurn.export import CARD_FILE, MODEL_FILE, OUTPUT_NAME, model_digest
from seqchurn.models.churn_module import INPUT_NAMES
from seqchurn.utils.atomic import atomic_to_csv, atomic_write_json, atomic_write_parquet

log = logging.getLogger(__name__)
register_resolvers()


@dataclass
class LoadedModel:
    """An exported model: its onnxruntime session and its card (``model.json``)."""

    session: ort.InferenceSession
    card: dict[str, Any]
    spec: FeatureSpec
    churn: ChurnDefinition

    @property
    def threshold(self) -> float:
        return float(self.card["threshold"])

    @property
    def version(self) -> str:
        return str(self.card["model_version"])


def load_model(model_dir: str | Path, *, intra_op_threads: int = 0, verify: bool = True) -> LoadedModel:
    """Open ``model.onnx`` + ``model.json``; refuse a tampered or mismatched pair."""
    model_dir = Path(model_dir)
    onnx_path, card_path = model_dir / MODEL_FILE, model_dir / CARD_FILE
    for p in (onnx_path, card_path):
        if not p.exists():
            raise InputError("model file not found", file=str(p), hint="Run `seqchurn export` first, or fix `model_dir`")
    card = json.loads(card_path.read_text())
    onnx_bytes = onnx_path.read_bytes()
    if verify and model_digest(onnx_bytes, card) != card.get("sha256"):
        raise InputError(
            "model digest mismatch: model.onnx or model.json changed after export", file=str(model_dir),
            hint="Re-export the model; never edit model.json by hand",
        )
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    if names != list(INPUT_NAMES) or names != card.get("input_names"):
        raise InputError(f"the ONNX model has inputs {names}, expected {list(INPUT_NAMES)}", file=str(onnx_path), hint="Re-export with this seqchurn version")
    spec = FeatureSpec.from_dict(card["feature_spec"])
    churn = ChurnDefinition(**{**card["churn_definition"], "activity_types": tuple(card["churn_definition"]["activity_types"])})
    return LoadedModel(session, card, spec, churn)


def check_log_matches(model: LoadedModel, log_spec: LogSpec) -> None:
    """Refuse a log that lacks inputs the model was trained with."""
    if model.spec.item_vocab:
        missing = [s.path for s in log_spec.sources if not s.columns.get("item_id")]
        if missing:
            raise InputError(
                "the model uses item ids but the data config maps no `item_id` column", file=missing[0],
                hint="Map the item column under `columns:` (the same one used in training)",
            )


def predict(model: LoadedModel, inputs: dict[str, np.ndarray], batch_size: int) -> np.ndarray:
    """P(churn) for every row; rows are batched by length and padding beyond it is cut."""
    out = np.empty(len(inputs["mask"]), dtype=np.float32)
    for idx, length in length_batches(inputs["mask"], batch_size):
        feed = {k: np.ascontiguousarray(inputs[k][idx][:, :length]) for k in ("event_type", "item", "numeric", "mask")}
        feed["static"] = np.ascontiguousarray(inputs["static"][idx])
        out[idx] = model.session.run([OUTPUT_NAME], feed)[0]
    return out


@dataclass
class ScoreStats:
    """Counts and timings for the run summary."""

    rows_read: int = 0
    events: int = 0
    customers_scored: int = 0
    customers_seen: int = 0
    pieces: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def add_time(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds


def _pieces(log_spec: LogSpec, report: LoadReport, stream: bool) -> Iterator[tuple[list[tuple[Any, Any, str, int]], str]]:
    """Group raw tables into customer-complete pieces: one per partition file when streaming."""
    if stream:
        for src in log_spec.sources:
            for table, file, first_row in iter_source_tables(src):
                yield [(table, src, file, first_row)], file
    else:
        tables = [(t, src, f, r) for src in log_spec.sources for t, f, r in iter_source_tables(src)]
        yield tables, "all sources"


def is_customer_partitioned(log_spec: LogSpec) -> bool:
    """True when every source is a directory of ``bucket=`` partitions (customer-complete)."""
    return all(Path(s.path).is_dir() and any(Path(s.path).glob("bucket=*")) for s in log_spec.sources)


def score_events(events: pd.DataFrame, model: LoadedModel, as_of: pd.Timestamp, *, batch_size: int = 2048) -> pd.DataFrame:
    """Score canonical events: one row per customer active at ``as_of`` (unsorted, no rank)."""
    if model.spec.collapse_orders:
        events = collapse_orders(events)
    snap = make_snapshot(events, as_of, model.churn, with_labels=False)
    if snap.empty:
        return pd.DataFrame({"customer_id": pd.Series([], dtype="str"), "churn_probability": pd.Series([], dtype="float32")})
    arrays = build_arrays(events, snap, model.spec)
    prob = predict(model, arrays.as_inputs(), batch_size)
    recency_col = model.spec.static_features.index("log_days_since_last_activity")
    # Undo the normalisation to report days in plain units.
    log_days = arrays.static[:, recency_col] * model.spec.static_std[recency_col] + model.spec.static_mean[recency_col]
    return pd.DataFrame(
        {
            "customer_id": snap["customer_id"].to_numpy(),
            "churn_probability": prob,
            "days_since_last_activity": np.round(np.expm1(log_days), 2).astype(np.float32),
            "n_events": arrays.mask.sum(1).astype(np.int32),
        }
    )


def score_log(
    log_spec: LogSpec,
    model: LoadedModel,
    as_of: str | pd.Timestamp,
    *,
    batch_size: int = 2048,
    shard: tuple[int, int] | None = None,
    stream: str | bool = "auto",
    progress: bool = True,
) -> tuple[pd.DataFrame, LoadReport, ScoreStats]:
    """Score a whole log; returns ranked scores, the load report and run statistics."""
    as_of = to_utc(as_of)
    check_log_matches(model, log_spec)
    stream_on = is_customer_partitioned(log_spec) if stream == "auto" else bool(stream)
    report, stats, parts = LoadReport(), ScoreStats(), []
    bar = _progress(progress)
    for piece, name in _pieces(log_spec, report, stream_on):
        t0 = time.perf_counter()
        frames = []
        for table, src, file, first_row in piece:
            report.rows_read += table.num_rows
            stats.rows_read += table.num_rows
            frames.append(canonicalise(table, src, log_spec, report, file=file, first_row=first_row))
        events = finalise(frames, report)
        if shard is not None:
            events = _take_shard(events, shard, report)
        # Events at or after as_of are future for this snapshot; they are ignored, not dropped.
        stats.events += int((events["ts"] < as_of).sum())
        stats.add_time("read_and_prepare", time.perf_counter() - t0)
        t1 = time.perf_counter()
        scored = score_events(events, model, as_of, batch_size=batch_size)
        stats.add_time("sequences_and_inference", time.perf_counter() - t1)
        stats.customers_seen += int(events["customer_id"].nunique())
        parts.append(scored)
        stats.pieces += 1
        if bar is not None:
            bar.update(len(scored))
            elapsed = sum(stats.seconds.values())
            bar.set_postfix(events_per_s=f"{stats.events / max(elapsed, 1e-9):,.0f}", piece=Path(name).name)
    if bar is not None:
        bar.close()
    report.rows_kept = stats.events
    scores = pd.concat(parts, ignore_index=True) if parts else score_events(pd.DataFrame(), model, as_of)
    if scores["customer_id"].duplicated().any():
        dup = scores.loc[scores["customer_id"].duplicated(), "customer_id"].iloc[0]
        raise InputError(
            f"customer {dup!r} appears in more than one partition, so its history was split",
            hint="Partition the log by customer hash (seqchurn synth does), or score with stream=false",
        )
    scores = rank_scores(scores, model, as_of)
    stats.customers_scored = len(scores)
    return scores, report, stats


def rank_scores(scores: pd.DataFrame, model: LoadedModel, as_of: pd.Timestamp) -> pd.DataFrame:
    """Sort by risk (ties by customer id), add rank, alert flag, model version and as-of date."""
    scores = scores.sort_values(["churn_probability", "customer_id"], ascending=[False, True], kind="stable", ignore_index=True)
    scores["rank"] = np.arange(1, len(scores) + 1, dtype=np.int64)
    scores["alert"] = scores["churn_probability"] >= model.threshold
    scores["model_version"] = model.version
    scores["as_of"] = as_of
    return scores[["customer_id", "churn_probability", "rank", "alert", "days_since_last_activity", "n_events", "model_version", "as_of"]]


def _take_shard(events: pd.DataFrame, shard: tuple[int, int], report: LoadReport) -> pd.DataFrame:
    from seqchurn.data.sharding import shard_of

    uniq, inverse = np.unique(events["customer_id"].to_numpy(dtype=object), return_inverse=True)
    mine = shard_of(uniq, shard[1]) == shard[0]
    keep = mine[inverse]
    # Other shards' rows are someone else's work, not dropped data: not counted as dropped.
    return events.loc[keep].reset_index(drop=True)


def _progress(enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(unit=" customers", desc="scoring", mininterval=1.0)


def write_outputs(scores: pd.DataFrame, out_dir: Path, shard: tuple[int, int] | None) -> dict[str, str]:
    """Write scores (Parquet) and alerts (CSV) atomically; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = f"-part-{shard[0]:05d}-of-{shard[1]:05d}" if shard else ""
    scores_path = out_dir / f"scores{suffix}.parquet"
    alerts_path = out_dir / f"alerts{suffix}.csv"
    atomic_write_parquet(scores, scores_path)
    alerts = scores[scores["alert"]].drop(columns=["alert"])
    atomic_to_csv(alerts, alerts_path)
    return {"scores": str(scores_path), "alerts": str(alerts_path)}


def run(cfg: DictConfig) -> dict[str, Any]:
    """The `seqchurn score` task: load, score, write, summarise."""
    t0 = time.perf_counter()
    if not cfg.get("as_of"):
        raise InputError("no as-of date given", hint="Add as_of=YYYY-MM-DD (customers are scored as of that moment; later events are ignored)")
    model = load_model(hydra.utils.to_absolute_path(cfg.model_dir), intra_op_threads=int(cfg.threads))
    log_spec = LogSpec.from_config(cfg.data)
    for src in log_spec.sources:
        src.path = hydra.utils.to_absolute_path(src.path)
    shard = None
    if cfg.get("shard"):
        from seqchurn.data.sharding import parse_shard

        shard = parse_shard(str(cfg.shard))
    scores, report, stats = score_log(log_spec, model, cfg.as_of, batch_size=int(cfg.batch_size), shard=shard, stream=cfg.stream, progress=bool(cfg.progress))
    out_dir = Path(hydra.utils.to_absolute_path(cfg.output_dir))
    paths = write_outputs(scores, out_dir, shard)
    n_alerts = int(scores["alert"].sum())
    if n_alerts == 0:
        log.warning("no customer reaches the alert threshold %.3f: alerts.csv is empty", model.threshold)
    summary = {
        "command": "score",
        "status": "ok",
        "model_version": model.version,
        "as_of": str(to_utc(cfg.as_of)),
        "shard": cfg.get("shard"),
        "threshold": model.threshold,
        "rows_read": report.rows_read,
        "rows_dropped": report.dropped,
        "rows_changed": report.changed,
        "events_before_as_of": stats.events,
        "customers_seen": stats.customers_seen,
        "customers_scored": stats.customers_scored,
        "alerts": n_alerts,
        "outputs": paths,
        "seconds": {**stats.seconds, "total": time.perf_counter() - t0},
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    suffix = f"-part-{shard[0]:05d}-of-{shard[1]:05d}" if shard else ""
    atomic_write_json(out_dir / f"run_summary{suffix}.json", summary)
    log.info("scored %d customers (%d alerts at threshold %.3f) in %.1f s", stats.customers_scored, n_alerts, model.threshold, summary["seconds"]["total"])
    print(f"scores: {paths['scores']}\nalerts: {paths['alerts']} ({n_alerts} customers at or above threshold {model.threshold:.3f})")
    return summary


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="score")
@exits_on_error
def main(cfg: DictConfig) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", str(cfg.threads or ""))
    run(cfg)


if __name__ == "__main__":
    main()
