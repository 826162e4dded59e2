"""Quality benchmark: every churn model of seqchurn on the same snapshots of a data config.

For one data config, :func:`benchmark_dataset` builds the snapshots once with
:class:`~seqchurn.data.datamodule.ChurnDataModule`, fits the baselines of
:mod:`seqchurn.baselines` on their training rows and trains the sequence models through
:func:`seqchurn.train.train`, one run per seed. Every model is scored once on the test
split. Sequence models are scored with the temperature-calibrated probabilities that
``train`` reports, and the "ensemble" rows average those probabilities over the seeds.

Nothing here chooses anything by test metrics. Settings tuned on validation live in
``conf/experiment/quality/<dataset>_<model>.yaml`` and are applied when that file exists.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import logging
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from seqchurn.baselines import BASELINES, Baseline, make_baseline
from seqchurn.baselines.features import feature_options
from seqchurn.conf_utils import CONFIG_DIR, REPO_ROOT, register_resolvers
from seqchurn.data.datamodule import ChurnDataModule, sample_customers
from seqchurn.data.io import load_events
from seqchurn.data.labels import make_split_snapshots, plan_splits
from seqchurn.data.sequences import build_arrays, collapse_orders
from seqchurn.metrics import auroc, average_precision, binary_report
from seqchurn.utils.machine import cpu_model

log = logging.getLogger(__name__)
register_resolvers()

SEQUENCE_MODELS: tuple[str, ...] = ("gru", "transformer")
SEEDED_BASELINES: tuple[str, ...] = ("lightgbm",)
# Baselines on aggregate_features: they use the windows of the data config, as the sequence
# models' aggregate side input does.
FEATURE_BASELINES: tuple[str, ...] = ("logreg", "lightgbm")
# L2 penalties tried in turn when the unpenalised BG/NBD fit of lifetimes does not converge
# (it fails on the short Taobao log, for example).
BGNBD_PENALIZER_FALLBACK: tuple[float, ...] = (0.001, 0.01)
ALL_MODELS: tuple[str, ...] = (*BASELINES, *SEQUENCE_MODELS)
# Keys of seqchurn.metrics.binary_report shown in the tables, in column order.
METRICS: tuple[str, ...] = ("average_precision", "auroc", "log_loss", "brier", "ece", "precision_at_top", "lift_at_top")
ENSEMBLE_SUFFIX = " ensemble"

# Settings of --quick: one seed and a few batches, so that the whole benchmark runs in seconds.
QUICK_SEQUENCE_OVERRIDES: tuple[str, ...] = (
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=2",
    "model.net.hidden_size=16",
    "data.batch_size=64",
)


@dataclass
class BenchmarkOptions:
    """Models, seeds and overrides of a benchmark run, and the folder for its intermediate files."""

    work_dir: Path
    """Checkpoints, sequence caches and run outputs of the sequence models."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of the stochastic models (sequence models and LightGBM)."""
    models: tuple[str, ...] = ALL_MODELS
    overrides: tuple[str, ...] = ()
    """Hydra overrides applied to the config of every model (data and training)."""
    sequence_overrides: tuple[str, ...] = ()
    """Hydra overrides applied to the sequence models only, after the experiment file."""
    sample_fraction: float = 1.0
    """Share of customers kept (by stable hash), for every model alike."""
    use_experiments: bool = True
    """Apply conf/experiment/quality/<dataset>_<model>.yaml where it exists."""
    baseline_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Constructor options per baseline name, e.g. ``{"bgnbd": {"penalizer_coef": 0.001}}``."""


@dataclass
class RunResult:
    """Metrics of one fitted model (one seed) on the validation and test splits."""

    dataset: str
    model: str
    seed: int | None
    val: dict[str, float]
    test: dict[str, float]
    train_seconds: float
    score_seconds: float
    val_prob: np.ndarray = field(repr=False)
    test_prob: np.ndarray = field(repr=False)
    note: str | None = None
    """A deviation from the model's defaults, shown under the tables."""

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"dataset": self.dataset, "model": self.model, "seed": self.seed}
        row.update({f"val_{k}": self.val[k] for k in METRICS})
        row.update({f"test_{k}": self.test[k] for k in METRICS})
        row.update({"n_test": self.test["n"], "test_positive_rate": self.test["positive_rate"]})
        row.update({"train_seconds": self.train_seconds, "score_seconds": self.score_seconds})
        return row


