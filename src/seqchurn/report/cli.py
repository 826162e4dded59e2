"""``seqchurn report``: the HTML evaluation report of a trained model.

``seqchurn report --model-dir checkpoints/online_retail_gru
--scores outputs/scores/online_retail_gru/scores.parquet --out outputs/report/online_retail_gru``
writes ``report.html`` (self-contained) and ``charts/*.png`` to ``--out`` and prints the
HTML path. The report contains:

- Model charts on the test split: the test snapshots are rebuilt from the data config in
  ``training_summary.json`` and scored with the exported ``model.onnx``. Without an export,
  the training checkpoint and temperature are used, so the command also works right after
  ``seqchurn train``.
- With ``--scores`` (from ``seqchurn score``): tiers (``RiskTiers`` defaults when the file
  has no ``tier`` column), the predicted CLV at the scores' as-of date and the top
  customers at risk.
- Churn and retention by period and the cohort heatmap of the same log.
- K-Means RFM segments at the test cutoff with their observed churn rate, mean predicted
  churn probability and mean predicted CLV.

``--readme-figure docs/img/evaluation.png`` also writes the ROC, calibration and gain charts
of the test split side by side as one PNG.

Exit codes: 0 success, 2 invalid input (the message names the value and the fix), 1 internal failure.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from seqchurn.analytics.cli import DEFAULT_CLV_HORIZON_DAYS, customer_value_at, load_log, segments_at
from seqchurn.analytics.periods import cohort_retention, period_metrics
from seqchurn.conf_utils import REPO_ROOT
from seqchurn.data.datamodule import churn_from_config
from seqchurn.data.schema import InputError
from seqchurn.errors import run_command
from seqchurn.report.html import build_report, save_readme_figure
from seqchurn.utils.run_summary import RunSummary, as_input_error

log = logging.getLogger(__name__)

SUMMARY_FILE = "training_summary.json"
AP_MISMATCH_TOLERANCE = 1e-3
"""Largest difference between the rebuilt and the recorded test average precision that is not reported."""


@dataclass
class TestPredictions:
    """The trained model's churn probabilities on the test snapshots."""

    snapshots: pd.DataFrame  # customer_id, cutoff, label of the test split, in row order
    y_prob: np.ndarray
    threshold: float
    source: str  # the model file that produced y_prob

    @property
    def y_true(self) -> np.ndarray:
        return self.snapshots["label"].to_numpy()


def read_training_summary(model_dir: Path) -> dict[str, Any]:
    """Read ``training_summary.json`` of a training run; raise ``InputError`` when it is missing."""
    path = model_dir / SUMMARY_FILE
    if not path.is_file():
        raise InputError(f"{SUMMARY_FILE} not found", file=str(model_dir), hint="Point --model-dir at the checkpoint folder of `seqchurn train`")
    return json.loads(path.read_text())


def predict_test_split(model_dir: Path, summary: dict[str, Any], *, batch_size: int = 2048) -> TestPredictions:
    """Rebuild the test snapshots of a training run and score them with its model.

    Uses ``model.onnx`` with ``model.json`` when ``model_dir`` has them, else the best
    checkpoint with the fitted temperature. Raises ``InputError`` when the rebuilt features
    differ from the ones the model was trained on (the log or its config changed).
    """
    from seqchurn.data.datamodule import ChurnDataModule
    from seqchurn.data.sequences import FeatureSpec
    from seqchurn.export import MODEL_FILE

    data_cfg = summary["data_config"]
    dm = ChurnDataModule(data_cfg, batch_size=256, cache_dir=data_cfg.get("cache_dir"))
    dm.prepare()
    # Through FeatureSpec, so fields added to the spec after training compare at their defaults.
    if dm.spec.to_dict() != FeatureSpec.from_dict(summary["feature_spec"]).to_dict():
        raise InputError(
            "the test data rebuilt from the training config no longer matches the model's feature spec "
            "(the log or its config changed since training)", file=str(model_dir), hint="Re-train, or restore the original log",
        )
    snapshots = dm.snapshots.loc[dm.snapshots["split"] == "test", ["customer_id", "cutoff", "label"]].reset_index(drop=True)
    arrays = dm.arrays["test"]
    if len(snapshots) == 0:
        raise InputError("the test split has no snapshots", file=str(model_dir), hint="Move split.test_cutoff so that customers are active before it")

    if (model_dir / MODEL_FILE).is_file():
        from seqchurn.score import load_model, predict

        model = load_model(model_dir)
        y_prob = predict(model, arrays.as_inputs(), batch_size)
        threshold, source = model.threshold, f"{MODEL_FILE} (version {model.version})"
    else:
        y_prob, source = _predict_with_checkpoint(model_dir, summary, arrays)
        threshold = float(summary["threshold"])
    log.info("scored %d test snapshots with %s", len(snapshots), source)
    _compare_with_training(summary, snapshots["label"].to_numpy(), y_prob)
    return TestPredictions(snapshots, np.asarray(y_prob, dtype=np.float64), threshold, source)


