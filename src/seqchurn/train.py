"""Train a churn model: ``seqchurn train [hydra overrides]`` or ``python -m seqchurn.train``.

Steps: build snapshots and sequences, fit the encoder with early stopping on
``val/auprc``, calibrate (temperature) and choose the alert threshold on validation,
evaluate once on test, and write ``training_summary.json`` beside the checkpoints. The
summary is what ``seqchurn export`` needs besides the weights.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from seqchurn.conf_utils import CONFIG_DIR, register_resolvers
from seqchurn.data.datamodule import ChurnDataModule
from seqchurn.data.io import LogSpec
from seqchurn.data.schema import LoadReport
from seqchurn.data.sequences import length_batches
from seqchurn.errors import exits_on_error
from seqchurn.metrics import binary_report
from seqchurn.models.calibration import choose_threshold, fit_temperature
from seqchurn.utils.atomic import atomic_write_json
from seqchurn.utils.checkpoint_io import AtomicCheckpointIO
from seqchurn.utils.run_summary import track_run

log = logging.getLogger(__name__)
register_resolvers()


def resolve_precision(cfg: DictConfig) -> str:
    """``trainer.precision: null`` means bf16-mixed on a GPU and 32-true on the CPU."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    on_gpu = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    precision = cfg.trainer.get("precision") or ("bf16-mixed" if on_gpu else "32-true")
    if on_gpu:
        log.info("training on GPU (%s, %d visible) with precision %s", torch.cuda.get_device_name(0), torch.cuda.device_count(), precision)
    else:
        log.info("training on CPU (%d threads) with precision %s", torch.get_num_threads(), precision)
    return str(precision)


def build(cfg: DictConfig) -> tuple[ChurnDataModule, pl.LightningModule]:
    """Instantiate the data module and the LightningModule with its injected encoder."""
    dm = ChurnDataModule(cfg.data, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers, cache_dir=cfg.data.get("cache_dir"), seed=cfg.seed)
    dims = dm.net_dims()
    log.info("instantiating encoder <%s>", cfg.model.net._target_)
    n_outputs = 1 + int(cfg.model.get("hazard_bins", 0) or 0)
    net = hydra.utils.instantiate(cfg.model.net, n_outputs=n_outputs, **dims)
    net_config = {**OmegaConf.to_container(cfg.model.net, resolve=True), **dims, "n_outputs": n_outputs}
    # Stored as "target", not "_target_", so Hydra does not instantiate it a second time.
    net_config["target"] = net_config.pop("_target_")
    model = hydra.utils.instantiate(cfg.model, net=net, net_config=net_config)
    model.set_pos_weight(torch.tensor(np.array(dm.labels("train"), dtype=np.float32)))
    return dm, model


def predict_outputs(net: torch.nn.Module, arrays: Any, batch_size: int = 1024) -> np.ndarray:
    """All network outputs ``(N, n_outputs)`` for every row of ``arrays`` (eval mode, no grad)."""
    net.eval()
    inputs = arrays.as_inputs()
    out = None
    with torch.no_grad():
        for idx, length in length_batches(inputs["mask"], batch_size):
            batch = [torch.as_tensor(np.asarray(inputs[k])[idx][:, :length]) for k in ("event_type", "item", "numeric", "mask")]
            batch.append(torch.as_tensor(np.asarray(inputs["static"])[idx]))
            values = net(*batch).float().numpy()
            if out is None:
                out = np.zeros((len(arrays), values.shape[1]), dtype=np.float32)
            out[idx] = values
    return out if out is not None else np.zeros((0, 1), dtype=np.float32)


def predict_logits(net: torch.nn.Module, arrays: Any, batch_size: int = 1024) -> np.ndarray:
    """Churn logits (output 0) for every row of ``arrays``."""
    return predict_outputs(net, arrays, batch_size)[:, 0]


