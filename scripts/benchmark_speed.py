#!/usr/bin/env python
"""Measure scoring and training speed on a synthetic log and write docs/performance.md.

One run measures, on a log of ``--customers`` x ``--events-per-customer`` events written by
``seqchurn synth``:

1. the floor: pyarrow reading only the mapped columns, partition by partition;
2. sequence building (canonicalise + finalise, then collapse + snapshot + arrays), events/s;
3. onnxruntime against PyTorch eager on the same model and batches, with a thread and
   batch-size sweep and a check of dynamic int8 quantisation on validation sequences, for
   the GRU, and the same comparison on one thread for the transformer;
4. ``seqchurn score`` end to end (log -> scores + alerts): wall time and peak RSS of the
   subprocess and its children;
5. the alternative, pandas aggregate features + LightGBM, end to end on the same log and
   with the same loader: wall time and peak RSS;
6. CPU training throughput (sequences/s) for every model config in conf/model/.

The models are a small GRU and a small transformer trained for a few batches on a smaller
synthetic log (speed, not quality, is the point), exported with ``seqchurn export``;
``seqchurn score`` runs the GRU.

Usage::

    python scripts/benchmark_speed.py                     # 1M customers x 50 events
    python scripts/benchmark_speed.py --customers 200000  # a smaller log
    python scripts/benchmark_speed.py --quick --out /tmp/perf.md   # seconds; checks the script runs
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

from seqchurn.conf_utils import CONFIG_DIR, REPO_ROOT

log = logging.getLogger("benchmark_speed")

AS_OF = "2024-01-01"  # end of the generator's default window (2022-01-01 + 730 days)
TARGETS = {"e2e_seconds": 60.0, "peak_rss_gb": 4.0, "ort_over_eager": 2.0, "e2e_over_floor": 3.0}
QUANTIZE_MAX_ABS_DIFF = 0.02
QUANTIZE_MIN_SPEEDUP = 1.10  # int8 must beat fp32 by 10 % to count as faster, above timing noise
BATCH_SIZES = (64, 256, 1024, 4096)
INFERENCE_SAMPLE_PARTITIONS = 3  # partitions whose sequences feed the inference comparison


@dataclass
class Settings:
    customers: int
    events_per_customer: float
    train_customers: int
    train_batches: int
    throughput_batches: int
    hidden_size: int
    work_dir: Path
    out: Path
    quick: bool
    keep: bool
    command: str
    repeats: int = 2


@dataclass
class Results:
    settings: Settings
    machine: dict[str, Any] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def best_of(fn, repeat: int) -> tuple[float, float, Any]:
    """Run ``fn`` ``repeat`` times; return the fastest wall time, the smallest CPU time and the last result.

    CPU time (``time.process_time``, all threads of this process) does not grow when other
    processes share the CPUs, so single-threaded rates are computed from it.
    """
    best_wall, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = fn()
        best_wall = min(best_wall, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - start_cpu)
    return best_wall, best_cpu, out


def run_measured(cmd: list[str], *, cwd: Path, log_file: Path, interval_s: float = 0.05) -> dict[str, float]:
    """Run ``cmd``; return its wall time, CPU time and peak RSS (process plus children).

    RSS is sampled every ``interval_s``. CPU time (user + system) counts the process and
    the descendants it waited for, so it does not grow when other processes share the CPUs.

    NOTE: sampling can miss a peak shorter than ``interval_s``.
    """
    import resource

    log.info("running: %s", shlex.join(cmd))
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with log_file.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        ps = psutil.Process(proc.pid)
        peak = 0
        while proc.poll() is None:
            try:
                tree = [ps, *ps.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass  # the process ended between the poll and the read
            time.sleep(interval_s)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (usage.ru_utime - usage_before.ru_utime) + (usage.ru_stime - usage_before.ru_stime)
    if proc.returncode != 0:
        tail = log_file.read_text()[-3000:]
        raise RuntimeError(f"command failed with exit code {proc.returncode}: {shlex.join(cmd)}\n{tail}")
    return {"seconds": wall, "cpu_seconds": cpu, "peak_rss_bytes": float(peak)}


def machine_info() -> dict[str, Any]:
    from seqchurn.utils.machine import cpu_model
    from seqchurn.utils.run_summary import collect_versions

    cpu = cpu_model()

    versions = collect_versions(("seqchurn", "numpy", "pandas", "pyarrow", "onnxruntime", "torch", "pytorch-lightning", "lightgbm"))
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gb": psutil.virtual_memory().total / 2**30,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": versions,
        "load_average_start": os.getloadavg(),
    }


def data_config(log_dir: Path, cache_dir: Path | None) -> dict:
    """conf/data/synthetic.yaml pointed at ``log_dir`` (a plain dict)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONFIG_DIR / "data" / "synthetic.yaml")
    cfg.sources[0].path = str(log_dir)
    cfg.cache_dir = str(cache_dir) if cache_dir else None
    return OmegaConf.to_container(cfg, resolve=True)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "seqchurn.cli", *args]


# --------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------


def make_log(out_dir: Path, customers: int, events_per_customer: float, keep: bool) -> dict:
    """Write (or, with ``keep``, reuse) a synthetic log; return its summary with the generation time."""
    from seqchurn.synth import SUMMARY_FILE, generate

    summary_file = out_dir / SUMMARY_FILE
    if keep and summary_file.exists():
        summary = json.loads(summary_file.read_text())
        if summary["n_customers"] == customers and summary["target_events_per_customer"] == events_per_customer:
            log.info("reusing the log in %s", out_dir)
            return {**summary, "seconds": None}
    return generate(out_dir, customers, events_per_customer=events_per_customer, overwrite=True)