def _predict_with_checkpoint(model_dir: Path, summary: dict[str, Any], arrays: Any) -> tuple[np.ndarray, str]:
    from seqchurn.export import load_net
    from seqchurn.train import predict_logits

    ckpt = Path(summary.get("best_checkpoint") or model_dir / "best.ckpt")
    if not ckpt.is_file():
        ckpt = model_dir / "best.ckpt"
    if not ckpt.is_file():
        raise InputError("neither model.onnx nor a checkpoint found", file=str(model_dir), hint="Run `seqchurn train` (and `seqchurn export`) first")
    logits = predict_logits(load_net(summary, ckpt), arrays)
    temperature = float(summary.get("temperature", 1.0))
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64) / temperature)), f"{ckpt.name} (temperature {temperature:.3f})"


def _compare_with_training(summary: dict[str, Any], y_true: np.ndarray, y_prob: np.ndarray) -> None:
    """Warn when the rebuilt predictions do not reproduce the test average precision recorded at training."""
    from sklearn.metrics import average_precision_score

    recorded = (summary.get("test_metrics") or {}).get("average_precision")
    if recorded is None or len(np.unique(y_true)) < 2:
        return
    rebuilt = float(average_precision_score(y_true, y_prob))
    if abs(rebuilt - recorded) > AP_MISMATCH_TOLERANCE:
        log.warning(
            "test average precision is %.4f here but %.4f at training; the report describes the model as it scores now",
            rebuilt, recorded,
        )


def read_scores(path: Path) -> pd.DataFrame:
    """Read a ``seqchurn score`` Parquet file and add ``tier`` (``RiskTiers`` defaults) when it has none."""
    from seqchurn.alerts.policy import RiskTiers

    if not path.is_file():
        raise InputError("scores file not found", file=str(path), hint="Run `seqchurn score` first, or leave out --scores")
    try:
        scores = pd.read_parquet(path)
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read the scores as Parquet: {err}", file=str(path)) from err
    missing = [c for c in ("customer_id", "churn_probability") if c not in scores.columns]
    if missing:
        raise InputError(f"the scores have no column {missing}", file=str(path), hint="Pass the scores.parquet that `seqchurn score` writes")
    if "tier" not in scores.columns:
        tiers = RiskTiers()
        with as_input_error(f"scores file {path}"):
            scores["tier"] = tiers.assign(scores["churn_probability"])
        log.info("scores have no tier column; assigned tiers %s at cut points %s", tiers.names, tiers.cuts)
    return scores


def add_predicted_clv(scores: pd.DataFrame, events: pd.DataFrame, horizon_days: float) -> pd.DataFrame:
    """Add ``predicted_clv`` at the scores' ``as_of`` date, unless present or the scores have no single as-of date."""
    if "predicted_clv" in scores.columns:
        return scores
    as_of = scores["as_of"].dropna().unique() if "as_of" in scores.columns else []
    if len(as_of) != 1:
        log.warning("scores have %d distinct as_of dates, so no predicted CLV is added to them", len(as_of))
        return scores
    value = customer_value_at(events, pd.Timestamp(as_of[0]), horizon_days)
    clv = value.table["predicted_clv"].rename_axis("customer_id").reset_index()
    merged = scores.merge(clv, on="customer_id", how="left")
    without = int(merged["predicted_clv"].isna().sum())
    if without:
        log.info("%d scored customers have no purchase before %s and no predicted CLV", without, as_of[0])
    return merged


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqchurn report", description="Write the HTML evaluation report of a trained churn model.")
    parser.add_argument("--model-dir", required=True, help="checkpoint folder of `seqchurn train` (with training_summary.json, and model.onnx after export)")
    parser.add_argument("--scores", default=None, help="scores.parquet of `seqchurn score` for the tier, CLV and top-at-risk sections; optional")
    parser.add_argument("--out", default=None, help="output folder; default <repository>/outputs/report/<model-dir name>")
    parser.add_argument("--freq", default="M", help="pandas period frequency of the period and cohort charts: M, W or Q; default M")
    parser.add_argument("--clv-horizon-days", type=float, default=DEFAULT_CLV_HORIZON_DAYS, help="days after the cutoff that the predicted CLV covers; default 365")
    parser.add_argument("--batch-size", type=int, default=2048, help="customers per onnxruntime call; default 2048")
    parser.add_argument("--title", default=None, help="page title; default 'Churn model report: <run name>'")
    parser.add_argument(
        "--readme-figure", default=None,
        help="also write the ROC, calibration and gain charts side by side to this PNG (e.g. docs/img/evaluation.png)",
    )
    return parser


