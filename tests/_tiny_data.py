"""Tiny training setups for tests that run `seqchurn train` end to end in seconds.

The data is the ``retail_slice`` fixture of conftest.py (every row of about 250 customers
of the bundled Online Retail files). The default split cutoffs give both classes in every
split of that slice.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from seqchurn.conf_utils import CONFIG_DIR, REPO_ROOT

SHARED_DATA = Path(os.environ.get("SEQCHURN_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
CLI_TIMEOUT_S = 600


def data_overrides(tmp_path: Path, slice_dir: Path) -> list[str]:
    """Point the online_retail data config at the slice, with its sequence cache in ``tmp_path``."""
    return [
        f"data.sources.0.path={slice_dir / 'online_retail_ii_2009_2010.parquet'}",
        f"data.sources.1.path={slice_dir / 'online_retail.parquet'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.batch_size=16",
        "data.sequence.item_vocab_size=100",
    ]


def cli_overrides(tmp_path: Path, slice_dir: Path, *, hidden_size: int | None = 16) -> list[str]:
    """Overrides for a `seqchurn train` subprocess: one epoch of two batches, outputs in ``tmp_path``.

    ``paths.output_dir`` stays Hydra's run (or sweep trial) folder, which lies under
    ``paths.log_dir`` and so under ``tmp_path``. Pass ``hidden_size=None`` to sweep it.
    """
    sizes = [] if hidden_size is None else [f"model.net.hidden_size={hidden_size}"]
    return [
        *data_overrides(tmp_path, slice_dir),
        f"paths.root_dir={tmp_path}",
        *sizes,
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=2",
        "trainer.accelerator=cpu",
        "logger=none",
    ]


def compose_train(tmp_path: Path, slice_dir: Path, extra: list[str] = ()) -> DictConfig:
    """Compose conf/train.yaml with :func:`cli_overrides` for an in-process ``train(cfg)`` call.

    Outside ``@hydra.main`` the ``${hydra:...}`` paths cannot resolve, so ``paths.output_dir``
    and ``paths.work_dir`` are set to ``tmp_path``.
    """
    overrides = [*cli_overrides(tmp_path, slice_dir), f"paths.output_dir={tmp_path / 'out'}", f"paths.work_dir={tmp_path}", *extra]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name="train", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def run_seqchurn(args: list[str], cwd: Path, *, env: dict[str, str] | None = None, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run ``python -m seqchurn.cli ARGS`` in ``cwd`` and return it with stdout and stderr captured.

    The interpreter runs with one torch thread, because the tests must fit on a two-core machine.
    """
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "seqchurn.cli", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout, check=False
    )


def describe_failure(proc: subprocess.CompletedProcess) -> str:
    """The exit code and the last lines of a failed subprocess, for assertion messages."""
    return f"exit code {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
