"""ChurnDataModule's sequence cache: hits skip loading, relevant config changes miss, workers read the memmaps."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from seqchurn.data import datamodule as datamodule_module
from seqchurn.data.datamodule import ChurnDataModule
from seqchurn.synth import generate
from test_score_stream import synthetic_data_config


@pytest.fixture(scope="module")
def data_cfg(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """conf/data/synthetic.yaml on a 300-customer log, small sequences, no cache directory set."""
    log_dir = tmp_path_factory.mktemp("cache") / "log"
    generate(log_dir, 300, events_per_customer=30, n_partitions=2)
    cfg = synthetic_data_config(log_dir)
    cfg["sequence"].update(max_len=16, item_vocab_size=50)
    return cfg


@pytest.fixture
def load_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count calls of load_events made by the data module."""
    calls: list[int] = []
    load_events = datamodule_module.load_events

    def counting(*args, **kwargs):
        calls.append(1)
        return load_events(*args, **kwargs)

    monkeypatch.setattr(datamodule_module, "load_events", counting)
    return calls


def build(cfg: dict, cache_dir: Path, **options) -> ChurnDataModule:
    dm = ChurnDataModule(cfg, batch_size=32, cache_dir=str(cache_dir), **options)
    dm.prepare()
    return dm


def test_second_build_is_cache_hit(data_cfg, tmp_path, load_calls):
    first = build(data_cfg, tmp_path)
    assert len(load_calls) == 1
    assert not isinstance(first.arrays["train"].numeric, np.memmap)

    second = build(data_cfg, tmp_path)
    assert len(load_calls) == 1
    assert second.data_fingerprint == first.data_fingerprint
    assert isinstance(second.arrays["train"].numeric, np.memmap)
    assert second.spec == first.spec
    for split in ("train", "val", "test"):
        for name in ("event_type", "item", "numeric", "mask", "static"):
            assert np.array_equal(getattr(second.arrays[split], name), getattr(first.arrays[split], name)), (split, name)
        assert np.array_equal(second.labels(split), first.labels(split))


def test_loader_settings_do_not_miss(data_cfg, tmp_path, load_calls):
    build(data_cfg, tmp_path)
    changed = copy.deepcopy(data_cfg)
    changed.update(batch_size=7, num_workers=3)
    build(changed, tmp_path)
    assert len(load_calls) == 1


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [("sequence", "max_len", 12), ("churn", "horizon_days", 60), ("split", "train_every_days", 45), ("sequence", "collapse_orders", False)],
)
def test_relevant_change_misses(data_cfg, tmp_path, load_calls, section, key, value):
    first = build(data_cfg, tmp_path)
    changed = copy.deepcopy(data_cfg)
    changed[section][key] = value
    second = build(changed, tmp_path)
    assert len(load_calls) == 2
    assert second.data_fingerprint != first.data_fingerprint
    assert len(list(tmp_path.iterdir())) == 2


def test_changed_log_file_misses(data_cfg, tmp_path, load_calls):
    build(data_cfg, tmp_path)
    log_file = next(Path(data_cfg["sources"][0]["path"]).glob("bucket=*/*.parquet"))
    stat = log_file.stat()
    try:
        # A newer modification time is enough: the fingerprint does not read the data.
        os.utime(log_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        build(data_cfg, tmp_path)
    finally:
        os.utime(log_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert len(load_calls) == 2


def test_worker_reads_memmapped_arrays(data_cfg, tmp_path):
    build(data_cfg, tmp_path)
    dm = build(data_cfg, tmp_path, num_workers=1)
    arrays = dm.arrays["train"]
    assert isinstance(arrays.numeric, np.memmap)
    loader = dm.train_dataloader()
    assert loader.num_workers == 1

    # Batch order depends on the sampler's epoch, so each row is found by its static features.
    row_of = {arrays.static[i].tobytes(): i for i in range(len(arrays))}
    assert len(row_of) == len(arrays)
    labels = dm.labels("train")
    seen = []
    for batch in loader:
        length = batch["mask"].shape[1]
        for j in range(len(batch["label"])):
            i = row_of[batch["static"][j].numpy().tobytes()]
            seen.append(i)
            assert torch.equal(batch["event_type"][j], torch.from_numpy(np.asarray(arrays.event_type[i, :length])))
            assert torch.equal(batch["numeric"][j], torch.from_numpy(np.asarray(arrays.numeric[i, :length])))
            assert torch.equal(batch["mask"][j], torch.from_numpy(np.asarray(arrays.mask[i, :length])))
            assert batch["label"][j].item() == labels[i]
            assert not arrays.mask[i, length:].any()
    assert sorted(seen) == list(range(len(arrays)))


def test_train_loader_starts_at_trainer_epoch(data_cfg, tmp_path):
    dm = build(data_cfg, tmp_path / "cache")
    assert dm.train_dataloader().batch_sampler.epoch == 0
    dm.trainer = SimpleNamespace(current_epoch=5)  # as after resuming from an epoch-5 checkpoint
    resumed = dm.train_dataloader().batch_sampler
    assert resumed.epoch == 5

    uninterrupted = build(data_cfg, tmp_path / "cache").train_dataloader().batch_sampler
    for _ in range(5):
        list(uninterrupted)
    assert list(resumed) == list(uninterrupted)