# -- configs -------------------------------------------------------------------------------


def resolve_data_config(data: str, work_dir: Path) -> tuple[str, list[str]]:
    """Return the data config name and the Hydra search-path override that ``data`` needs.

    ``data`` is a config name under conf/data (``online_retail``) or the path of a YAML
    file written like those. A file is copied to ``work_dir/conf/data/`` and that folder is
    added to Hydra's search path.
    """
    path = Path(data)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ValueError(f"Data config file {path} not found; pass a config name under {CONFIG_DIR / 'data'} or an existing YAML file")
        conf_root = work_dir / "conf"
        (conf_root / "data").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, conf_root / "data" / f"{path.stem}.yaml")
        return path.stem, [f"hydra.searchpath=[file://{conf_root.resolve()}]"]
    if not (CONFIG_DIR / "data" / f"{data}.yaml").is_file():
        known = sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml"))
        raise ValueError(f"Data config {data!r} not found in {CONFIG_DIR / 'data'} (known: {known}); pass one of them or a YAML file path")
    return data, []


def experiment_name(data_name: str, model: str) -> str | None:
    """Return ``quality/<data>_<model>`` when conf/experiment contains that file, else None."""
    name = f"quality/{data_name}_{model}"
    return name if (CONFIG_DIR / "experiment" / f"{name}.yaml").is_file() else None


