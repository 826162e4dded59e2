"""Self-contained HTML evaluation report with matplotlib charts (Agg backend, no pyplot)."""

from seqchurn.report.html import CHART_NAMES, build_report, save_readme_figure

__all__ = ["CHART_NAMES", "build_report", "save_readme_figure"]
