"""The self-contained HTML evaluation report.

``build_report`` writes ``report.html`` with every chart embedded as a base64 PNG and the CSS
inline, so the file opens offline and contains no URL. It also writes each chart as a PNG
file to ``charts/``. A chart whose input is missing is skipped, and a note on the page explains why.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup
from matplotlib.figure import Figure

from seqchurn.analytics.tables import format_amount, format_count, format_frame, format_percent
from seqchurn.report import business_charts, model_charts, style

log = logging.getLogger(__name__)

CHART_NAMES: tuple[str, ...] = (
    "roc",
    "precision_recall",
    "calibration",
    "cumulative_gain",
    "lift",
    "score_distribution",
    "confusion_matrix",
    "tier_distribution",
    "horizons",
    "periods",
    "cohort_retention",
    "segments",
)
"""File stems of every chart the report can write to ``charts/``."""

TOP_AT_RISK = 25
"""Rows in the table of customers with the highest churn probability."""

WIDE_CHART_INCHES = 8.0
"""Charts wider than this take a whole row of the page; narrower ones sit side by side."""


@dataclass
class Chart:
    name: str
    title: str
    caption: str
    png: bytes
    wide: bool = False

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass
class Section:
    title: str
    intro: str = ""
    charts: list[Chart] = field(default_factory=list)
    tables: list[tuple[str, Markup]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def render_chart(name: str, title: str, caption: str, draw: Callable[[Figure], None], *, width: float = 7.0, height: float = 4.5) -> Chart:
    """Draw a chart with the report style and return it as PNG bytes."""
    with style.chart_style():
        fig = style.new_figure(width, height)
        draw(fig)
        png = style.figure_to_png(fig)
    return Chart(name, title, caption, png, wide=width > WIDE_CHART_INCHES)


def _single(plot: Callable[..., None], *args: object) -> Callable[[Figure], None]:
    def draw(fig: Figure) -> None:
        plot(fig.add_subplot(), *args)

    return draw


def html_table(table: pd.DataFrame, *, percent_columns: list[object] | None = None) -> Markup:
    """Render ``table`` as an escaped HTML table with numbers formatted for people."""
    formatted = format_frame(table, percent_columns=percent_columns)
    return Markup(formatted.to_html(index=False, escape=True, border=0, classes="data"))


def _model_section(y_true: object, y_prob: object, threshold: float) -> Section:
    section = Section("Model evaluation")
    if y_true is None or y_prob is None:
        section.notes.append("No labelled predictions were given, so ROC, precision-recall, calibration, gain, lift, "
                             "score distribution and confusion matrix charts are skipped.")
        return section
    scores = model_charts.check_binary_scores(y_true, y_prob, threshold)
    metrics = model_charts.summary_metrics(scores)
    section.tables.append(("Headline metrics", html_table(_metrics_table(metrics), percent_columns=[])))

    charts = []
    if scores.has_both_classes:
        charts += [
            ("roc", "ROC curve", "Orange point: the operating point at the decision threshold.", model_charts.plot_roc),
            ("precision_recall", "Precision-recall curve", "Dashed line: precision of flagging everyone.",
             model_charts.plot_precision_recall),
        ]
    else:
        section.notes.append(f"All {format_count(len(scores.y_true))} labels are {int(scores.y_true[0])}, so ROC, "
                             "precision-recall, gain and lift charts are skipped: they need both classes.")
    charts.append(("calibration", "Calibration", "Points: quantile bins of the predicted probability. Bars: how many "
                   "customers have each predicted probability.", model_charts.plot_calibration))
    if scores.has_both_classes:
        charts += [
            ("cumulative_gain", "Cumulative gain", "Share of churners found when contacting the riskiest customers first.",
             model_charts.plot_gain),
            ("lift", "Cumulative lift", "How many times the base churn rate the contacted group churns at.",
             model_charts.plot_lift),
        ]
    charts += [
        ("score_distribution", "Score distribution by outcome", "Dashed line: the decision threshold.",
         model_charts.plot_score_distribution),
        ("confusion_matrix", "Confusion matrix", "Counts and the share of each true class.", model_charts.plot_confusion),
    ]
    for name, title, caption, plot in charts:
        section.charts.append(render_chart(name, title, caption, _single(plot, scores)))
    return section


def _metrics_table(metrics: dict[str, float]) -> pd.DataFrame:
    rows = [
        ("Customers scored", format_count(metrics["customers"])),
        ("Observed churn rate", format_percent(metrics["churn_rate"])),
        ("ROC AUC", f"{metrics['roc_auc']:.3f}" if "roc_auc" in metrics else "n/a (one class)"),
        ("Average precision", f"{metrics['average_precision']:.3f}" if "average_precision" in metrics else "n/a (one class)"),
        ("Brier score (lower is better)", f"{metrics['brier_score']:.4f}"),
        ("Decision threshold", f"{metrics['threshold']:.3f}"),
        ("Flagged at threshold", format_percent(metrics["flagged_share"])),
        ("Precision at threshold", format_percent(metrics["precision"])),
        ("Recall at threshold", format_percent(metrics["recall"])),
        ("F1 at threshold", f"{metrics['f1']:.3f}"),
    ]
    return pd.DataFrame(rows, columns=["metric", "value"])


def _check_scores(scores: pd.DataFrame) -> None:
    missing = [c for c in ("customer_id", "churn_probability") if c not in scores.columns]
    if missing:
        raise ValueError(f"Expected `scores` to have columns customer_id and churn_probability, but {missing} are missing")
    probability = pd.to_numeric(scores["churn_probability"], errors="coerce")
    bad = ~probability.between(0, 1)
    if bad.any():
        i = int(np.argmax(bad.to_numpy()))
        raise ValueError(f"Expected `scores.churn_probability` in [0, 1], but position {i} is {scores['churn_probability'].iloc[i]!r}")


def _scores_section(scores: pd.DataFrame | None) -> Section:
    section = Section("Scored customers")
    if scores is None:
        section.notes.append("No customer scores were given, so the tier distribution, horizon chart and "
                             "top at-risk table are skipped.")
        return section
    _check_scores(scores)
    section.intro = f"{format_count(len(scores))} customers scored."

    if "tier" in scores.columns:
        section.charts.append(render_chart("tier_distribution", "Score distribution by risk tier", "",
                                           _single(business_charts.plot_tier_distribution, scores)))
    else:
        section.notes.append("The scores have no `tier` column, so the tier distribution is skipped.")

    if business_charts.horizon_columns(scores):
        section.charts.append(render_chart("horizons", "Churn probability by horizon", "Mean probability of no "
                                           "activity within each horizon after the cutoff.",
                                           _single(business_charts.plot_horizons, scores)))
    else:
        section.notes.append("The scores have no horizon columns (named like `churn_probability_30d`), so the "
                             "horizon chart is skipped.")

    section.tables.append((f"Top {TOP_AT_RISK} customers at risk", _top_at_risk(scores)))
    return section


def _top_at_risk(scores: pd.DataFrame) -> Markup:
    top = scores.sort_values("churn_probability", ascending=False, kind="stable").head(TOP_AT_RISK)
    columns = ["customer_id", "churn_probability"] + [c for c in ("tier", "predicted_clv", "reasons") if c in top.columns]
    table = top[columns].copy()
    if "reasons" in table.columns:
        table["reasons"] = table["reasons"].map(_format_reasons)
    return html_table(table, percent_columns=["churn_probability"])


def _format_reasons(reasons: object) -> str:
    if isinstance(reasons, (list, tuple, np.ndarray)):
        return "; ".join(str(r) for r in reasons)
    if reasons is None or (isinstance(reasons, float) and np.isnan(reasons)):
        return ""
    return str(reasons)


def _periods_section(period_table: pd.DataFrame | None, cohort_table: pd.DataFrame | None) -> Section:
    section = Section("Churn, retention and cohorts")
    if period_table is None:
        section.notes.append("No period table was given, so churn and retention by period are skipped.")
    else:
        partial = period_table.loc[~period_table["complete"].astype(bool), "period"].astype(str).tolist()
        caption = (
            "Activity churn: customers at period start with no activity in the period. Head-count churn: "
            "(start - end) / start, negative when new customers outnumber leavers. Grey: periods the log does "
            "not fully cover, or whose lookback starts before the log, so customer counts are low."
        )
        if partial:
            caption += f" Partial periods (the log does not cover them fully): {', '.join(partial)}."

        def draw(fig: Figure) -> None:
            top, bottom = fig.subplots(2, 1, sharex=True)
            business_charts.plot_period_rates(top, period_table)
            business_charts.plot_period_customers(bottom, period_table)
            top.set_xlabel("")

        section.charts.append(render_chart("periods", "Churn and retention by period", caption, draw, width=9, height=7.5))
    if cohort_table is None:
        section.notes.append("No cohort table was given, so the cohort retention heatmap is skipped.")
    else:
        n_rows = len(cohort_table)
        section.charts.append(render_chart(
            "cohort_retention", "Cohort retention", "Row: customers by period of first purchase, with the cohort size. Cell: % "
            "of them purchasing that many periods later. Grey: not observed yet.",
            _single(business_charts.plot_cohort_heatmap, cohort_table), width=10, height=max(4.0, 1.5 + 0.28 * n_rows)))
    return section


def _segments_section(segments: pd.DataFrame | None) -> Section:
    section = Section("Customer segments")
    if segments is None:
        section.notes.append("No segment summary was given, so the segment table and chart are skipped.")
        return section
    missing = [c for c in ("segment_name", "customers") if c not in segments.columns]
    if missing:
        raise ValueError(f"Expected a segment_summary frame, but columns {missing} are missing")
    has_rates = any(c in segments.columns for c in business_charts.SEGMENT_RATES)

    def draw(fig: Figure) -> None:
        if has_rates:
            left, right = fig.subplots(1, 2, sharey=True)
            business_charts.plot_segment_sizes(left, segments)
            business_charts.plot_segment_rates(right, segments)
        else:
            business_charts.plot_segment_sizes(fig.add_subplot(), segments)

    section.charts.append(render_chart("segments", "Customer segments", "K-Means segments on recency, frequency "
                                       "and net spend, named by their centroid.", draw, width=11, height=4.5))
    section.tables.append(("Segment profiles", html_table(segments)))
    return section


def _metadata_table(metadata: Mapping[str, object] | None) -> Markup | None:
    if not metadata:
        return None
    rows = [(str(key), _format_metadata_value(value)) for key, value in metadata.items()]
    return html_table(pd.DataFrame(rows, columns=["field", "value"]))


def _format_metadata_value(value: object) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return format_count(value)
    if isinstance(value, (float, np.floating)):
        return format_amount(value, 4)
    return str(value)


TEMPLATE = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
  body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; color: #2b2b2b;
         background: #fafafa; margin: 0; padding: 0 2rem 3rem; line-height: 1.45; }
  header { padding: 1.5rem 0 0.5rem; border-bottom: 1px solid #e3e3e3; }
  h1 { font-size: 1.6rem; margin: 0 0 0.3rem; }
  h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #e3e3e3; padding-bottom: 0.3rem; }
  h3 { font-size: 1rem; margin-top: 1.4rem; }
  .charts { display: flex; flex-wrap: wrap; gap: 1.2rem; }
  figure { background: white; border: 1px solid #e6e6e6; border-radius: 6px; margin: 0; padding: 0.6rem;
           flex: 1 1 520px; max-width: 780px; box-sizing: border-box; }
  figure.wide { flex-basis: 100%; max-width: 1240px; }
  figure img { display: block; width: 100%; height: auto; }
  figcaption { font-size: 0.85rem; color: #555; max-width: 46rem; margin-top: 0.3rem; }
  .note { background: #fff8e6; border-left: 4px solid #f5c26b; padding: 0.5rem 0.8rem; margin: 0.6rem 0;
          font-size: 0.9rem; }
  table.data { border-collapse: collapse; background: white; font-size: 0.88rem; }
  table.data th, table.data td { border: 1px solid #e3e3e3; padding: 0.3rem 0.6rem; text-align: right; }
  table.data th { background: #f0f4f8; }
  table.data td:first-child, table.data th:first-child { text-align: left; }
</style>
</head>
<body>
<header>
  <h1>{{ title }}</h1>
  {% if metadata %}{{ metadata }}{% endif %}
</header>
{% for section in sections %}
<section>
  <h2>{{ section.title }}</h2>
  {% if section.intro %}<p>{{ section.intro }}</p>{% endif %}
  {% for note in section.notes %}<p class="note">{{ note }}</p>{% endfor %}
  {% for caption, table in section.tables %}<h3>{{ caption }}</h3>{{ table }}{% endfor %}
  {% if section.charts %}<div class="charts">
  {% for chart in section.charts %}<figure id="chart-{{ chart.name }}"{% if chart.wide %} class="wide"{% endif %}>
    <img src="{{ chart.data_uri }}" alt="{{ chart.title }}">
    <figcaption><strong>{{ chart.title }}.</strong> {{ chart.caption }}</figcaption>
  </figure>
  {% endfor %}</div>{% endif %}
</section>
{% endfor %}
</body>
</html>
"""
)