def compose_train_config(overrides: Sequence[str]) -> DictConfig:
    """Compose conf/train.yaml with ``overrides``, as ``seqchurn train`` would."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name="train", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def _base_overrides(data_name: str, search_path: list[str], options: BenchmarkOptions) -> list[str]:
    work = options.work_dir.resolve()
    return [
        *search_path,
        f"data={data_name}",
        f"data.cache_dir={work / 'cache'}",
        f"++data.sample_fraction={options.sample_fraction}",
        f"paths.log_dir={work / 'logs'}",
        *options.overrides,
    ]


def sequence_config(model: str, seed: int, data_name: str, search_path: list[str], options: BenchmarkOptions) -> DictConfig:
    """Compose the training config of one sequence-model run, with its own run name and checkpoint folder."""
    work = options.work_dir.resolve()
    experiment = experiment_name(data_name, model) if options.use_experiments else None
    run_name = f"{data_name}_{model}_seed{seed}"
    overrides = [
        *_base_overrides(data_name, search_path, options),
        f"model={model}",
        f"seed={seed}",
        f"run_name={run_name}",
        f"paths.checkpoint_dir={work / 'checkpoints' / run_name}",
        f"paths.output_dir={work / 'outputs' / run_name}",
        "logger=none",
        "+trainer.enable_progress_bar=false",
        *([f"experiment={experiment}"] if experiment else []),
        *options.sequence_overrides,
    ]
    return compose_train_config(overrides)


# -- data ----------------------------------------------------------------------------------


@dataclass
class BenchmarkData:
    """The snapshots every model is scored on, and the event log they come from."""

    name: str
    snapshots: pd.DataFrame
    events: pd.DataFrame
    """Canonical events as ``load_events`` returns them (order lines not collapsed)."""
    churn: Any
    feature_options: dict[str, Any] = field(default_factory=dict)
    """``windows`` and ``trend_days`` of the aggregate features, from the data config."""

    def split(self, name: str) -> pd.DataFrame:
        return self.snapshots[self.snapshots["split"] == name]


def load_benchmark_data(cfg: DictConfig) -> BenchmarkData:
    """Build the snapshots with the data module and load the events for the baselines.

    The data module collapses order lines into orders before it builds snapshots. The
    baselines read the events as ``load_events`` returns them, so the snapshots are rebuilt
    from those events and compared: a difference in customers, cutoffs or labels raises.
    """
    dm = ChurnDataModule(cfg.data, batch_size=cfg.data.batch_size, cache_dir=cfg.data.get("cache_dir"), seed=cfg.seed)
    dm.prepare()
    events, _ = load_events(cfg.data)
    events = sample_customers(events, float(cfg.data.get("sample_fraction", 1.0)))
    split = cfg.data.split
    plan = plan_splits(
        test_cutoff=split.test_cutoff,
        val_cutoff=split.val_cutoff,
        train_cutoffs=split.get("train_cutoffs"),
        train_first_cutoff=split.get("train_first_cutoff"),
        train_every_days=float(split.get("train_every_days", 30)),
        churn=dm.churn,
    )
    rebuilt = make_split_snapshots(events, plan, dm.churn)
    check_same_snapshots(dm.snapshots, rebuilt)
    return BenchmarkData(str(cfg.data.name), dm.snapshots.reset_index(drop=True), events, dm.churn, feature_options(cfg.data))


def _snapshot_key(snaps: pd.DataFrame) -> pd.DataFrame:
    key = snaps[["split", "customer_id", "cutoff", "label"]].copy()
    key["cutoff"] = pd.to_datetime(key["cutoff"], utc=True)
    key["customer_id"] = key["customer_id"].astype(str)
    key["label"] = key["label"].astype(np.int64)
    return key.sort_values(["split", "cutoff", "customer_id"], ignore_index=True)


def check_same_snapshots(expected: pd.DataFrame, actual: pd.DataFrame) -> None:
    """Raise ``RuntimeError`` unless both frames hold the same split, customer, cutoff and label rows."""
    a, b = _snapshot_key(expected), _snapshot_key(actual)
    if len(a) != len(b) or not a.equals(b):
        diff = a.merge(b, how="outer", indicator=True).query("_merge != 'both'")
        raise RuntimeError(
            f"Snapshots differ between the sequence model's data module ({len(a)} rows) and the baselines' events "
            f"({len(b)} rows); {len(diff)} rows are in one only, e.g. {diff.head(3).to_dict('records')}"
        )


# -- runs ----------------------------------------------------------------------------------


def fit_baseline(name: str, data: BenchmarkData, options: dict[str, Any]) -> tuple[Baseline, str | None]:
    """Fit baseline ``name`` on the training snapshots; return it and a note on any fallback.

    A BG/NBD fit without a configured ``penalizer_coef`` that does not converge is
    repeated with each penalty of ``BGNBD_PENALIZER_FALLBACK``; the note names the one used.
    The baselines of ``FEATURE_BASELINES`` get the data config's feature windows unless
    ``options`` sets them.
    """
    if name in FEATURE_BASELINES:
        options = {**data.feature_options, **options}
    train, val = data.split("train"), data.split("val")
    try:
        return make_baseline(name, data.churn, **options).fit(data.events, train, val), None
    except ValueError as error:
        if name != "bgnbd" or "penalizer_coef" in options or "did not converge" not in str(error):
            raise
        first_error = error
    for penalty in BGNBD_PENALIZER_FALLBACK:
        log.warning("%s: BG/NBD did not converge without a penalty; refitting with penalizer_coef=%g", data.name, penalty)
        try:
            baseline = make_baseline(name, data.churn, **options, penalizer_coef=penalty).fit(data.events, train, val)
        except ValueError:
            continue
        return baseline, f"{data.name}: bgnbd did not converge without a penalty and was fitted with penalizer_coef={penalty:g}"
    raise first_error


def run_baseline(name: str, seed: int | None, data: BenchmarkData, options: dict[str, Any] | None = None) -> RunResult:
    """Fit baseline ``name`` (constructor ``options``) on the training snapshots and score validation and test."""
    options = {**(options or {}), **({"seed": seed} if seed is not None else {})}
    val, test = data.split("val"), data.split("test")
    began = time.perf_counter()
    baseline, note = fit_baseline(name, data, options)
    train_seconds = time.perf_counter() - began
    val_prob = baseline.predict_proba(data.events, val)
    began = time.perf_counter()
    test_prob = baseline.predict_proba(data.events, test)
    score_seconds = time.perf_counter() - began
    return RunResult(
        data.name, name, seed,
        binary_report(val["label"].to_numpy(), val_prob), binary_report(test["label"].to_numpy(), test_prob),
        train_seconds, score_seconds, val_prob, test_prob, note,
    )


def prepare_seconds(cfg: DictConfig) -> float:
    """Build the sequence arrays of ``cfg`` into its (empty) cache and return the seconds taken.

    Every seed's ``train`` then loads the cache. The build (loading the log, snapshots,
    sequences of every split) is part of training a model, so it is added to each seed's
    training time.
    """
    began = time.perf_counter()
    ChurnDataModule(cfg.data, batch_size=cfg.data.batch_size, cache_dir=cfg.data.get("cache_dir"), seed=cfg.seed).prepare()
    return time.perf_counter() - began


def run_sequence_model(cfg: DictConfig, data: BenchmarkData, build_seconds: float) -> RunResult:
    """Train one seed with ``seqchurn.train.train`` and rescore its test split, timed.

    The scoring time covers what scoring a log needs after the model is loaded: collapsing
    order lines, building the test sequences from the events and the forward pass. The
    rescored probabilities must reproduce the test metrics that ``train`` reported.
    """
    from seqchurn.train import build, predict_logits, train

    began = time.perf_counter()
    summary = train(cfg)
    train_seconds = build_seconds + time.perf_counter() - began

    dm, module = build(cfg)
    check_same_snapshots(data.snapshots, dm.snapshots)
    if summary["best_checkpoint"]:
        state = torch.load(summary["best_checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state)
    net = module.net.cpu().float()
    temperature = float(summary["temperature"])

    test_rows = dm.snapshots[dm.snapshots["split"] == "test"]
    began = time.perf_counter()
    events = collapse_orders(data.events) if dm.spec.collapse_orders else data.events
    arrays = build_arrays(events, test_rows, dm.spec)
    # float32 as in train(): rounding to float64 first can split scores that train() saw as
    # tied, which changes the test metrics slightly.
    test_prob = 1 / (1 + np.exp(-predict_logits(net, arrays) / temperature))
    score_seconds = time.perf_counter() - began

    val_prob = 1 / (1 + np.exp(-predict_logits(net, dm.arrays["val"]) / temperature))
    test_report = binary_report(test_rows["label"].to_numpy(), test_prob)
    reported = summary["test_metrics"]["average_precision"]
    if not np.isclose(test_report["average_precision"], reported, atol=1e-5):
        raise RuntimeError(
            f"Rescoring run {cfg.run_name} gave test PR-AUC {test_report['average_precision']:.6f}, but train() "
            f"reported {reported:.6f}; the benchmark would not measure the trained model"
        )
    return RunResult(
        data.name, str(cfg.model.name), int(cfg.seed),
        summary["val_metrics"], summary["test_metrics"], train_seconds, score_seconds, val_prob, test_prob,
    )


def ensemble(runs: Sequence[RunResult], data: BenchmarkData) -> RunResult:
    """Average the calibrated probabilities of ``runs`` (the seeds of one model)."""
    val_prob = np.mean([r.val_prob for r in runs], axis=0)
    test_prob = np.mean([r.test_prob for r in runs], axis=0)
    return RunResult(
        data.name, f"{runs[0].model}{ENSEMBLE_SUFFIX}", None,
        binary_report(data.split("val")["label"].to_numpy(), val_prob),
        binary_report(data.split("test")["label"].to_numpy(), test_prob),
        sum(r.train_seconds for r in runs), sum(r.score_seconds for r in runs), val_prob, test_prob,
    )


def available_models(models: Sequence[str]) -> list[str]:
    """``models`` without sequence models whose config file is missing (logged)."""
    unknown = [m for m in models if m not in ALL_MODELS]
    if unknown:
        raise ValueError(f"Unknown model(s) {unknown}; expected names from {list(ALL_MODELS)}")
    available = []
    for model in models:
        if model in SEQUENCE_MODELS and not (CONFIG_DIR / "model" / f"{model}.yaml").is_file():
            log.warning("skipping %s: %s does not exist", model, CONFIG_DIR / "model" / f"{model}.yaml")
            continue
        available.append(model)
    return available


@dataclass
class DatasetBenchmark:
    """Everything measured on one data config."""

    name: str
    results: list[RunResult]
    notes: list[str]
    """One per baseline fitted with a fallback setting and one per baseline left out."""
    intervals: dict[str, tuple[float, float]]
    """Bootstrap interval of the test gap between seqchurn and the best baseline, per metric label."""


def benchmark_dataset(data: str, options: BenchmarkOptions) -> DatasetBenchmark:
    """Run every model of ``options`` on data config ``data``.

    A baseline that raises ``ValueError`` (a fit that does not converge on this log, for
    example) is logged and left out with a note instead of stopping the benchmark. Errors
    of the sequence models are not caught.
    """
    data_name, search_path = resolve_data_config(data, options.work_dir)
    base = compose_train_config(_base_overrides(data_name, search_path, options))
    bench = load_benchmark_data(base)
    log.info("%s: %s snapshots", bench.name, bench.snapshots["split"].value_counts().to_dict())

    results: list[RunResult] = []
    notes: list[str] = []
    for model in available_models(options.models):
        if model in SEQUENCE_MODELS:
            runs = []
            build_seconds = None
            for seed in options.seeds:
                cfg = sequence_config(model, seed, data_name, search_path, options)
                if build_seconds is None:
                    build_seconds = prepare_seconds(cfg)
                runs.append(run_sequence_model(cfg, bench, build_seconds))
                _log_run(runs[-1])
            results.extend(runs)
            if len(runs) > 1:
                results.append(ensemble(runs, bench))
                _log_run(results[-1])
        else:
            for seed in options.seeds if model in SEEDED_BASELINES else (None,):
                try:
                    result = run_baseline(model, seed, bench, options.baseline_options.get(model))
                except ValueError as error:
                    log.error("%s: baseline %s (seed %s) failed and is left out: %s", bench.name, model, seed, error)
                    notes.append(f"{bench.name}: {model} failed and is left out: {error}")
                    break
                results.append(result)
                if result.note and result.note not in notes:
                    notes.append(result.note)
                _log_run(result)
    intervals = comparison_intervals(results, bench.split("test")["label"].to_numpy()) if results else {}
    return DatasetBenchmark(bench.name, results, notes, intervals)


# -- validation only (choosing settings) ---------------------------------------------------


def validate_sequence_model(cfg: DictConfig) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Train one run as ``seqchurn.train.train`` does, but score validation only.

    Returns the labels and temperature-calibrated probabilities of the validation split
    and the validation PR-AUC after each epoch. The test split is never scored, so these
    runs can choose settings.
    """
    import hydra
    import pytorch_lightning as pl

    from seqchurn.models.calibration import fit_temperature
    from seqchurn.train import build, predict_logits, resolve_precision

    class EpochCurve(pl.Callback):
        def __init__(self) -> None:
            self.values: list[float] = []

        def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if not trainer.sanity_checking and "val/auprc" in trainer.callback_metrics:
                self.values.append(float(trainer.callback_metrics["val/auprc"]))

    pl.seed_everything(cfg.seed, workers=True)
    dm, module = build(cfg)
    curve = EpochCurve()
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None and "_target_" in c]
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=[*callbacks, curve], logger=False, precision=resolve_precision(cfg))
    # A checkpoint left by an earlier run in the same folder must not be taken as this run's best.
    shutil.rmtree(cfg.paths.checkpoint_dir, ignore_errors=True)
    trainer.fit(module, datamodule=dm)
    state = torch.load(trainer.checkpoint_callback.best_model_path, map_location="cpu", weights_only=False)["state_dict"]
    module.load_state_dict(state)
    logits = predict_logits(module.net.cpu().float(), dm.arrays["val"])
    labels = dm.labels("val")
    temperature = fit_temperature(logits, labels) if cfg.calibrate else 1.0
    return labels, 1 / (1 + np.exp(-logits / temperature)), curve.values


