"""LightningModule: metric keys, one-class validation, class weighting."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytorch_lightning as pl
import torch

from seqchurn.data.datamodule import LengthBucketBatchSampler
from seqchurn.models.churn_module import ChurnLitModule
from seqchurn.models.components.gru import GRUEncoder


def make_module() -> ChurnLitModule:
    net = GRUEncoder(6, 0, 8, 10, hidden_size=8)
    return ChurnLitModule(net, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))


def batch(labels: list[float]) -> dict[str, torch.Tensor]:
    b, t = len(labels), 4
    return {
        "event_type": torch.zeros(b, t, dtype=torch.long),
        "item": torch.zeros(b, t, dtype=torch.long),
        "numeric": torch.randn(b, t, 8),
        "mask": torch.ones(b, t, dtype=torch.bool),
        "static": torch.randn(b, 10),
        "label": torch.tensor(labels),
    }


def run_validation(module: ChurnLitModule, labels: list[float]) -> dict[str, float]:
    logged: dict[str, float] = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, float(value))  # no Trainer needed
    module.validation_step(batch(labels), 0)
    module.on_validation_epoch_end()
    return logged


def test_validation_logs_split_slash_metric_keys():
    logged = run_validation(make_module(), [0.0, 1.0, 1.0, 0.0])
    for key in ("val/loss", "val/auroc", "val/auprc", "val/f1", "val/brier", "val/auprc_best"):
        assert key in logged, key
    assert 0.0 <= logged["val/auroc"] <= 1.0


def test_one_class_validation_logs_nan_with_warning(caplog):
    logged = run_validation(make_module(), [1.0, 1.0, 1.0])
    assert math.isnan(logged["val/auroc"])
    assert math.isnan(logged["val/auprc"])
    assert "only one class" in caplog.text


def test_auto_positive_weight_is_negatives_over_positives():
    module = make_module()
    module.set_pos_weight(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert module.pos_weight_value == 3.0


class RecordingBucketSampler(LengthBucketBatchSampler):
    """Length-bucket sampler that records the epoch of every pass."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.passes: list[int] = []

    def __iter__(self):
        self.passes.append(self.epoch)
        return super().__iter__()


def test_training_epoch_sets_sampler_epoch(tmp_path):
    n = 24
    rows = [{key: value[0] for key, value in batch([float(i % 2)]).items()} for i in range(n)]
    sampler = RecordingBucketSampler(np.full(n, 4), batch_size=8, shuffle=True, seed=3)
    loader = torch.utils.data.DataLoader(rows, batch_sampler=sampler)
    sampler.epoch = 100  # a counter out of step with the trainer

    trainer = pl.Trainer(
        max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )
    trainer.fit(make_module(), train_dataloaders=loader)

    # Lightning creates the first iterator before the epoch hook: ChurnDataModule sets
    # that epoch itself (test_datamodule_cache.py), the module hook every later one.
    assert sampler.passes[1:] == [1, 2]


def test_bucket_sampler_order_follows_epoch():
    lengths = np.arange(40) % 5
    first = LengthBucketBatchSampler(lengths, batch_size=4, shuffle=True, seed=7)
    second = LengthBucketBatchSampler(lengths, batch_size=4, shuffle=True, seed=7)
    epoch_zero, epoch_one = list(first), list(first)
    second.set_epoch(1)
    assert list(second) == epoch_one
    assert epoch_zero != epoch_one
