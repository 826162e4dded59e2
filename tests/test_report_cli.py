"""``seqchurn report`` on a tiny model trained on a slice of the bundled data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from seqchurn.cli import main as seqchurn_main
from seqchurn.data.io import LogSpec
from seqchurn.report.cli import predict_test_split, read_scores, read_training_summary


@pytest.fixture(scope="module")
def trained(tmp_path_factory, retail_slice):
    """Train a tiny model on the slice (a few batches), export it and score the slice; return (model dir, scores path)."""
    from _tiny_data import compose_train

    from seqchurn.export import export
    from seqchurn.score import load_model, score_log, write_outputs
    from seqchurn.train import train

    tmp = tmp_path_factory.mktemp("report")
    cfg = compose_train(tmp, retail_slice)
    train(cfg)
    model_dir = Path(cfg.paths.checkpoint_dir)
    export(model_dir)
    scores, _, _ = score_log(LogSpec.from_config(cfg.data), load_model(model_dir), "2011-12-09", progress=False)
    paths = write_outputs(scores, tmp / "scores", None)
    return model_dir, Path(paths["scores"])


@pytest.mark.slow
def test_report_writes_html_and_charts(trained, tmp_path, capsys):
    model_dir, scores = trained
    out = tmp_path / "report"
    code = seqchurn_main(["report", "--model-dir", str(model_dir), "--scores", str(scores), "--out", str(out)])
    assert code == 0
    assert capsys.readouterr().out.strip() == str(out / "report.html")

    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>")
    for chart in ("roc", "calibration", "tier_distribution", "periods", "cohort_retention", "segments"):
        assert (out / "charts" / f"{chart}.png").read_bytes().startswith(b"\x89PNG")
        assert f'id="chart-{chart}"' in html
    assert "model.onnx" in html
    assert "Top 25 customers at risk" in html
    assert json.loads((out / "run_summary.json").read_text())["status"] == "ok"


@pytest.mark.slow
def test_report_writes_readme_figure(trained, tmp_path):
    model_dir, _ = trained
    figure = tmp_path / "img" / "evaluation.png"
    code = seqchurn_main(["report", "--model-dir", str(model_dir), "--out", str(tmp_path / "report"), "--readme-figure", str(figure)])
    assert code == 0
    assert figure.read_bytes().startswith(b"\x89PNG")
    assert not (tmp_path / "report" / "charts" / "tier_distribution.png").exists()


@pytest.mark.slow
def test_checkpoint_predictions_match_onnx(trained, tmp_path):
    model_dir, _ = trained
    summary = read_training_summary(model_dir)
    # A copy without model.onnx: the report falls back to the checkpoint named in the summary.
    shutil.copy(model_dir / "training_summary.json", tmp_path / "training_summary.json")
    from_onnx = predict_test_split(model_dir, summary)
    from_checkpoint = predict_test_split(tmp_path, summary)

    assert from_onnx.source.startswith("model.onnx")
    assert from_checkpoint.source.startswith("best.ckpt")
    assert from_onnx.threshold == pytest.approx(summary["threshold"])
    assert from_checkpoint.threshold == pytest.approx(summary["threshold"])
    np.testing.assert_array_equal(from_onnx.y_true, from_checkpoint.y_true)
    np.testing.assert_allclose(from_onnx.y_prob, from_checkpoint.y_prob, atol=1e-4)
    assert len(from_onnx.y_true) == summary["n_snapshots"]["test"]


@pytest.mark.slow
def test_scores_without_tier_get_default_tiers(trained, tmp_path):
    _, scores_path = trained
    scores = pd.read_parquet(scores_path)
    scores["churn_probability"] = np.linspace(0, 1, len(scores))
    path = tmp_path / "scores.parquet"
    scores.to_parquet(path)

    tiers = read_scores(path)["tier"]
    probability = scores["churn_probability"]
    assert (tiers[probability < 0.4] == "low").all()
    assert (tiers[(probability >= 0.4) & (probability < 0.7)] == "medium").all()
    assert (tiers[probability >= 0.7] == "high").all()


def test_missing_model_dir_exits_2(tmp_path, capsys):
    code = seqchurn_main(["report", "--model-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "training_summary.json not found" in capsys.readouterr().err


def test_scores_without_probability_exit_2(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "training_summary.json").write_text("{}")
    pd.DataFrame({"customer_id": ["a"], "score": [0.5]}).to_parquet(tmp_path / "scores.parquet")
    code = seqchurn_main(["report", "--model-dir", str(tmp_path / "model"), "--scores", str(tmp_path / "scores.parquet"), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "churn_probability" in capsys.readouterr().err
