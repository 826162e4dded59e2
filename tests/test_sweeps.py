"""Hydra sweeps of `seqchurn train` and the sweep summary that ranks their trials."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from _tiny_data import cli_overrides, describe_failure, run_seqchurn
from seqchurn.data.schema import InputError
from seqchurn.sweep_summary import collect_trials, summarize_sweep, summary_metric

# --------------------------------------------------------------------------------------
# The summary on hand-made trial folders
# --------------------------------------------------------------------------------------


def write_trial(sweep: Path, num: int, overrides: list[str], val_ap: float | None, *, checkpoint_dir: str | None = None) -> Path:
    """A trial folder as Hydra writes it, with a training summary unless ``val_ap`` is None."""
    trial = sweep / str(num)
    (trial / ".hydra").mkdir(parents=True)
    config = {
        "optimized_metric": "val/auprc",
        "run_name": "${data.name}_gru_sweep${hydra:job.num}",
        "data": {"name": "shop"},
        "paths": {"checkpoint_dir": checkpoint_dir or "${hydra:runtime.output_dir}/checkpoints"},
    }
    hydra = {"hydra": {"job": {"num": num}, "runtime": {"output_dir": str(trial), "cwd": str(sweep)}, "sweeper": {"params": None}}}
    (trial / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (trial / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    (trial / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if val_ap is not None:
        ckpt = Path(config["paths"]["checkpoint_dir"].replace("${hydra:runtime.output_dir}", str(trial)))
        ckpt.mkdir(parents=True, exist_ok=True)
        summary = {
            "run_name": f"shop_gru_sweep{num}",
            "model_name": "gru",
            "best_checkpoint": str(ckpt / "best.ckpt"),
            "val_metrics": {"average_precision": val_ap, "auroc": 0.5},
            "test_metrics": {"average_precision": val_ap / 2},
            "train_seconds": 1.0,
        }
        (ckpt / "training_summary.json").write_text(json.dumps(summary))
    return trial


def test_summary_metric_names() -> None:
    summary = {"val_metrics": {"average_precision": 0.7, "auroc": 0.8}, "test_metrics": {"brier": 0.1}}

    assert summary_metric(summary, "val/auprc") == 0.7
    assert summary_metric(summary, "val/auroc") == 0.8
    assert summary_metric(summary, "test/brier") == 0.1
    assert summary_metric(summary, "val/f1") is None
    assert summary_metric(summary, "train/loss") is None


def test_ranks_trials_best_first(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for num, (size, ap) in enumerate([(16, 0.61), (32, 0.83), (64, 0.72)]):
        write_trial(sweep, num, [f"model.net.hidden_size={size}", "seed=1"], ap)
    write_trial(sweep, 3, ["model.net.hidden_size=128", "seed=1"], None)

    table = summarize_sweep(sweep)

    assert table["job"].tolist() == [1, 2, 0, 3]
    assert table["rank"].tolist()[:3] == [1, 2, 3]
    assert pd.isna(table["rank"].iloc[3])
    assert table["value"].tolist()[:3] == [0.83, 0.72, 0.61]
    assert table["status"].iloc[3].startswith("no training summary")
    assert table["swept"].tolist() == ["model.net.hidden_size=32", "model.net.hidden_size=64", "model.net.hidden_size=16", "model.net.hidden_size=128"]
    assert "seed=1" in table["overrides"].iloc[0]
    assert table["best_checkpoint"].iloc[0] == str(sweep / "1" / "checkpoints" / "best.ckpt")
    assert table["run_name"].iloc[0] == "shop_gru_sweep1"

    csv = pd.read_csv(sweep / "summary.csv")
    assert csv["job"].tolist() == [1, 2, 0, 3]
    markdown = (sweep / "summary.md").read_text()
    assert "4 trials, 3 ranked by val/auprc (maximize)" in markdown
    assert markdown.index("model.net.hidden_size=32") < markdown.index("model.net.hidden_size=16")


def test_minimize_reverses_order(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for num, ap in enumerate([0.61, 0.83, 0.72]):
        write_trial(sweep, num, [f"seed={num}"], ap)

    table = collect_trials(sweep, direction="minimize")

    assert table["job"].tolist() == [0, 2, 1]


def test_direction_read_from_sweeper(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for num, ap in enumerate([0.61, 0.83]):
        trial = write_trial(sweep, num, [f"seed={num}"], ap)
        hydra = yaml.safe_load((trial / ".hydra" / "hydra.yaml").read_text())
        hydra["hydra"]["sweeper"]["direction"] = "minimize"
        (trial / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))

    table = collect_trials(sweep)

    assert table.attrs["direction"] == "minimize"
    assert table["job"].tolist() == [0, 1]


def test_shared_checkpoint_dir_is_flagged(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    shared = str(tmp_path / "checkpoints" / "shop_gru")
    write_trial(sweep, 0, ["seed=0"], 0.6, checkpoint_dir=shared)
    write_trial(sweep, 1, ["seed=1"], 0.7, checkpoint_dir=shared)

    table = collect_trials(sweep)

    assert table["rank"].isna().all()
    assert table["status"].str.startswith("checkpoint_dir shared").all()


def test_relative_checkpoint_dir_uses_launch_dir(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    write_trial(sweep, 0, ["seed=0"], None, checkpoint_dir="ckpts/run0")
    (sweep / "ckpts" / "run0").mkdir(parents=True)
    (sweep / "ckpts" / "run0" / "training_summary.json").write_text(json.dumps({"val_metrics": {"average_precision": 0.5}}))

    table = collect_trials(sweep)

    assert table["checkpoint_dir"].iloc[0] == str(sweep / "ckpts" / "run0")
    assert table["value"].iloc[0] == 0.5


def test_not_a_sweep_raises(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no trial folders"):
        collect_trials(tmp_path)
    with pytest.raises(InputError, match="not found"):
        collect_trials(tmp_path / "missing")
    write_trial(tmp_path / "sweep", 0, ["seed=0"], 0.5)
    with pytest.raises(ValueError, match="direction"):
        collect_trials(tmp_path / "sweep", direction="largest")


# --------------------------------------------------------------------------------------
# Real sweeps through the command line
# --------------------------------------------------------------------------------------


def only_sweep_dir(root: Path) -> Path:
    sweeps = sorted((root / "logs" / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1, sweeps
    return sweeps[0]


def trial_summaries(sweep: Path) -> dict[int, dict]:
    return {int(p.parent.parent.name): json.loads(p.read_text()) for p in sweep.glob("*/checkpoints/training_summary.json")}


@pytest.mark.slow
def test_grid_sweep_with_relative_paths(tmp_path: Path, retail_slice: Path) -> None:
    # Data and output paths are relative, so they must resolve against the launch directory.
    shutil.copytree(retail_slice, tmp_path / "slice")
    overrides = [
        "data.sources.0.path=slice/online_retail_ii_2009_2010.parquet",
        "data.sources.1.path=slice/online_retail.parquet",
        "data.cache_dir=cache",
        "paths.root_dir=root",
        *(o for o in cli_overrides(tmp_path, retail_slice, hidden_size=None) if not o.startswith(("data.sources", "data.cache_dir", "paths.root_dir"))),
    ]
    proc = run_seqchurn(["train", "hparams_search=grid", "model=gru,transformer", "model.net.hidden_size=16,32", *overrides], cwd=tmp_path)
    assert proc.returncode == 0, describe_failure(proc)

    sweep = only_sweep_dir(tmp_path / "root")
    summaries = trial_summaries(sweep)
    assert sorted(summaries) == [0, 1, 2, 3]
    assert (tmp_path / "cache").is_dir()
    run_names = [summaries[n]["run_name"] for n in range(4)]
    assert run_names == ["online_retail_gru_sweep0", "online_retail_gru_sweep1", "online_retail_transformer_sweep2", "online_retail_transformer_sweep3"]
    for num, summary in summaries.items():
        assert Path(summary["best_checkpoint"]).is_relative_to(sweep / str(num) / "checkpoints")
        assert summary["net_config"]["hidden_size"] == (16, 32)[num % 2]

    table = summarize_sweep(sweep)

    assert table["rank"].tolist() == [1, 2, 3, 4]
    assert table["value"].is_monotonic_decreasing
    for _, row in table.iterrows():
        assert row["value"] == summaries[row["job"]]["val_metrics"]["average_precision"]
        assert row["best_checkpoint"] == summaries[row["job"]]["best_checkpoint"]
        assert f"model={summaries[row['job']]['model_name']}" in row["swept"]
    assert (sweep / "summary.csv").exists()
    assert (sweep / "summary.md").exists()


@pytest.mark.slow
def test_optuna_sweep_maximises_metric(tmp_path: Path, retail_slice: Path) -> None:
    args = [
        "train", "hparams_search=online_retail_optuna", "hydra.sweeper.n_trials=3",
        "model.net.hidden_size=choice(16, 32)",
        *cli_overrides(tmp_path, retail_slice, hidden_size=None),
    ]
    proc = run_seqchurn(args, cwd=tmp_path)
    assert proc.returncode == 0, describe_failure(proc)

    sweep = only_sweep_dir(tmp_path)
    summaries = trial_summaries(sweep)
    assert sorted(summaries) == [0, 1, 2]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = max(s["val_metrics"]["average_precision"] for s in summaries.values())
    assert results["best_value"] == pytest.approx(best, abs=1e-12)

    table = summarize_sweep(sweep)

    assert table.attrs["direction"] == "maximize"
    assert table["value"].iloc[0] == pytest.approx(results["best_value"], abs=1e-12)
    assert f"model.net.hidden_size={results['best_params']['model.net.hidden_size']}" in table["overrides"].iloc[0]
    assert f"model.optimizer.lr={results['best_params']['model.optimizer.lr']}" in table["swept"].iloc[0]


@pytest.mark.slow
def test_joblib_launcher_parallel_trials(tmp_path: Path, retail_slice: Path) -> None:
    args = [
        "train", "hparams_search=grid", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        "model=gru", "model.net.hidden_size=16,32", *cli_overrides(tmp_path, retail_slice, hidden_size=None),
    ]
    proc = run_seqchurn(args, cwd=tmp_path)
    assert proc.returncode == 0, describe_failure(proc)

    summaries = trial_summaries(only_sweep_dir(tmp_path))
    assert sorted(summaries) == [0, 1]
    assert {s["net_config"]["hidden_size"] for s in summaries.values()} == {16, 32}


@pytest.mark.slow
def test_failed_trial_does_not_stop_sweep(tmp_path: Path, retail_slice: Path) -> None:
    # hidden_size 16 is not a multiple of 3 heads, so trial 0 fails while trial 1 can train.
    args = ["train", "hparams_search=grid", "model=transformer", "model.net.num_heads=3,4", *cli_overrides(tmp_path, retail_slice)]
    run_seqchurn(args, cwd=tmp_path)

    summaries = trial_summaries(only_sweep_dir(tmp_path))
    assert sorted(summaries) == [1]


@pytest.mark.slow
def test_process_launcher_runs_each_trial_in_own_process(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "seqchurn.cli", "train", "-m", "hydra/launcher=process", "debug=fdr", "model.net.hidden_size=8,16", f"paths.log_dir={tmp_path}"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    logs = sorted(tmp_path.rglob("*_log.out"))
    assert len(logs) == 2
    pids = set()
    for path in logs:
        text = path.read_text()
        assert "fast_dev_run: skipping" in text
        pids.add(path.parent.name)  # submitit names each job's folder after its process id
    assert len(pids) == 2
