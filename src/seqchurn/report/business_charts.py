"""Charts of the customer base: churn by period, cohorts, segments, risk tiers and horizons."""

from __future__ import annotations

import re

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from seqchurn.analytics.tables import format_percent
from seqchurn.report import style

HORIZON_COLUMN = re.compile(r"^churn_probability_(\d+(?:\.\d+)?)d$")
"""Score columns with the churn probability within a horizon, e.g. ``churn_probability_30d``."""

MAX_ANNOTATED_CELLS = 400
"""Cohort heatmaps with more cells than this are drawn without numbers in the cells."""


def horizon_columns(scores: pd.DataFrame) -> dict[str, float]:
    """Return ``{column: horizon in days}`` for the columns matching ``HORIZON_COLUMN``, by horizon."""
    found = {c: float(m.group(1)) for c in scores.columns if (m := HORIZON_COLUMN.match(str(c)))}
    return dict(sorted(found.items(), key=lambda item: item[1]))


def plot_period_rates(ax: Axes, periods: pd.DataFrame) -> None:
    """Draw churn (activity and head-count formulas) and retention per period, in %."""
    x = np.arange(len(periods))
    ax.plot(x, periods["retention_rate"], color=style.GREEN, lw=2, marker="o", ms=4, label="retention (activity)")
    ax.plot(x, periods["churn_rate_activity"], color=style.ORANGE, lw=2, marker="o", ms=4, label="churn (activity)")
    ax.plot(x, periods["churn_rate_headcount"], color=style.GREY, lw=1.5, ls="--", marker=".", label="churn (head-count)")
    ax.axhline(0, color="#BBBBBB", lw=0.8)
    _shade_unreliable(ax, periods)
    _period_ticks(ax, periods)
    ax.set_ylabel("Share of customers at period start (%)")
    ax.yaxis.set_major_formatter(style.PERCENT_AXIS)
    ax.set_title("Churn and retention by period")
    ax.legend(loc="best")


def plot_period_customers(ax: Axes, periods: pd.DataFrame) -> None:
    """Draw customers at period start, active customers and new customers per period."""
    x = np.arange(len(periods))
    width = 0.4
    ax.bar(x - width / 2, periods["active_customers"], width, color=style.LIGHT_BLUE, label="active in period")
    ax.bar(x + width / 2, periods["new_customers"], width, color=style.LIGHT_ORANGE, label="new in period")
    ax.plot(x, periods["customers_start"], color=style.BLUE, lw=2, marker="o", ms=4, label="customers at period start")
    _shade_unreliable(ax, periods)
    _period_ticks(ax, periods)
    ax.set_ylabel("Customers")
    ax.yaxis.set_major_formatter(style.THOUSANDS_AXIS)
    ax.set_title("Customers by period")
    ax.legend(loc="best")


def _shade_unreliable(ax: Axes, periods: pd.DataFrame) -> None:
    """Shade periods that the log does not fully cover or whose lookback starts before the log."""
    unreliable = ~(periods["complete"].astype(bool) & periods["lookback_covered"].astype(bool)).to_numpy()
    for i in np.flatnonzero(unreliable):
        ax.axvspan(i - 0.5, i + 0.5, color=style.NOT_OBSERVED, alpha=0.6, lw=0, zorder=0)


def _period_ticks(ax: Axes, periods: pd.DataFrame) -> None:
    labels = periods["period"].astype(str).to_numpy()
    step = max(1, int(np.ceil(len(labels) / 12)))
    ticks = np.arange(0, len(labels), step)
    ax.set_xticks(ticks, labels=labels[ticks], rotation=45, ha="right")
    ax.set_xlabel("Period (UTC)")


def cohort_offsets(cohorts: pd.DataFrame) -> pd.DataFrame:
    """Return the retention cells of a ``cohort_retention`` table with integer offset columns.

    Accepts the table as built or read back from CSV, where the offsets are strings.
    """
    cells = cohorts.drop(columns=[c for c in cohorts.columns if str(c) == "customers"])
    if "cohort" in cells.columns:
        cells = cells.set_index("cohort")
    cells.columns = [int(str(c)) for c in cells.columns]
    return cells.astype(float)


def plot_cohort_heatmap(ax: Axes, cohorts: pd.DataFrame) -> None:
    """Draw the cohort retention table as a heatmap, with values in the cells when they fit.

    Column 0 is 100% by definition, so the colour scale is set by the later columns.
    Cells not observed yet are grey.
    """
    cells = cohort_offsets(cohorts)
    values = cells.to_numpy()
    later = values[:, 1:][np.isfinite(values[:, 1:])]
    vmax = float(later.max()) if later.size and later.max() > 0 else 1.0
    cmap = mpl.colormaps[style.HEATMAP_CMAP].with_extremes(bad=style.NOT_OBSERVED, over=style.BLUE)
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=vmax, aspect="auto")
    colorbar = ax.figure.colorbar(image, ax=ax, fraction=0.04, extend="max")
    colorbar.ax.yaxis.set_major_formatter(style.PERCENT_AXIS)
    colorbar.set_label("Customers of the cohort who purchased (%)")
    if values.size <= MAX_ANNOTATED_CELLS:
        for (i, j), value in np.ndenumerate(values):
            if np.isfinite(value):
                colour = "white" if value > 0.6 * vmax else "#333333"
                ax.text(j, i, f"{value * 100:.0f}", ha="center", va="center", fontsize=7, color=colour)

    n_rows, n_cols = values.shape
    row_step = max(1, int(np.ceil(n_rows / 24)))
    col_step = max(1, int(np.ceil(n_cols / 24)))
    labels = cells.index.astype(str)
    if "customers" in cohorts.columns:
        labels = [f"{label} ({size:,})" for label, size in zip(labels, cohorts["customers"].astype(int))]
    ax.set_yticks(np.arange(0, n_rows, row_step), labels=list(labels)[::row_step])
    ax.set_xticks(np.arange(0, n_cols, col_step), labels=[str(c) for c in cells.columns[::col_step]])
    ax.set_xlabel("Periods since first purchase")
    ax.set_ylabel("Acquisition cohort (customers)")
    ax.grid(False)
    ax.set_title("Cohort retention (% of cohort purchasing)")


