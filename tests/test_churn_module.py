"""LightningModule: metric keys, one-class validation, class weighting."""

from __future__ import annotations

import functools
import math

import torch

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
