"""Rank the trials of a Hydra multirun of ``seqchurn train`` by the optimised metric.

``python scripts/summarize_sweep.py logs/train/multiruns/<time>`` writes ``summary.csv``
and ``summary.md`` into the sweep folder. Each trial folder (``<sweep>/<job number>/``)
contributes its overrides (``.hydra/overrides.yaml``) and the ``training_summary.json``
in its checkpoint folder. That folder is ``paths.checkpoint_dir`` of the trial, resolved
from the trial's saved ``.hydra/config.yaml`` and ``.hydra/hydra.yaml``.

Trials without a training summary (failed, still running, or ``fast_dev_run``) are listed
with their status and without a rank. Trials whose checkpoint folder is shared with
another trial are flagged too, because each of them overwrote the others' summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from seqchurn.conf_utils import register_resolvers
from seqchurn.data.schema import InputError
from seqchurn.utils.atomic import atomic_path

log = logging.getLogger(__name__)

SUMMARY_FILE = "training_summary.json"
# Metric names logged during training that training_summary.json stores under another key.
METRIC_ALIASES = {"auprc": "average_precision"}
DIRECTIONS = ("maximize", "minimize")
_HYDRA_RESOLVER = re.compile(r"\$\{hydra:")


def summary_metric(summary: dict[str, Any], metric: str) -> float | None:
    """Read ``metric`` (e.g. ``val/auprc``) from a training summary; None when it is absent.

    The stage before the slash selects ``val_metrics`` or ``test_metrics``. This is the
    value that ``seqchurn.train.main`` returns to a sweeper.
    """
    stage, _, name = metric.rpartition("/")
    section = summary.get(f"{stage or 'val'}_metrics")
    if not isinstance(section, dict):
        return None
    value = section.get(METRIC_ALIASES.get(name, name))
    return float(value) if value is not None else None


def _trial_config(trial_dir: Path) -> DictConfig:
    """Load the trial's job config merged with its Hydra config, ``${hydra:x}`` rewritten to ``${hydra.x}``.

    The ``hydra`` resolver reads the live Hydra singleton, which does not exist after the
    run. Rewriting the interpolations lets them resolve against the saved ``hydra`` node.
    """
    job = OmegaConf.to_container(OmegaConf.load(trial_dir / ".hydra" / "config.yaml"), resolve=False)
    hydra_node = OmegaConf.to_container(OmegaConf.load(trial_dir / ".hydra" / "hydra.yaml"), resolve=False)

    def rewrite(value: Any) -> Any:
        if isinstance(value, str):
            return _HYDRA_RESOLVER.sub("${hydra.", value)
        if isinstance(value, dict):
            return {k: rewrite(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rewrite(v) for v in value]
        return value

    return OmegaConf.create({**rewrite(job), "hydra": hydra_node["hydra"]})


def read_trial(trial_dir: Path) -> dict[str, Any]:
    """Read one trial folder into a row: job number, overrides, checkpoint folder and metrics."""
    register_resolvers()
    cfg = _trial_config(trial_dir)
    overrides = [str(o) for o in OmegaConf.load(trial_dir / ".hydra" / "overrides.yaml")]
    metric = str(cfg.get("optimized_metric") or "val/auprc")

    row: dict[str, Any] = {
        "job": int(cfg.hydra.job.num),
        "metric": metric,
        "value": math.nan,
        "status": "ok",
        "run_name": None,
        "model_name": None,
        "test_auprc": math.nan,
        "train_seconds": math.nan,
        "best_checkpoint": None,
        "checkpoint_dir": None,
        "overrides": overrides,
        "trial_dir": str(trial_dir),
    }

    try:
        ckpt_dir = Path(str(cfg.paths.checkpoint_dir))
    except OmegaConfBaseException as exc:  # e.g. a custom resolver that this process lacks
        row["status"] = f"checkpoint_dir not resolvable: {exc}"
        return row
    if not ckpt_dir.is_absolute():
        # Relative paths were read from the directory the sweep was launched in.
        ckpt_dir = Path(str(cfg.hydra.runtime.cwd)) / ckpt_dir
    row["checkpoint_dir"] = str(ckpt_dir)

    summary_path = ckpt_dir / SUMMARY_FILE
    if not summary_path.exists():
        row["status"] = "no training summary (failed, running or fast_dev_run)"
        return row

    summary = json.loads(summary_path.read_text())
    value = summary_metric(summary, metric)
    row.update(
        value=math.nan if value is None else value,
        run_name=summary.get("run_name"),
        model_name=summary.get("model_name"),
        test_auprc=summary_metric(summary, "test/auprc"),
        train_seconds=summary.get("train_seconds"),
        best_checkpoint=summary.get("best_checkpoint"),
    )
    if value is None:
        row["status"] = f"metric {metric} not in the training summary"
    return row


def _sweep_direction(sweep_dir: Path, trial_dirs: list[Path]) -> str:
    """Return the sweeper's optimisation direction (Optuna sets one), or maximize when it has none."""
    hydra_cfg = OmegaConf.load(trial_dirs[0] / ".hydra" / "hydra.yaml").hydra
    direction = OmegaConf.select(hydra_cfg, "sweeper.direction", default=None)
    if isinstance(direction, (list, tuple)) or OmegaConf.is_list(direction):
        raise InputError("the sweep optimised several objectives, which this summary cannot rank; pass --direction to rank by optimized_metric", file=str(sweep_dir))
    direction = str(direction or "maximize").lower().removeprefix("direction.")
    if direction not in DIRECTIONS:
        raise InputError(f"invalid sweeper direction {direction!r}, expected one of {DIRECTIONS}", file=str(sweep_dir))
    return direction


