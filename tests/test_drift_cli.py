"""Drift: the card's reference, streaming PSI while scoring, and `seqchurn drift` on logs and scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from seqchurn.data.sequences import FeatureSpec, SequenceArrays
from seqchurn.drift import ScoreDrift, model_reference, psi_from_reference, reference_histogram, score_drift
from seqchurn.drift_cli import main, rfm_aggregates
from seqchurn.export import verify_card
from trained_model import get_trained_model

STATIC = ["s0", "s1"]
NUMERIC = ["e0", "e1", "e2"]


def random_arrays(rng: np.random.Generator, n: int, shift: float = 0.0) -> SequenceArrays:
    T = 6
    mask = np.arange(T)[None, :] < rng.integers(1, T + 1, n)[:, None]
    numeric = (rng.normal(shift, 1.0, (n, T, len(NUMERIC))) * mask[..., None]).astype(np.float32)
    static = rng.normal(shift, 1.0, (n, len(STATIC))).astype(np.float32)
    zeros = np.zeros((n, T), dtype=np.int64)
    return SequenceArrays(zeros, zeros, numeric, mask, static)


def spec() -> FeatureSpec:
    return FeatureSpec(max_len=6, activity_types=["purchase"], static_features=list(STATIC), numeric_features=list(NUMERIC))


# --------------------------------------------------------------------------------------
# Library: reference and streaming PSI
# --------------------------------------------------------------------------------------


def test_score_drift_matches_direct_psi():
    rng = np.random.default_rng(0)
    reference, current = random_arrays(rng, 400), random_arrays(rng, 300, shift=0.5)
    ref_probs, cur_probs = rng.uniform(size=400), rng.beta(5, 2, size=300)
    card = {"drift_reference": model_reference(reference, spec(), ref_probs)}

    result = score_drift(card, current, cur_probs, threshold=0.2)

    by_name = {(row["group"], row["feature"]): row for row in result["features"]}
    events = current.numeric[current.mask]
    expected = {
        ("static", "s1"): psi_from_reference(reference_histogram(reference.static[:, 1].astype(float), 10, categorical=False), current.static[:, 1].astype(float)),
        ("event", "e2"): psi_from_reference(reference_histogram(reference.numeric[reference.mask][:, 2].astype(float), 10, categorical=False), events[:, 2].astype(float)),
        ("score", "churn_probability"): psi_from_reference(reference_histogram(ref_probs, 10, categorical=False), cur_probs),
    }
    for key, value in expected.items():
        assert by_name[key]["psi"] == pytest.approx(value, rel=1e-9)
    assert result["n_rows"] == 300
    assert result["n_events"] == int(current.mask.sum())
    assert ("static", "s0") in by_name


def test_streamed_updates_equal_one_update():
    rng = np.random.default_rng(1)
    reference, current = random_arrays(rng, 200), random_arrays(rng, 240, shift=0.3)
    probs = rng.uniform(size=240)
    ref = model_reference(reference, spec(), rng.uniform(size=200))
    whole, streamed = ScoreDrift(ref), ScoreDrift(ref)

    whole.update(current, probs)
    for rows in np.array_split(np.arange(240), 5):
        streamed.update(current.take(rows).as_inputs(), probs[rows])

    assert streamed.compute() == whole.compute()


def test_drift_flags_shift_over_threshold():
    rng = np.random.default_rng(2)
    reference = random_arrays(rng, 500)
    card = {"drift_reference": model_reference(reference, spec(), rng.uniform(size=500))}

    same = score_drift(card, random_arrays(rng, 500), rng.uniform(size=500), threshold=0.2)
    shifted = score_drift(card, random_arrays(rng, 500, shift=2.0), rng.uniform(size=500), threshold=0.2)

    assert same["drifted"] == []
    assert same["warnings"] == []
    assert {"static/s0", "static/s1", "event/e0", "event/e1", "event/e2"} <= set(shifted["drifted"])
    assert "score/churn_probability" not in shifted["drifted"]
    assert len(shifted["warnings"]) == len(shifted["drifted"])


def test_card_without_reference_reports_unavailable():
    result = score_drift({"model_version": "old"}, random_arrays(np.random.default_rng(3), 10), None)

    assert result["available"] is False


def test_reference_rejects_mismatched_columns():
    arrays = random_arrays(np.random.default_rng(4), 10)
    wrong = FeatureSpec(max_len=6, activity_types=["purchase"], static_features=["only_one"], numeric_features=list(NUMERIC))

    with pytest.raises(ValueError, match="static"):
        model_reference(arrays, wrong)


# --------------------------------------------------------------------------------------
# `seqchurn drift` on small synthetic logs and scores
# --------------------------------------------------------------------------------------


def write_log(directory: Path, name: str, amount_scale: float, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    n = 1500
    frame = pd.DataFrame(
        {
            "cid": [f"{i:05d}" for i in rng.integers(0, 250, n)],
            "ts": (pd.Timestamp("2021-01-01", tz="UTC") + pd.to_timedelta(rng.uniform(0, 300, n), unit="D")).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "type": rng.choice(["buy", "ret"], n, p=[0.9, 0.1]),
            "amt": rng.exponential(20 * amount_scale, n).round(2),
        }
    )
    frame.to_csv(directory / f"{name}.csv", index=False)
    config = {
        "name": name,
        "sources": [{"path": str(directory / f"{name}.csv"), "columns": {"customer_id": "cid", "timestamp": "ts", "event_type": "type", "amount": "amt"}}],
        "event_types": {"map": {"buy": "purchase", "ret": "return"}},
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def read_report(out: Path) -> dict:
    return json.loads((out / "drift.json").read_text())


def test_same_log_has_no_drift(tmp_path):
    config = write_log(tmp_path, "a", 1.0, seed=0)
    out = tmp_path / "out"

    code = main(["--reference", str(config), "--current", str(config), "--out", str(out)])

    report = read_report(out)
    assert code == 0
    assert report["drifted"] == []
    assert all(row["psi"] == pytest.approx(0.0, abs=1e-12) for row in report["features"])
    assert {row["feature"] for row in report["features"]} == {"recency_days", "frequency", "monetary", "tenure_days", "return_share", "events", "amount", "event_type"}
    assert (out / "drift.md").read_text().startswith("# Drift report")
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["status"] == "ok"
    assert summary["exit_code"] == 0
    assert len(summary["drift"]) == len(report["features"])


def test_larger_amounts_drift(tmp_path):
    reference = write_log(tmp_path, "a", 1.0, seed=0)
    current = write_log(tmp_path, "b", 4.0, seed=1)
    out = tmp_path / "out"

    assert main(["--reference", str(reference), "--current", str(current), "--out", str(out)]) == 0

    report = read_report(out)
    assert "customer/monetary" in report["drifted"]
    assert "event/amount" in report["drifted"]
    assert "event/event_type" not in report["drifted"]
    assert "| customer | monetary |" in (out / "drift.md").read_text()


def test_rfm_aggregates_by_hand():
    events = pd.DataFrame(
        {
            "customer_id": pd.Series(["a", "a", "a", "b"], dtype="str"),
            "ts": pd.to_datetime(["2021-01-01", "2021-01-11", "2021-01-21", "2021-01-05"], utc=True).astype("datetime64[ns, UTC]"),
            "event_type": pd.Categorical(["purchase", "purchase", "return", "view"]),
            "amount": [10.0, 30.0, 5.0, 0.0],
            "order_id": pd.Series(["o1", "o2", "o3", None], dtype="str"),
        }
    )

    customers, rows = rfm_aggregates(events, pd.Timestamp("2021-01-31", tz="UTC"), 365.0)

    a, b = customers.iloc[0], customers.iloc[1]
    assert a["recency_days"] == 20.0
    assert a["frequency"] == 2.0
    assert a["monetary"] == 40.0
    assert a["tenure_days"] == 30.0
    assert a["return_share"] == pytest.approx(1 / 3)
    assert a["events"] == 3.0
    assert np.isnan(b["recency_days"])
    assert b["frequency"] == 0.0
    assert len(rows) == 4


def test_scores_files_compared(tmp_path):
    rng = np.random.default_rng(5)
    for name, probs in (("may", rng.beta(2, 5, 800)), ("june", rng.beta(5, 2, 800))):
        pd.DataFrame({"customer_id": [str(i) for i in range(800)], "churn_probability": probs.astype(np.float32), "alert": probs > 0.5, "model_version": "m1"}).to_parquet(tmp_path / f"{name}.parquet")
    out = tmp_path / "out"

    code = main(["--reference", str(tmp_path / "may.parquet"), "--current", str(tmp_path / "june.parquet"), "--out", str(out)])

    report = read_report(out)
    assert code == 0
    assert report["mode"] == "scores"
    assert report["drifted"] == ["score/churn_probability", "score/alert"]
    assert report["reference"]["model_versions"] == ["m1"]


def test_mixed_inputs_exit_2(tmp_path, capsys):
    config = write_log(tmp_path, "a", 1.0, seed=0)
    pd.DataFrame({"customer_id": ["1"], "churn_probability": [0.5]}).to_parquet(tmp_path / "scores.parquet")
    out = tmp_path / "out"

    code = main(["--reference", str(config), "--current", str(tmp_path / "scores.parquet"), "--out", str(out)])

    assert code == 2
    assert "both be scores files or both be data configs" in capsys.readouterr().err
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["exit_code"] == 2
    assert summary["status"] == "error"


def test_missing_config_exit_2(tmp_path):
    assert main(["--reference", str(tmp_path / "nope.yaml"), "--current", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "out")]) == 2


# --------------------------------------------------------------------------------------
# With a trained model: the card's reference and log comparison on model inputs
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, retail_slice):
    return get_trained_model(tmp_path_factory, retail_slice)


def slice_config(trained, directory: Path, name: str, price_factor: float = 1.0) -> Path:
    """Write the slice's data config to a YAML file, with unit prices scaled by ``price_factor``."""
    data = OmegaConf.to_container(trained.cfg.data, resolve=True)
    if price_factor != 1.0:
        for i, source in enumerate(data["sources"]):
            frame = pd.read_parquet(source["path"])
            price = source["columns"]["unit_price"]
            frame[price] = frame[price] * price_factor
            target = directory / f"{name}_{i}.parquet"
            frame.to_parquet(target, index=False)
            source["path"] = str(target)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_card_reference_matches_feature_spec(trained):
    card = verify_card(trained.model_dir)
    reference = card["drift_reference"]

    assert [entry["feature"] for entry in reference["static"]] == card["feature_spec"]["static_features"]
    assert [entry["feature"] for entry in reference["event"]] == card["feature_spec"]["numeric_features"]
    for entry in reference["static"] + reference["event"]:
        assert sum(entry["histogram"]["fractions"]) == pytest.approx(1.0)
    assert reference["score"]["count"] == reference["static"][0]["histogram"]["count"]


