"""One LightningModule for every encoder: loss, metrics, optimiser."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MaxMetric, MeanMetric, MetricCollection
from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision, BinaryF1Score

from seqchurn.models.hazard import hazard_nll

log = logging.getLogger(__name__)

INPUT_NAMES = ("event_type", "item", "numeric", "mask", "static")


def _stage_metrics() -> MetricCollection:
    return MetricCollection({"auroc": BinaryAUROC(), "auprc": BinaryAveragePrecision(), "f1": BinaryF1Score()})


class ChurnLitModule(pl.LightningModule):
    """Train a plain ``nn.Module`` encoder (``net``) as a binary churn classifier.

    Logged keys: ``{train,val,test}/loss``, ``{val,test}/{auroc,auprc,f1,brier}`` and
    ``val/auprc_best``. F1 here uses a 0.5 threshold; the deployed threshold is chosen on
    validation after training.

    Output 0 of ``net`` is the churn logit. With ``hazard_bins > 0`` outputs ``1..K`` are
    discrete-time hazard logits (``seqchurn.models.hazard``), trained jointly with weight
    ``hazard_weight``.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        pos_weight: float | str | None = "auto",
        name: str = "model",
        net_config: dict | None = None,
        compile: bool = False,
        hazard_bins: int = 0,
        hazard_bin_days: float = 7.0,
        hazard_weight: float = 1.0,
        hazard_horizons_days: tuple[float, ...] = (30.0, 60.0, 90.0),
    ) -> None:
        super().__init__()
        # net_config (the resolved `_target_` and sizes) lets export rebuild the network
        # from the checkpoint without Lightning or Hydra.
        self.save_hyperparameters(logger=False, ignore=["net"])
        self.net = net
        self.pos_weight_value: float | None = None if pos_weight in ("auto", None) else float(pos_weight)
        self.metrics = nn.ModuleDict({"val_": _stage_metrics(), "test_": _stage_metrics()})
        self.brier = nn.ModuleDict({"val_": MeanMetric(), "test_": MeanMetric()})
        self.label_mean = nn.ModuleDict({"val_": MeanMetric(), "test_": MeanMetric()})
        self.train_loss = MeanMetric()
        self.val_auprc_best = MaxMetric()

    def set_pos_weight(self, labels: torch.Tensor) -> None:
        """Weight churned examples by negatives/positives in training, unless configured."""
        if self.hparams.pos_weight == "auto":
            pos = float(labels.sum())
            neg = float(len(labels) - pos)
            self.pos_weight_value = neg / max(pos, 1.0)
            log.info("class balance: %.3f churned; positive class weight %.3f", pos / max(len(labels), 1), self.pos_weight_value)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(*(batch[k] for k in INPUT_NAMES))  # (B, n_outputs)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        weight = None
        if self.pos_weight_value is not None:
            weight = torch.tensor(self.pos_weight_value, device=logits.device, dtype=logits.dtype)
        return nn.functional.binary_cross_entropy_with_logits(logits, y, pos_weight=weight)

    def _hazard_loss(self, out: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Censoring-aware hazard NLL on outputs 1..K; zero when the head is off."""
        if not self.hparams.hazard_bins:
            return out.new_zeros(())
        if "time_days" not in batch:
            raise ValueError("Expected time-to-event targets for the hazard head, but the batch has none; rebuild the data cache")
        return hazard_nll(out[:, 1:].float(), batch["time_days"], batch["observed"], self.hparams.hazard_bin_days)

    def on_train_epoch_start(self) -> None:
        # Lightning calls set_epoch only on a loader's sampler, not on a custom batch sampler.
        batch_sampler = getattr(self.trainer.train_dataloader, "batch_sampler", None)
        if hasattr(batch_sampler, "set_epoch"):
            batch_sampler.set_epoch(self.current_epoch)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self(batch)
        logits = out[:, 0].float()
        loss = self._loss(logits, batch["label"]) + self.hparams.hazard_weight * self._hazard_loss(out, batch)
        self.train_loss(loss)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(logits))
        return loss

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        out = self(batch)
        logits = out[:, 0].float()
        y = batch["label"]
        loss = self._loss(logits, y) + self.hparams.hazard_weight * self._hazard_loss(out, batch)
        prob = torch.sigmoid(logits)
        key = f"{stage}_"
        self.metrics[key].update(prob, y.long())
        self.brier[key].update((prob - y) ** 2)
        self.label_mean[key].update(y)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=stage == "val", batch_size=len(y), sync_dist=True)

    def _eval_epoch_end(self, stage: str) -> None:
        key = f"{stage}_"
        churn_rate = float(self.label_mean[key].compute())
        values = self.metrics[key].compute()
        if churn_rate in (0.0, 1.0):
            # AUROC / PR-AUC are undefined for one class; log NaN, never a misleading 0.
            log.warning("%s set has only one class (churn rate %.0f): AUROC and PR-AUC are logged as NaN", stage, churn_rate)
            values = {k: (torch.tensor(math.nan) if k in ("auroc", "auprc") else v) for k, v in values.items()}
        for name, value in values.items():
            self.log(f"{stage}/{name}", value, prog_bar=name == "auprc")
        self.log(f"{stage}/brier", self.brier[key].compute())
        self.metrics[key].reset()
        self.brier[key].reset()
        self.label_mean[key].reset()
        if stage == "val" and not math.isnan(float(values["auprc"])):
            self.val_auprc_best(values["auprc"])
            self.log("val/auprc_best", self.val_auprc_best.compute())

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch)[:, 0].float()

    def setup(self, stage: str) -> None:
        if self.hparams.compile and stage == "fit":
            self.net = torch.compile(self.net)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.hparams.optimizer(params=self.trainer.model.parameters())
        if self.hparams.scheduler is None:
            return {"optimizer": optimizer}
        scheduler = self.hparams.scheduler(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/auprc", "interval": "epoch"}}
