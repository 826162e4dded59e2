import itertools
import json
import logging
import platform
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

import seqchurn.utils.run_summary as run_summary_module
from seqchurn.data.labels import ChurnDefinition
from seqchurn.data.schema import InputError, LoadReport
from seqchurn.utils.run_summary import (
    REDACTED,
    RunSummary,
    as_input_error,
    collect_versions,
    exit_code_for,
    redact_secrets,
    track_run,
)

SECRET = "s3cr3t-value-that-must-not-leak"


def test_redact_secrets_nested():
    config = {
        "data": {"path": "events.csv", "pseudonym_key": SECRET, "key_file": None},
        "alerts": [{"smtp_password": SECRET, "host": "127.0.0.1"}, {"API_TOKEN": SECRET}],
        "Secret": {"nested": SECRET},
        "seed": 7,
    }

    redacted = redact_secrets(config)

    assert redacted == {
        "data": {"path": "events.csv", "pseudonym_key": REDACTED, "key_file": None},
        "alerts": [{"smtp_password": REDACTED, "host": "127.0.0.1"}, {"API_TOKEN": REDACTED}],
        "Secret": REDACTED,
        "seed": 7,
    }
    assert config["data"]["pseudonym_key"] == SECRET  # the input is not modified


def test_redact_secrets_omegaconf_and_dataclass():
    @dataclass
    class Mail:
        user: str = "ops"
        password: str = SECRET

    config = OmegaConf.create({"root": "/data", "path": "${root}/events.csv", "webhook_token": SECRET})

    assert redact_secrets(config) == {"root": "/data", "path": "/data/events.csv", "webhook_token": REDACTED}
    assert redact_secrets(Mail()) == {"user": "ops", "password": REDACTED}


def test_redact_secrets_unresolvable_interpolation():
    config = OmegaConf.create({"path": "${missing}/events.csv", "token": SECRET})

    assert redact_secrets(config) == {"path": "${missing}/events.csv", "token": REDACTED}


def test_collect_versions_importable_only():
    versions = collect_versions(("pandas", "pyarrow", "no_such_package_for_seqchurn"))

    assert versions == {"python": platform.python_version(), "pandas": pd.__version__, "pyarrow": pa.__version__}


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (None, 0),
        (InputError("bad row", file="events.csv", row=3), 2),
        (FileNotFoundError("events.csv"), 2),
        (MissingMandatoryValue("Missing mandatory value: data.path"), 2),
        (ConfigCompositionException("Could not load 'data/shop'"), 2),
        (ValueError("shapes (3,) and (4,) not aligned"), 1),
        (RuntimeError("boom"), 1),
        (KeyboardInterrupt(), 130),
        (SystemExit(3), 3),
        (SystemExit(None), 0),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_exit_code_for(exc, code):
    assert exit_code_for(exc) == code


def test_as_input_error_wraps_config_errors():
    with pytest.raises(InputError, match="invalid config section `labels`: Expected `lookback_days`") as error:
        with as_input_error("config section `labels`"):
            ChurnDefinition(lookback_days=-1.0)

    assert exit_code_for(error.value) == 2
    assert isinstance(error.value.__cause__, ValueError)

    with pytest.raises(InputError, match="unexpected keyword argument"):
        with as_input_error("config section `labels`"):
            ChurnDefinition(horizon=30)


def test_as_input_error_passes_other_errors():
    with pytest.raises(RuntimeError):
        with as_input_error("config"):
            raise RuntimeError("internal")

    original = InputError("bad value", column="amount")
    with pytest.raises(InputError) as error:
        with as_input_error("config"):
            raise original
    assert error.value is original


def test_stage_accumulates_durations(monkeypatch):
    clock = itertools.count(start=10.0, step=0.5)
    monkeypatch.setattr(run_summary_module.time, "perf_counter", lambda: next(clock))
    summary = RunSummary("score")

    with summary.stage("load"):
        pass
    with summary.stage("load"):
        pass
    with pytest.raises(RuntimeError):
        with summary.stage("score"):
            raise RuntimeError("failed mid-stage")

    assert summary.durations_s == {"load": 1.0, "score": 0.5}


def test_load_report_and_drops_add_up():
    summary = RunSummary("train")
    first = LoadReport(rows_read=100, rows_kept=90, dropped={"duplicate": 6, "missing_customer_id": 4})
    second = LoadReport(rows_read=50, rows_kept=49, dropped={"duplicate": 1}, changed={"missing_amount": 2})

    summary.add_load_report(first)
    summary.add_load_report(second)
    summary.drop("inactive_customer", 0)

    assert summary.rows_read == 150
    assert summary.rows_kept == 139
    assert summary.rows_dropped == {"duplicate": 7, "missing_customer_id": 4, "inactive_customer": 0}
    assert summary.rows_changed == {"missing_amount": 2}


def test_track_run_writes_success(tmp_path):
    path = tmp_path / "run_summary.json"
    config = {"data": {"path": "events.csv"}, "privacy": {"key": SECRET}}
    drift = pd.DataFrame({"feature": ["x", "y"], "kind": "numeric", "psi": [0.31, np.nan], "drifted": [True, False]})

    with track_run("score", path, config=config) as summary:
        with summary.stage("load"):
            summary.add_load_report(LoadReport(rows_read=10, rows_kept=9, dropped={"duplicate": 1}))
        summary.customers_scored = np.int64(4)
        summary.alerts = 1
        summary.set_drift(drift)
        summary.details["output"] = tmp_path / "scores.parquet"

    text = path.read_text(encoding="utf-8")
    written = json.loads(text)
    assert SECRET not in text
    assert written["command"] == "score"
    assert written["status"] == "ok"
    assert written["exit_code"] == 0
    assert written["error"] is None
    assert written["config"] == {"data": {"path": "events.csv"}, "privacy": {"key": REDACTED}}
    assert written["versions"]["pandas"] == pd.__version__
    assert written["rows_read"] == 10
    assert written["rows_dropped"] == {"duplicate": 1}
    assert written["customers_scored"] == 4
    assert written["alerts"] == 1
    assert written["drift"][0] == {"feature": "x", "kind": "numeric", "psi": 0.31, "drifted": True}
    assert written["drift"][1]["psi"] is None
    assert set(written["durations_s"]) == {"load"}
    assert written["details"] == {"output": str(tmp_path / "scores.parquet")}
    assert written["finished_at"] >= written["started_at"]


def test_track_run_records_error(tmp_path):
    path = tmp_path / "run_summary.json"

    with pytest.raises(InputError):
        with track_run("score", path) as summary:
            with summary.stage("load"):
                raise InputError("missing column", file="events.csv", column="customer_id")

    written = json.loads(path.read_text())
    assert written["status"] == "error"
    assert written["exit_code"] == 2
    assert written["error"] == "InputError: file events.csv, column 'customer_id': missing column"
    assert "load" in written["durations_s"]


def test_track_run_unwritable_keeps_error(tmp_path, caplog):
    path = tmp_path / "no_such_dir" / "run_summary.json"

    with caplog.at_level(logging.ERROR, logger="seqchurn.utils.run_summary"):
        with pytest.raises(RuntimeError, match="original failure"):
            with track_run("train", path):
                raise RuntimeError("original failure")

    assert "Could not write the run summary" in caplog.text
