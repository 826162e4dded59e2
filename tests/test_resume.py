"""Training resume: a `seqchurn train` process killed after a checkpoint continues with resume=true."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from _tiny_data import data_overrides

pytestmark = pytest.mark.slow

MAX_EPOCHS = 8
TRAIN_BATCHES = 5
START_TIMEOUT_S = 600


def train_command(tmp_path: Path, slice_dir: Path, hydra_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "seqchurn.cli", "train",
        *data_overrides(tmp_path, slice_dir),
        f"paths.root_dir={tmp_path}",
        f"hydra.run.dir={hydra_dir}",
        "model.net.hidden_size=16",
        f"trainer.max_epochs={MAX_EPOCHS}",
        f"+trainer.limit_train_batches={TRAIN_BATCHES}",
        "+trainer.limit_val_batches=1",
        "trainer.accelerator=cpu",
        "logger=csv",
        # Early stopping would end the run at an epoch that depends on the noisy validation score.
        "callbacks.early_stopping.patience=1000",
        *extra,
    ]


def wait_for(path: Path, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"training ended (exit code {process.returncode}) before {path} was written")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{path} was not written within {timeout_s} s")
        time.sleep(0.1)


def logged_epochs(hydra_dir: Path) -> list[int]:
    """Epochs with validation metrics in the CSV logger's metrics.csv of one run."""
    (metrics,) = hydra_dir.glob("csv/version_*/metrics.csv")
    frame = pd.read_csv(metrics)
    return sorted(frame.loc[frame["val/auprc"].notna(), "epoch"].astype(int).unique())


def test_killed_training_resumes(tmp_path, retail_slice):
    ckpt_dir = tmp_path / "checkpoints" / "online_retail_gru"
    last = ckpt_dir / "last.ckpt"
    first_log = tmp_path / "first.log"
    with open(first_log, "w") as output:
        process = subprocess.Popen(train_command(tmp_path, retail_slice, tmp_path / "hydra_first"), stdout=output, stderr=subprocess.STDOUT)
        wait_for(last, process, START_TIMEOUT_S)
        assert process.poll() is None, "training finished before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    killed = torch.load(last, map_location="cpu", weights_only=False)
    assert killed["epoch"] < MAX_EPOCHS - 1
    assert not (ckpt_dir / "training_summary.json").exists()

    resumed = subprocess.run(
        train_command(tmp_path, retail_slice, tmp_path / "hydra_resume", "resume=true"),
        capture_output=True, text=True, timeout=START_TIMEOUT_S,
    )

    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-3000:]
    assert f"resuming from {last}" in output
    final = torch.load(last, map_location="cpu", weights_only=False)
    assert final["global_step"] == MAX_EPOCHS * TRAIN_BATCHES
    # The resumed run validates only the epochs after the checkpoint, not from epoch 0.
    assert logged_epochs(tmp_path / "hydra_resume") == list(range(killed["epoch"] + 1, MAX_EPOCHS))
    assert (ckpt_dir / "training_summary.json").exists()


def test_resume_without_checkpoint_starts_fresh(tmp_path, retail_slice):
    result = subprocess.run(
        train_command(tmp_path, retail_slice, tmp_path / "hydra", "resume=true", "trainer.max_epochs=1", "++trainer.limit_train_batches=1"),
        capture_output=True, text=True, timeout=START_TIMEOUT_S,
    )

    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "does not exist; starting fresh" in output