def validation_rows(data: str, options: BenchmarkOptions) -> pd.DataFrame:
    """Validation PR-AUC of every model of ``options`` on data config ``data``, without scoring test.

    One row per model: the mean and standard deviation (ddof 1) over seeds, the PR-AUC of
    the seed-averaged probabilities and, for sequence models, the PR-AUC after each epoch
    of the first seed.
    """
    data_name, search_path = resolve_data_config(data, options.work_dir)
    bench = None
    rows = []
    for model in available_models(options.models):
        scores, probs, curve = [], [], []
        if model in SEQUENCE_MODELS:
            for seed in options.seeds:
                labels, prob, epochs = validate_sequence_model(sequence_config(model, seed, data_name, search_path, options))
                scores.append(average_precision(labels, prob))
                probs.append(prob)
                curve = curve or epochs
        else:
            if bench is None:
                bench = load_benchmark_data(compose_train_config(_base_overrides(data_name, search_path, options)))
            val = bench.split("val")
            labels = val["label"].to_numpy()
            for seed in options.seeds if model in SEEDED_BASELINES else (None,):
                seeded = {"seed": seed} if seed is not None else {}
                baseline, _ = fit_baseline(model, bench, {**options.baseline_options.get(model, {}), **seeded})
                probs.append(baseline.predict_proba(bench.events, val))
                scores.append(average_precision(labels, probs[-1]))
        rows.append({
            "dataset": data_name, "model": model, "seeds": len(scores),
            "val_average_precision_mean": float(np.mean(scores)),
            "val_average_precision_std": float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0,
            "ensemble_val_average_precision": float(average_precision(labels, np.mean(probs, axis=0))),
            "val_average_precision_by_epoch": ", ".join(f"{v:.3f}" for v in curve),
        })
        log.info("%s %s: validation PR-AUC %.4f ± %.4f, ensemble %.4f", data_name, model, rows[-1]["val_average_precision_mean"],
                 rows[-1]["val_average_precision_std"], rows[-1]["ensemble_val_average_precision"])
    return pd.DataFrame(rows)


