"""Pseudonymisation end to end: train -> export -> score with a key leaks no raw id and no key.

The slice's customer ids are rewritten as ``K0012346``-style strings, so that a match in
a scanned file is a leaked id and not a count or a metric that happens to equal a
numeric id. Everything is scanned: captured INFO logs, the commands' output, Hydra's
log files, the checkpoint folder (checkpoints, summaries, card, ONNX file), the sequence
cache, and the scores, alerts and run summaries.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from conftest import tiny_overrides
from seqchurn.conf_utils import CONFIG_DIR
from seqchurn.data.io import LogSpec, load_events
from seqchurn.privacy import KEY_ENV_VAR, pseudonymise, scan_for_raw_ids
from seqchurn.privacy_cli import main as reidentify_main

pytestmark = pytest.mark.slow

KEY = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
OTHER_KEY = "0000000000000000000000000000000000000000000000000000000000000001"
TOKEN = re.compile(r"^p_[0-9a-f]{32}$")
CLI_TIMEOUT_S = 600


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != KEY_ENV_VAR}
    return subprocess.run([sys.executable, "-m", "seqchurn.cli", *args], capture_output=True, text=True, timeout=CLI_TIMEOUT_S, env=env)


def rename_ids(slice_dir: Path, out: Path) -> None:
    """Copy the slice with ids as distinctive strings (K + 7 digits); missing ids stay missing."""
    for name, column in (("online_retail_ii_2009_2010.parquet", "Customer ID"), ("online_retail.parquet", "CustomerID")):
        frame = pd.read_parquet(slice_dir / name)
        ids = frame[column]
        frame[column] = pd.Series([None if pd.isna(v) else f"K{int(v):07d}" for v in ids], dtype="str")
        frame.to_parquet(out / name, index=False)


def read_text(path: Path) -> str:
    """Return a file's content as text: Parquet as CSV of its rows plus the raw bytes, the rest as bytes decoded."""
    data = path.read_bytes().decode("latin-1")
    if path.suffix == ".parquet":
        data += pd.read_parquet(path).to_csv()
    return data


@pytest.fixture(scope="module")
def keyed_run(tmp_path_factory, retail_slice):
    tmp = tmp_path_factory.mktemp("privacy")
    slice_dir = tmp / "slice"
    slice_dir.mkdir()
    rename_ids(retail_slice, slice_dir)
    key_file = tmp / "pseudonym.key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)

    captured = tmp / "captured.log"
    handler = logging.FileHandler(captured)
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="train", overrides=[*tiny_overrides(tmp, slice_dir), f"+data.privacy.key_file={key_file}"])
        GlobalHydra.instance().clear()
        from seqchurn.train import train

        train(cfg)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
    ckpt_dir = Path(cfg.paths.checkpoint_dir)

    export = run_cli("export", f"ckpt_dir={ckpt_dir}", f"paths.root_dir={tmp}", f"hydra.run.dir={tmp / 'hydra_export'}")
    assert export.returncode == 0, export.stderr[-3000:]
    scores_dir = tmp / "scores"
    score = run_cli(
        "score", f"model_dir={ckpt_dir}", "as_of=2011-12-09", f"output_dir={scores_dir}", f"paths.root_dir={tmp}",
        f"data.sources.0.path={slice_dir / 'online_retail_ii_2009_2010.parquet'}", f"data.sources.1.path={slice_dir / 'online_retail.parquet'}",
        f"+data.privacy.key_file={key_file}", f"hydra.run.dir={tmp / 'hydra_score'}", "progress=false",
    )
    assert score.returncode == 0, score.stderr[-3000:]

    data = OmegaConf.to_container(cfg.data, resolve=True)
    data.pop("privacy")
    raw_events, _ = load_events(data)
    return {
        "tmp": tmp,
        "cfg": cfg,
        "data": data,
        "ckpt_dir": ckpt_dir,
        "scores_dir": scores_dir,
        "key_file": key_file,
        "raw_ids": sorted(raw_events["customer_id"].unique()),
        "outputs": {"captured INFO log": captured.read_text(), "export output": export.stdout + export.stderr, "score output": score.stdout + score.stderr},
    }


def scanned_files(run: dict) -> list[Path]:
    tmp = run["tmp"]
    folders = [run["ckpt_dir"], run["scores_dir"], tmp / "cache", tmp / "hydra_export", tmp / "hydra_score", tmp / "out"]
    return [path for folder in folders if folder.exists() for path in sorted(folder.rglob("*")) if path.is_file()]


def test_ids_are_tokens_everywhere(keyed_run):
    scores = pd.read_parquet(keyed_run["scores_dir"] / "scores.parquet")
    alerts = pd.read_csv(keyed_run["scores_dir"] / "alerts.csv", dtype={"customer_id": str})
    raw_ids = keyed_run["raw_ids"]

    assert len(raw_ids) > 100
    assert all(raw.startswith("K") for raw in raw_ids)
    assert len(scores) > 0
    assert scores["customer_id"].str.match(TOKEN.pattern).all()
    assert alerts["customer_id"].str.match(TOKEN.pattern).all()
    assert set(scores["customer_id"]) <= set(pseudonymise(pd.Series(raw_ids, dtype="str"), KEY.encode()))