def train_and_export(s: Settings, train_log: Path, model: str = "gru") -> Path:
    """Train a small ``model`` (conf/model/) for a few batches with `seqchurn train`, export it; return the model folder."""
    work = s.work_dir
    name = f"bench_{model}"
    common = [f"paths.root_dir={work}", f"run_name={name}", f"hydra.run.dir={work / 'hydra' / f'train_{model}'}"]
    run_measured(
        cli(
            "train", "data=synthetic", f"model={model}", f"data.sources.0.path={train_log}", f"data.cache_dir={work / 'cache'}",
            f"model.net.hidden_size={s.hidden_size}", "trainer.max_epochs=1", f"+trainer.limit_train_batches={s.train_batches}",
            "+trainer.limit_val_batches=2", "trainer.accelerator=cpu", "logger=none", *common,
        ),
        cwd=REPO_ROOT, log_file=work / f"train_{model}.log",
    )
    model_dir = work / "checkpoints" / name
    run_measured(
        cli("export", f"ckpt_dir={model_dir}", f"paths.root_dir={work}", f"hydra.run.dir={work / 'hydra' / f'export_{model}'}"),
        cwd=REPO_ROOT, log_file=work / f"export_{model}.log",
    )
    return model_dir


def measure_floor(log_dir: Path) -> dict[str, float]:
    """Read only the mapped columns, one file at a time, as the scorer does."""
    import pyarrow.dataset as pads

    cfg = data_config(log_dir, None)
    columns = sorted({c for c in cfg["sources"][0]["columns"].values() if c})
    dataset = pads.dataset(str(log_dir), format="parquet", partitioning="hive")
    fragments = sorted(dataset.get_fragments(), key=lambda f: f.path)

    def read() -> int:
        return sum(f.to_table(columns=columns).num_rows for f in fragments)

    seconds, cpu_seconds, rows = best_of(read, 2)
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "rows": rows, "files": len(fragments), "columns": len(columns), "rows_per_s": rows / seconds}


def measure_sequences(log_dir: Path, model_dir: Path, partitions: int) -> tuple[dict[str, float], list[dict[str, np.ndarray]]]:
    """Time the scorer's steps on the first ``partitions`` partitions, one after another on one thread."""
    from seqchurn import score
    from seqchurn.data.io import LogSpec
    from seqchurn.data.labels import to_utc
    from seqchurn.data.schema import LoadReport

    spec = LogSpec.from_config(data_config(log_dir, None))
    model = score.load_model(model_dir)
    as_of = to_utc(AS_OF)
    score.use_system_memory_pool()  # as `seqchurn score` does
    totals = {"prepare": 0.0, "features": 0.0, "prepare_cpu": 0.0, "features_cpu": 0.0, "rows": 0, "events_before_as_of": 0, "customers": 0}
    inputs = []
    for piece in score.iter_pieces(spec, stream=True):
        if len(inputs) == partitions:
            break
        start, start_cpu = time.perf_counter(), time.process_time()
        events = score.prepare_piece(piece, spec, LoadReport(), None)
        middle, middle_cpu = time.perf_counter(), time.process_time()
        features = score.featurise(events, model, as_of)
        totals["prepare"] += middle - start
        totals["features"] += time.perf_counter() - middle
        totals["prepare_cpu"] += middle_cpu - start_cpu
        totals["features_cpu"] += time.process_time() - middle_cpu
        totals["rows"] += piece.rows
        totals["events_before_as_of"] += int((events["ts"] < as_of).sum())
        totals["customers"] += len(features.frame)
        inputs.append(features.inputs)
    totals["partitions"] = len(inputs)
    # Rates per CPU second: the work is single-threaded pandas, and CPU time ignores other processes' load.
    totals["rows_per_s"] = totals["rows"] / (totals["prepare_cpu"] + totals["features_cpu"])
    totals["prepare_rows_per_s"] = totals["rows"] / totals["prepare_cpu"]
    totals["features_events_per_s"] = totals["events_before_as_of"] / totals["features_cpu"]
    return totals, inputs