def _log_run(run: RunResult) -> None:
    log.info(
        "%s %s seed %s: val PR-AUC %.4f | test PR-AUC %.4f AUROC %.4f | train %.1f s, score %.2f s",
        run.dataset, run.model, run.seed, run.val["average_precision"], run.test["average_precision"], run.test["auroc"],
        run.train_seconds, run.score_seconds,
    )


# -- tables --------------------------------------------------------------------------------


def results_frame(results: Sequence[RunResult]) -> pd.DataFrame:
    """Return one row per run: validation and test metrics, times."""
    return pd.DataFrame([r.to_row() for r in results])


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation (ddof 1) and run count per dataset and model, in run order."""
    value_columns = [c for c in runs.columns if c not in ("dataset", "model", "seed")]
    grouped = runs.groupby(["dataset", "model"], sort=False)[value_columns]
    mean = grouped.mean().add_suffix("_mean")
    std = grouped.std(ddof=1).fillna(0.0).add_suffix("_std")
    count = grouped.size().rename("runs")
    return pd.concat([count, mean, std], axis=1).reset_index()


def is_seqchurn(model: str) -> bool:
    return model.split(ENSEMBLE_SUFFIX)[0] in SEQUENCE_MODELS


_COLUMNS = (
    ("val PR-AUC", "val_average_precision", 4),
    ("PR-AUC", "test_average_precision", 4),
    ("AUROC", "test_auroc", 4),
    ("log loss", "test_log_loss", 4),
    ("Brier", "test_brier", 4),
    ("ECE", "test_ece", 4),
    ("precision@10%", "test_precision_at_top", 3),
    ("lift@10%", "test_lift_at_top", 3),
    ("train s", "train_seconds", 1),
    ("score s", "score_seconds", 2),
)


def _cell(row: pd.Series, column: str, digits: int) -> str:
    mean = row[f"{column}_mean"]
    if row["runs"] > 1:
        return f"{mean:.{digits}f} ± {row[f'{column}_std']:.{digits}f}"
    return f"{mean:.{digits}f}"


def markdown_table(summary: pd.DataFrame, dataset: str) -> str:
    """Format the summary rows of ``dataset`` as a Markdown table (test metrics unless marked val)."""
    rows = summary[summary["dataset"] == dataset]
    head = "| model | runs | " + " | ".join(name for name, _, _ in _COLUMNS) + " |"
    rule = "| --- | ---: | " + " | ".join("---:" for _ in _COLUMNS) + " |"
    lines = [head, rule]
    for _, row in rows.iterrows():
        cells = [_cell(row, column, digits) for _, column, digits in _COLUMNS]
        lines.append(f"| {row['model']} | {row['runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


_COMPARED: tuple[tuple[str, str, Any], ...] = (("PR-AUC", "average_precision", average_precision), ("AUROC", "auroc", auroc))


CHOICE_COLUMN = "val_average_precision_mean"
"""seqchurn's row in each comparison is the one with the highest mean validation PR-AUC."""