@pytest.mark.slow
def test_model_mode_detects_price_shift(trained, tmp_path):
    reference = slice_config(trained, tmp_path, "reference")
    current = slice_config(trained, tmp_path, "current", price_factor=20.0)
    args = ["--model-dir", str(trained.model_dir), "--reference-as-of", "2011-12-09", "--current-as-of", "2011-12-09"]

    assert main(["--reference", str(reference), "--current", str(reference), "--out", str(tmp_path / "same"), *args]) == 0
    assert main(["--reference", str(reference), "--current", str(current), "--out", str(tmp_path / "shifted"), *args]) == 0

    same, shifted = read_report(tmp_path / "same"), read_report(tmp_path / "shifted")
    assert same["mode"] == "logs (model inputs and scores)"
    assert same["drifted"] == []
    assert "event/log_amount" in shifted["drifted"]
    assert "static/log_spend_90d" in shifted["drifted"] or "static/log_spend_365d" in shifted["drifted"]
    assert "event/day_of_week_sin" not in shifted["drifted"]


@pytest.mark.slow
def test_score_run_summary_reports_drift(trained, tmp_path):
    import subprocess
    import sys

    sources = trained.cfg.data.sources
    result = subprocess.run(
        [
            sys.executable, "-m", "seqchurn.cli", "score", f"model_dir={trained.model_dir}", "as_of=2011-12-09", f"output_dir={tmp_path / 'scores'}",
            f"data.sources.0.path={sources[0].path}", f"data.sources.1.path={sources[1].path}", f"paths.root_dir={tmp_path}",
            f"hydra.run.dir={tmp_path / 'hydra'}", "progress=false", "drift_threshold=0.25",
        ],
        capture_output=True, text=True, timeout=600,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "scores" / "run_summary.json").read_text())
    card = verify_card(trained.model_dir)
    features = {(row["group"], row["feature"]) for row in summary["drift"]}
    assert ("score", "churn_probability") in features
    assert {("static", name) for name in card["feature_spec"]["static_features"]} <= features
    assert summary["details"]["drift"]["threshold"] == 0.25
    assert all(row["psi"] is not None for row in summary["drift"])
