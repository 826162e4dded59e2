"""``seqchurn drift``: compare two event logs or two scoring runs with the population stability index.

    seqchurn drift --reference online_retail --current new_month.yaml --out outputs/drift
    seqchurn drift --reference online_retail --current new_month.yaml --model-dir checkpoints/online_retail_gru --out outputs/drift
    seqchurn drift --reference may/scores.parquet --current june/scores.parquet --out outputs/drift

- Two logs (data configs, as YAML paths or names under conf/data) with ``--model-dir``:
  the model's inputs and churn probabilities for the customers active at each log's
  as-of date. Inputs are the static features per customer and the event features over
  real events, built with the model's feature spec.
- Two logs without a model: RFM-style aggregates per active customer (recency,
  frequency, monetary value, tenure, return share, events) and the amount and type of
  each event in the lookback window.
- Two scoring runs (``scores.parquet`` of ``seqchurn score``): the churn probability and
  the alert flag.

Bins come from ``--reference`` only (see :mod:`seqchurn.drift`). A log's as-of date
defaults to the day after its last event. Writes ``drift.json``, ``drift.md`` and
``run_summary.json`` into ``--out``.

Exit codes: 0 success (also when drift is found), 2 invalid input, 1 internal failure.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from seqchurn.data.config_file import read_data_config
from seqchurn.data.io import load_events
from seqchurn.data.labels import to_utc
from seqchurn.data.schema import InputError
from seqchurn.drift import DEFAULT_THRESHOLD, ScoreDrift, model_reference, psi_from_reference, reference_histogram
from seqchurn.errors import run_command
from seqchurn.utils.atomic import atomic_write_json, atomic_write_text
from seqchurn.utils.run_summary import RunSummary

log = logging.getLogger(__name__)

SCORE_COLUMN = "churn_probability"
RFM_FEATURES = ("recency_days", "frequency", "monetary", "tenure_days", "return_share", "events")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqchurn drift", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, help="data config (YAML path or conf/data name) or scores.parquet that sets the bins")
    parser.add_argument("--current", required=True, help="data config or scores.parquet to compare against the reference")
    parser.add_argument("--out", required=True, help="folder for drift.json, drift.md and run_summary.json")
    parser.add_argument("--model-dir", help="exported model (model.onnx + model.json): compare logs on the model's inputs and scores")
    parser.add_argument("--reference-as-of", help="as-of date of the reference log (default: the day after its last event)")
    parser.add_argument("--current-as-of", help="as-of date of the current log (default: the day after its last event)")
    parser.add_argument("--lookback-days", type=float, default=365.0, help="window before the as-of date for the aggregates without a model, in days (default 365)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="PSI above which a feature counts as drifted (default 0.2)")
    parser.add_argument("--bins", type=int, default=10, help="quantile bins per numeric feature (default 10)")
    parser.add_argument("--batch-size", type=int, default=1024, help="customers per onnxruntime call with --model-dir (default 1024)")
    return parser


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------


def is_scores_file(reference: str) -> bool:
    """Return whether ``reference`` names a scores Parquet file (one with a churn_probability column)."""
    path = Path(reference)
    if path.suffix != ".parquet" or not path.is_file():
        return False
    import pyarrow.parquet as pq

    return SCORE_COLUMN in pq.read_schema(path).names


def default_as_of(events: pd.DataFrame) -> pd.Timestamp:
    """Return midnight UTC after the last event, so every event is history."""
    return events["ts"].max().floor("D") + pd.Timedelta(days=1)


def load_log(reference: str, as_of: str | None) -> tuple[pd.DataFrame, pd.Timestamp, dict[str, Any]]:
    """Load a log by its data config; return the events, the as-of date and a description."""
    config = read_data_config(reference)
    events, report = load_events(config)
    if events.empty:
        raise InputError("the log has no events after loading", file=", ".join(report.files), hint="Check the drop counts in the log above")
    cutoff = to_utc(as_of) if as_of else default_as_of(events)
    activity_types = list((config.get("churn") or {}).get("activity_types") or ["purchase"])
    return events, cutoff, {"source": reference, "as_of": cutoff, "load": report.to_dict(), "activity_types": activity_types}


# --------------------------------------------------------------------------------------
# Comparisons
# --------------------------------------------------------------------------------------


def compare_frames(reference: pd.DataFrame, current: pd.DataFrame, groups: dict[str, str], threshold: float, bins: int) -> list[dict]:
    """PSI of each column of ``current`` against bins of the same column of ``reference``.

    ``groups`` maps column names to their group label in the report.
    """
    rows = []
    for column, group in groups.items():
        ref, cur = reference[column], current[column]
        if ref.dropna().empty or cur.empty:
            rows.append({"group": group, "feature": column, "psi": None, "drifted": False, "count": int(len(cur))})
            continue
        histogram = reference_histogram(ref, bins)
        value = psi_from_reference(histogram, cur)
        drifted = value > threshold
        if drifted:
            log.warning("%s %r drifted: PSI %.3f is above the threshold %.3f", group, column, value, threshold)
        rows.append({"group": group, "feature": column, "psi": value, "drifted": drifted, "count": int(len(cur))})
    return rows


def rfm_aggregates(events: pd.DataFrame, as_of: pd.Timestamp, lookback_days: float, activity_types: Sequence[str] = ("purchase",)) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-customer aggregates of customers with any event in the lookback, and those events.

    Recency is days from the last activity event to ``as_of`` (missing without one),
    frequency the number of activity orders (events without an order id count alone),
    monetary the summed activity amount, tenure the days since the first event ever.
    """
    past = events[events["ts"] < as_of]
    window = past[past["ts"] >= as_of - pd.Timedelta(days=lookback_days)]
    if window.empty:
        raise InputError(f"no events in the {lookback_days:g} days before {as_of}", hint="Set the as-of date or --lookback-days")
    active = window["event_type"].isin(list(activity_types)).to_numpy()
    order_key = window["order_id"].fillna(pd.Series(np.arange(len(window)).astype(str), index=window.index))
    per_customer = window.assign(
        is_active=active,
        active_amount=np.where(active, window["amount"].to_numpy(), 0.0),
        is_return=(window["event_type"] == "return").to_numpy(),
        active_ts=window["ts"].where(active),
        active_order=order_key.where(active),
    ).groupby("customer_id", sort=True)
    aggregates = pd.DataFrame(
        {
            "last_activity": per_customer["active_ts"].max(),
            "frequency": per_customer["active_order"].nunique().astype("float64"),
            "monetary": per_customer["active_amount"].sum(),
            "returns": per_customer["is_return"].sum().astype("float64"),
            "activities": per_customer["is_active"].sum().astype("float64"),
            "events": per_customer.size().astype("float64"),
        }
    )
    first_seen = past.groupby("customer_id", sort=True)["ts"].min().reindex(aggregates.index)
    aggregates["recency_days"] = (as_of - aggregates["last_activity"]).dt.total_seconds() / 86400.0
    aggregates["tenure_days"] = (as_of - first_seen).dt.total_seconds() / 86400.0
    aggregates["return_share"] = aggregates["returns"] / np.maximum(aggregates["returns"] + aggregates["activities"], 1.0)
    event_rows = pd.DataFrame({"amount": window["amount"].to_numpy(), "event_type": window["event_type"].astype(str).to_numpy()})
    return aggregates[list(RFM_FEATURES)].reset_index(drop=True), event_rows