def test_no_raw_id_or_key_in_outputs(keyed_run):
    texts = dict(keyed_run["outputs"])
    for path in scanned_files(keyed_run):
        texts[str(path)] = read_text(path)
    names = {Path(name).name for name in texts}

    # The scan covers what the pipeline wrote, not an empty set of files.
    for expected in ("training_summary.json", "best.ckpt", "last.ckpt", "model.json", "model.onnx", "scores.parquet", "alerts.csv", "run_summary.json", "export_run_summary.json", "snapshots.parquet", "score.log", "export.log"):
        assert expected in names, expected
    assert "Loaded pseudonymisation key from key file" in keyed_run["outputs"]["captured INFO log"]
    for name, text in texts.items():
        assert scan_for_raw_ids(text, keyed_run["raw_ids"]) == [], f"raw customer ids in {name}"
        assert KEY not in text, f"the key in {name}"


def test_card_and_summaries_record_pseudonymisation(keyed_run):
    card = json.loads((keyed_run["ckpt_dir"] / "model.json").read_text())
    spec = LogSpec.from_config({**keyed_run["data"], "privacy": {"key_file": str(keyed_run["key_file"])}})
    export_summary = json.loads((keyed_run["ckpt_dir"] / "export_run_summary.json").read_text())
    score_summary = json.loads((keyed_run["scores_dir"] / "run_summary.json").read_text())

    assert card["pseudonym_key_id"] == spec.pseudonym_key_id
    assert export_summary["status"] == "ok"
    assert export_summary["details"]["pseudonymised"] is True
    assert score_summary["config"]["data"]["privacy"]["key_file"] == "***"


def write_data_config(run: dict, directory: Path) -> Path:
    path = directory / "data.yaml"
    path.write_text(yaml.safe_dump(run["data"]))
    return path


def test_reidentify_maps_tokens_back(keyed_run, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV_VAR, KEY)
    alerts_path = keyed_run["scores_dir"] / "alerts.csv"
    out = tmp_path / "mapped.csv"

    code = reidentify_main(["--alerts", str(alerts_path), "--data", str(write_data_config(keyed_run, tmp_path)), "--out", str(out)])

    mapped = pd.read_csv(out, dtype={"customer_id": str, "raw_customer_id": str})
    alerts = pd.read_csv(alerts_path, dtype={"customer_id": str})
    assert code == 0
    assert len(mapped) == len(alerts) > 0
    assert list(mapped.columns[:2]) == ["customer_id", "raw_customer_id"]
    assert mapped["raw_customer_id"].notna().all()
    assert set(mapped["raw_customer_id"]) <= set(keyed_run["raw_ids"])
    np.testing.assert_array_equal(pseudonymise(mapped["raw_customer_id"], KEY.encode()).to_numpy(), mapped["customer_id"].to_numpy())
    summary = json.loads((tmp_path / "mapped.csv.run_summary.json").read_text())
    assert summary["details"]["matched_tokens"] == mapped["customer_id"].nunique()
    assert scan_for_raw_ids(json.dumps(summary), keyed_run["raw_ids"]) == []


def test_reidentify_needs_the_key(keyed_run, tmp_path, monkeypatch, capsys):
    alerts = str(keyed_run["scores_dir"] / "alerts.csv")
    data = str(write_data_config(keyed_run, tmp_path))

    monkeypatch.delenv(KEY_ENV_VAR, raising=False)
    without_key = reidentify_main(["--alerts", alerts, "--data", data, "--out", str(tmp_path / "a.csv")])
    assert "no pseudonymisation key is configured" in capsys.readouterr().err
    monkeypatch.setenv(KEY_ENV_VAR, OTHER_KEY)
    other_key = reidentify_main(["--alerts", alerts, "--data", data, "--out", str(tmp_path / "b.csv")])

    assert without_key == 2
    assert other_key == 2
    assert "none of the" in capsys.readouterr().err
    assert not (tmp_path / "a.csv").exists()
    assert not (tmp_path / "b.csv").exists()


def test_reidentify_rejects_raw_ids_without_echoing(keyed_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(KEY_ENV_VAR, KEY)
    raw = keyed_run["raw_ids"][0]
    (tmp_path / "raw.csv").write_text(f"customer_id\n{raw}\n")

    code = reidentify_main(["--alerts", str(tmp_path / "raw.csv"), "--data", str(write_data_config(keyed_run, tmp_path)), "--out", str(tmp_path / "c.csv")])

    err = capsys.readouterr().err
    assert code == 2
    assert "not a pseudonym token" in err
    assert raw not in err
