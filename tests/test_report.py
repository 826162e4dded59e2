"""Tests for the HTML report: chart files, self-containment, skipped inputs and browser rendering."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from seqchurn.analytics.clv import rfm_summary
from seqchurn.analytics.periods import cohort_retention, period_metrics
from seqchurn.analytics.segments import segment_customers, segment_summary
from seqchurn.data.labels import ChurnDefinition
from seqchurn.data.schema import COLUMNS, EVENT_TYPE_DTYPE
from seqchurn.report import CHART_NAMES, build_report, save_readme_figure
from seqchurn.report.model_charts import check_binary_scores, gain_curve

DATA_URI = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")


def simulated_events(n_customers: int, seed: int) -> pd.DataFrame:
    """Purchases and views of ``n_customers`` over 2021-2022 in the canonical schema."""
    rng = np.random.default_rng(seed)
    n = n_customers * 8
    customer = rng.integers(0, n_customers, n)
    first = rng.uniform(0, 600, n_customers)
    ts = pd.Timestamp("2021-01-01", tz="UTC") + pd.to_timedelta(first[customer] + rng.exponential(80, n), unit="D")
    event_type = rng.choice(["purchase", "view", "return"], n, p=[0.6, 0.35, 0.05])
    frame = pd.DataFrame(
        {
            "customer_id": pd.Series([f"c{c:04d}" for c in customer], dtype="str"),
            "ts": pd.Series(ts).astype("datetime64[ns, UTC]"),
            "event_type": pd.Series(event_type).astype(EVENT_TYPE_DTYPE),
            "amount": np.where(event_type == "view", 0.0, rng.gamma(3, 15, n)),
            "quantity": np.nan,
            "item_id": pd.Series([None] * n, dtype="str"),
            "category_id": pd.Series([None] * n, dtype="str"),
            "order_id": pd.Series([f"o{i}" for i in range(n)], dtype="str"),
            "cancelled_at": pd.Series(pd.NaT, index=range(n), dtype="datetime64[ns, UTC]"),
        }
    )
    frame = frame.loc[frame["ts"] < pd.Timestamp("2023-01-01", tz="UTC")]
    return frame[list(COLUMNS)].sort_values(["customer_id", "ts"], kind="stable").reset_index(drop=True)


@pytest.fixture(scope="module")
def report_inputs() -> dict:
    events = simulated_events(300, seed=0)
    summary = rfm_summary(events, "2022-07-01")
    segmentation = segment_customers(summary, k_range=(3, 4), seed=0)

    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 2, len(summary))
    y_prob = np.clip(0.35 * y_true + 0.65 * rng.random(len(summary)), 0, 1)
    tiers = np.select([y_prob >= 0.7, y_prob >= 0.4], ["high", "medium"], "low")
    scores = pd.DataFrame(
        {
            "customer_id": summary.index,
            "churn_probability": y_prob,
            "tier": tiers,
            "reasons": [["no purchase in 60 days", "fewer visits"]] * len(summary),
            "churn_probability_30d": y_prob * 0.4,
            "churn_probability_90d": y_prob,
            "churn_probability_180d": np.minimum(1.0, y_prob * 1.2),
        }
    )
    outcomes = pd.DataFrame({"customer_id": summary.index, "label": y_true, "churn_probability": y_prob})
    return {
        "y_true": y_true,
        "y_prob": y_prob,
        "threshold": 0.5,
        "scores": scores,
        "period_table": period_metrics(events, "M", ChurnDefinition(lookback_days=120)),
        "cohort_table": cohort_retention(events, "M"),
        "segments": segment_summary(segmentation, outcomes),
    }


@pytest.fixture(scope="module")
def full_report(report_inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    return build_report(out, title="Test report <&>", metadata={"model": "gru", "customers": 1234567, "auc": 0.81234}, **report_inputs)


def test_report_writes_every_chart(full_report):
    charts = sorted(p.stem for p in (full_report.parent / "charts").glob("*.png"))
    assert charts == sorted(CHART_NAMES)


@pytest.mark.parametrize("name", CHART_NAMES)
def test_chart_png_not_trivial(full_report, name):
    path = full_report.parent / "charts" / f"{name}.png"
    assert path.stat().st_size > 15_000
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] >= 300
    assert pixels.shape[1] >= 500
    assert pixels.std() > 0.02
    # Pack each RGB(A) pixel into one integer to count distinct colours quickly.
    channels = (pixels.reshape(-1, pixels.shape[-1]) * 255).round().astype(np.uint32)
    packed = np.zeros(len(channels), dtype=np.uint32)
    for channel in range(channels.shape[1]):
        packed = (packed << 8) | channels[:, channel]
    assert len(np.unique(packed)) > 50


def test_report_html_self_contained(full_report):
    text = full_report.read_text(encoding="utf-8")
    without_images = DATA_URI.sub("", text)
    assert "http" not in without_images.lower()
    assert "<script" not in text.lower()
    assert "<link" not in text.lower()
    assert "url(" not in without_images
    sources = re.findall(r'src="([^"]*)"', text)
    assert len(sources) == len(CHART_NAMES)
    assert all(src.startswith("data:image/png;base64,") for src in sources)


def test_report_embeds_chart_files(full_report):
    text = full_report.read_text(encoding="utf-8")
    embedded = {base64.b64decode(data) for data in DATA_URI.findall(text)}
    on_disk = {p.read_bytes() for p in (full_report.parent / "charts").glob("*.png")}
    assert embedded == on_disk


def test_report_escapes_and_formats_text(full_report):
    text = full_report.read_text(encoding="utf-8")
    assert "Test report &lt;&amp;&gt;" in text
    assert "1,234,567" in text
    assert "0.8123" in text
    assert "no purchase in 60 days; fewer visits" in text
    assert 'class="note"' not in text


def test_report_headline_metrics(full_report, report_inputs):
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    text = full_report.read_text(encoding="utf-8")
    y_true, y_prob = report_inputs["y_true"], report_inputs["y_prob"]
    assert f"<td>ROC AUC</td>\n      <td>{roc_auc_score(y_true, y_prob):.3f}</td>" in text
    assert f"<td>{average_precision_score(y_true, y_prob):.3f}</td>" in text
    assert f"<td>{brier_score_loss(y_true, y_prob):.4f}</td>" in text
    recall = ((y_prob >= 0.5) & (y_true == 1)).sum() / (y_true == 1).sum()
    assert f"<td>{recall * 100:.1f}%</td>" in text


def test_report_top_at_risk_order(full_report, report_inputs):
    text = full_report.read_text(encoding="utf-8")
    table = text[text.index("customers at risk") :]
    top = report_inputs["scores"].sort_values("churn_probability", ascending=False, kind="stable")
    first, second = top["customer_id"].iloc[0], top["customer_id"].iloc[1]
    assert table.index(f">{first}<") < table.index(f">{second}<")


def test_report_skips_missing_inputs(tmp_path, report_inputs):
    # A chart from an earlier run must not survive a run that skips it.
    (tmp_path / "charts").mkdir()
    (tmp_path / "charts" / "cohort_retention.png").write_bytes(b"old")

    path = build_report(tmp_path, y_true=None, y_prob=None, threshold=0.5, title="Empty")

    text = path.read_text(encoding="utf-8")
    assert text.count('class="note"') == 5
    assert "No labelled predictions were given" in text
    assert "No customer scores were given" in text
    assert "No period table was given" in text
    assert "No cohort table was given" in text
    assert "No segment summary was given" in text
    assert "<img" not in text
    assert list((tmp_path / "charts").glob("*.png")) == []


def test_report_scores_without_tiers(tmp_path, report_inputs):
    scores = report_inputs["scores"][["customer_id", "churn_probability"]]
    path = build_report(tmp_path, y_true=None, y_prob=None, threshold=0.5, scores=scores)
    text = path.read_text(encoding="utf-8")
    assert "no `tier` column" in text
    assert "no horizon columns" in text
    assert "customers at risk" in text


def test_report_one_class_labels(tmp_path):
    y_prob = np.linspace(0.05, 0.95, 40)
    path = build_report(tmp_path, y_true=np.zeros(40, dtype=int), y_prob=y_prob, threshold=0.5)
    charts = sorted(p.stem for p in (tmp_path / "charts").glob("*.png"))
    assert charts == ["calibration", "confusion_matrix", "score_distribution"]
    assert "they need both classes" in path.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("y_true", "y_prob", "threshold", "message"),
    [
        ([0, 1, 2], [0.1, 0.2, 0.3], 0.5, "position 2"),
        ([0, 1, 1], [0.1, 1.5, 0.3], 0.5, "position 1"),
        ([0, 1, 1], [0.1, np.nan, 0.3], 0.5, "position 1"),
        ([0, 1], [0.1, 0.2, 0.3], 0.5, "equal length"),
        ([0, 1], [0.1, 0.2], 1.5, "threshold"),
        ([], [], 0.5, "empty"),
    ],
)
def test_report_rejects_bad_predictions(tmp_path, y_true, y_prob, threshold, message):
    with pytest.raises(ValueError, match=message):
        build_report(tmp_path, y_true=y_true, y_prob=y_prob, threshold=threshold)


def test_report_rejects_bad_scores(tmp_path):
    with pytest.raises(ValueError, match="churn_probability"):
        build_report(tmp_path, y_true=None, y_prob=None, threshold=0.5, scores=pd.DataFrame({"customer_id": ["a"]}))
    bad = pd.DataFrame({"customer_id": ["a", "b"], "churn_probability": [0.5, 2.0]})
    with pytest.raises(ValueError, match="position 1"):
        build_report(tmp_path, y_true=None, y_prob=None, threshold=0.5, scores=bad)


def test_gain_curve_by_hand():
    scores = check_binary_scores([1, 0, 1, 0, 0], [0.9, 0.8, 0.7, 0.2, 0.1], 0.5)
    contacted, gain = gain_curve(scores)
    np.testing.assert_allclose(contacted, [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    # Riskiest first: churner, retained, churner, retained, retained.
    np.testing.assert_allclose(gain, [0, 0.5, 0.5, 1.0, 1.0, 1.0])


def test_readme_figure(tmp_path, report_inputs):
    path = save_readme_figure(
        tmp_path / "docs" / "img" / "evaluation.png",
        y_true=report_inputs["y_true"],
        y_prob=report_inputs["y_prob"],
        threshold=0.5,
    )
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[1] > 3 * pixels.shape[0] - 200
    assert pixels.std() > 0.02


# --- Headless Chromium --------------------------------------------------------------------

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")

# Injected into a copy of the page: after load it writes each image's state and any page
# error into a <pre>, which --dump-dom then prints.
CHECK_SCRIPT = """<script>
window.__errors = [];
window.addEventListener("error", function (e) { window.__errors.push(String(e.message || e.type)); }, true);
var originalError = console.error;
console.error = function () { window.__errors.push(Array.prototype.join.call(arguments, " ")); originalError.apply(console, arguments); };
window.addEventListener("load", function () {
  var images = Array.prototype.map.call(document.images, function (img) {
    return {alt: img.alt, complete: img.complete, width: img.naturalWidth, height: img.naturalHeight};
  });
  var out = document.createElement("pre");
  out.id = "render-check";
  out.textContent = JSON.stringify({images: images, errors: window.__errors});
  document.body.appendChild(out);
});
</script>"""


def render_in_chromium(page: Path, tmp_path: Path) -> tuple[dict, list[str]]:
    """Open ``page`` in headless Chromium and return the check result and the console log lines."""
    checked = tmp_path / "checked.html"
    checked.write_text(page.read_text(encoding="utf-8").replace("<head>", "<head>" + CHECK_SCRIPT, 1), encoding="utf-8")
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        # Make every host name lookup fail, so the page cannot reach a named host.
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=10000",
        "--dump-dom",
        checked.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    match = re.search(r'<pre id="render-check">(.*?)</pre>', done.stdout, re.S)
    assert match, f"Chromium printed no check result (exit {done.returncode}): {done.stderr[-2000:]}"
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return json.loads(html.unescape(match.group(1))), console


@needs_chromium
def test_report_renders_in_chromium(full_report, tmp_path):
    result, console = render_in_chromium(full_report, tmp_path)
    assert len(result["images"]) == len(CHART_NAMES)
    for image in result["images"]:
        assert image["complete"], image["alt"]
        assert image["width"] > 0, image["alt"]
        assert image["height"] > 0, image["alt"]
    assert result["errors"] == []
    assert console == []


@needs_chromium
def test_chromium_check_detects_failures(tmp_path):
    # The harness itself must fail on a broken image and a console error.
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><head><title>broken</title></head><body>'
        '<img alt="broken" src="data:image/png;base64,AAAA">'
        '<script>console.error("deliberate failure");</script></body></html>',
        encoding="utf-8",
    )
    result, console = render_in_chromium(page, tmp_path)
    assert result["images"][0]["width"] == 0
    assert "deliberate failure" in result["errors"]
    assert any("deliberate failure" in line for line in console)