def compare_logs_rfm(args: argparse.Namespace, summary: RunSummary) -> dict[str, Any]:
    with summary.stage("load"):
        ref_events, ref_as_of, reference = load_log(args.reference, args.reference_as_of)
        cur_events, cur_as_of, current = load_log(args.current, args.current_as_of)
    # Both logs are aggregated with the reference's activity types, so they measure the same thing.
    activity_types = reference["activity_types"]
    with summary.stage("compare"):
        ref_customers, ref_rows = rfm_aggregates(ref_events, ref_as_of, args.lookback_days, activity_types)
        cur_customers, cur_rows = rfm_aggregates(cur_events, cur_as_of, args.lookback_days, activity_types)
        rows = compare_frames(ref_customers, cur_customers, {name: "customer" for name in RFM_FEATURES}, args.threshold, args.bins)
        rows += compare_frames(ref_rows, cur_rows, {"amount": "event", "event_type": "event"}, args.threshold, args.bins)
    reference["customers"], current["customers"] = len(ref_customers), len(cur_customers)
    return {"mode": "logs (RFM aggregates)", "reference": reference, "current": current, "features": rows}


def model_inputs(events: pd.DataFrame, model: Any, as_of: pd.Timestamp, batch_size: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Build the model's inputs for the customers active at ``as_of`` and score them."""
    from seqchurn.score import featurise, predict

    features = featurise(events, model, as_of)
    if features.frame.empty:
        raise InputError(f"no customer is active at {as_of} under the model's churn definition", hint="Set the as-of date of this log")
    return features.inputs, predict(model, features.inputs, batch_size)


def compare_logs_model(args: argparse.Namespace, summary: RunSummary) -> dict[str, Any]:
    from seqchurn.score import load_model

    with summary.stage("load"):
        model = load_model(args.model_dir)
        ref_events, ref_as_of, reference = load_log(args.reference, args.reference_as_of)
        cur_events, cur_as_of, current = load_log(args.current, args.current_as_of)
    with summary.stage("compare"):
        ref_inputs, ref_probs = model_inputs(ref_events, model, ref_as_of, args.batch_size)
        cur_inputs, cur_probs = model_inputs(cur_events, model, cur_as_of, args.batch_size)
        tracker = ScoreDrift(model_reference(ref_inputs, model.spec, ref_probs, n_bins=args.bins), threshold=args.threshold)
        tracker.update(cur_inputs, cur_probs)
        result = tracker.compute()
    reference["customers"], current["customers"] = len(ref_probs), len(cur_probs)
    return {"mode": "logs (model inputs and scores)", "model_version": model.version, "reference": reference, "current": current, "features": result["features"]}


def compare_scores(args: argparse.Namespace, summary: RunSummary) -> dict[str, Any]:
    with summary.stage("load"):
        reference, current = pd.read_parquet(args.reference), pd.read_parquet(args.current)
    for name, frame in ((args.reference, reference), (args.current, current)):
        if frame.empty:
            raise InputError("the scores file has no rows", file=name)
    groups = {SCORE_COLUMN: "score"}
    if "alert" in reference.columns and "alert" in current.columns:
        groups["alert"] = "score"
    with summary.stage("compare"):
        rows = compare_frames(reference, current, groups, args.threshold, args.bins)

    def describe(source: str, frame: pd.DataFrame) -> dict[str, Any]:
        versions = sorted(frame["model_version"].astype(str).unique()) if "model_version" in frame else []
        return {"source": source, "customers": len(frame), "model_versions": versions}

    return {"mode": "scores", "reference": describe(args.reference, reference), "current": describe(args.current, current), "features": rows}


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def render_markdown(report: dict[str, Any]) -> str:
    """Render the drift report as a Markdown page, drifted and highest-PSI features first."""
    lines = [
        "# Drift report",
        "",
        f"Mode: {report['mode']}. PSI threshold: {report['threshold']:g}. "
        f"Drifted: {len(report['drifted'])} of {len(report['features'])} features.",
        "",
        "| | reference | current |",
        "| --- | --- | --- |",
        f"| source | {report['reference']['source']} | {report['current']['source']} |",
        f"| customers | {report['reference']['customers']} | {report['current']['customers']} |",
    ]
    if "as_of" in report["reference"]:
        lines.append(f"| as of | {report['reference']['as_of']} | {report['current']['as_of']} |")
    lines += ["", "| group | feature | PSI | drifted |", "| --- | --- | ---: | --- |"]
    ordered = sorted(report["features"], key=lambda row: (-1.0 if row["psi"] is None else -row["psi"]))
    for row in ordered:
        value = "n/a" if row["psi"] is None else f"{row['psi']:.4f}"
        lines.append(f"| {row['group']} | {row['feature']} | {value} | {'yes' if row['drifted'] else 'no'} |")
    lines += ["", "PSI below 0.1 is commonly read as stable, 0.1 to 0.2 as a moderate shift, above 0.2 as a shift worth investigating.", ""]
    return "\n".join(lines)


def run_drift(args: argparse.Namespace, out: Path, summary: RunSummary) -> dict[str, str]:
    if not args.threshold > 0:
        raise InputError(f"Expected --threshold > 0, but got {args.threshold}")
    if args.bins < 2:
        raise InputError(f"Expected --bins >= 2, but got {args.bins}")
    scores = [is_scores_file(args.reference), is_scores_file(args.current)]
    if scores[0] != scores[1]:
        raise InputError(
            "--reference and --current must both be scores files or both be data configs",
            hint="Compare two scores.parquet files, or two logs given by their data configs",
        )
    if scores[0]:
        report = compare_scores(args, summary)
    elif args.model_dir:
        report = compare_logs_model(args, summary)
    else:
        report = compare_logs_rfm(args, summary)

    report["threshold"] = args.threshold
    report["drifted"] = [f"{row['group']}/{row['feature']}" for row in report["features"] if row["drifted"]]
    summary.drift = report["features"]
    summary.details["drifted"] = report["drifted"]
    json_path, markdown_path = out / "drift.json", out / "drift.md"
    atomic_write_json(json_path, _jsonable(report), allow_nan=False)
    atomic_write_text(markdown_path, render_markdown(report))
    summary.details["outputs"] = {"json": str(json_path), "markdown": str(markdown_path)}
    return {"json": str(json_path), "markdown": str(markdown_path), "drifted": str(len(report["drifted"]))}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``seqchurn drift`` with ``argv``; return the exit code."""
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    code, paths = run_command("drift", out / "run_summary.json", vars(args), lambda summary: run_drift(args, out, summary))
    if paths:
        print(f"drift report: {paths['markdown']} ({paths['drifted']} drifted features)")
    return code