def hazard_metrics(cfg: DictConfig, dm: ChurnDataModule, outputs: dict[str, np.ndarray]) -> dict[str, float]:
    """Time-to-event metrics of the hazard head on the test split."""
    from seqchurn.models.hazard import survival_at
    from seqchurn.survival_metrics import survival_report

    horizons = np.asarray(cfg.model.hazard_horizons_days, dtype=np.float64)
    surv = survival_at(torch.as_tensor(outputs["test"][:, 1:]), torch.as_tensor(horizons, dtype=torch.float32), cfg.model.hazard_bin_days).numpy()
    snaps = dm.snapshots
    train_rows, test_rows = snaps[snaps["split"] == "train"], snaps[snaps["split"] == "test"]
    report = survival_report(
        train_rows["days_to_activity"].to_numpy(), train_rows["activity_observed"].to_numpy(),
        test_rows["days_to_activity"].to_numpy(), test_rows["activity_observed"].to_numpy(), surv, horizons,
    )
    # The hazard's own P(no activity within the churn horizon), scored as a binary classifier.
    horizon_prob = survival_at(
        torch.as_tensor(outputs["test"][:, 1:]), torch.tensor([dm.churn.horizon_days], dtype=torch.float32), cfg.model.hazard_bin_days
    ).numpy()[:, 0]
    report["horizon_average_precision"] = binary_report(dm.labels("test"), horizon_prob)["average_precision"]
    return report


