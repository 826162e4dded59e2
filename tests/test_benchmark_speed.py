"""scripts/benchmark_speed.py keeps working: its helpers, and a --quick run that writes the report."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from seqchurn.conf_utils import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "benchmark_speed.py"


def load_script():
    spec = importlib.util.spec_from_file_location("benchmark_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def test_run_measured_sees_child_memory(tmp_path):
    bench = load_script()
    # The child allocates 300 MB and keeps it for half a second.
    code = "import time, numpy as np; a = np.ones(300 * 2**20 // 8); time.sleep(0.5)"
    measured = bench.run_measured([sys.executable, "-c", code], cwd=tmp_path, log_file=tmp_path / "child.log")
    assert measured["peak_rss_bytes"] >= 300 * 2**20
    assert measured["seconds"] >= 0.5
    assert 0 < measured["cpu_seconds"] < measured["seconds"]


def test_run_measured_raises_on_failure(tmp_path):
    bench = load_script()
    with pytest.raises(RuntimeError, match="exit code 3"):
        bench.run_measured([sys.executable, "-c", "import sys; sys.exit(3)"], cwd=tmp_path, log_file=tmp_path / "child.log")


def test_best_of_returns_fastest():
    bench = load_script()
    durations = iter([0.03, 0.0, 0.02])

    def work():
        import time

        time.sleep(next(durations))
        return "done"

    seconds, cpu_seconds, result = bench.best_of(work, 3)
    assert result == "done"
    assert seconds < 0.02
    assert 0 <= cpu_seconds < 0.02  # sleeping costs no CPU time


@pytest.mark.slow
def test_quick_run_writes_report(tmp_path):
    out = tmp_path / "performance.md"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--work-dir", str(tmp_path / "work"), "--out", str(out)],
        capture_output=True, text=True, timeout=900, cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    for heading in ("## Machine", "## Targets", "## Results", "### onnxruntime against PyTorch eager", "### Dynamic int8 quantisation", "### Training on the CPU", "## What limits each ratio"):
        assert heading in text, heading
    assert "--quick" in text
    targets = re.findall(r"^\| (.+?) \| (.+?) \| (.+?) \| (yes|no|no \(yes by CPU time\)) \|$", text, flags=re.MULTILINE)
    assert len(targets) == 5
    wall, bound = re.search(r"seqchurn end to end \(log -> scores \+ alerts\), wall; CPU time / cores \| ([\d.,]+) s; ([\d.,]+) s", text).groups()
    assert float(wall.replace(",", "")) > 0
    assert float(bound.replace(",", "")) > 0
    assert re.search(r"\| gru \| \d+ \| \d+ \| [\d,]+ \|", text)
    assert (tmp_path / "work" / "scores" / "scores.parquet").exists()
    assert (tmp_path / "work" / "baseline" / "scores.parquet").exists()
