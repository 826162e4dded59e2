"""End to end on a slice of the bundled real data: train -> export -> score -> alerts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import open_dict

from seqchurn.data.io import LogSpec
from seqchurn.data.schema import InputError
from seqchurn.export import export
from seqchurn.score import load_model, rank_scores, score_log, write_outputs
from seqchurn.train import train


def test_fast_dev_run(cfg_train):
    with open_dict(cfg_train):
        cfg_train.trainer.fast_dev_run = True
        cfg_train.callbacks = None
    assert train(cfg_train) == {}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, retail_slice):
    """Train once for the tests below (a few batches), then export."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from conftest import tiny_overrides
    from seqchurn.conf_utils import CONFIG_DIR

    tmp = tmp_path_factory.mktemp("trained")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=tiny_overrides(tmp, retail_slice))
    GlobalHydra.instance().clear()
    summary = train(cfg)
    ckpt_dir = Path(cfg.paths.checkpoint_dir)
    export(ckpt_dir)
    return cfg, summary, ckpt_dir


def test_training_writes_metrics_and_summary(trained):
    cfg, summary, ckpt_dir = trained
    metrics = json.loads((ckpt_dir / "test_metrics.json").read_text())
    for key in ("auroc", "average_precision", "brier"):
        assert 0.0 <= metrics["model"][key] <= 1.0
        assert 0.0 <= metrics["baseline_recency"][key] <= 1.0
    assert 0.0 < summary["threshold"] < 1.0
    assert summary["temperature"] > 0
    assert (ckpt_dir / "best.ckpt").exists()
    assert summary["n_snapshots"]["test"] > 0
    for key in ("test/auroc", "test/auprc", "test/f1", "test/brier", "test/loss"):
        assert key in summary["logged_test_metrics"], key


def test_export_card_travels_with_the_model(trained):
    _, summary, ckpt_dir = trained
    card = json.loads((ckpt_dir / "model.json").read_text())
    assert card["threshold"] == summary["threshold"]
    assert card["feature_spec"] == summary["feature_spec"]
    assert card["churn_definition"]["horizon_days"] == 90
    assert card["parity_max_abs_diff"] <= 1e-4
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(ckpt_dir / "model.onnx")).metadata_props}
    assert json.loads(meta["seqchurn"])["model_version"] == card["model_version"]


def test_score_writes_ranked_scores_and_alerts(trained, tmp_path):
    cfg, _, ckpt_dir = trained
    model = load_model(ckpt_dir)
    scores, report, stats = score_log(LogSpec.from_config(cfg.data), model, "2011-12-09", progress=False)
    paths = write_outputs(scores, tmp_path, None)
    out = pd.read_parquet(paths["scores"])
    alerts = pd.read_csv(paths["alerts"], dtype={"customer_id": str})
    assert len(out) == stats.customers_scored > 0
    assert out["customer_id"].is_unique
    assert out["rank"].tolist() == list(range(1, len(out) + 1))
    assert np.all(np.diff(out["churn_probability"].to_numpy()) <= 0)
    assert out["churn_probability"].between(0, 1).all()
    assert (alerts["churn_probability"] >= model.threshold).all()
    assert len(alerts) == int((out["churn_probability"] >= model.threshold).sum())
    assert alerts["customer_id"].tolist() == out.loc[out["alert"], "customer_id"].tolist()
    assert report.dropped["missing_customer_id"] > 0


def test_scores_do_not_depend_on_batch_size(trained):
    cfg, _, ckpt_dir = trained
    model = load_model(ckpt_dir)
    spec = LogSpec.from_config(cfg.data)
    a, _, _ = score_log(spec, model, "2011-06-01", batch_size=7, progress=False)
    b, _, _ = score_log(spec, model, "2011-06-01", batch_size=4096, progress=False)
    np.testing.assert_allclose(a["churn_probability"], b["churn_probability"], atol=1e-6)


