"""A tiny model trained and exported once per test process, shared by the alerting and API tests.

Training on the ``retail_slice`` fixture takes about a minute on 2 cores, so the tests that
need a real exported model share this one instead of training their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from conftest import tiny_overrides
from seqchurn.conf_utils import CONFIG_DIR


@dataclass(frozen=True)
class TrainedModel:
    """The exported model folder, the training config and the canonical events of the slice."""

    model_dir: Path
    cfg: DictConfig
    events: pd.DataFrame


_cache: dict[str, TrainedModel] = {}


def get_trained_model(tmp_path_factory, retail_slice: Path) -> TrainedModel:
    """Train (a few batches) and export on the slice the first time; later calls reuse the result."""
    if "model" not in _cache:
        from seqchurn.data.io import load_events
        from seqchurn.export import export
        from seqchurn.train import train

        tmp = tmp_path_factory.mktemp("shared_trained_model")
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="train", overrides=tiny_overrides(tmp, retail_slice))
        GlobalHydra.instance().clear()
        train(cfg)
        model_dir = Path(cfg.paths.checkpoint_dir)
        export(model_dir)
        events, _ = load_events(cfg.data)
        _cache["model"] = TrainedModel(model_dir=model_dir, cfg=cfg, events=events)
    return _cache["model"]