def best_rows(rows: pd.DataFrame, column: str) -> tuple[pd.Series, pd.Series, pd.Series] | None:
    """Pick the rows that one comparison of ``rows`` (one dataset's summary) sets side by side.

    Returns seqchurn's row and its best single (not ensembled) model, both chosen by
    validation PR-AUC as a user would choose a model to deploy, and the baseline with the
    best mean ``column``, a choice that can only favour the baselines. None when either
    side has no row.
    """
    ours = rows[rows["model"].map(is_seqchurn)]
    theirs = rows[~rows["model"].map(is_seqchurn)]
    if ours.empty or theirs.empty:
        return None
    singles = ours[~ours["model"].str.endswith(ENSEMBLE_SUFFIX)]
    if singles.empty:
        singles = ours
    chosen = ours.loc[ours[CHOICE_COLUMN].idxmax()]
    best_single = singles.loc[singles[CHOICE_COLUMN].idxmax()]
    return chosen, theirs.loc[theirs[f"{column}_mean"].idxmax()], best_single


def paired_bootstrap_interval(
    y_true: np.ndarray, prob_a: np.ndarray, prob_b: np.ndarray, metric, *, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric(y, prob_a) - metric(y, prob_b)``, resampling snapshots in pairs."""

    def difference(y, a, b):
        return metric(y, a) - metric(y, b)

    result = scipy.stats.bootstrap(
        (y_true, prob_a, prob_b), difference, paired=True, vectorized=False, n_resamples=n_resamples,
        confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def pooled_test_probabilities(results: Sequence[RunResult], model: str) -> np.ndarray:
    """Return the test probabilities of ``model``: one run's, or the mean over its seeds."""
    return np.mean([r.test_prob for r in results if r.model == model], axis=0)


def comparison_intervals(results: Sequence[RunResult], test_labels: np.ndarray) -> dict[str, tuple[float, float]]:
    """Bootstrap the test gap between seqchurn's row and the best baseline, per compared metric.

    ``results`` belong to one dataset. The rows are picked as in :func:`comparison_lines`;
    a seeded model without an ensemble row enters with its seed-averaged probabilities.
    """
    summary = summarise(results_frame(results))
    intervals = {}
    for label, key, metric in _COMPARED:
        best = best_rows(summary, f"test_{key}")
        if best is None:
            continue
        ours, theirs, _ = best
        intervals[label] = paired_bootstrap_interval(
            test_labels, pooled_test_probabilities(results, ours["model"]), pooled_test_probabilities(results, theirs["model"]), metric
        )
    return intervals


def comparison_lines(summary: pd.DataFrame, intervals: dict[str, dict[str, tuple[float, float]]] | None = None) -> list[str]:
    """Compare seqchurn's row with the best baseline (means), one sentence per dataset and metric.

    :func:`best_rows` picks the rows.

    ``intervals[dataset][metric label]`` is the bootstrap interval of the gap, when known.
    """
    lines = []
    for dataset, rows in summary.groupby("dataset", sort=False):
        for label, key, _ in _COMPARED:
            best = best_rows(rows, f"test_{key}")
            if best is None:
                continue
            ours, theirs, single = best
            column = f"test_{key}_mean"
            gap = ours[column] - theirs[column]
            verdict = "wins" if gap > 0 else "loses"
            line = f"- {dataset}, test {label}: seqchurn {verdict} by {gap:+.4f} ({ours['model']} {ours[column]:.4f} vs {theirs['model']} {theirs[column]:.4f}"
            interval = (intervals or {}).get(dataset, {}).get(label)
            if interval is not None:
                line += f"; 95 % paired bootstrap interval of the gap {interval[0]:+.4f} .. {interval[1]:+.4f}"
            line += ")"
            if single["model"] != ours["model"]:
                line += f"; its best single model {single['model']} {single[column]:.4f} ({single[column] - theirs[column]:+.4f})"
            lines.append(line + ".")
    return lines


# -- environment ---------------------------------------------------------------------------


def git_revision() -> str:
    """Return the short commit of the repository, with ``+changes`` when tracked files differ from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}+changes" if dirty else commit


def environment() -> dict[str, str]:
    """Collect the machine, library versions and date of a benchmark run."""
    packages = ("seqchurn", "torch", "pytorch-lightning", "lightgbm", "scikit-learn", "numpy", "pandas")
    versions = {}
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
        "cpu": f"{cpu_model()}, {cores} logical CPUs visible",
        "gpu": gpu,
        "torch_threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "commit": git_revision(),
    }


# -- the page ------------------------------------------------------------------------------

BEGIN_MARK = "<!-- benchmark_quality: generated section begins -->"
END_MARK = "<!-- benchmark_quality: generated section ends -->"


def load_average() -> str:
    """Return the 1, 5 and 15 minute load averages, or "unknown" where the OS has none."""
    try:
        return ", ".join(f"{value:.1f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def render_results(
    summary: pd.DataFrame,
    env: dict[str, str],
    command: str,
    seeds: Sequence[int],
    notes: Sequence[str] = (),
    load_at_start: str = "unknown",
    intervals: dict[str, dict[str, tuple[float, float]]] | None = None,
) -> str:
    """Render the generated part of docs/benchmarks.md: command, machine, one table per dataset, notes."""
    lines = [
        BEGIN_MARK,
        "## Results",
        "",
        f"Measured with `{command}` on {env['date']}: {env['cpu']}, GPU {env['gpu']}, "
        f"{env['torch_threads']} torch threads, Python {env['python']}, {env['versions']}, commit {env['commit']}.",
        f"Load average (1, 5, 15 min) at the start {load_at_start}, at the end {load_average()}: "
        "a load above the number of CPUs means that other processes shared them, which slows every time in the tables.",
        "",
        f"Test metrics are means ± standard deviations over seeds {', '.join(map(str, seeds))} for the seeded models "
        "(sequence models and LightGBM) and single runs for the others. An ensemble row averages the calibrated "
        "probabilities of its model's seeds. PR-AUC is average precision. ECE uses 15 equal-width bins, "
        "and precision and lift are over the 10 % highest scores. "
        "Train seconds include the features or sequence arrays of every split; score seconds cover the test "
        "split from the event log (features, or collapsing orders and building sequences, then the forward pass).",
        "",
        "Where seqchurn stands against the best baseline (means over seeds). seqchurn's row is the one with the "
        "highest validation PR-AUC, chosen before looking at test, and the baseline is the one with the best test "
        "value of each metric, which can only favour the baselines. The interval resamples the test "
        "snapshots 1,000 times with both models' probabilities (a seeded model without an ensemble row enters "
        "with its seed-averaged probabilities); an interval that contains 0 means that this test set cannot "
        "separate the two.",
        "",
        *comparison_lines(summary, intervals),
        "",
    ]
    for dataset in summary["dataset"].unique():
        rows = summary[summary["dataset"] == dataset]
        n_test = int(rows["n_test_mean"].iloc[0])
        rate = float(rows["test_positive_rate_mean"].iloc[0])
        lines += [f"### {dataset}", "", f"{n_test:,} test snapshots, churn rate {rate:.3f}.", "", markdown_table(summary, dataset), ""]
    if notes:
        lines += ["Notes:", "", *(f"- {note}" for note in notes), ""]
    lines.append(END_MARK)
    return "\n".join(lines) + "\n"


def write_page(path: Path, section: str, title: str = "# Churn model quality benchmark") -> None:
    """Replace the generated section of ``path``, keeping the hand-written text around it.

    A page without the markers gets the section appended; a missing page is created.
    """
    from seqchurn.utils.atomic import atomic_write_text

    text = path.read_text() if path.exists() else f"{title}\n\n"
    if BEGIN_MARK in text and END_MARK in text:
        before = text.split(BEGIN_MARK, 1)[0]
        after = text.split(END_MARK, 1)[1]
        text = before + section.rstrip("\n") + after
    else:
        text = text.rstrip("\n") + "\n\n" + section
    atomic_write_text(path, text)
