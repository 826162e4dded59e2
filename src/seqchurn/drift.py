"""Population stability index (PSI) between the training data and the data being scored.

    PSI = sum over bins of (c_i - r_i) * ln(c_i / r_i)

where ``r_i`` and ``c_i`` are the fractions of the reference and the current sample in
bin ``i``. A fraction below ``eps`` is raised to ``eps`` so that empty bins give a large
but finite term. A common rule of thumb reads PSI below 0.1 as stable, 0.1 to 0.2 as a
moderate shift and above 0.2 as a shift worth investigating.

Bins come from the reference sample only and are stored as a plain JSON-ready dict (see
:func:`reference_histogram`), so they can travel inside an exported model:

- numeric features: cut points at the reference quantiles. The outer bins are open, so
  current values outside the reference range land in the first or last bin.
- categorical features: one bin per reference category plus one bin for categories the
  reference never saw.

Missing values (NaN, None, NaT) always get a bin of their own, so a rise in missing
values shows up as drift instead of being dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

DEFAULT_EPS = 1e-4
DEFAULT_THRESHOLD = 0.2


def _as_series(values: pd.Series | np.ndarray | Sequence) -> pd.Series:
    if isinstance(values, pd.Series):
        return values.reset_index(drop=True)
    return pd.Series(values)


def _is_categorical(values: pd.Series) -> bool:
    return not (pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype))


def _numeric_values(values: pd.Series) -> np.ndarray:
    try:
        return pd.to_numeric(values).to_numpy(dtype="float64", na_value=np.nan)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Expected numeric values for a numeric histogram, but got dtype {values.dtype}: {exc}") from None


def quantile_edges(values: pd.Series | np.ndarray | Sequence, n_bins: int = 10) -> np.ndarray:
    """Return the cut points between ``n_bins`` equally populated bins of the finite values.

    Repeated quantiles (ties, e.g. many zeros) collapse into one cut point, so the result
    has at most ``n_bins - 1`` strictly increasing entries.
    """
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 2:
        raise ValueError(f"Expected `n_bins` to be an integer >= 2, but got {n_bins!r}")
    numbers = _numeric_values(_as_series(values))
    finite = numbers[np.isfinite(numbers)]
    if finite.size == 0:
        return np.empty(0)
    inner_quantiles = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    return np.unique(np.quantile(finite, inner_quantiles))


def _check_edges(edges: np.ndarray) -> None:
    if edges.ndim != 1 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        raise ValueError(f"Expected bin edges to be finite and strictly increasing, but got {edges.tolist()}")


def _numeric_counts(values: pd.Series | np.ndarray | Sequence, edges: np.ndarray) -> np.ndarray:
    """Count values per bin ``(-inf, e0), [e0, e1), ..., [e_last, inf)``, then the missing values."""
    numbers = _numeric_values(_as_series(values))
    missing = np.isnan(numbers)
    bin_index = np.searchsorted(edges, numbers[~missing], side="right")
    counts = np.bincount(bin_index, minlength=len(edges) + 1)
    return np.append(counts, missing.sum())


def _categorical_counts(values: pd.Series | np.ndarray | Sequence, categories: Sequence[str]) -> np.ndarray:
    """Count values per reference category, then unseen categories, then missing values."""
    series = _as_series(values)
    missing = series.isna().to_numpy()
    labels = series[~missing].astype(str)
    codes = pd.Index(list(categories), dtype=object).get_indexer(labels.to_numpy(dtype=object))
    known = np.bincount(codes[codes >= 0], minlength=len(categories))
    return np.concatenate([known, [np.sum(codes < 0), missing.sum()]])


def reference_histogram(
    values: pd.Series | np.ndarray | Sequence, n_bins: int = 10, *, categorical: bool | None = None
) -> dict:
    """Describe the reference distribution of one feature as a JSON-ready dict.

    Numeric values get quantile cut points (see :func:`quantile_edges`). Strings, booleans
    and pandas categoricals are treated as categories. ``categorical`` overrides the guess,
    e.g. for integer-coded categories. Category labels are stored as strings.

    Returns ``{"kind", "edges" or "categories", "fractions", "count"}``. ``fractions`` sums
    to 1 and has one entry per bin: for numeric values the ``len(edges) + 1`` intervals,
    for categories one per category and then the unseen-category bin (0 here). The
    missing-value bin comes last in both.
    """
    series = _as_series(values)
    if len(series) == 0:
        raise ValueError("Expected a non-empty reference sample, but got 0 values")
    if categorical is None:
        categorical = _is_categorical(series)

    if categorical:
        present = series.dropna().astype(str)
        categories = sorted(present.unique().tolist())
        counts = _categorical_counts(series, categories)
        histogram = {"kind": "categorical", "categories": categories}
    else:
        edges = quantile_edges(series, n_bins)
        counts = _numeric_counts(series, edges)
        histogram = {"kind": "numeric", "edges": edges.tolist()}

    histogram["fractions"] = (counts / counts.sum()).tolist()
    histogram["count"] = int(counts.sum())
    return histogram


def reference_histograms(frame: pd.DataFrame, n_bins: int = 10, columns: Iterable[str] | None = None) -> dict[str, dict]:
    """Build :func:`reference_histogram` for each column of ``frame`` (all columns by default)."""
    names = list(frame.columns if columns is None else columns)
    missing = [name for name in names if name not in frame.columns]
    if missing:
        raise ValueError(f"Expected columns {missing} in the reference frame, but it has {list(frame.columns)}")
    return {name: reference_histogram(frame[name], n_bins) for name in names}


def psi_from_fractions(reference: np.ndarray, current: np.ndarray, eps: float = DEFAULT_EPS) -> float:
    """Compute PSI from two aligned arrays of bin fractions (see the module docstring)."""
    if not eps > 0:
        raise ValueError(f"Expected `eps` > 0, but got {eps}")
    reference = np.maximum(np.asarray(reference, dtype="float64"), eps)
    current = np.maximum(np.asarray(current, dtype="float64"), eps)
    if reference.shape != current.shape:
        raise ValueError(f"Expected fractions of the same shape, but got {reference.shape} and {current.shape}")
    return float(np.sum((current - reference) * np.log(current / reference)))


def psi_from_reference(reference: Mapping, current: pd.Series | np.ndarray | Sequence, eps: float = DEFAULT_EPS) -> float:
    """Compute the PSI of ``current`` against a stored :func:`reference_histogram` dict."""
    kind = reference.get("kind")
    if kind == "numeric":
        edges = np.asarray(reference["edges"], dtype="float64")
        counts = _numeric_counts(current, edges)
    elif kind == "categorical":
        counts = _categorical_counts(current, reference["categories"])
    else:
        raise ValueError(f"Expected a reference histogram with kind 'numeric' or 'categorical', but got kind {kind!r}")
    reference_fractions = np.asarray(reference["fractions"], dtype="float64")

    if counts.sum() == 0:
        raise ValueError("Expected a non-empty current sample, but got 0 values")
    if len(reference_fractions) != len(counts):
        raise ValueError(
            f"Reference histogram is invalid: {len(reference_fractions)} fractions for {len(counts)} bins. "
            "Rebuild it with `reference_histogram`"
        )
    return psi_from_fractions(reference_fractions, counts / counts.sum(), eps)


def psi(
    reference: pd.Series | np.ndarray | Sequence,
    current: pd.Series | np.ndarray | Sequence,
    bins: int | Sequence[float] = 10,
    eps: float = DEFAULT_EPS,
    *,
    categorical: bool | None = None,
) -> float:
    """Compute the PSI of ``current`` against ``reference``.

    ``bins`` is either the number of quantile bins taken from ``reference`` or a sequence of
    cut points. Cut points ``[e0, ..., ek]`` make the bins ``(-inf, e0), [e0, e1), ...,
    [ek, inf)``, so no value falls outside. ``bins`` is ignored for categorical values.
    """
    if isinstance(bins, (int, np.integer)):
        histogram = reference_histogram(reference, bins, categorical=categorical)
        return psi_from_reference(histogram, current, eps)

    if categorical:
        raise ValueError("Expected `bins` to be an integer for categorical values, but got cut points")
    edges = np.asarray(bins, dtype="float64")
    _check_edges(edges)
    counts = _numeric_counts(reference, edges)
    if counts.sum() == 0:
        raise ValueError("Expected a non-empty reference sample, but got 0 values")
    histogram = {"kind": "numeric", "edges": edges.tolist(), "fractions": (counts / counts.sum()).tolist()}
    return psi_from_reference(histogram, current, eps)


def drift_report(
    reference: Mapping[str, Mapping],
    current: pd.DataFrame,
    threshold: float = DEFAULT_THRESHOLD,
    eps: float = DEFAULT_EPS,
) -> pd.DataFrame:
    """Compute the PSI of every feature in ``reference`` on the ``current`` frame.

    Returns one row per feature with columns ``feature``, ``kind``, ``psi``,
    ``missing_fraction`` (in ``current``) and ``drifted`` (``psi > threshold``), and logs a
    warning for each drifted feature. Raises ValueError when ``current`` lacks a feature.
    """
    absent = [name for name in reference if name not in current.columns]
    if absent:
        raise ValueError(f"Expected the current frame to contain the features {absent}, but it has {list(current.columns)}")

    rows = []
    for name, histogram in reference.items():
        value = psi_from_reference(histogram, current[name], eps)
        rows.append(
            {
                "feature": name,
                "kind": histogram["kind"],
                "psi": value,
                "missing_fraction": float(current[name].isna().mean()) if len(current) else float("nan"),
                "drifted": value > threshold,
            }
        )
        if value > threshold:
            log.warning("Feature %r drifted: PSI %.3f is above the threshold %.3f", name, value, threshold)
    return pd.DataFrame(rows, columns=["feature", "kind", "psi", "missing_fraction", "drifted"])


# --------------------------------------------------------------------------------------
# Model inputs and scores: a reference stored at export, drift measured while scoring
# --------------------------------------------------------------------------------------

INPUT_GROUPS = ("static", "event")


def _inputs(arrays) -> tuple[np.ndarray, np.ndarray]:
    """Return the static rows and the real events of a SequenceArrays or a model-input dict."""
    get = arrays.get if isinstance(arrays, Mapping) else lambda name: getattr(arrays, name)
    static = np.asarray(get("static"), dtype=np.float64)
    events = np.asarray(get("numeric"), dtype=np.float64)[np.asarray(get("mask"), dtype=bool)]
    return static, events


def model_reference(arrays, spec, probabilities: np.ndarray | None = None, n_bins: int = 10) -> dict:
    """Build the ``drift_reference`` of a model card from model inputs and, optionally, scores.

    ``arrays`` is a :class:`~seqchurn.data.sequences.SequenceArrays` (or its ``as_inputs()``
    dict) and ``spec`` its :class:`~seqchurn.data.sequences.FeatureSpec`. Static features
    are binned per row and event features over real events only (``mask`` True), both in
    the normalised units of the model input. Groups are lists in column order, so the reference stays aligned with
    the arrays after a JSON round trip.
    """
    static, events = _inputs(arrays)
    if static.shape[1] != len(spec.static_features) or events.shape[1] != len(spec.numeric_features):
        raise ValueError(
            f"Expected {len(spec.static_features)} static and {len(spec.numeric_features)} event feature columns, "
            f"but got {static.shape[1]} and {events.shape[1]}"
        )
    if len(static) == 0 or len(events) == 0:
        raise ValueError("Expected at least one row and one real event to build a drift reference, but got none")
    reference: dict = {"n_bins": n_bins}
    reference["static"] = [
        {"feature": name, "histogram": reference_histogram(static[:, j], n_bins, categorical=False)} for j, name in enumerate(spec.static_features)
    ]
    reference["event"] = [
        {"feature": name, "histogram": reference_histogram(events[:, j], n_bins, categorical=False)} for j, name in enumerate(spec.numeric_features)
    ]
    reference["score"] = None
    if probabilities is not None:
        reference["score"] = reference_histogram(np.asarray(probabilities, dtype=np.float64), n_bins, categorical=False)
    return reference


def _histogram_counts(histogram: Mapping, values: np.ndarray) -> np.ndarray:
    if histogram["kind"] == "numeric":
        return _numeric_counts(values, np.asarray(histogram["edges"], dtype="float64"))
    return _categorical_counts(values, histogram["categories"])


class ScoreDrift:
    """Accumulate the model inputs and scores of a scoring run and compute their PSI.

    Built from a card's ``drift_reference`` (see :func:`model_reference`). ``update`` may
    be called once per streamed piece: it only adds bin counts, so memory does not grow
    with the number of customers. ``compute`` returns the report and logs one warning per
    feature whose PSI is above ``threshold``.
    """

    def __init__(self, reference: Mapping, *, threshold: float = DEFAULT_THRESHOLD, eps: float = DEFAULT_EPS) -> None:
        missing = [group for group in INPUT_GROUPS if group not in reference]
        if missing:
            raise ValueError(f"Expected a drift reference with the groups {list(INPUT_GROUPS)}, but {missing} are missing")
        if not threshold > 0:
            raise ValueError(f"Expected `threshold` > 0, but got {threshold}")
        self.reference = reference
        self.threshold, self.eps = float(threshold), float(eps)
        self.n_rows = 0
        self.n_events = 0
        self._counts = {
            (group, entry["feature"]): np.zeros(len(entry["histogram"]["fractions"]), dtype=np.int64)
            for group in INPUT_GROUPS
            for entry in reference[group]
        }
        score = reference.get("score")
        self._score_counts = np.zeros(len(score["fractions"]), dtype=np.int64) if score else None

    @classmethod
    def from_card(cls, card: Mapping, threshold: float = DEFAULT_THRESHOLD) -> ScoreDrift | None:
        """Build from a model card, or return None (and log why) when the card has no reference."""
        reference = card.get("drift_reference")
        if not reference:
            log.info("the model card has no drift_reference (exported before drift checks existed); drift is not measured")
            return None
        return cls(reference, threshold=threshold)

    def update(self, arrays, probabilities: np.ndarray | None = None) -> None:
        """Add the inputs of ``arrays`` (SequenceArrays or its ``as_inputs()`` dict) and their churn probabilities."""
        static, events = _inputs(arrays)
        for group, values in (("static", static), ("event", events)):
            entries = self.reference[group]
            if values.shape[1] != len(entries):
                raise ValueError(f"Expected {len(entries)} {group} feature columns as in the drift reference, but got {values.shape[1]}")
            for j, entry in enumerate(entries):
                self._counts[(group, entry["feature"])] += _histogram_counts(entry["histogram"], values[:, j])
        self.n_rows += len(static)
        self.n_events += len(events)
        if probabilities is not None and self._score_counts is not None:
            self._score_counts += _histogram_counts(self.reference["score"], np.asarray(probabilities, dtype=np.float64))

    def _row(self, group: str, feature: str, fractions: Sequence[float], counts: np.ndarray) -> dict:
        total = int(counts.sum())
        value = psi_from_fractions(np.asarray(fractions), counts / total, self.eps) if total else None
        drifted = value is not None and value > self.threshold
        if drifted:
            log.warning("%s feature %r drifted: PSI %.3f is above the threshold %.3f", group, feature, value, self.threshold)
        return {"group": group, "feature": feature, "psi": value, "drifted": drifted, "count": total}

    def compute(self) -> dict:
        """Return ``{"available", "threshold", "n_rows", "n_events", "features", "drifted", "warnings"}``.

        ``features`` has one row per feature (``group`` static, event or score, ``feature``,
        ``psi``, ``drifted``, ``count``). ``psi`` is None for a group that saw no values.
        """
        rows = [
            self._row(group, entry["feature"], entry["histogram"]["fractions"], self._counts[(group, entry["feature"])])
            for group in INPUT_GROUPS
            for entry in self.reference[group]
        ]
        if self._score_counts is not None:
            rows.append(self._row("score", "churn_probability", self.reference["score"]["fractions"], self._score_counts))
        drifted = [f"{row['group']}/{row['feature']}" for row in rows if row["drifted"]]
        warnings = [f"{row['group']}/{row['feature']}: PSI {row['psi']:.3f} > {self.threshold:g}" for row in rows if row["drifted"]]
        return {
            "available": True,
            "threshold": self.threshold,
            "n_rows": self.n_rows,
            "n_events": self.n_events,
            "features": rows,
            "drifted": drifted,
            "warnings": warnings,
        }


def score_drift(card: Mapping, arrays, probabilities: np.ndarray | None, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """Compute the PSI of scored inputs and scores against a model card's ``drift_reference``.

    Returns the :meth:`ScoreDrift.compute` report, or ``{"available": False, ...}`` for a
    card exported without a reference.
    """
    tracker = ScoreDrift.from_card(card, threshold)
    if tracker is None:
        return {"available": False, "reason": "the model card has no drift_reference; re-export the model to measure drift"}
    tracker.update(arrays, probabilities)
    return tracker.compute()
