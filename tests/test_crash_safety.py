"""Crash safety: outputs of killed runs are absent or complete, and a restart gives the same outputs.

Real processes are killed with SIGKILL after random delays (seeded, so a failure can be
replayed). NOTE: the scorer does not record or deliver alerts yet (``seqchurn.alerts.cli.run_alerts``
is not called by ``seqchurn score``), so the alert store's crash safety is tested on
``AlertStore.record_run`` alone.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from seqchurn.utils.checkpoint_io import AtomicCheckpointIO
from trained_model import get_trained_model

SEED = 20240611
CLI_TIMEOUT_S = 600
SCORE_OUTPUTS = ("scores.parquet", "alerts.csv", "run_summary.json")


def run_killed(command: list[str], delay_s: float, env: dict | None = None) -> bool:
    """Start ``command`` and SIGKILL it after ``delay_s`` seconds; return whether it was killed."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        process.wait(timeout=delay_s)
        return False
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        return True


def stray_files(directory: Path, allowed: tuple[str, ...]) -> list[str]:
    """Names in ``directory`` that are neither expected outputs nor atomic-write temporaries."""
    return sorted(p.name for p in directory.iterdir() if p.name not in allowed and not p.name.startswith(".tmp-"))


# --------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, retail_slice):
    return get_trained_model(tmp_path_factory, retail_slice)


def score_command(trained, out_dir: Path, hydra_dir: Path) -> list[str]:
    sources = trained.cfg.data.sources
    return [
        sys.executable, "-m", "seqchurn.cli", "score", f"model_dir={trained.model_dir}", "as_of=2011-12-09", f"output_dir={out_dir}",
        f"data.sources.0.path={sources[0].path}", f"data.sources.1.path={sources[1].path}",
        f"paths.root_dir={hydra_dir}", f"hydra.run.dir={hydra_dir}", "progress=false", "threads=1",
    ]


def check_complete(out_dir: Path, reference_dir: Path) -> list[str]:
    """Assert that every score output present is complete and equal to the reference; return the present ones."""
    present = []
    for name in SCORE_OUTPUTS:
        path = out_dir / name
        if not path.exists():
            continue
        present.append(name)
        if name == "scores.parquet":
            pd.testing.assert_frame_equal(pd.read_parquet(path), pd.read_parquet(reference_dir / name))
        elif name == "alerts.csv":
            assert path.read_text() == (reference_dir / name).read_text()
        else:
            summary = json.loads(path.read_text())
            assert summary["status"] == "ok"
            assert summary["customers_scored"] == json.loads((reference_dir / name).read_text())["customers_scored"]
    assert stray_files(out_dir, SCORE_OUTPUTS) == []
    return present


@pytest.mark.slow
def test_killed_scoring_restarts_to_same_outputs(trained, tmp_path):
    reference_dir = tmp_path / "reference"
    started = time.perf_counter()
    reference = subprocess.run(score_command(trained, reference_dir, tmp_path / "hydra_reference"), capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    duration = time.perf_counter() - started
    assert reference.returncode == 0, reference.stderr[-3000:]

    rng = random.Random(SEED)
    kills = 0
    for attempt in range(4):
        out_dir = tmp_path / f"attempt_{attempt}"
        delay = duration * rng.uniform(0.2, 0.95)
        kills += run_killed(score_command(trained, out_dir, tmp_path / f"hydra_{attempt}"), delay)
        if out_dir.exists():
            check_complete(out_dir, reference_dir)

        restart = subprocess.run(score_command(trained, out_dir, tmp_path / f"hydra_restart_{attempt}"), capture_output=True, text=True, timeout=CLI_TIMEOUT_S)

        assert restart.returncode == 0, restart.stderr[-3000:]
        assert check_complete(out_dir, reference_dir) == list(SCORE_OUTPUTS)
    assert kills > 0


# --------------------------------------------------------------------------------------
# Alert store
# --------------------------------------------------------------------------------------

RECORD_SCRIPT = textwrap.dedent(
    """
    import sys
    import pandas as pd
    from seqchurn.alerts.policy import AlertPolicy, select_alerts
    from seqchurn.alerts.store import AlertStore, RunMeta

    n = int(sys.argv[2])
    scores = pd.DataFrame({"customer_id": [f"c{i:06d}" for i in range(n)], "churn_probability": [0.5 + 0.4 * i / n for i in range(n)]})
    scores["rank"] = scores["churn_probability"].rank(ascending=False, method="first").astype(int)
    alerts = select_alerts(scores, AlertPolicy(), model_threshold=0.0)
    store = AlertStore(sys.argv[1])
    result = store.record_run(RunMeta(run_id="r1", model_version="m1", as_of="2024-03-31", threshold=0.5), alerts, sinks=["hook", "file"], n_scored=n)
    print(result.n_new, result.n_existing)
    """
)


def store_counts(db: Path) -> dict[str, int]:
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            return {name: (conn.execute(sa.text(f"SELECT COUNT(*) FROM {name}")).scalar_one() if name in tables else 0) for name in ("runs", "alerts", "deliveries")}
    finally:
        engine.dispose()


@pytest.mark.slow
def test_killed_alert_recording_is_all_or_nothing(tmp_path):
    n = 4000
    complete = {"runs": 1, "alerts": n, "deliveries": 2 * n}
    empty = {"runs": 0, "alerts": 0, "deliveries": 0}
    reference_db, db = tmp_path / "reference.sqlite", tmp_path / "alerts.sqlite"
    command = [sys.executable, "-c", RECORD_SCRIPT]
    started = time.perf_counter()
    subprocess.run([*command, str(reference_db), str(n)], check=True, capture_output=True, timeout=CLI_TIMEOUT_S)
    duration = time.perf_counter() - started
    assert store_counts(reference_db) == complete

    rng = random.Random(SEED)
    kills = 0
    for _ in range(4):
        kills += run_killed([*command, str(db), str(n)], duration * rng.uniform(0.5, 0.95))
        if db.exists():
            assert store_counts(db) in (empty, complete)
    assert kills > 0

    first = subprocess.run([*command, str(db), str(n)], check=True, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    again = subprocess.run([*command, str(db), str(n)], check=True, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)

    assert store_counts(db) == complete
    new, existing = map(int, again.stdout.split())
    assert (new, existing) == (0, n)
    assert sum(map(int, first.stdout.split())) == n


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "state_dict": {"w": torch.ones(3)}}, path)

    def broken_save(obj, target, *args, **kwargs):
        Path(target).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"epoch": 2, "state_dict": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()

    loaded = io.load_checkpoint(path)
    assert loaded["epoch"] == 1
    assert torch.equal(loaded["state_dict"]["w"], torch.ones(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_checkpoint_remote_path_uses_lightning(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("pytorch_lightning.plugins.TorchCheckpointIO.save_checkpoint", lambda self, *args: calls.append(args))

    AtomicCheckpointIO().save_checkpoint({"epoch": 1}, "s3://bucket/last.ckpt")

    assert len(calls) == 1
    assert os.fspath(calls[0][1]) == "s3://bucket/last.ckpt"
