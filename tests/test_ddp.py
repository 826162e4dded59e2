"""Distributed data-parallel training on CPU processes (gloo), then export and scoring.

Two processes see different batches and average their gradients, so the weights differ
from a single-process run with the same seed. The tests check that the same pipeline
works and that its outputs are valid, not that they equal the single-process ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from _tiny_data import CLI_TIMEOUT_S, cli_overrides, compose_train, describe_failure, run_seqchurn
from seqchurn.data.io import load_events
from seqchurn.data.labels import ChurnDefinition, make_snapshot
from seqchurn.data.sequences import collapse_orders
from seqchurn.score import load_model, score_events
from seqchurn.train import train

AS_OF = pd.Timestamp("2011-12-01", tz="UTC")
SUMMARY_LOG_LINE = "checkpoint and summary in"


def export_and_score(ckpt_dir: Path, root: Path) -> pd.DataFrame:
    """Export the run in ``ckpt_dir`` with `seqchurn export` (parity check included) and score its own log.

    The export runs in its own process: with torch 2.13, a second ONNX export of an
    ``nn.GRU`` in one process fixes the sequence axis to the example length.
    """
    proc = run_seqchurn(["export", f"ckpt_dir={ckpt_dir}", f"paths.root_dir={root}"], cwd=root)
    assert proc.returncode == 0, describe_failure(proc)
    model = load_model(ckpt_dir)
    data_config = json.loads((ckpt_dir / "training_summary.json").read_text())["data_config"]
    events, _ = load_events(data_config)
    return score_events(events, model, AS_OF)


def check_scores(scores: pd.DataFrame) -> None:
    prob = scores["churn_probability"].to_numpy()
    assert len(scores) > 0
    assert np.isfinite(prob).all()
    assert ((prob >= 0) & (prob <= 1)).all()
    assert scores["customer_id"].is_unique


@pytest.mark.slow
def test_ddp_spawn_exports_and_scores(tmp_path: Path, retail_slice: Path) -> None:
    ddp_root = tmp_path / "ddp"
    proc = run_seqchurn(["train", "trainer=ddp_cpu", *cli_overrides(ddp_root, retail_slice)], cwd=tmp_path)
    assert proc.returncode == 0, describe_failure(proc)
    assert "MEMBER: 2/2" in proc.stderr
    # ddp_spawn returns to the launching process after fit, so only it writes the summary.
    assert proc.stdout.count(SUMMARY_LOG_LINE) + proc.stderr.count(SUMMARY_LOG_LINE) == 1

    ddp_dir = ddp_root / "checkpoints" / "online_retail_gru"
    ddp_summary = json.loads((ddp_dir / "training_summary.json").read_text())
    single = train(compose_train(tmp_path / "single", retail_slice))

    assert ddp_summary["feature_spec"] == single["feature_spec"]
    assert ddp_summary["n_snapshots"] == single["n_snapshots"]
    assert 0.0 <= ddp_summary["val_metrics"]["average_precision"] <= 1.0

    # The single-process export is covered elsewhere; this one must score the same customers.
    scores = export_and_score(ddp_dir, tmp_path)
    check_scores(scores)
    events, _ = load_events(ddp_summary["data_config"])
    churn = ChurnDefinition(**{**single["churn_definition"], "activity_types": tuple(single["churn_definition"]["activity_types"])})
    active = make_snapshot(collapse_orders(events), AS_OF, churn, with_labels=False)
    assert set(scores["customer_id"]) == set(active["customer_id"])


@pytest.mark.slow
def test_torchrun_writes_summary_once(tmp_path: Path, retail_slice: Path) -> None:
    # torchrun starts both ranks itself (as on a GPU node); --standalone rendezvous on localhost.
    args = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "seqchurn.train", "trainer=ddp_cpu", "trainer.strategy=ddp", *cli_overrides(tmp_path, retail_slice),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False)
    assert proc.returncode == 0, describe_failure(proc)
    assert "MEMBER: 2/2" in proc.stderr

    assert proc.stdout.count(SUMMARY_LOG_LINE) + proc.stderr.count(SUMMARY_LOG_LINE) == 1
