"""scripts/benchmark_quality.py --quick on a slice of the bundled data, and its table helpers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from seqchurn import benchmark_quality
from seqchurn.benchmark_quality import (
    ALL_MODELS,
    BEGIN_MARK,
    END_MARK,
    BenchmarkData,
    RunResult,
    check_same_snapshots,
    comparison_intervals,
    comparison_lines,
    paired_bootstrap_interval,
    resolve_data_config,
    summarise,
    write_page,
)
from seqchurn.conf_utils import CONFIG_DIR, REPO_ROOT
from seqchurn.metrics import average_precision, binary_report


def load_script():
    spec = importlib.util.spec_from_file_location("benchmark_quality_script", REPO_ROOT / "scripts" / "benchmark_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, retail_slice):
    """One --quick run of every model on the online_retail slice."""
    work = tmp_path_factory.mktemp("benchmark")
    page = work / "page.md"
    page.write_text(f"# Quality\n\nHand-written intro.\n\n{BEGIN_MARK}\nold numbers\n{END_MARK}\n\nHand-written notes.\n")
    argv = [
        "--quick",
        "--data", "online_retail",
        "--work-dir", str(work),
        "--output", str(page),
        "--sample-fraction", "1",
        "--override", f"data.sources.0.path={retail_slice / 'online_retail_ii_2009_2010.parquet'}",
        "--override", f"data.sources.1.path={retail_slice / 'online_retail.parquet'}",
        "--override", "data.sequence.item_vocab_size=100",
    ]
    assert load_script().main(argv) == 0
    return work, page


@pytest.mark.slow
def test_quick_run_covers_every_model(quick_run):
    work, _ = quick_run
    runs = pd.read_csv(work / "runs.csv")
    expected = [m for m in ALL_MODELS if m not in ("gru", "transformer") or (CONFIG_DIR / "model" / f"{m}.yaml").exists()]
    assert sorted(runs["model"]) == sorted(expected)
    for column in ("test_auroc", "test_average_precision", "test_brier", "test_ece", "val_average_precision"):
        assert runs[column].between(0, 1).all(), column
    assert (runs["train_seconds"] > 0).all()
    assert (runs["score_seconds"] > 0).all()
    # Every model is scored on the same test snapshots.
    assert runs["n_test"].nunique() == 1
    assert runs["test_positive_rate"].nunique() == 1


@pytest.mark.slow
def test_quick_run_reports_train_summary_metrics(quick_run):
    work, _ = quick_run
    runs = pd.read_csv(work / "runs.csv").set_index("model")
    summary = json.loads((work / "checkpoints" / "online_retail_gru_seed0" / "training_summary.json").read_text())
    assert runs.loc["gru", "test_average_precision"] == pytest.approx(summary["test_metrics"]["average_precision"])
    assert runs.loc["gru", "test_log_loss"] == pytest.approx(summary["test_metrics"]["log_loss"])
    assert runs.loc["gru", "val_auroc"] == pytest.approx(summary["val_metrics"]["auroc"])


@pytest.mark.slow
def test_quick_run_rewrites_only_generated_section(quick_run):
    _, page = quick_run
    text = page.read_text()
    assert text.startswith("# Quality\n\nHand-written intro.\n\n")
    assert text.rstrip().endswith("Hand-written notes.")
    assert "old numbers" not in text
    assert "python scripts/benchmark_quality.py --quick" in text
    assert "| gru | 1 |" in text
    assert "| lightgbm | 1 |" in text


def test_write_page_creates_and_appends(tmp_path):
    section = f"{BEGIN_MARK}\nnew\n{END_MARK}\n"
    new_page = tmp_path / "new.md"
    write_page(new_page, section, title="# T")
    assert new_page.read_text() == f"# T\n\n{section}"
    unmarked = tmp_path / "unmarked.md"
    unmarked.write_text("# Old page\n")
    write_page(unmarked, section)
    assert unmarked.read_text() == f"# Old page\n\n{section}"


def test_summarise_matches_numpy():
    runs = pd.DataFrame(
        {
            "dataset": ["d"] * 4,
            "model": ["gru", "gru", "gru", "recency"],
            "seed": [0, 1, 2, None],
            "test_average_precision": [0.7, 0.8, 0.9, 0.5],
        }
    )
    summary = summarise(runs).set_index("model")
    values = np.array([0.7, 0.8, 0.9])
    assert summary.loc["gru", "runs"] == 3
    assert summary.loc["gru", "test_average_precision_mean"] == pytest.approx(values.mean())
    assert summary.loc["gru", "test_average_precision_std"] == pytest.approx(values.std(ddof=1))
    assert summary.loc["recency", "test_average_precision_std"] == 0.0


def test_comparison_names_loser_and_gap():
    rows = []
    for model, val_ap, ap, auroc in (("gru", 0.60, 0.70, 0.80), ("gru ensemble", 0.61, 0.72, 0.81), ("lightgbm", 0.62, 0.75, 0.79)):
        rows.append({"dataset": "d", "model": model, "seed": 0, "val_average_precision": val_ap, "test_average_precision": ap, "test_auroc": auroc})
    lines = comparison_lines(summarise(pd.DataFrame(rows)))
    assert lines[0].startswith("- d, test PR-AUC: seqchurn loses by -0.0300 (gru ensemble 0.7200 vs lightgbm 0.7500)")
    assert "its best single model gru 0.7000 (-0.0500)" in lines[0]
    assert lines[1].startswith("- d, test AUROC: seqchurn wins by +0.0200")


def test_comparison_picks_seqchurn_row_by_validation():
    rows = [
        {"dataset": "d", "model": "gru", "seed": 0, "val_average_precision": 0.70, "test_average_precision": 0.60, "test_auroc": 0.60},
        {"dataset": "d", "model": "transformer", "seed": 0, "val_average_precision": 0.65, "test_average_precision": 0.90, "test_auroc": 0.90},
        {"dataset": "d", "model": "logreg", "seed": None, "val_average_precision": 0.80, "test_average_precision": 0.62, "test_auroc": 0.64},
        {"dataset": "d", "model": "recency", "seed": None, "val_average_precision": 0.50, "test_average_precision": 0.70, "test_auroc": 0.50},
    ]
    lines = comparison_lines(summarise(pd.DataFrame(rows)))
    # The GRU represents seqchurn because it is best on validation, although the transformer is
    # best on test. The baseline side takes the best test value of each metric.
    assert lines[0].startswith("- d, test PR-AUC: seqchurn loses by -0.1000 (gru 0.6000 vs recency 0.7000)")
    assert lines[1].startswith("- d, test AUROC: seqchurn loses by -0.0400 (gru 0.6000 vs logreg 0.6400)")


def test_comparison_shows_interval():
    rows = [
        {"dataset": "d", "model": "gru", "seed": 0, "val_average_precision": 0.7, "test_average_precision": 0.80, "test_auroc": 0.70},
        {"dataset": "d", "model": "bgnbd", "seed": None, "val_average_precision": 0.7, "test_average_precision": 0.75, "test_auroc": 0.72},
    ]
    lines = comparison_lines(summarise(pd.DataFrame(rows)), {"d": {"PR-AUC": (0.01, 0.09)}})
    assert lines[0] == "- d, test PR-AUC: seqchurn wins by +0.0500 (gru 0.8000 vs bgnbd 0.7500; 95 % paired bootstrap interval of the gap +0.0100 .. +0.0900)."
    assert "interval" not in lines[1]


def test_bootstrap_interval_identical_models_is_zero():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    prob = rng.random(300)
    assert paired_bootstrap_interval(y, prob, prob, average_precision, n_resamples=200) == (0.0, 0.0)


def test_bootstrap_interval_brackets_gap():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 2000)
    good = np.clip(0.5 * y + 0.5 * rng.random(2000), 0, 1)
    noise = rng.random(2000)
    low, high = paired_bootstrap_interval(y, good, noise, average_precision, n_resamples=300)
    gap = average_precision(y, good) - average_precision(y, noise)
    assert 0 < low < gap < high
    # Swapping the models mirrors the interval.
    low_swapped, high_swapped = paired_bootstrap_interval(y, noise, good, average_precision, n_resamples=300)
    assert low_swapped == pytest.approx(-high)
    assert high_swapped == pytest.approx(-low)


def test_comparison_intervals_pool_seeds():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 400)
    report = binary_report(y, np.full(400, 0.5))

    def run(model, seed, prob):
        return RunResult("d", model, seed, report, binary_report(y, prob), 1.0, 0.1, prob, prob)

    strong = [np.clip(0.6 * y + 0.4 * rng.random(400), 0, 1) for _ in range(2)]
    results = [run("gru", 0, strong[0]), run("gru", 1, strong[1]), run("recency", None, rng.random(400))]
    intervals = comparison_intervals(results, y)
    assert set(intervals) == {"PR-AUC", "AUROC"}
    pooled = np.mean(strong, axis=0)
    expected = paired_bootstrap_interval(y, pooled, results[2].test_prob, average_precision)
    assert intervals["PR-AUC"] == pytest.approx(expected)


def test_check_same_snapshots_rejects_changed_label():
    snaps = pd.DataFrame(
        {
            "customer_id": ["a", "b"],
            "cutoff": pd.to_datetime(["2011-01-01", "2011-01-01"], utc=True),
            "label": np.array([0, 1], dtype=np.int8),
            "split": ["train", "train"],
        }
    )
    check_same_snapshots(snaps, snaps.iloc[::-1])
    changed = snaps.assign(label=np.array([1, 1], dtype=np.int8))
    with pytest.raises(RuntimeError, match="Snapshots differ"):
        check_same_snapshots(snaps, changed)


def test_resolve_data_config_rejects_unknown(tmp_path):
    assert resolve_data_config("online_retail", tmp_path) == ("online_retail", [])
    with pytest.raises(ValueError, match="not found"):
        resolve_data_config("no_such_log", tmp_path)
    with pytest.raises(ValueError, match="not found"):
        resolve_data_config(str(tmp_path / "missing.yaml"), tmp_path)


def test_resolve_data_config_copies_file(tmp_path):
    own = tmp_path / "my_log.yaml"
    own.write_text((CONFIG_DIR / "data" / "online_retail.yaml").read_text())
    name, search_path = resolve_data_config(str(own), tmp_path / "work")
    assert name == "my_log"
    assert (tmp_path / "work" / "conf" / "data" / "my_log.yaml").read_text() == own.read_text()
    assert search_path == [f"hydra.searchpath=[file://{(tmp_path / 'work' / 'conf').resolve()}]"]


class FakeBaseline:
    """Stands in for a baseline whose fit fails unless ``penalizer_coef`` is at least ``needed``."""

    def __init__(self, needed: float, penalizer_coef: float = 0.0) -> None:
        self.needed, self.penalizer_coef = needed, penalizer_coef

    def fit(self, events, train, val):
        if self.penalizer_coef < self.needed:
            raise ValueError("The BG/NBD fit did not converge on 3 customers")
        return self


def fallback_data() -> BenchmarkData:
    snaps = pd.DataFrame({"customer_id": ["a"], "cutoff": pd.to_datetime(["2011-01-01"], utc=True), "label": [1], "split": ["train"]})
    return BenchmarkData("tiny", snaps, pd.DataFrame(), None)


@pytest.mark.parametrize(("needed", "used"), [(0.0, None), (0.001, 0.001), (0.01, 0.01)])
def test_bgnbd_fallback_penalty(monkeypatch, needed, used):
    monkeypatch.setattr(benchmark_quality, "make_baseline", lambda name, churn, **options: FakeBaseline(needed, **options))
    baseline, note = benchmark_quality.fit_baseline("bgnbd", fallback_data(), {})
    if used is None:
        assert note is None
        assert baseline.penalizer_coef == 0.0
    else:
        assert baseline.penalizer_coef == used
        assert f"penalizer_coef={used:g}" in note


def test_bgnbd_fallback_gives_up(monkeypatch):
    monkeypatch.setattr(benchmark_quality, "make_baseline", lambda name, churn, **options: FakeBaseline(1.0, **options))
    with pytest.raises(ValueError, match="did not converge"):
        benchmark_quality.fit_baseline("bgnbd", fallback_data(), {})


def test_no_fallback_for_configured_penalty(monkeypatch):
    monkeypatch.setattr(benchmark_quality, "make_baseline", lambda name, churn, **options: FakeBaseline(0.001, **options))
    with pytest.raises(ValueError, match="did not converge"):
        benchmark_quality.fit_baseline("bgnbd", fallback_data(), {"penalizer_coef": 0.0001})


def test_binary_report_keys_cover_table():
    from seqchurn.benchmark_quality import METRICS

    report = binary_report(np.array([0, 1, 1, 0]), np.array([0.2, 0.7, 0.6, 0.4]))
    assert set(METRICS) <= set(report)


@pytest.mark.parametrize(("name", "gets_windows"), [("logreg", True), ("lightgbm", True), ("bgnbd", False)])
def test_feature_baselines_get_data_windows(monkeypatch, name, gets_windows):
    received = {}

    def fake_make_baseline(name, churn, **options):
        received.update(options)
        return FakeBaseline(0.0)

    monkeypatch.setattr(benchmark_quality, "make_baseline", fake_make_baseline)
    data = fallback_data()
    data.feature_options = {"windows": [1, 2], "trend_days": 1}
    benchmark_quality.fit_baseline(name, data, {"seed": 3})
    assert received.get("seed") == 3
    assert ("windows" in received) == gets_windows
    if gets_windows:
        assert received["windows"] == [1, 2]
        assert received["trend_days"] == 1



@pytest.mark.parametrize("path", sorted((CONFIG_DIR / "experiment" / "quality").glob("*.yaml")), ids=lambda p: p.stem)
def test_quality_experiments_compose(path):
    data_name, model = path.stem.rsplit("_", 1)
    cfg = benchmark_quality.compose_train_config([f"experiment=quality/{path.stem}", "paths.output_dir=/unused", "paths.work_dir=/unused"])
    assert cfg.data.name == data_name
    assert cfg.model.name == model
    assert benchmark_quality.experiment_name(data_name, model) == f"quality/{path.stem}"


@pytest.mark.slow
def test_validation_only_never_scores_test(tmp_path, retail_slice):
    argv = [
        "--quick", "--validation-only",
        "--data", "online_retail",
        "--models", "gru", "logreg",
        "--work-dir", str(tmp_path),
        "--sample-fraction", "1",
        "--override", f"data.sources.0.path={retail_slice / 'online_retail_ii_2009_2010.parquet'}",
        "--override", f"data.sources.1.path={retail_slice / 'online_retail.parquet'}",
        "--override", "data.sequence.item_vocab_size=100",
    ]
    assert load_script().main(argv) == 0

    rows = pd.read_csv(tmp_path / "validation.csv")
    assert list(rows["model"]) == ["gru", "logreg"]
    assert rows["val_average_precision_mean"].between(0, 1).all()
    assert rows["ensemble_val_average_precision"].between(0, 1).all()
    assert not (tmp_path / "benchmarks.md").exists()
    assert not list(tmp_path.rglob("test_metrics.json"))
    assert not list(tmp_path.rglob("training_summary.json"))
