"""Number formatting for people, and writers for analytics tables (CSV + Markdown).

CSV files keep full precision for machines. Markdown files and the HTML report show the
same numbers rounded, with thousands separators, and rates as percentages.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


def format_count(value: object) -> str:
    """Format a count with thousands separators ("12,345"). Missing values become ""."""
    if _is_missing(value):
        return ""
    return f"{int(round(float(value))):,}"


def format_percent(value: object, digits: int = 1) -> str:
    """Format a fraction as a percentage (0.1234 -> "12.3%"). Missing values become ""."""
    if _is_missing(value):
        return ""
    return f"{float(value) * 100:,.{digits}f}%"


def format_amount(value: object, digits: int = 2) -> str:
    """Format a money amount or other real number with thousands separators ("1,234.50")."""
    if _is_missing(value):
        return ""
    return f"{float(value):,.{digits}f}"


def _is_missing(value: object) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def is_rate_column(label: object) -> bool:
    """Return whether a column contains fractions to show as percentages.

    Rates are columns whose name contains "rate" or "share", and the integer-labelled
    offset columns of a cohort retention table.
    """
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        return True
    name = str(label)
    return "rate" in name or "share" in name or name.isdigit()


def format_frame(table: pd.DataFrame, *, percent_columns: Iterable[object] | None = None) -> pd.DataFrame:
    """Return a copy of ``table`` with every value formatted as a display string.

    Columns in ``percent_columns`` (by default those that ``is_rate_column`` selects) become
    percentages. Integer and boolean columns stay exact, other floats get two decimals and
    thousands separators, timestamps are shown as dates when they have no time of day.
    """
    percent = set(percent_columns) if percent_columns is not None else {c for c in table.columns if is_rate_column(c)}
    out = pd.DataFrame(index=table.index)
    for column in table.columns:
        values = table[column]
        if column in percent:
            out[column] = values.map(format_percent)
        elif pd.api.types.is_bool_dtype(values):
            out[column] = values.map(_format_bool)
        elif pd.api.types.is_integer_dtype(values):
            out[column] = values.map(format_count)
        elif pd.api.types.is_float_dtype(values):
            out[column] = values.map(format_amount)
        elif pd.api.types.is_datetime64_any_dtype(values):
            out[column] = _format_timestamps(values)
        else:
            out[column] = values.astype("object").map(lambda v: "" if _is_missing(v) else str(v))
    out.columns = [str(c) for c in table.columns]
    return out


def _format_bool(value: object) -> str:
    if _is_missing(value):
        return ""
    return "yes" if value else "no"


def _format_timestamps(values: pd.Series) -> pd.Series:
    naive = values.dt.tz_convert(None) if values.dt.tz is not None else values
    if (naive.dropna() == naive.dropna().dt.normalize()).all():
        return naive.dt.strftime("%Y-%m-%d").fillna("")
    return naive.dt.strftime("%Y-%m-%d %H:%M").fillna("")


def to_markdown(table: pd.DataFrame, *, percent_columns: Iterable[object] | None = None, index: bool = True) -> str:
    """Render ``table`` as a GitHub Markdown table with formatted numbers (uses tabulate)."""
    formatted = format_frame(table, percent_columns=percent_columns)
    # The cells are already formatted strings, so tabulate must not parse them back into
    # numbers (it would drop "1.50" to 1.5 and remove thousands separators).
    return formatted.to_markdown(index=index, stralign="right", disable_numparse=True)


def write_table(
    table: pd.DataFrame,
    out_dir: str | Path,
    name: str,
    *,
    percent_columns: Iterable[object] | None = None,
    index: bool = True,
) -> dict[str, Path]:
    """Write ``table`` to ``out_dir/name.csv`` (full precision) and ``out_dir/name.md``.

    Returns ``{"csv": path, "md": path}``. ``out_dir`` is created when missing.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / f"{name}.csv"
    md_path = out / f"{name}.md"
    table.to_csv(csv_path, index=index)
    md_path.write_text(to_markdown(table, percent_columns=percent_columns, index=index) + "\n", encoding="utf-8")
    log.info("wrote %s and %s (%d rows)", csv_path, md_path, len(table))
    return {"csv": csv_path, "md": md_path}