def test_tampered_model_is_refused(trained, tmp_path):
    _, _, ckpt_dir = trained
    for name in ("model.onnx", "model.json"):
        (tmp_path / name).write_bytes((ckpt_dir / name).read_bytes())
    card = json.loads((tmp_path / "model.json").read_text())
    card["threshold"] = 0.01
    (tmp_path / "model.json").write_text(json.dumps(card))
    with pytest.raises(InputError, match="digest mismatch"):
        load_model(tmp_path)


def test_log_without_item_column_is_refused(trained):
    cfg, _, ckpt_dir = trained
    spec = LogSpec.from_config(cfg.data)
    for src in spec.sources:
        src.columns.pop("item_id")
    with pytest.raises(InputError, match="item_id"):
        score_log(spec, load_model(ckpt_dir), "2011-12-09", progress=False)


def test_zero_alerts_logs_a_warning(trained, caplog):
    cfg, _, ckpt_dir = trained
    model = load_model(ckpt_dir)
    model.card["threshold"] = 1.01
    scores = rank_scores(pd.DataFrame({"customer_id": ["a"], "churn_probability": [0.5], "days_since_last_activity": [1.0], "n_events": [1]}), model, pd.Timestamp("2021-01-01", tz="UTC"))
    assert not scores["alert"].any()


def test_cli_bad_input_exits_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "seqchurn.cli", "score", f"model_dir={tmp_path}", "as_of=2011-12-09", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "model file not found" in result.stderr


def test_score_cli_records_and_delivers_alerts(trained, tmp_path):
    cfg, _, ckpt_dir = trained
    out = tmp_path / "scores"
    overrides = [f"data.sources.{i}.path={src.path}" for i, src in enumerate(cfg.data.sources)]
    result = subprocess.run(
        [
            sys.executable, "-m", "seqchurn.cli", "score", f"model_dir={ckpt_dir}", "as_of=2011-12-09", f"output_dir={out}",
            "alerts=default", f"alerts.store.url={tmp_path / 'alerts.db'}",
            f"alerts.sinks.file_jsonl.directory={tmp_path / 'sent'}", f"alerts.sinks.file_csv.directory={tmp_path / 'sent'}",
            f"hydra.run.dir={tmp_path / 'run'}", "progress=false", *overrides,
        ],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "run_summary.json").read_text())
    alert_run = summary["details"]["alert_run"]
    assert alert_run["status"] == "ok"
    assert alert_run["n_selected"] == summary["alerts"]
    assert (tmp_path / "alerts.db").exists()


def test_log_missing_a_trained_role_is_refused(trained):
    cfg, _, ckpt_dir = trained
    model = load_model(ckpt_dir)
    assert "amount" in model.card["input_roles"]
    spec = LogSpec.from_config(cfg.data)
    for src in spec.sources:
        src.columns.pop("unit_price")
    with pytest.raises(InputError, match="amount"):
        score_log(spec, model, "2011-12-09", progress=False)


@pytest.mark.parametrize("as_of,needle", [("20111209", "must be a date string"), ("garbage", "cannot parse as_of"), ("2011-13-45", "cannot parse as_of")])
def test_cli_bad_as_of_exits_2(trained, tmp_path, as_of, needle):
    _, _, ckpt_dir = trained
    result = subprocess.run(
        [sys.executable, "-m", "seqchurn.cli", "score", f"model_dir={ckpt_dir}", f"as_of={as_of}", f"output_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert needle in result.stderr


def test_broken_model_outputs_are_refused(trained, monkeypatch):
    cfg, _, ckpt_dir = trained
    model = load_model(ckpt_dir)
    real_run = model.session.run

    class NanSession:
        def run(self, names, feed):
            return [np.full_like(out, np.nan) for out in real_run(names, feed)]

    model.session = NanSession()
    with pytest.raises(InputError, match="not finite or outside"):
        score_log(LogSpec.from_config(cfg.data), model, "2011-12-09", progress=False)


@pytest.mark.parametrize("override", ["model=nope", "no_such_key=1"])
def test_cli_bad_override_exits_2(tmp_path, override):
    result = subprocess.run(
        [sys.executable, "-m", "seqchurn.cli", "train", override, f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "invalid override" in result.stderr
