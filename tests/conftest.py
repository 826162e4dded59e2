"""Shared fixtures: a small real-data slice and the real Hydra config with tiny overrides."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from seqchurn.conf_utils import CONFIG_DIR, REPO_ROOT, register_resolvers

register_resolvers()
BUNDLED = REPO_ROOT / "data" / "online_retail"
SHARED_DATA = Path(os.environ.get("SEQCHURN_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def retail_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every row of ~250 customers from both bundled files (plus some rows without an id)."""
    out = tmp_path_factory.mktemp("retail_slice")
    for name, id_col in (("online_retail_ii_2009_2010.parquet", "Customer ID"), ("online_retail.parquet", "CustomerID")):
        df = pd.read_parquet(BUNDLED / name)
        ids = df[id_col]
        keep = ids.isin(np.sort(ids.dropna().unique())[::20]) | (ids.isna() & (np.arange(len(df)) % 500 == 0))
        df.loc[keep].to_parquet(out / name, index=False)
    return out


def tiny_overrides(tmp_path: Path, slice_dir: Path) -> list[str]:
    """Overrides that point the real config at the slice and make training a few batches."""
    return [
        f"data.sources.0.path={slice_dir / 'online_retail_ii_2009_2010.parquet'}",
        f"data.sources.1.path={slice_dir / 'online_retail.parquet'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"paths.root_dir={tmp_path}",
        f"paths.output_dir={tmp_path / 'out'}",
        f"paths.work_dir={tmp_path}",
        "data.batch_size=32",
        "data.sequence.item_vocab_size=200",
        "model.net.hidden_size=16",
        "trainer.max_epochs=2",
        "+trainer.limit_train_batches=4",
        "+trainer.limit_val_batches=2",
        "trainer.accelerator=cpu",
        "logger=none",
    ]


@pytest.fixture
def cfg_train(tmp_path: Path, retail_slice: Path) -> DictConfig:
    """The real conf/train.yaml composed with tiny overrides; outputs under tmp_path."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=tiny_overrides(tmp_path, retail_slice))
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "out")
    yield cfg
    GlobalHydra.instance().clear()


def make_events(rows: list[tuple]) -> pd.DataFrame:
    """Canonical events from ``(customer_id, ts, event_type, amount)`` tuples (test helper)."""
    from seqchurn.data.schema import EVENT_TYPE_DTYPE

    df = pd.DataFrame(rows, columns=["customer_id", "ts", "event_type", "amount"])
    n = len(df)
    return pd.DataFrame(
        {
            "customer_id": df["customer_id"].astype("str"),
            "ts": pd.to_datetime(df["ts"], utc=True, format="ISO8601").astype("datetime64[ns, UTC]"),
            "event_type": df["event_type"].astype(EVENT_TYPE_DTYPE),
            "amount": df["amount"].astype("float64"),
            "quantity": np.ones(n),
            "item_id": pd.Series(["i1"] * n, dtype="str"),
            "category_id": pd.Series([None] * n, dtype="str"),
            "order_id": pd.Series([f"o{i}" for i in range(n)], dtype="str"),
            "cancelled_at": pd.Series(pd.NaT, index=range(n), dtype="datetime64[ns, UTC]"),
        }
    ).sort_values(["customer_id", "ts"], ignore_index=True)