def _swept_overrides(rows: list[dict[str, Any]]) -> list[str]:
    """Per trial, the overrides whose value differs between trials, joined by spaces."""
    parsed = [dict(o.split("=", 1) if "=" in o else (o, "") for o in row["overrides"]) for row in rows]
    keys = sorted({k for p in parsed for k in p})
    varying = [k for k in keys if len({p.get(k) for p in parsed}) > 1]
    return [" ".join(f"{k}={p[k]}" for k in varying if k in p) for p in parsed]


def collect_trials(sweep_dir: str | Path, direction: str | None = None) -> pd.DataFrame:
    """Read every trial of a multirun folder and rank them by the optimised metric.

    Returns one row per trial, best first. ``rank`` is missing for trials without a
    usable metric. ``direction`` defaults to the sweeper's (``maximize`` when it has none).
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise InputError("sweep folder not found", file=str(sweep_dir), hint="Pass the hydra.sweep.dir of a `seqchurn train -m` run")
    trial_dirs = sorted(p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml"))
    if not trial_dirs:
        raise InputError(
            "no trial folders (<job number>/.hydra/overrides.yaml) in this folder", file=str(sweep_dir),
            hint="Pass the folder of one multirun, e.g. logs/train/multiruns/<time>",
        )
    if direction is None:
        direction = _sweep_direction(sweep_dir, trial_dirs)
    elif direction not in DIRECTIONS:
        raise ValueError(f"Expected `direction` to be one of {DIRECTIONS}, but got {direction!r}")

    rows = sorted((read_trial(d) for d in trial_dirs), key=lambda r: r["job"])
    shared = Counter(r["checkpoint_dir"] for r in rows if r["checkpoint_dir"])
    for row in rows:
        if row["checkpoint_dir"] and shared[row["checkpoint_dir"]] > 1:
            # Every trial wrote the same training_summary.json; it belongs to whichever finished last.
            row["status"] = "checkpoint_dir shared with other trials; set run_name per trial (see hparams_search/grid.yaml)"
            row["value"] = math.nan
    for row, swept in zip(rows, _swept_overrides(rows)):
        row["swept"] = swept
        row["overrides"] = " ".join(row["overrides"])

    table = pd.DataFrame(rows)
    usable = table["status"].eq("ok") & table["value"].notna()
    table = table.sort_values(["value", "job"], ascending=[direction == "minimize", True], na_position="last", kind="stable")
    table.insert(0, "rank", pd.array([pd.NA] * len(table), dtype="Int64"))
    n_usable = int(usable.sum())
    table.loc[usable.reindex(table.index), "rank"] = list(range(1, n_usable + 1))
    skipped = len(table) - n_usable
    if skipped:
        log.warning("%d of %d trials have no usable %s and are listed without a rank (see the status column)", skipped, len(table), rows[0]["metric"])
    table.attrs.update(direction=direction, metric=rows[0]["metric"], sweep_dir=str(sweep_dir))
    return table.reset_index(drop=True)


def _markdown(table: pd.DataFrame) -> str:
    metric, direction = table.attrs["metric"], table.attrs["direction"]
    columns_shown = table[["rank", "job", "value", "test_auprc", "model_name", "swept", "best_checkpoint", "status"]].rename(
        columns={"value": metric, "swept": "swept overrides"}
    )
    n_ranked = int(table["rank"].notna().sum())
    lines = [
        f"# Sweep summary: {table.attrs['sweep_dir']}",
        "",
        f"{len(table)} trials, {n_ranked} ranked by {metric} ({direction}). "
        "All overrides of each trial are in summary.csv.",
        "",
        columns_shown.to_markdown(index=False, floatfmt=".4f"),
        "",
    ]
    return "\n".join(lines)


def summarize_sweep(sweep_dir: str | Path, out_dir: str | Path | None = None, direction: str | None = None) -> pd.DataFrame:
    """Rank the trials of ``sweep_dir`` and write ``summary.csv`` and ``summary.md`` to ``out_dir`` (default: the sweep folder)."""
    table = collect_trials(sweep_dir, direction)
    out_dir = Path(out_dir or sweep_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "summary.csv") as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(out_dir / "summary.md") as tmp:
        tmp.write_text(_markdown(table))
    best = table.iloc[0]
    if pd.notna(best["rank"]):
        log.info("best of %d trials: job %d, %s %.4f, checkpoint %s", len(table), best["job"], best["metric"], best["value"], best["best_checkpoint"])
    log.info("wrote %s and %s", out_dir / "summary.csv", out_dir / "summary.md")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rank the trials of a `seqchurn train -m` sweep; writes summary.csv and summary.md.")
    parser.add_argument("sweep_dir", type=Path, help="the multirun folder (hydra.sweep.dir), e.g. logs/train/multiruns/<time>")
    parser.add_argument("--out", type=Path, default=None, help="folder for summary.csv and summary.md (default: the sweep folder)")
    parser.add_argument("--direction", choices=DIRECTIONS, default=None, help="rank order (default: the sweeper's direction, else maximize)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        table = summarize_sweep(args.sweep_dir, args.out, args.direction)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(_markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