def plot_segment_sizes(ax: Axes, segments: pd.DataFrame) -> None:
    """Draw the number of customers per segment as horizontal bars labelled with their share."""
    names = segments["segment_name"].astype(str).to_numpy()
    sizes = segments["customers"].to_numpy(dtype=float)
    y = np.arange(len(names))
    ax.barh(y, sizes, color=[style.PALETTE[i % len(style.PALETTE)] for i in range(len(names))], alpha=0.8)
    total = sizes.sum()
    for i, size in enumerate(sizes):
        ax.text(size, i, f" {format_percent(size / total)}", va="center", fontsize=9)
    ax.set_yticks(y, labels=names)
    ax.invert_yaxis()
    ax.set_xlabel("Customers")
    ax.xaxis.set_major_formatter(style.THOUSANDS_AXIS)
    ax.set_xlim(0, sizes.max() * 1.2)
    ax.set_title("Segment sizes")


SEGMENT_RATES = {
    "churn_rate": ("observed churn rate", style.ORANGE),
    "mean_churn_probability": ("mean predicted churn probability", style.BLUE),
}


def plot_segment_rates(ax: Axes, segments: pd.DataFrame) -> None:
    """Draw observed churn rate and mean predicted risk per segment (whichever columns exist)."""
    present = [c for c in SEGMENT_RATES if c in segments.columns]
    names = segments["segment_name"].astype(str).to_numpy()
    y = np.arange(len(names))
    height = 0.8 / max(len(present), 1)
    for i, column in enumerate(present):
        label, colour = SEGMENT_RATES[column]
        ax.barh(y - 0.4 + height * (i + 0.5), segments[column].to_numpy(dtype=float), height, color=colour, alpha=0.75, label=label)
    ax.set_yticks(y, labels=names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("Share of segment (%)")
    ax.xaxis.set_major_formatter(style.PERCENT_AXIS)
    ax.set_title("Churn by segment")
    ax.legend(loc="lower right")


def tier_order(scores: pd.DataFrame) -> list[str]:
    """Return the tiers ordered from the highest mean churn probability to the lowest."""
    means = scores.groupby(scores["tier"].astype(str), observed=True)["churn_probability"].mean()
    return list(means.sort_values(ascending=False).index)


def plot_tier_distribution(ax: Axes, scores: pd.DataFrame) -> None:
    """Draw a histogram of the churn probability per risk tier."""
    bins = np.linspace(0, 1, 41)
    tiers = scores["tier"].astype(str)
    ranked = tier_order(scores)
    for i, tier in enumerate(ranked):
        values = scores.loc[tiers == tier, "churn_probability"].to_numpy(dtype=float)
        ax.hist(values, bins=bins, color=style.risk_colour(i, len(ranked)), alpha=0.6, label=f"{tier} ({len(values):,})")
    ax.set(xlim=(0, 1), xlabel="Predicted churn probability (%)", ylabel="Customers")
    ax.xaxis.set_major_formatter(style.PERCENT_AXIS)
    ax.yaxis.set_major_formatter(style.THOUSANDS_AXIS)
    ax.set_title("Score distribution by risk tier")
    ax.legend(loc="upper center", title="tier (customers)")


def plot_horizons(ax: Axes, scores: pd.DataFrame) -> None:
    """Draw the mean churn probability against the horizon, overall and per tier when present."""
    columns = horizon_columns(scores)
    days = np.array(list(columns.values()))
    overall = scores[list(columns)].astype(float).mean().to_numpy()
    ax.plot(days, overall, color="#333333", lw=2.5, marker="o", label="all customers")
    if "tier" in scores.columns:
        tiers = scores["tier"].astype(str)
        ranked = tier_order(scores) if "churn_probability" in scores.columns else sorted(tiers.unique())
        for i, tier in enumerate(ranked):
            means = scores.loc[tiers == tier, list(columns)].astype(float).mean().to_numpy()
            ax.plot(days, means, color=style.risk_colour(i, len(ranked)), lw=1.5, marker=".", label=f"tier {tier}")
    ax.set_xticks(days, labels=[f"{d:g}" for d in days])
    ax.set(ylim=(0, 1), xlabel="Horizon (days after the cutoff)", ylabel="Mean churn probability (%)")
    ax.yaxis.set_major_formatter(style.PERCENT_AXIS)
    ax.set_title("Churn probability by horizon")
    ax.legend(loc="best")