def concat_inputs(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def measure_inference(model_dir: Path, inputs: dict[str, np.ndarray], val_inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """onnxruntime (thread and batch sweep) against PyTorch eager, and int8 dynamic quantisation."""
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from scipy.stats import spearmanr

    from seqchurn import score

    n = len(inputs["mask"])
    out: dict[str, Any] = {"customers": n, "ort": {}, "eager": {}}
    repeat = 2

    def ort_rate(session: ort.InferenceSession, batch_size: int, data: dict[str, np.ndarray], threads: int) -> tuple[float, np.ndarray]:
        """Rows per CPU second on one thread, per wall second on several."""
        score.run_session(session, {k: v[:256] for k, v in data.items()}, batch_size)  # warm-up
        wall, cpu, prob = best_of(lambda: score.run_session(session, data, batch_size), repeat)
        return len(data["mask"]) / (cpu if threads == 1 else wall), prob

    onnx_bytes = (model_dir / "model.onnx").read_bytes()
    for threads in (1, 0):
        session = ort.InferenceSession(onnx_bytes, sess_options=score.session_options(threads), providers=["CPUExecutionProvider"])
        for batch_size in BATCH_SIZES:
            out["ort"][(threads, batch_size)], _ = ort_rate(session, batch_size, inputs, threads)
    best_batch = max(BATCH_SIZES, key=lambda b: out["ort"][(1, b)])
    out["best_batch_size"] = best_batch
    out["optimisation"] = {}
    for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL"):
        options = score.session_options(1)
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        session = ort.InferenceSession(onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"])
        out["optimisation"][level], _ = ort_rate(session, best_batch, inputs, 1)

    eager = eager_scorer(model_dir, inputs, best_batch)
    torch_threads = torch.get_num_threads()
    for threads in (1, max(1, os.cpu_count() or 1)):
        torch.set_num_threads(threads)
        eager()  # warm-up
        wall, cpu, _ = best_of(eager, repeat)
        out["eager"][threads] = n / (cpu if threads == 1 else wall)
    torch.set_num_threads(torch_threads)

    # Dynamic int8 quantisation, compared with fp32 on real validation sequences.
    quantized_path = model_dir.parent / "model.int8.onnx"
    quantize_dynamic(str(model_dir / "model.onnx"), str(quantized_path), weight_type=QuantType.QInt8)
    fp32 = ort.InferenceSession(onnx_bytes, sess_options=score.session_options(1), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(quantized_path), sess_options=score.session_options(1), providers=["CPUExecutionProvider"])
    fp32_rate, fp32_val = ort_rate(fp32, best_batch, val_inputs, 1)
    int8_rate, int8_val = ort_rate(int8, best_batch, val_inputs, 1)
    diff = np.abs(int8_val.astype(np.float64) - fp32_val)
    import onnx

    ops = sorted({node.op_type for node in onnx.load(str(quantized_path)).graph.node if "Integer" in node.op_type or "Quantize" in node.op_type})
    out["quantize"] = {
        "validation_rows": len(fp32_val),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "spearman": float(spearmanr(fp32_val, int8_val)[0]) if np.std(fp32_val) > 0 else float("nan"),
        "fp32_per_s": fp32_rate,
        "int8_per_s": int8_rate,
        "speedup": int8_rate / fp32_rate,
        "int8_ops": ops,
        "gru_quantized": any(node.op_type == "DynamicQuantizeGRU" for node in onnx.load(str(quantized_path)).graph.node),
    }
    q = out["quantize"]
    q["offered"] = q["max_abs_diff"] <= QUANTIZE_MAX_ABS_DIFF and q["speedup"] >= QUANTIZE_MIN_SPEEDUP
    return out


def eager_scorer(model_dir: Path, inputs: dict[str, np.ndarray], batch_size: int):
    """Return a function that scores ``inputs`` with PyTorch eager in the length-sorted batches that onnxruntime gets."""
    import torch

    from seqchurn.data.sequences import length_batches
    from seqchurn.export import ScoringModel, load_net

    summary = json.loads((model_dir / "training_summary.json").read_text())
    net = ScoringModel(load_net(summary, summary["best_checkpoint"]), summary.get("temperature", 1.0)).eval()
    batches = length_batches(inputs["mask"], batch_size)

    def eager() -> np.ndarray:
        prob = np.empty(len(inputs["mask"]), dtype=np.float32)
        with torch.inference_mode():
            for idx, length in batches:
                feed = [torch.from_numpy(np.ascontiguousarray(inputs[k][idx][:, :length])) for k in ("event_type", "item", "numeric", "mask")]
                feed.append(torch.from_numpy(np.ascontiguousarray(inputs["static"][idx])))
                prob[idx] = net(*feed).numpy()
        return prob

    return eager


def measure_engines(model_dir: Path, inputs: dict[str, np.ndarray], batch_size: int) -> dict[str, float]:
    """onnxruntime (``seqchurn score``'s session options) against PyTorch eager: customers per CPU second on one thread.

    Both engines score the same sequences in the same batches, so the ratio compares the
    engines alone.
    """
    import onnxruntime as ort
    import torch

    from seqchurn import score

    n = len(inputs["mask"])
    session = ort.InferenceSession((model_dir / "model.onnx").read_bytes(), sess_options=score.session_options(1), providers=["CPUExecutionProvider"])
    score.run_session(session, inputs, batch_size)  # warm-up
    _, ort_cpu, ort_prob = best_of(lambda: score.run_session(session, inputs, batch_size), 2)
    eager = eager_scorer(model_dir, inputs, batch_size)
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        eager()  # warm-up
        _, eager_cpu, eager_prob = best_of(eager, 2)
    finally:
        torch.set_num_threads(torch_threads)
    return {
        "customers": n,
        "batch_size": batch_size,
        "ort": n / ort_cpu,
        "eager": n / eager_cpu,
        "max_abs_diff": float(np.abs(ort_prob.astype(np.float64) - eager_prob).max()),
    }


def validation_inputs(train_log: Path, work_dir: Path) -> dict[str, np.ndarray]:
    """Load the validation split's sequences from the training run's cache."""
    from seqchurn.data.datamodule import ChurnDataModule

    dm = ChurnDataModule(data_config(train_log, work_dir / "cache"), cache_dir=str(work_dir / "cache"))
    dm.prepare()
    return {k: np.asarray(v) for k, v in dm.arrays["val"].as_inputs().items()}


def train_lightgbm(train_log: Path, work_dir: Path) -> Path:
    """Fit the LightGBM baseline on the training log's train/val snapshots; save the booster."""
    from seqchurn.baselines.gbm import LightGBMBaseline
    from seqchurn.data.datamodule import churn_from_config
    from seqchurn.data.io import load_events
    from seqchurn.data.labels import make_split_snapshots, plan_splits

    cfg = data_config(train_log, None)
    events, _ = load_events(cfg)
    churn = churn_from_config(cfg["churn"])
    split = cfg["split"]
    plan = plan_splits(
        test_cutoff=split["test_cutoff"], val_cutoff=split["val_cutoff"], train_cutoffs=split.get("train_cutoffs"),
        train_first_cutoff=split.get("train_first_cutoff"), train_every_days=float(split.get("train_every_days", 30)), churn=churn,
    )
    snaps = make_split_snapshots(events, plan, churn)
    baseline = LightGBMBaseline(churn, max_rounds=200)
    baseline.fit(events, snaps[snaps["split"] == "train"], snaps[snaps["split"] == "val"])
    path = work_dir / "lightgbm.txt"
    baseline.model_.booster_.save_model(str(path))
    return path


def measure_training(train_log: Path, s: Settings) -> dict[str, dict[str, float]]:
    """Steady-state training throughput (sequences/s) of each model config on the CPU."""
    import pytorch_lightning as pl
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from seqchurn.train import build

    class Clock(pl.Callback):
        """Count sequences and time batches 2..K (the first one includes warm-up)."""

        def __init__(self) -> None:
            self.sequences, self.start, self.end = 0, None, None

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            if batch_idx == 1:
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            if batch_idx >= 1:
                self.sequences += len(batch["label"])
                self.end = time.perf_counter()

    results = {}
    for model_file in sorted((CONFIG_DIR / "model").glob("*.yaml")):
        name = model_file.stem
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(
                config_name="train",
                overrides=[
                    "data=synthetic", f"model={name}", f"data.sources.0.path={train_log}", f"data.cache_dir={s.work_dir / 'cache'}",
                    f"paths.root_dir={s.work_dir}", f"paths.output_dir={s.work_dir / 'out'}", f"paths.work_dir={s.work_dir}",
                ],
            )
        GlobalHydra.instance().clear()
        dm, module = build(cfg)
        clock = Clock()
        trainer = pl.Trainer(
            # One validation batch only feeds the plateau scheduler; it runs after the timed batches.
            accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=s.throughput_batches, limit_val_batches=1,
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[clock],
            num_sanity_val_steps=0,
        )
        trainer.fit(module, datamodule=dm)
        seconds = clock.end - clock.start
        n_train = len(dm.labels("train"))
        results[name] = {
            "sequences_per_s": clock.sequences / seconds,
            "batch_size": int(cfg.data.batch_size),
            "hidden_size": int(cfg.model.net.hidden_size),
            "train_sequences": n_train,
            "epoch_seconds": n_train / (clock.sequences / seconds),
            "threads": torch.get_num_threads(),
        }
    return results


# --------------------------------------------------------------------------------------
# The pandas + LightGBM alternative, run in a subprocess of this script
# --------------------------------------------------------------------------------------


def baseline_worker(log_dir: Path, model_path: Path, as_of: str, out_dir: Path) -> None:
    """Score ``log_dir`` with aggregate features + LightGBM, streaming partitions like seqchurn score."""
    import lightgbm as lgb

    from seqchurn import score
    from seqchurn.baselines.features import aggregate_features
    from seqchurn.data.datamodule import churn_from_config
    from seqchurn.data.io import LogSpec
    from seqchurn.data.labels import make_snapshot, to_utc
    from seqchurn.data.schema import LoadReport
    from seqchurn.utils.atomic import atomic_to_csv, atomic_write_parquet

    cfg = data_config(log_dir, None)
    spec = LogSpec.from_config(cfg)
    churn = churn_from_config(cfg["churn"])
    booster = lgb.Booster(model_file=str(model_path))
    cutoff = to_utc(as_of)
    parts = []
    report = LoadReport()
    for piece in score.iter_pieces(spec, stream=True):
        events = score.prepare_piece(piece, spec, report, None)
        snap = make_snapshot(events, cutoff, churn, with_labels=False)
        if snap.empty:
            continue
        features = aggregate_features(events, snap, churn)
        prob = booster.predict(features.to_numpy(), num_threads=os.cpu_count() or 1)
        parts.append(pd.DataFrame({"customer_id": snap["customer_id"].to_numpy(), "churn_probability": prob.astype(np.float32)}))
    scores = pd.concat(parts, ignore_index=True).sort_values(["churn_probability", "customer_id"], ascending=[False, True], ignore_index=True)
    scores["rank"] = np.arange(1, len(scores) + 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_parquet(scores, out_dir / "scores.parquet")
    atomic_to_csv(scores[scores["churn_probability"] >= 0.5], out_dir / "alerts.csv")
    summary = {"customers_scored": len(scores), "rows_read": report.rows_read, "n_features": booster.num_feature()}
    (out_dir / "summary.json").write_text(json.dumps(summary))


# --------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------


def fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def write_report(r: Results) -> str:
    """Render docs/performance.md from the measurements."""
    sections = (_header, _targets, _results, _inference, _quantisation, _training, _limits)
    return "\n".join(line for section in sections for line in [*section(r), ""])


def _target_rows(r: Results) -> list[tuple[str, str, str, str]]:
    """Rows of the targets table: measure, value, target, met. Wall-time targets also show the CPU-time bound."""
    v, cores = r.values, r.machine["usable_cores"]
    e2e, alt, floor = v["e2e"], v["alternative"], v["floor"]
    rss_gb = e2e["peak_rss_bytes"] / 2**30
    ratios = _engine_ratios(v)
    ort_over_eager = max(ratios.values())
    e2e_bound = e2e["cpu_seconds"] / cores

    def met(wall_ok: bool, cpu_ok: bool) -> str:
        if wall_ok:
            return "yes"
        if cpu_ok:
            return "no (yes by CPU time)"
        return "no"

    return [
        (
            "seqchurn end to end (log -> scores + alerts), wall; CPU time / cores",
            f"{fmt(e2e['seconds'], 1)} s; {fmt(e2e_bound, 1)} s",
            f"<= {TARGETS['e2e_seconds']:.0f} s",
            met(e2e["seconds"] <= TARGETS["e2e_seconds"], e2e_bound <= TARGETS["e2e_seconds"]),
        ),
        ("peak RSS of `seqchurn score` (process + children)", f"{rss_gb:.2f} GB", f"<= {TARGETS['peak_rss_gb']:.0f} GB", met(rss_gb <= TARGETS["peak_rss_gb"], False)),
        (
            "onnxruntime / PyTorch eager (same model and batches, 1 thread each, per CPU second)",
            "; ".join(f"{name} {ratio:.2f}x" for name, ratio in ratios.items()),
            f">= {TARGETS['ort_over_eager']:.0f}x",
            met(ort_over_eager >= TARGETS["ort_over_eager"], False),
        ),
        (
            "pandas + LightGBM time / seqchurn time, wall; CPU",
            f"{alt['seconds'] / e2e['seconds']:.2f}x; {alt['cpu_seconds'] / e2e['cpu_seconds']:.2f}x",
            ">= 1x",
            met(alt["seconds"] >= e2e["seconds"], alt["cpu_seconds"] >= e2e["cpu_seconds"]),
        ),
        (
            "seqchurn end to end / floor read, wall; CPU",
            f"{e2e['seconds'] / floor['seconds']:.1f}x; {e2e['cpu_seconds'] / floor['cpu_seconds']:.1f}x",
            f"<= {TARGETS['e2e_over_floor']:.0f}x",
            met(e2e["seconds"] <= TARGETS["e2e_over_floor"] * floor["seconds"], e2e["cpu_seconds"] <= TARGETS["e2e_over_floor"] * floor["cpu_seconds"]),
        ),
    ]


def _engine_ratios(v: dict) -> dict[str, float]:
    """onnxruntime / eager on one thread per model: the GRU at its best batch size, and the transformer when measured."""
    inf = v["inference"]
    ratios = {"GRU": _ort_1(v) / inf["eager"][1]}
    if "transformer" in inf:
        ratios["transformer"] = inf["transformer"]["ort"] / inf["transformer"]["eager"]
    return ratios


def _ort_1(v: dict) -> float:
    return v["inference"]["ort"][(1, v["inference"]["best_batch_size"])]


def _header(r: Results) -> list[str]:
    s, v, m = r.settings, r.values, r.machine
    log_info = v["log"]
    generated = f", generated in {log_info['seconds']:.0f} s" if log_info.get("seconds") else ""
    return [
        "# Performance: scoring and training on the CPU",
        "",
        f"Measured by `scripts/benchmark_speed.py` on {v['date']}. This page is the script's output, so rerun the",
        "script instead of editing the numbers. Command:",
        "",
        f"    {s.command}",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable by this process)",
        f"- RAM: {m['ram_gb']:.1f} GB; {m['os']}; Python {m['python']}",
        "- " + ", ".join(f"{k} {val}" for k, val in m["versions"].items()),
        f"- Load average (1, 5, 15 min) at the start: {', '.join(f'{x:.1f}' for x in m['load_average_start'])}; at the end: "
        f"{', '.join(f'{x:.1f}' for x in m['load_average_end'])}. A load above the core count means other processes shared "
        "the CPUs, so every time below is slower than on an idle machine.",
        "",
        "## Log and model",
        "",
        f"- Scored log: `seqchurn synth --customers {s.customers} --events-per-customer {s.events_per_customer:g}`: "
        f"{fmt(log_info['n_events'])} events of {fmt(log_info['n_customers'])} customers in {log_info['n_files']} Parquet files "
        f"({log_info['n_partitions']} `bucket=` partitions, {v['log_bytes'] / 2**20:,.0f} MiB){generated}.",
        f"- Model: GRU, hidden size {s.hidden_size}, trained for {s.train_batches} batches on a log of {fmt(s.train_customers)} customers "
        "and exported with `seqchurn export` (speed, not quality, is the point); `seqchurn score` runs it. A transformer of the "
        "same hidden size, trained and exported the same way, is compared across engines only.",
        f"- Scored as of {AS_OF}: {fmt(v['e2e']['summary']['customers_scored'])} active customers.",
    ]


def _targets(r: Results) -> list[str]:
    return [
        "## Targets",
        "",
        "| measure | value | target | met |",
        "|---|---|---|---|",
        *[f"| {name} | {value} | {target} | {ok} |" for name, value, target, ok in _target_rows(r)],
    ]


def _results(r: Results) -> list[str]:
    v = r.values
    floor, seq, e2e, alt = v["floor"], v["sequences"], v["e2e"], v["alternative"]
    rows = floor["rows"]
    stages = e2e["summary"]["details"]["score_seconds"]
    return [
        "## Results",
        "",
        "| step | wall time | CPU time | throughput | peak RSS |",
        "|---|---|---|---|---|",
        f"| floor: pyarrow reads the {floor['columns']} mapped columns, file by file | {fmt(floor['seconds'], 1)} s | {fmt(floor['cpu_seconds'], 1)} s | "
        f"{fmt(floor['rows_per_s'] / 1e6, 2)} M rows/s | |",
        f"| sequence building, {seq['partitions']} partitions on one thread: canonicalise + finalise | {fmt(seq['prepare'], 1)} s | "
        f"{fmt(seq['prepare_cpu'], 1)} s | {fmt(seq['prepare_rows_per_s'] / 1e6, 2)} M rows per CPU second | |",
        f"| sequence building: collapse orders + snapshot + arrays | {fmt(seq['features'], 1)} s | {fmt(seq['features_cpu'], 1)} s | "
        f"{fmt(seq['features_events_per_s'] / 1e6, 2)} M events per CPU second | |",
        f"| `seqchurn score` end to end (subprocess, incl. start-up) | {fmt(e2e['seconds'], 1)} s | {fmt(e2e.get('cpu_seconds', float('nan')), 1)} s | "
        f"{fmt(rows / e2e['seconds'] / 1e6, 2)} M events/s, {fmt(e2e['summary']['customers_scored'] / e2e['seconds'])} customers scored/s | "
        f"{e2e['peak_rss_bytes'] / 2**30:.2f} GB |",
        f"| pandas aggregate features + LightGBM end to end (subprocess) | {fmt(alt['seconds'], 1)} s | {fmt(alt.get('cpu_seconds', float('nan')), 1)} s | "
        f"{fmt(rows / alt['seconds'] / 1e6, 2)} M events/s | {alt['peak_rss_bytes'] / 2**30:.2f} GB |",
        "",
        f"CPU time is user + system time of the process and its workers. It varies less than wall time when other "
        f"processes share the CPUs, but it does vary (see the runs listed below). On {r.machine['usable_cores']} idle cores a run "
        f"needs at least CPU time / {r.machine['usable_cores']} of wall time. The end-to-end rows are the fastest of "
        f"{len(e2e.get('runs', [0]))} alternating runs each; all runs (wall / CPU seconds): seqchurn {_runs_text(e2e)}, "
        f"pandas + LightGBM {_runs_text(alt)}.",
        "",
        f"Stages of `seqchurn score`, summed over partitions ({_stage_text(stages)}); "
        f"{e2e['summary']['details'].get('pieces', '?')} partitions, {e2e['summary']['durations_s']['score']:.1f} s wall in `score_log`.",
    ]


def _runs_text(measured: dict) -> str:
    runs = measured.get("runs") or [(measured["seconds"], measured["cpu_seconds"])]
    return ", ".join(f"{wall:.0f} / {cpu:.0f}" for wall, cpu in runs)


def _stage_text(stages: dict[str, float]) -> str:
    names = {"read": "reading", "read_wait": "waiting for the reader", "prepare": "canonicalise + finalise", "features": "sequences",
             "inference": "onnxruntime", "inference_wait": "waiting for inference"}
    return ", ".join(f"{names.get(k, k)} {v:.1f} s" for k, v in stages.items())


def _inference(r: Results) -> list[str]:
    v = r.values
    inf, seq = v["inference"], v["sequences"]
    best = inf["best_batch_size"]
    ort_all, eager_all = inf["ort"][(0, best)], inf["eager"][max(inf["eager"])]
    return [
        "### onnxruntime against PyTorch eager",
        "",
        f"Same model, the same {fmt(inf['customers'])} sequences (the active customers of {seq['partitions']} partitions), the same "
        f"length-sorted batches of {best}; best of 2 runs. On one thread the rate is customers per CPU second, which other "
        "processes' load does not change; on all cores it is customers per wall second.",
        "",
        "| engine | 1 thread | all cores |",
        "|---|---|---|",
        f"| onnxruntime (graph optimisation: {_score_optimisation_level().removeprefix('enable_')}) | {fmt(_ort_1(v))} | {fmt(ort_all)} |",
        f"| PyTorch eager (`inference_mode`) | {fmt(inf['eager'][1])} | {fmt(eager_all)} |",
        f"| ratio | {_ort_1(v) / inf['eager'][1]:.2f}x | {ort_all / eager_all:.2f}x |",
        *_transformer_lines(inf),
        "",
        "onnxruntime graph optimisation level (1 thread, batches of the best size, customers per CPU second): "
        + (
            ", ".join(f"{level.removeprefix('ORT_').lower()} {fmt(rate)}" for level, rate in inf["optimisation"].items())
            if "optimisation" in inf
            else "not measured"
        )
        + f". `seqchurn score` uses `{_score_optimisation_level()}` (set in `seqchurn.score.session_options`).",
        "",
        "onnxruntime customers/s by batch size and intra-op threads (0 = one per core):",
        "",
        "| threads | " + " | ".join(str(b) for b in BATCH_SIZES) + " |",
        "|---|" + "---|" * len(BATCH_SIZES),
        *[f"| {t} | " + " | ".join(fmt(inf["ort"][(t, b)]) for b in BATCH_SIZES) + " |" for t in (1, 0)],
        "",
        f"conf/score.yaml uses `threads: {v['score_defaults']['threads']}` and `batch_size: {v['score_defaults']['batch_size']}`. "
        "One thread per inference call suits `seqchurn score`: its worker processes (one per core) each alternate "
        "pandas work and inference, so every core is busy without onnxruntime threads competing for it. "
        + (
            "Several threads per call were slower at every batch size here. "
            if all(inf["ort"][(0, b)] < inf["ort"][(1, b)] for b in BATCH_SIZES)
            else "Several threads per call were faster at some batch sizes here, but in `seqchurn score` they would compete with the other workers. "
        )
        + f"In this run the fastest batch size on one thread was {best}.",
    ]


def _score_optimisation_level() -> str:
    from seqchurn import score

    return str(score.session_options(1).graph_optimization_level).rsplit(".", 1)[-1].removeprefix("ORT_").lower()


def _transformer_lines(inf: dict) -> list[str]:
    t = inf.get("transformer")
    if t is None:
        return []
    return [
        "",
        f"The transformer (conf/model/transformer.yaml with the same hidden size), trained and exported like the GRU, on the "
        f"same partitions' {fmt(t['customers'])} sequences in batches of {t['batch_size']}, 1 thread, customers per CPU second: "
        f"onnxruntime {fmt(t['ort'])}, PyTorch eager {fmt(t['eager'])}, ratio {t['ort'] / t['eager']:.2f}x "
        f"(max |difference| of the probabilities {t['max_abs_diff']:.1e}).",
    ]


def _quantisation(r: Results) -> list[str]:
    q = r.values["inference"]["quantize"]
    gru = "quantised" if q["gru_quantized"] else "not quantised (it stays an fp32 GRU node)"
    if q["offered"]:
        verdict = f"It meets the tolerance (max |difference| <= {QUANTIZE_MAX_ABS_DIFF}) and is at least {QUANTIZE_MIN_SPEEDUP:.2f}x faster."
    else:
        verdict = (
            f"`seqchurn score` does not offer it: the rule is max |difference| <= {QUANTIZE_MAX_ABS_DIFF} and at least "
            f"{QUANTIZE_MIN_SPEEDUP:.2f}x the fp32 speed, and this run measured {q['max_abs_diff']:.4f} and {q['speedup']:.2f}x."
        )
    return [
        "### Dynamic int8 quantisation",
        "",
        f"`onnxruntime.quantization.quantize_dynamic` (QInt8 weights) against fp32 on {fmt(q['validation_rows'])} validation sequences of "
        f"the training log: max |difference| {q['max_abs_diff']:.4f}, mean {q['mean_abs_diff']:.5f}, Spearman rank correlation "
        f"{q['spearman']:.4f}; {fmt(q['int8_per_s'])} against {fmt(q['fp32_per_s'])} customers/s on 1 thread ({q['speedup']:.2f}x). "
        f"Quantised operators: {', '.join(q['int8_ops']) or 'none'}; the GRU itself is {gru}.",
        "",
        verdict,
    ]


def _training(r: Results) -> list[str]:
    s, train = r.settings, r.values["training"]
    threads = next(iter(train.values()))["threads"]
    return [
        "### Training on the CPU",
        "",
        f"Steady-state throughput of `trainer.fit` (batches 2 to {s.throughput_batches} of one epoch, {threads} torch threads) "
        "on the training log of this benchmark, with each config's own sizes:",
        "",
        "| model | hidden size | batch size | sequences/s | train sequences | one epoch |",
        "|---|---|---|---|---|---|",
        *[
            f"| {name} | {t['hidden_size']} | {t['batch_size']} | {fmt(t['sequences_per_s'])} | {fmt(t['train_sequences'])} | {fmt(t['epoch_seconds'], 1)} s |"
            for name, t in train.items()
        ],
    ]


def _limits(r: Results) -> list[str]:
    v = r.values
    floor, seq, e2e, alt = v["floor"], v["sequences"], v["e2e"], v["alternative"]
    return [
        "## What limits each ratio",
        "",
        f"- End to end against the floor: the floor only decodes Parquet ({fmt(floor['rows_per_s'] / 1e6, 1)} M rows/s). "
        "`seqchurn score` then turns strings into canonical columns, checks every value, sorts and de-duplicates, merges "
        "order lines, builds padded arrays and runs the network. "
        + _stage_shares(e2e["summary"]["details"]["score_seconds"])
        + f"One core prepares sequences at {fmt(seq['rows_per_s'] / 1e6, 2)} M rows/s, which is "
        f"{fmt(floor['rows'] / seq['rows_per_s'], 0)} core-seconds for this log before inference; worker processes spread "
        "that over the cores.",
        "- onnxruntime against eager: most of the GRU's arithmetic is in one GRU layer over up to "
        f"{seq.get('max_len', 64)} steps, which both engines run as a single fp32 operator. So there is little for graph "
        "optimisations to fuse (see the optimisation levels above), and both are bound by the same recurrent arithmetic. "
        "int8 weights do not help either, because `quantize_dynamic` leaves the GRU operator in fp32."
        + _transformer_limit(v),
        "- Peak RSS: each worker process holds one partition at a time (the single-process mode about two), and the "
        "main process the scores of all customers, so memory follows the number of workers times the largest partition "
        f"({fmt(e2e['summary']['details']['largest_piece_rows'])} rows here; `seqchurn synth --partitions` sets it), "
        "not the size of the log.",
        f"- pandas + LightGBM: it reads and prepares the log with the same loader in one process, then computes "
        f"{alt['n_features']} aggregate features per customer with numpy on sorted arrays and predicts with LightGBM on all cores. "
        + (
            "That costs less CPU time than merging order lines, building padded sequences and running the network."
            if alt["cpu_seconds"] < e2e["cpu_seconds"]
            else "Its CPU time is at least that of `seqchurn score`, because it runs the same loader before its own features, "
            "and it runs the loader in one process, where `seqchurn score` spreads it over worker processes."
        ),
    ]


def _stage_shares(stages: dict[str, float]) -> str:
    """Describe each stage's share of the worker time of `seqchurn score`, or nothing for a single-process run."""
    names = {"read": "reading", "prepare": "canonicalise + finalise", "features": "sequences", "inference": "onnxruntime"}
    if not set(names) <= set(stages):
        return ""
    total = sum(stages[k] for k in names)
    shares = ", ".join(f"{label} {100 * stages[k] / total:.0f} %" for k, label in names.items())
    return f"Of the worker processes' time, summed over partitions, {shares}, so the work after reading sets the time. "


def _transformer_limit(v: dict) -> str:
    t = v["inference"].get("transformer")
    if t is None:
        return ""
    ratio, gru = t["ort"] / t["eager"], _ort_1(v) / v["inference"]["eager"][1]
    return (
        f" The transformer's ratio is {ratio:.2f}x, {'more' if ratio > gru else 'no more'} than the GRU's: its layers are many "
        "small operators, where eager PyTorch pays its per-operator dispatch cost, but both engines do the same fp32 "
        "matrix products."
    )


def load_results(path: Path, settings: Settings) -> Results:
    """Read results.json of an earlier run, to render the report again without measuring."""
    data = json.loads(path.read_text())
    values = data["values"]
    inference = values["inference"]
    inference["ort"] = {tuple(int(x) for x in key.replace("-", "/").split("/")): rate for key, rate in inference["ort"].items()}
    inference["eager"] = {int(k): rate for k, rate in inference["eager"].items()}
    for name in ("command", "customers", "events_per_customer", "train_customers", "train_batches", "throughput_batches", "hidden_size", "repeats"):
        if name in data.get("settings", {}):
            setattr(settings, name, data["settings"][name])
    values.setdefault("score_defaults", score_defaults())
    return Results(settings=settings, machine=data["machine"], values=values)


def score_defaults() -> dict[str, Any]:
    """onnxruntime threads and batch size that conf/score.yaml sets."""
    from omegaconf import OmegaConf

    score_cfg = OmegaConf.load(CONFIG_DIR / "score.yaml")
    return {"threads": score_cfg.threads, "batch_size": score_cfg.batch_size}


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000, help="customers in the scored log (default: 1,000,000)")
    parser.add_argument("--events-per-customer", type=float, default=50.0, help="mean events per customer (default: 50)")
    parser.add_argument("--train-customers", type=int, default=20_000, help="customers in the training log (default: 20,000)")
    parser.add_argument("--hidden-size", type=int, default=32, help="hidden size of the benchmark GRU and transformer (default: 32)")
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / ".cache" / "benchmark", help="logs, model and outputs (default: .cache/benchmark)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "performance.md", help="report to write (default: docs/performance.md)")
    parser.add_argument("--keep", action="store_true", help="reuse logs already generated in --work-dir with the same size")
    parser.add_argument("--repeats", type=int, default=2, help="end-to-end runs of each pipeline, alternating; the fastest is reported (default: 2)")
    parser.add_argument("--quick", action="store_true", help="a tiny log and model, to check that the script runs (seconds)")
    parser.add_argument("--from-results", type=Path, default=None, help="render the report from an earlier run's results.json, measuring nothing")
    # The pandas + LightGBM alternative runs in a subprocess of this script.
    parser.add_argument("--baseline-worker", nargs=4, metavar=("LOG", "MODEL", "AS_OF", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.customers, args.events_per_customer, args.train_customers = min(args.customers, 2000), min(args.events_per_customer, 20.0), 2000
    settings = Settings(
        customers=args.customers,
        events_per_customer=args.events_per_customer,
        train_customers=args.train_customers,
        train_batches=3 if args.quick else 20,
        throughput_batches=3 if args.quick else 30,
        hidden_size=args.hidden_size,
        work_dir=args.work_dir.resolve(),
        out=args.out,
        quick=args.quick,
        keep=args.keep,
        repeats=1 if args.quick else max(1, args.repeats),
        command=shlex.join(["python", "scripts/benchmark_speed.py", *(argv if argv is not None else sys.argv[1:])]),
    )
    return settings, args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    s, args = parse_args(argv)
    if args.baseline_worker:
        log_dir, model_path, as_of, out_dir = args.baseline_worker
        baseline_worker(Path(log_dir), Path(model_path), as_of, Path(out_dir))
        return 0

    if args.from_results:
        s.out.write_text(write_report(load_results(args.from_results, s)))
        log.info("wrote %s from %s", s.out, args.from_results)
        return 0

    r = Results(settings=s, machine=machine_info())
    v = r.values
    v["score_defaults"] = score_defaults()
    v["date"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    s.work_dir.mkdir(parents=True, exist_ok=True)
    big_log = s.work_dir / f"log-{s.customers}x{s.events_per_customer:g}"
    train_log = s.work_dir / f"train-log-{s.train_customers}"

    v["log"] = make_log(big_log, s.customers, s.events_per_customer, s.keep)
    v["log_bytes"] = sum(f.stat().st_size for f in big_log.rglob("*.parquet"))
    make_log(train_log, s.train_customers, 50.0, s.keep)
    model_dir = train_and_export(s, train_log)
    transformer_dir = train_and_export(s, train_log, "transformer")

    log.info("1/6 floor read")
    v["floor"] = measure_floor(big_log)
    log.info("2/6 sequence building")
    seq, parts = measure_sequences(big_log, model_dir, INFERENCE_SAMPLE_PARTITIONS)
    seq["max_len"] = json.loads((model_dir / "model.json").read_text())["feature_spec"]["max_len"]
    v["sequences"] = seq
    log.info("3/6 onnxruntime against PyTorch eager")
    inputs = concat_inputs(parts)
    v["inference"] = measure_inference(model_dir, inputs, validation_inputs(train_log, s.work_dir))
    # The transformer's own feature spec may differ from the GRU's, so its inputs are built again from the same partitions.
    _, transformer_parts = measure_sequences(big_log, transformer_dir, INFERENCE_SAMPLE_PARTITIONS)
    v["inference"]["transformer"] = measure_engines(transformer_dir, concat_inputs(transformer_parts), v["inference"]["best_batch_size"])
    del parts, inputs, transformer_parts

    log.info("4-5/6 seqchurn score and pandas + LightGBM end to end, %d times each, alternating", s.repeats)
    lightgbm_model = train_lightgbm(train_log, s.work_dir)
    scores_dir = s.work_dir / "scores"
    e2e_runs, alternative_runs = [], []
    for _ in range(s.repeats):
        run = run_measured(
            cli(
                "score", "data=synthetic", f"data.sources.0.path={big_log}", f"model_dir={model_dir}", f"as_of={AS_OF}",
                f"output_dir={scores_dir}", "progress=false", f"paths.root_dir={s.work_dir}", f"hydra.run.dir={s.work_dir / 'hydra' / 'score'}",
            ),
            cwd=REPO_ROOT, log_file=s.work_dir / "score.log",
        )
        e2e_runs.append({**run, "summary": json.loads((scores_dir / "run_summary.json").read_text())})
        run = run_measured(
            [sys.executable, str(Path(__file__).resolve()), "--baseline-worker", str(big_log), str(lightgbm_model), AS_OF, str(s.work_dir / "baseline")],
            cwd=REPO_ROOT, log_file=s.work_dir / "baseline.log",
        )
        alternative_runs.append({**run, **json.loads((s.work_dir / "baseline" / "summary.json").read_text())})
    # The fastest run of each is reported; all runs are listed beside it.
    v["e2e"] = {**min(e2e_runs, key=lambda x: x["seconds"]), "runs": [(x["seconds"], x["cpu_seconds"]) for x in e2e_runs]}
    v["alternative"] = {**min(alternative_runs, key=lambda x: x["seconds"]), "runs": [(x["seconds"], x["cpu_seconds"]) for x in alternative_runs]}
    log.info("6/6 training throughput")
    v["training"] = measure_training(train_log, s)

    r.machine["load_average_end"] = os.getloadavg()
    text = write_report(r)
    s.out.parent.mkdir(parents=True, exist_ok=True)
    s.out.write_text(text)
    raw = {k: val for k, val in v.items() if k != "inference"}
    raw["inference"] = {**v["inference"], "ort": {f"{t}/{b}": x for (t, b), x in v["inference"]["ort"].items()}}
    settings = {k: val for k, val in vars(s).items() if not isinstance(val, Path)}
    (s.work_dir / "results.json").write_text(json.dumps({"settings": settings, "machine": r.machine, "values": raw}, indent=2, default=str))
    log.info("wrote %s", s.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
