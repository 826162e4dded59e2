"""Shared look of the report charts: light colours, readable fonts, formatted axes."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

import matplotlib as mpl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, PercentFormatter

BLUE = "#4C78A8"
LIGHT_BLUE = "#9ECAE9"
ORANGE = "#F58518"
LIGHT_ORANGE = "#FFBF79"
GREEN = "#54A24B"
RED = "#E45756"
GREY = "#9D9D9D"
PALETTE = (BLUE, ORANGE, GREEN, RED, "#72B7B2", "#B279A2", "#EECA3B", "#FF9DA6", GREY)
HEATMAP_CMAP = "Blues"
NOT_OBSERVED = "#E6E6E6"
RISK_COLOURS = (RED, ORANGE, "#EECA3B", GREEN, BLUE, GREY)
"""Colours for risk tiers, from the riskiest tier down."""


def risk_colour(rank: int, n_tiers: int) -> str:
    """Return the colour of the ``rank``-th riskiest of ``n_tiers`` tiers (0 = riskiest).

    With two or three tiers the riskiest is red and the safest green.
    """
    if n_tiers == 3:
        return (RED, ORANGE, GREEN)[rank]
    if n_tiers < 3:
        return (RED, GREEN)[min(rank, 1)]
    return RISK_COLOURS[min(rank, len(RISK_COLOURS) - 1)]

RC_PARAMS = {
    "figure.facecolor": "white",
    "axes.facecolor": "white",
    "axes.edgecolor": "#CCCCCC",
    "axes.grid": True,
    "grid.color": "#EEEEEE",
    "grid.linewidth": 0.8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "axes.labelcolor": "#333333",
    "xtick.color": "#555555",
    "ytick.color": "#555555",
    "legend.frameon": False,
    "legend.fontsize": 9,
    "font.size": 10,
}

DPI = 110

PERCENT_AXIS = PercentFormatter(xmax=1.0, decimals=0)
"""Axis formatter that shows fractions as whole percentages."""

THOUSANDS_AXIS = FuncFormatter(lambda value, _position: f"{value:,.0f}")
"""Axis formatter that shows numbers with thousands separators."""


@contextmanager
def chart_style() -> Iterator[None]:
    """Apply the report's matplotlib settings inside the block."""
    with mpl.rc_context(RC_PARAMS):
        yield


def new_figure(width: float = 7.0, height: float = 4.5, **subplots: object) -> Figure:
    """Create a figure on the Agg canvas without pyplot, so no global GUI state is touched."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    if subplots:
        fig.subplots(**subplots)
    return fig


def figure_to_png(fig: Figure) -> bytes:
    """Render ``fig`` as PNG bytes, without the "Software" metadata that names a URL."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()