def run_report(args: argparse.Namespace, out: Path, run: RunSummary) -> Path:
    """Build the report for ``args``; return the path of ``report.html``."""
    model_dir = Path(args.model_dir)
    summary = read_training_summary(model_dir)
    scores = read_scores(Path(args.scores)) if args.scores else None

    with run.stage("test_predictions"):
        predictions = predict_test_split(model_dir, summary, batch_size=args.batch_size)
    data_cfg = summary["data_config"]
    with as_input_error("data config section `churn` of the training summary"):
        churn = churn_from_config(data_cfg.get("churn") or {})
    with run.stage("load"):
        events, load_report = load_log(data_cfg)
    run.add_load_report(load_report)

    with run.stage("periods"), as_input_error(f"--freq {args.freq!r}"):
        periods = period_metrics(events, args.freq, churn)
        cohorts = cohort_retention(events, args.freq)

    test_cutoff = predictions.snapshots["cutoff"].max()
    if predictions.snapshots["cutoff"].nunique() > 1:
        log.info("the test split has %d cutoffs; segments use the latest, %s", predictions.snapshots["cutoff"].nunique(), test_cutoff)
    at_cutoff = (predictions.snapshots["cutoff"] == test_cutoff).to_numpy()
    model_probabilities = pd.DataFrame(
        {"customer_id": predictions.snapshots.loc[at_cutoff, "customer_id"].to_numpy(), "churn_probability": predictions.y_prob[at_cutoff]}
    )
    segment_table = None
    with run.stage("segments"):
        try:
            segment_table = segments_at(
                events, test_cutoff, churn, clv_horizon_days=args.clv_horizon_days, predictions=model_probabilities
            ).summary
        except InputError as err:
            log.warning("segments are left out of the report: %s", err)
            run.details["segments_skipped"] = str(err)
    if scores is not None:
        with run.stage("clv"), as_input_error("--clv-horizon-days"):
            scores = add_predicted_clv(scores, events, args.clv_horizon_days)

    metadata = {
        "run": summary.get("run_name", model_dir.name),
        "model": summary.get("model_name", ""),
        "predictions from": predictions.source,
        "data": summary.get("data_name", data_cfg.get("name", "")),
        "test cutoff": str(test_cutoff.date()),
        "test customers": len(predictions.snapshots),
        "churn horizon (days)": churn.horizon_days,
        "decision threshold": predictions.threshold,
        "scores": args.scores or "not given",
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    with run.stage("render"):
        path = build_report(
            out, y_true=predictions.y_true, y_prob=predictions.y_prob, threshold=predictions.threshold, scores=scores,
            period_table=periods, cohort_table=cohorts, segments=segment_table,
            title=args.title or f"Churn model report: {metadata['run']}", metadata=metadata,
        )
        if args.readme_figure:
            run.details["readme_figure"] = save_readme_figure(
                args.readme_figure, y_true=predictions.y_true, y_prob=predictions.y_prob, threshold=predictions.threshold
            )
    run.details.update({"report": path, "test_customers": len(predictions.snapshots), "predictions_from": predictions.source})
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``seqchurn report`` with ``argv``; return the exit code."""
    args = build_parser().parse_args(argv)
    out = Path(args.out) if args.out else REPO_ROOT / "outputs" / "report" / Path(args.model_dir).resolve().name
    code, path = run_command("report", out / "run_summary.json", vars(args), lambda run: run_report(args, out, run))
    if path is not None:
        print(path)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