def build_report(
    out_dir: str | Path,
    *,
    y_true: object,
    y_prob: object,
    threshold: float,
    scores: pd.DataFrame | None = None,
    period_table: pd.DataFrame | None = None,
    cohort_table: pd.DataFrame | None = None,
    segments: pd.DataFrame | None = None,
    title: str = "Churn model report",
    metadata: Mapping[str, object] | None = None,
) -> Path:
    """Write ``out_dir/report.html`` and ``out_dir/charts/*.png`` and return the HTML path.

    ``y_true`` (1 = churned) and ``y_prob`` are the labelled evaluation predictions; pass
    None for both to skip the model charts. ``scores`` has ``customer_id`` and
    ``churn_probability`` and optionally ``tier``, ``reasons``, ``predicted_clv`` and horizon
    columns such as ``churn_probability_30d``. ``period_table`` and ``cohort_table`` come from
    ``seqchurn.analytics.periods``, and ``segments`` from ``segments.segment_summary``.
    ``metadata`` is shown as a table under the title. Raises ``ValueError`` on invalid input.
    """
    out = Path(out_dir)
    chart_dir = out / "charts"
    chart_dir.mkdir(parents=True, exist_ok=True)

    sections = [
        _model_section(y_true, y_prob, threshold),
        _scores_section(scores),
        _periods_section(period_table, cohort_table),
        _segments_section(segments),
    ]

    written = set()
    for section in sections:
        for chart in section.charts:
            (chart_dir / f"{chart.name}.png").write_bytes(chart.png)
            written.add(chart.name)
    # Remove charts of an earlier run that this run skipped, so charts/ matches the page.
    for name in set(CHART_NAMES) - written:
        (chart_dir / f"{name}.png").unlink(missing_ok=True)

    html = TEMPLATE.render(title=title, metadata=_metadata_table(metadata), sections=sections)
    path = out / "report.html"
    path.write_text(html, encoding="utf-8")
    skipped = sum(len(s.notes) for s in sections)
    log.info("wrote %s with %d charts (%d notes about skipped inputs)", path, len(written), skipped)
    return path


def save_readme_figure(path: str | Path, *, y_true: object, y_prob: object, threshold: float) -> Path:
    """Write one PNG with the ROC curve, calibration and cumulative gain side by side.

    The figure is meant for the README (e.g. ``docs/img/evaluation.png``). Needs both classes
    in ``y_true``. Returns the path written.
    """
    scores = model_charts.check_binary_scores(y_true, y_prob, threshold)
    if not scores.has_both_classes:
        raise ValueError("Expected both classes in `y_true` for the README figure, but got only one")

    def draw(fig: Figure) -> None:
        roc, calibration, gain = fig.subplots(1, 3)
        model_charts.plot_roc(roc, scores)
        model_charts.plot_calibration(calibration, scores)
        model_charts.plot_gain(gain, scores)

    chart = render_chart("readme", "Evaluation", "", draw, width=16, height=4.8)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(chart.png)
    log.info("wrote %s", target)
    return target
