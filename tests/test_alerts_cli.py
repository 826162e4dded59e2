"""`seqchurn alerts` and `run_alerts`: config loading, the scorer's entry point and the sub-commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf
from trained_model import get_trained_model

from seqchurn.alerts.cli import build_settings, load_config, make_run_id, read_customer_events, run_alerts
from seqchurn.alerts.policy import AlertPolicy, ThresholdRule, select_alerts
from seqchurn.alerts.store import AlertStore, RunMeta, Suppression
from seqchurn.cli import main as seqchurn_main
from seqchurn.conf_utils import REPO_ROOT
from seqchurn.data.io import LogSpec
from seqchurn.data.schema import InputError
from seqchurn.score import load_model, rank_scores, score_events


def alerts_config(tmp_path: Path, **changes) -> dict:
    """The default alerts config with the store and file sinks under ``tmp_path``."""
    config = load_config("alerts", "default")
    config["store"] = {"url": str(tmp_path / "alerts.db")}
    for sink in config["sinks"].values():
        sink["directory"] = str(tmp_path / "files")
    config.update(changes)
    return config


def write_yaml(path: Path, config: dict) -> Path:
    path.write_text(json.dumps(config))  # JSON is valid YAML
    return path


def record_run(store_path: Path, run_id: str, as_of: str, customers: list[str], sinks: tuple[str, ...] = ()) -> list[str]:
    store = AlertStore(store_path)
    scores = pd.DataFrame({"customer_id": customers, "churn_probability": [0.9 - 0.1 * i for i in range(len(customers))]})
    scores["rank"] = range(1, len(customers) + 1)
    alerts = select_alerts(scores, AlertPolicy(threshold=ThresholdRule(override=0.0)))
    result = store.record_run(RunMeta(run_id, "m1", as_of), alerts, sinks=list(sinks), suppression=Suppression(window_days=0))
    store.close()
    return result.alert_ids


# ---- configuration --------------------------------------------------------------------------------


def test_run_id_is_deterministic():
    assert make_run_id("m-2024", "2011-12-09") == "m-2024:2011-12-09"
    assert make_run_id("m-2024", pd.Timestamp("2011-12-09", tz="UTC")) == "m-2024:2011-12-09"
    assert make_run_id("m-2024", "2011-12-09", (3, 8)) == "m-2024:2011-12-09:shard-3-of-8"
    with pytest.raises(ValueError, match="midnight"):
        make_run_id("m", "2011-12-09T10:00")


def test_default_config_resolves_paths():
    config = load_config("alerts", "default")
    assert config["store"]["url"] == f"sqlite:///{REPO_ROOT}/outputs/alerts/alerts.db"
    assert {sink["kind"] for sink in config["sinks"].values()} == {"file"}
    assert config["policy"]["threshold"]["override"] is None
    assert config["reasons"]["max_reasons"] == 3


def test_unknown_config_name_lists_names():
    with pytest.raises(InputError, match=r"one of the names \[.*'default'.*\]"):
        load_config("alerts", "no_such_config")


def test_invalid_section_is_input_error(tmp_path):
    with pytest.raises(InputError, match="alerts config `reasons`.*max_reasons"):
        build_settings(alerts_config(tmp_path, reasons={"max_reasons": 9}))
    with pytest.raises(InputError, match="Unknown alerts config keys"):
        build_settings(alerts_config(tmp_path, polcy={}))


def test_store_option_replaces_url(tmp_path):
    settings, _ = build_settings(alerts_config(tmp_path), store_url=str(tmp_path / "other.db"))
    assert "other.db" in repr(settings.store)
    settings.store.close()


# ---- sub-commands on a store ------------------------------------------------------------------------


def test_outcome_by_customer(tmp_path, capsys):
    store_path = tmp_path / "alerts.db"
    alert_ids = record_run(store_path, "r1", "2024-03-31", ["c1", "c2"])
    code = seqchurn_main(["alerts", "outcome", "--store", str(store_path), "--customer", "c2", "--outcome", "contacted", "--note", "called"])
    assert code == 0
    assert json.loads(capsys.readouterr().out) == {"updated_alerts": [alert_ids[1]]}
    store = AlertStore(store_path)
    stored = store.alerts().set_index("customer_id")
    store.close()
    assert pd.notna(stored.loc["c2", "contacted_at"])
    assert stored.loc["c2", "outcome_note"] == "called"
    assert pd.isna(stored.loc["c1", "contacted_at"])


def test_outcome_unknown_customer_exits_2(tmp_path, capsys):
    store_path = tmp_path / "alerts.db"
    record_run(store_path, "r1", "2024-03-31", ["c1"])
    code = seqchurn_main(["alerts", "outcome", "--store", str(store_path), "--customer", "nobody", "--outcome", "retained"])
    assert code == 2
    assert "no stored alert for this customer" in capsys.readouterr().err


def test_outcome_file_names_bad_row(tmp_path, capsys):
    store_path = tmp_path / "alerts.db"
    alert_ids = record_run(store_path, "r1", "2024-03-31", ["c1", "c2"])
    good = tmp_path / "good.csv"
    good.write_text(f"alert_id,outcome,at\n{alert_ids[0]},retained,2024-05-01\n")
    assert seqchurn_main(["alerts", "outcome", "--store", str(store_path), "--file", str(good)]) == 0
    assert json.loads(capsys.readouterr().out)["updated_alerts"] == [alert_ids[0]]

    bad = tmp_path / "bad.csv"
    bad.write_text("customer_id,outcome\nc1,retained\nc2,won_back\n")
    assert seqchurn_main(["alerts", "outcome", "--store", str(store_path), "--file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"file {bad}, row 2, column 'outcome'" in err
    assert "won_back" in err


def test_retry_exit_code_follows_delivery(tmp_path, capsys):
    store_path = tmp_path / "alerts.db"
    record_run(store_path, "r1", "2024-03-31", ["c1", "c2"], sinks=("file_jsonl",))
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the sink wants a folder")
    failing = write_yaml(tmp_path / "failing.yaml", alerts_config(tmp_path, sinks={"file_jsonl": {"kind": "file", "directory": str(blocked)}}))
    assert seqchurn_main(["alerts", "retry", "--config", str(failing), "--store", str(store_path)]) == 1
    assert json.loads(capsys.readouterr().out)["counts"]["file_jsonl"]["pending"] == 2

    working = write_yaml(tmp_path / "working.yaml", alerts_config(tmp_path))
    assert seqchurn_main(["alerts", "retry", "--config", str(working), "--store", str(store_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"]["file_jsonl"]["delivered"] == 2
    assert report["complete"] is True
    written = list((tmp_path / "files").glob("alerts-r1.jsonl"))
    assert len(written) == 1
    assert len(written[0].read_text().splitlines()) == 2


def test_report_on_yaml_data_config(tmp_path, capsys):
    store_path = tmp_path / "alerts.db"
    record_run(store_path, "r1", "2024-03-31", ["c1", "c2"])
    log = tmp_path / "events.csv"
    log.write_text(
        "customer,time,amount\n"
        "c1,2024-03-01T10:00:00,10\n"
        "c2,2024-03-02T10:00:00,10\n"
        "c1,2024-04-10T10:00:00,10\n"  # c1 came back within the horizon: not churned
        "c3,2024-06-01T10:00:00,10\n"  # extends the log past both horizons
    )
    data = write_yaml(
        tmp_path / "data.yaml",
        {
            "name": "test",
            "sources": [{"path": str(log), "columns": {"customer_id": "customer", "timestamp": "time", "amount": "amount"}}],
            "churn": {"activity_types": ["purchase"], "lookback_days": 365, "horizon_days": 30},
        },
    )
    assert seqchurn_main(["alerts", "report", "--store", str(store_path), "--data", str(data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_alerts"] == 2
    assert report["n_evaluable"] == 2
    assert report["precision"] == 0.5
    assert report["horizon_days"] == 30

    assert seqchurn_main(["alerts", "report", "--store", str(store_path), "--data", str(data)]) == 0
    assert "precision: 0.500 (1 churned of 2)" in capsys.readouterr().out


def test_cli_entry_point_exit_codes(tmp_path):
    missing = subprocess.run(
        [sys.executable, "-m", "seqchurn.cli", "alerts", "report", "--store", str(tmp_path / "a.db"), "--data", "no_such_data"],
        capture_output=True, text=True, timeout=120,
    )
    assert missing.returncode == 2, missing.stderr[-2000:]
    assert "data config not found" in missing.stderr
    usage = subprocess.run([sys.executable, "-m", "seqchurn.cli", "alerts", "outcome"], capture_output=True, text=True, timeout=120)
    assert usage.returncode == 2
    assert "one of the arguments --alert-id --customer --file is required" in usage.stderr


# ---- the scorer's entry point, on a trained model -----------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, retail_slice):
    return get_trained_model(tmp_path_factory, retail_slice)


@pytest.mark.slow
def test_run_alerts_records_reasons_and_delivers(trained, tmp_path):
    model = load_model(trained.model_dir)
    as_of = pd.Timestamp("2011-09-01", tz="UTC")
    scores = rank_scores(score_events(trained.events, model, as_of), model, as_of)
    # A budget keeps the number of alerts, and so of delivery commits, small.
    policy = {"threshold": {"override": None}, "budget": {"top_k": 40}}
    config = alerts_config(tmp_path, policy=policy, suppression={"window_days": 30, "min_rise": 0.1})

    summary = run_alerts(scores, trained.events, model, "2011-09-01", config)

    n_alerts = min(40, int(scores["alert"].sum()))
    assert summary["status"] == "ok"
    assert summary["run_id"] == f"{model.version}:2011-09-01"
    assert summary["n_selected"] == summary["n_new"] == n_alerts > 0
    assert summary["n_with_reasons"] > 0
    assert summary["delivery"]["complete"] is True
    assert sum(summary["tiers"].values()) == n_alerts
    store = AlertStore(tmp_path / "alerts.db")
    stored = store.alerts(run_id=summary["run_id"])
    store.close()
    assert len(stored) == n_alerts
    assert stored["reasons"].map(len).max() <= 3
    assert (stored["reasons"].map(len) > 0).sum() == summary["n_with_reasons"]
    assert len(list((tmp_path / "files").glob("*.jsonl"))) == 1
    assert len(list((tmp_path / "files").glob("*.csv"))) == 1

    again = run_alerts(scores, trained.events, model, "2011-09-01", config)
    assert again["n_new"] == 0
    assert again["n_existing"] == n_alerts


@pytest.mark.slow
def test_reasons_from_log_spec_match_frame(trained, tmp_path):
    model = load_model(trained.model_dir)
    as_of = pd.Timestamp("2011-09-01", tz="UTC")
    scores = rank_scores(score_events(trained.events, model, as_of), model, as_of)
    spec = LogSpec.from_config(trained.cfg.data)
    alerted = scores.loc[scores["alert"], "customer_id"]
    reread = read_customer_events(spec, alerted)
    expected = trained.events[trained.events["customer_id"].isin(alerted)].reset_index(drop=True)
    pd.testing.assert_frame_equal(reread.reset_index(drop=True), expected)

    from_frame = run_alerts(scores, trained.events, model, as_of, alerts_config(tmp_path / "a"), deliver=False)
    from_spec = run_alerts(scores, spec, model, as_of, alerts_config(tmp_path / "b"), deliver=False)
    assert from_spec["n_with_reasons"] == from_frame["n_with_reasons"]
    stores = [AlertStore(tmp_path / name / "alerts.db") for name in ("a", "b")]
    reasons = [store.alerts()["reasons"].tolist() for store in stores]
    for store in stores:
        store.close()
    assert reasons[0] == reasons[1]


@pytest.mark.slow
def test_alerts_run_command(trained, tmp_path, capsys):
    model = load_model(trained.model_dir)
    as_of = pd.Timestamp("2011-09-01", tz="UTC")
    scores_path = tmp_path / "scores.parquet"
    rank_scores(score_events(trained.events, model, as_of), model, as_of).to_parquet(scores_path)
    data = write_yaml(tmp_path / "data.yaml", OmegaConf.to_container(trained.cfg.data, resolve=True))
    config = write_yaml(tmp_path / "alerts.yaml", alerts_config(tmp_path))
    code = seqchurn_main(
        ["alerts", "run", "--config", str(config), "--scores", str(scores_path), "--model-dir", str(trained.model_dir), "--data", str(data), "--no-deliver"]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["as_of"] == "2011-09-01"
    assert summary["n_with_reasons"] > 0
    assert summary["delivery"] is None

    other = tmp_path / "other_model"
    other.mkdir()
    wrong = pd.read_parquet(scores_path).assign(model_version="another-model")
    wrong.to_parquet(other / "scores.parquet")
    assert seqchurn_main(["alerts", "run", "--config", str(config), "--scores", str(other / "scores.parquet"), "--model-dir", str(trained.model_dir)]) == 2
    assert "not by" in capsys.readouterr().err
