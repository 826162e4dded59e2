"""Every conf/experiment/*.yaml composes, and runs one fast_dev_run batch on its data."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from _tiny_data import SHARED_DATA, describe_failure, run_seqchurn
from seqchurn.conf_utils import CONFIG_DIR, REPO_ROOT

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
TAOBAO_FILE = Path("taobao_userbehavior_head") / "UserBehavior_head.csv.gz"
# The experiment each data set must have; a missing one fails test_every_dataset_has_experiment.
EXPECTED = {"online_retail", "synthetic", "taobao"}


def compose_experiment(name: str, overrides: list[str] = ()) -> object:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name="train", overrides=[f"experiment={name}", *overrides])
    finally:
        GlobalHydra.instance().clear()


def test_every_dataset_has_experiment() -> None:
    assert EXPECTED <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(name: str) -> None:
    cfg = compose_experiment(name, ["paths.output_dir=/unused", "paths.work_dir=/unused"])

    assert cfg.data.name == name
    assert cfg.model.net._target_.startswith("seqchurn.models.components.")
    assert cfg.data.sources, "the data config lists no sources"
    assert cfg.trainer.max_epochs >= 1
    assert cfg.run_name == f"{name}_{cfg.model.name}"


def test_taobao_path_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SEQCHURN_SHARED_DATA", str(tmp_path))
    cfg = compose_experiment("taobao", ["paths.output_dir=/unused", "paths.work_dir=/unused"])
    assert cfg.data.sources[0].path == str(tmp_path / TAOBAO_FILE)

    monkeypatch.delenv("SEQCHURN_SHARED_DATA")
    cfg = compose_experiment("taobao", ["paths.output_dir=/unused", "paths.work_dir=/unused", "paths.data_dir=/data"])
    assert cfg.data.sources[0].path == str(Path("/data") / TAOBAO_FILE)


# --------------------------------------------------------------------------------------
# One fast_dev_run batch per experiment, as `seqchurn train experiment=... debug=fdr`
# --------------------------------------------------------------------------------------


def prepare_online_retail(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    return [f"paths.data_dir={REPO_ROOT / 'data'}"], {}


def prepare_synthetic(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    data_dir = tmp_path / "data"
    proc = run_seqchurn(["synth", "--out", str(data_dir / "synthetic"), "--customers", "300"], cwd=tmp_path)
    assert proc.returncode == 0, describe_failure(proc)
    return [f"paths.data_dir={data_dir}"], {}


def prepare_taobao(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    if not (SHARED_DATA / TAOBAO_FILE).exists():
        pytest.skip(f"Taobao UserBehavior head not found at {SHARED_DATA / TAOBAO_FILE}; set SEQCHURN_SHARED_DATA")
    return [], {"SEQCHURN_SHARED_DATA": str(SHARED_DATA)}


RUNS = {
    "online_retail": ("online_retail", prepare_online_retail),
    "synthetic": ("synthetic", prepare_synthetic),
    "taobao": ("taobao", prepare_taobao),
}


@pytest.mark.slow
@pytest.mark.parametrize("run", list(RUNS))
def test_experiment_fast_dev_run(run: str, tmp_path: Path) -> None:
    experiment, prepare = RUNS[run]
    if experiment not in EXPERIMENTS:
        pytest.skip(f"conf/experiment/{experiment}.yaml does not exist")
    overrides, env = prepare(tmp_path)

    proc = run_seqchurn(["train", f"experiment={experiment}", "debug=fdr", f"paths.root_dir={tmp_path}", *overrides], cwd=tmp_path, env=env)

    assert proc.returncode == 0, describe_failure(proc)
    assert "fast_dev_run: skipping calibration" in proc.stdout + proc.stderr
    if run == "taobao":
        # The head of the file ends in a line cut short, which conf/data/taobao.yaml skips.
        assert "skipped 1 malformed row(s)" in proc.stdout + proc.stderr


def test_every_experiment_has_a_run() -> None:
    assert {experiment for experiment, _ in RUNS.values()} == set(EXPERIMENTS)