def recency_scores(dm: ChurnDataModule, split: str) -> np.ndarray:
    """Days since last activity before the cutoff, up to a monotone transform: the recency baseline."""
    return np.asarray(dm.arrays[split].static[:, dm.spec.static_features.index("log_days_since_last_activity")], dtype=np.float64)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run training and evaluation; return the summary that is also written to disk."""
    t0 = time.perf_counter()
    pl.seed_everything(cfg.seed, workers=True)
    dm, model = build(cfg)
    ckpt_dir = Path(cfg.paths.checkpoint_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)

    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None and "_target_" in c]
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None and "_target_" in c]
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, precision=resolve_precision(cfg), plugins=[AtomicCheckpointIO()]
    )

    resume = None
    if cfg.get("resume"):
        last = ckpt_dir / "last.ckpt"
        resume = str(last) if last.exists() else None
        log.info("resuming from %s", resume) if resume else log.warning("resume=true but %s does not exist; starting fresh", last)
    # weights_only=False: the checkpoint's hyperparameters contain the optimizer and scheduler
    # factories (functools.partial), which the weights-only unpickler rejects. The file is
    # this run's own last.ckpt.
    trainer.fit(model, datamodule=dm, ckpt_path=resume, weights_only=False)
    if trainer.fast_dev_run:
        log.info("fast_dev_run: skipping calibration, test and summary")
        return {}
    logged_test: dict[str, float] = {}
    if trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path:
        # Logs test/{loss,auroc,auprc,f1,brier} of the best checkpoint (uncalibrated, 0.5 for F1);
        # the calibrated test metrics at the chosen threshold are computed below.
        results = trainer.test(model, datamodule=dm, ckpt_path="best", verbose=False, weights_only=False)
        logged_test = {k: float(v) for k, v in (results[0] if results else {}).items()}
    if not trainer.is_global_zero:
        # Under DDP only rank 0 calibrates, tests and writes the summary.
        return {}

    best_path = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best_path:
        state = torch.load(best_path, map_location="cpu", weights_only=False)["state_dict"]
        model.load_state_dict(state)
        log.info("best checkpoint: %s (val/auprc %.4f)", best_path, float(trainer.checkpoint_callback.best_model_score or float("nan")))
    net = model.net.cpu().float()

    # Calibrate and choose the threshold on validation only; test is touched once, below.
    outputs = {split: predict_outputs(net, dm.arrays[split]) for split in ("val", "test")}
    val_logits = outputs["val"][:, 0]
    val_y = dm.labels("val")
    temperature = fit_temperature(val_logits, val_y) if cfg.calibrate else 1.0
    val_prob = 1 / (1 + np.exp(-val_logits / temperature))
    th = cfg.threshold
    threshold = choose_threshold(val_prob, val_y, th.strategy, target_precision=th.get("target_precision"), top_k_percent=th.get("top_k_percent"))

    test_logits = outputs["test"][:, 0]
    test_y = dm.labels("test")
    test_prob = 1 / (1 + np.exp(-test_logits / temperature))
    test_metrics = binary_report(test_y, test_prob)
    pred = test_prob >= threshold
    tp = int((pred & (test_y == 1)).sum())
    test_metrics["precision_at_threshold"] = tp / max(int(pred.sum()), 1)
    test_metrics["recall_at_threshold"] = tp / max(int(test_y.sum()), 1)
    test_metrics["f1_at_threshold"] = 2 * tp / max(int(pred.sum()) + int(test_y.sum()), 1)
    baseline = binary_report(test_y, _minmax(recency_scores(dm, "test")))

    hazard = None
    if cfg.model.get("hazard_bins"):
        hazard = {
            "bins": int(cfg.model.hazard_bins),
            "bin_days": float(cfg.model.hazard_bin_days),
            "horizons_days": [float(h) for h in cfg.model.hazard_horizons_days],
            "test_metrics": hazard_metrics(cfg, dm, outputs),
        }
        log.info("hazard head on test: %s", ", ".join(f"{k} {v:.4f}" for k, v in hazard["test_metrics"].items()))

    summary = {
        "hazard": hazard,
        "model_name": cfg.model.name,
        "run_name": cfg.run_name,
        "best_checkpoint": best_path,
        "net_config": _plain(model.hparams.net_config),
        "feature_spec": dm.spec.to_dict(),
        "churn_definition": dm.churn.to_dict(),
        "split": OmegaConf.to_container(cfg.data.split, resolve=True),
        "data_name": cfg.data.name,
        "data_config": OmegaConf.to_container(cfg.data, resolve=True),
        "data_fingerprint": dm.data_fingerprint,
        "pseudonym_key_id": LogSpec.from_config(cfg.data).pseudonym_key_id,
        "load_report": dm.load_report.to_dict() if dm.load_report else None,
        "temperature": temperature,
        "threshold": threshold,
        "threshold_strategy": OmegaConf.to_container(th, resolve=True),
        "val_metrics": binary_report(val_y, val_prob),
        "test_metrics": test_metrics,
        "logged_test_metrics": logged_test,
        "baseline_recency_test_metrics": baseline,
        "n_snapshots": {s: int(len(dm.labels(s))) for s in ("train", "val", "test")},
        "seed": cfg.seed,
        "train_seconds": time.perf_counter() - t0,
    }
    atomic_write_json(ckpt_dir / "test_metrics.json", {"model": test_metrics, "baseline_recency": baseline, "threshold": threshold})
    atomic_write_json(ckpt_dir / "training_summary.json", summary)
    _log_result(summary, ckpt_dir)
    return summary


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(x)), float(np.max(x))
    return (x - lo) / (hi - lo) if hi > lo else np.full_like(x, 0.5)


def _log_result(summary: dict, ckpt_dir: Path) -> None:
    m, b = summary["test_metrics"], summary["baseline_recency_test_metrics"]
    log.info(
        "test: %s PR-AUC %.4f AUROC %.4f Brier %.4f | recency baseline PR-AUC %.4f AUROC %.4f | threshold %.3f",
        summary["model_name"], m["average_precision"], m["auroc"], m["brier"], b["average_precision"], b["auroc"], summary["threshold"],
    )
    log.info("checkpoint and summary in %s; export with: seqchurn export ckpt_dir=%s", ckpt_dir, ckpt_dir)
    log.info("report: seqchurn report --model-dir %s", ckpt_dir)


def train_with_run_summary(cfg: DictConfig) -> dict[str, Any]:
    """Train and write ``train_run_summary.json`` (also on failure) beside the checkpoints."""
    ckpt_dir = Path(cfg.paths.checkpoint_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    with track_run("train", ckpt_dir / "train_run_summary.json", config=OmegaConf.to_container(cfg, resolve=True)) as run_summary:
        with run_summary.stage("train"):
            summary = train(cfg)
        if summary.get("load_report"):
            run_summary.add_load_report(LoadReport(**summary["load_report"]))
        if summary:
            run_summary.details.update({key: summary[key] for key in ("best_checkpoint", "threshold", "val_metrics", "test_metrics", "n_snapshots")})
    return summary


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.get().mode == RunMode.MULTIRUN:
        # In a sweep a failed trial must reach Hydra as an exception, not end the process.
        summary = train_with_run_summary(cfg)
    else:
        summary = exits_on_error(train_with_run_summary)(cfg)
    metric = cfg.get("optimized_metric")
    if summary and metric:
        # Sweepers (Optuna) maximise the value returned here.
        name = metric.split("/")[-1]
        value = summary["val_metrics"].get({"auprc": "average_precision"}.get(name, name))
        return float(value) if value is not None else None
    return None


if __name__ == "__main__":
    main()
