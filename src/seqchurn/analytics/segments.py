"""Customer segments: K-Means on recency, frequency and monetary value (RFM) at a cutoff.

Features come from ``clv.rfm_summary``: recency = ``days_since_last`` (days from the last
purchase day to the cutoff), frequency = ``purchase_days``, monetary = ``net_spend``. A
feature whose sample skewness exceeds ``skew_threshold`` is transformed with the signed
``log1p`` (``sign(v) * log(1 + |v|)``, so net refunds stay valid). All three features are
then standardised. The number of clusters ``k`` is the one with the highest silhouette
score in ``k_range``; a tie goes to the smaller ``k``.

Each segment is named from its centroid, mapped back to the original units, against medians
over all customers:

- recency: "recent" when the centroid's days since last purchase are at or below the median,
  else "lapsing";
- monetary: "high-spend" when the centroid's net spend is above the median, else "low-spend";
- frequency: "one-timers" when the centroid has fewer than 1.5 purchase days, "frequent
  buyers" when it is above the median of the customers with 2 or more purchase days, else
  "repeat buyers". The median of repeat customers is used because one-timers are often more
  than half of all customers, which would make every repeat segment "frequent".

The name is "<recency> <monetary> <frequency>", for example "lapsing low-spend
one-timers". Segments with the same name get " (2)", " (3)" in order of decreasing size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import StandardScaler

log = logging.getLogger(__name__)

RFM_FEATURES: dict[str, str] = {
    "recency_days": "days_since_last",
    "frequency": "purchase_days",
    "monetary": "net_spend",
}
"""Segment feature name -> column of an ``rfm_summary`` frame."""

ONE_TIMER_MAX_FREQUENCY = 1.5
"""Centroids with fewer purchase days than this are named "one-timers"."""


@dataclass(frozen=True)
class Segmentation:
    """Result of ``segment_customers``.

    ``assignments`` has ``customer_id``, ``segment`` (int, 0 = largest) and
    ``segment_name``. ``profiles`` has one row per segment with its size and centroid in
    original units. ``silhouette`` maps each tried ``k`` to its score. ``medians`` are the
    reference values the names compare centroids with.
    """

    assignments: pd.DataFrame
    profiles: pd.DataFrame
    k: int
    silhouette: dict[int, float]
    log_features: tuple[str, ...]
    medians: dict[str, float]


def _signed_log1p(values: np.ndarray) -> np.ndarray:
    return np.sign(values) * np.log1p(np.abs(values))


def _signed_expm1(values: np.ndarray) -> np.ndarray:
    return np.sign(values) * np.expm1(np.abs(values))


def rfm_features(summary: pd.DataFrame) -> pd.DataFrame:
    """Select the three RFM features from an ``rfm_summary`` frame, indexed by ``customer_id``."""
    missing = [c for c in RFM_FEATURES.values() if c not in summary.columns]
    if missing:
        raise ValueError(f"Expected an rfm_summary frame, but columns {missing} are missing")
    features = summary[list(RFM_FEATURES.values())].astype(float)
    features.columns = list(RFM_FEATURES)
    bad = ~np.isfinite(features.to_numpy()).all(axis=1)
    if bad.any():
        first = features.index[np.argmax(bad)]
        raise ValueError(f"Expected finite RFM features, but {int(bad.sum())} customers have missing values (first: {first!r})")
    return features


def segment_customers(
    summary: pd.DataFrame,
    *,
    k_range: tuple[int, int] = (3, 6),
    seed: int = 0,
    skew_threshold: float = 1.0,
    silhouette_sample: int = 5_000,
    n_init: int = 4,
) -> Segmentation:
    """Cluster customers on standardised RFM features and name each cluster by its profile.

    ``k_range`` is inclusive. Each K-Means fit keeps the best of ``n_init`` seeded
    initialisations. Silhouette scores use a seeded sample of at most ``silhouette_sample``
    customers, because the exact score is quadratic in the number of customers. Raises
    ``ValueError`` when there are too few distinct customers for ``k_range``.
    """
    k_min, k_max = k_range
    if not 2 <= k_min <= k_max:
        raise ValueError(f"Expected `k_range` (k_min, k_max) with 2 <= k_min <= k_max, but got {k_range}")
    features = rfm_features(summary)
    n_distinct = len(features.drop_duplicates())
    if n_distinct <= k_min:
        raise ValueError(f"Expected more than {k_min} customers with distinct RFM features to form {k_min} segments, but got {n_distinct}")
    k_max = min(k_max, n_distinct - 1)

    raw = features.to_numpy()
    skewness = stats.skew(raw, axis=0)
    log_mask = skewness > skew_threshold
    transformed = np.where(log_mask, _signed_log1p(raw), raw)
    scaler = StandardScaler().fit(transformed)
    scaled = scaler.transform(transformed)

    scores: dict[int, float] = {}
    models: dict[int, KMeans] = {}
    sample = min(silhouette_sample, len(scaled))
    for k in range(k_min, k_max + 1):
        model = KMeans(n_clusters=k, random_state=seed, n_init=n_init).fit(scaled)
        labels = model.labels_
        if len(np.unique(labels)) < 2:
            continue
        scores[k] = float(silhouette_score(scaled, labels, sample_size=sample, random_state=seed))
        models[k] = model
    if not scores:
        raise ValueError(f"K-Means found fewer than 2 clusters for every k in {k_range}; the RFM features barely vary")
    best_k = max(scores, key=lambda k: (scores[k], -k))
    model = models[best_k]
    log.info("segments: k=%d chosen by silhouette %s", best_k, {k: round(v, 3) for k, v in scores.items()})

    centroids = scaler.inverse_transform(model.cluster_centers_)
    centroids = np.where(log_mask, _signed_expm1(centroids), centroids)
    medians = {name: float(np.median(raw[:, i])) for i, name in enumerate(RFM_FEATURES)}
    frequency = features["frequency"].to_numpy()
    repeat = frequency[frequency >= 2]
    medians["repeat_frequency"] = float(np.median(repeat)) if repeat.size else float("inf")
    sizes = np.bincount(model.labels_, minlength=best_k)

    # Renumber clusters by decreasing size (ties by cluster id) so ids are stable and readable.
    order = np.lexsort((np.arange(best_k), -sizes))
    new_id = np.empty(best_k, dtype=np.int64)
    new_id[order] = np.arange(best_k)
    profiles = pd.DataFrame(centroids[order], columns=list(RFM_FEATURES))
    profiles.insert(0, "customers", sizes[order].astype(np.int64))
    profiles.insert(0, "segment", np.arange(best_k, dtype=np.int64))
    profiles.insert(1, "segment_name", _unique_names([name_segment(row, medians) for row in profiles.to_dict("records")]))

    segment = new_id[model.labels_]
    assignments = pd.DataFrame(
        {
            "customer_id": features.index.to_numpy(),
            "segment": segment,
            "segment_name": profiles["segment_name"].to_numpy()[segment],
        }
    )
    log_features = tuple(name for name, use in zip(RFM_FEATURES, log_mask) if use)
    return Segmentation(assignments, profiles, best_k, scores, log_features, medians)


def name_segment(centroid: dict[str, float], medians: dict[str, float]) -> str:
    """Name a segment from its centroid by the rules in the module docstring.

    ``medians`` has the keys of ``RFM_FEATURES`` and ``repeat_frequency``.
    """
    recency = "recent" if centroid["recency_days"] <= medians["recency_days"] else "lapsing"
    monetary = "high-spend" if centroid["monetary"] > medians["monetary"] else "low-spend"
    if centroid["frequency"] < ONE_TIMER_MAX_FREQUENCY:
        frequency = "one-timers"
    elif centroid["frequency"] > medians["repeat_frequency"]:
        frequency = "frequent buyers"
    else:
        frequency = "repeat buyers"
    return f"{recency} {monetary} {frequency}"


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out


def segment_summary(segmentation: Segmentation, customers: pd.DataFrame | None = None) -> pd.DataFrame:
    """Summarise each segment: size, share, centroid, and outcomes when given.

    ``customers`` may have ``customer_id`` with any of ``label`` (1 = churned),
    ``churn_probability`` and ``predicted_clv``. The summary then adds ``churn_rate``,
    ``mean_churn_probability`` and ``mean_predicted_clv`` over the segment's customers that
    appear in ``customers``; ``matched_customers`` counts them.
    """
    summary = segmentation.profiles.copy()
    total = int(summary["customers"].sum())
    summary.insert(3, "share", summary["customers"] / total)
    if customers is None:
        return summary
    if "customer_id" not in customers.columns:
        raise ValueError(f"Expected `customers` to have a `customer_id` column, but got {list(customers.columns)}")
    duplicated = customers["customer_id"].duplicated()
    if duplicated.any():
        raise ValueError(
            f"Expected one row per customer in `customers`, but {int(duplicated.sum())} ids repeat "
            f"(first: {customers.loc[duplicated, 'customer_id'].iloc[0]!r})"
        )

    joined = segmentation.assignments.merge(customers, on="customer_id", how="inner")
    unmatched = len(customers) - len(joined)
    if unmatched:
        log.info("segment summary: %d customers in `customers` have no segment and are left out", unmatched)
    grouped = joined.groupby("segment")
    summary["matched_customers"] = grouped.size().reindex(summary["segment"]).fillna(0).astype(np.int64).to_numpy()
    outcomes = {"label": "churn_rate", "churn_probability": "mean_churn_probability", "predicted_clv": "mean_predicted_clv"}
    for column, name in outcomes.items():
        if column in joined.columns:
            summary[name] = grouped[column].mean().reindex(summary["segment"]).to_numpy(dtype=float)
    return summary
