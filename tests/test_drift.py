import json
import logging
import math

import numpy as np
import pandas as pd
import pytest

from seqchurn.drift import (
    drift_report,
    psi,
    psi_from_reference,
    quantile_edges,
    reference_histogram,
    reference_histograms,
)

EPS = 1e-4


def reference_psi_numeric(reference, current, cut_points, eps=EPS):
    """Plain-Python PSI: bins (-inf, c0), [c0, c1), ..., [ck, inf), plus a bin for NaN."""

    def fractions(values):
        counts = [0] * (len(cut_points) + 2)
        for value in values:
            if value is None or math.isnan(value):
                counts[-1] += 1
                continue
            index = 0
            while index < len(cut_points) and value >= cut_points[index]:
                index += 1
            counts[index] += 1
        return [count / len(values) for count in counts]

    total = 0.0
    for r, c in zip(fractions(list(reference)), fractions(list(current))):
        r, c = max(r, eps), max(c, eps)
        total += (c - r) * math.log(c / r)
    return total


def reference_psi_categorical(reference, current, eps=EPS):
    """Plain-Python PSI over reference categories, one bin for unseen ones and one for missing."""
    known = sorted({str(v) for v in reference if v is not None and v == v})

    def fractions(values):
        counts = dict.fromkeys([*known, "<unseen>", "<missing>"], 0)
        for value in values:
            if value is None or value != value:
                counts["<missing>"] += 1
            elif str(value) in known:
                counts[str(value)] += 1
            else:
                counts["<unseen>"] += 1
        return [count / len(values) for count in counts.values()]

    total = 0.0
    for r, c in zip(fractions(reference), fractions(current)):
        r, c = max(r, eps), max(c, eps)
        total += (c - r) * math.log(c / r)
    return total


def sample(seed, n, loc=0.0, nan_fraction=0.0):
    rng = np.random.default_rng(seed)
    values = rng.normal(loc, 1.0, n)
    values[rng.random(n) < nan_fraction] = np.nan
    return values


@pytest.mark.parametrize(
    ("seed", "shift", "nan_ref", "nan_cur"),
    [(0, 0.0, 0.0, 0.0), (1, 0.3, 0.0, 0.1), (2, 1.0, 0.05, 0.0), (3, -0.5, 0.2, 0.2)],
)
def test_psi_matches_reference_quantile_bins(seed, shift, nan_ref, nan_cur):
    reference = sample(seed, 2000, nan_fraction=nan_ref)
    current = sample(seed + 100, 1500, loc=shift, nan_fraction=nan_cur)
    finite = reference[np.isfinite(reference)]
    cut_points = sorted(set(np.percentile(finite, [10, 20, 30, 40, 50, 60, 70, 80, 90]).tolist()))

    expected = reference_psi_numeric(reference, current, cut_points)

    assert psi(reference, current, bins=10) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_psi_matches_reference_given_edges():
    reference = sample(4, 800)
    current = sample(5, 600, loc=0.4)
    cut_points = [-1.0, 0.0, 0.5, 3.0]

    expected = reference_psi_numeric(reference, current, cut_points)

    assert psi(reference, current, bins=cut_points) == pytest.approx(expected, rel=1e-9)


def test_psi_identical_is_zero():
    reference = sample(6, 3000, nan_fraction=0.1)

    assert psi(reference, reference) == pytest.approx(0.0, abs=1e-12)
    assert psi(reference, sample(7, 3000, nan_fraction=0.1)) < 0.02


def test_psi_shift_exceeds_threshold():
    reference = sample(8, 3000)

    assert psi(reference, sample(9, 3000, loc=0.75)) > 0.2


def test_psi_empty_bins_use_eps():
    reference = sample(10, 1000)
    current = np.full(500, reference.min() - 10.0)  # everything in the lowest bin
    cut_points = quantile_edges(reference, 10).tolist()

    value = psi(reference, current)

    assert math.isfinite(value)
    assert value == pytest.approx(reference_psi_numeric(reference, current, cut_points), rel=1e-9)
    assert psi(reference, current, eps=1e-6) > value


def test_psi_counts_missing_as_bin():
    reference = sample(11, 2000)
    current = reference.copy()
    current[::2] = np.nan  # same non-missing values, but half of them now missing

    value = psi(reference, current)

    assert value > 0.2
    assert value == pytest.approx(reference_psi_numeric(reference, current, quantile_edges(reference).tolist()), rel=1e-9)


def test_psi_values_outside_edges_counted():
    reference = np.array([1.0, 2.0, 3.0, 4.0])
    current = np.array([-100.0, 100.0, np.inf, -np.inf])

    histogram = reference_histogram(reference, n_bins=2)
    edges = histogram["edges"]

    assert edges == [2.5]
    assert psi_from_reference(histogram, current) == pytest.approx(reference_psi_numeric(reference, current, edges), rel=1e-9)


def test_reference_histogram_fractions_sum_to_one():
    values = sample(12, 500, nan_fraction=0.2)

    histogram = reference_histogram(values, n_bins=5)

    assert histogram["kind"] == "numeric"
    assert len(histogram["fractions"]) == len(histogram["edges"]) + 2
    assert sum(histogram["fractions"]) == pytest.approx(1.0)
    assert histogram["fractions"][-1] == pytest.approx(np.isnan(values).mean())
    assert histogram["count"] == 500


def test_reference_histogram_ties_collapse():
    values = np.concatenate([np.zeros(950), np.arange(1, 51, dtype=float)])

    edges = reference_histogram(values, n_bins=10)["edges"]

    assert edges == sorted(set(edges))
    assert edges[0] == 0.0
    assert len(edges) == 1


def test_reference_histogram_json_round_trip():
    reference = pd.DataFrame({"x": sample(13, 400, nan_fraction=0.1), "channel": ["web", "app", None, "web"] * 100})
    current = pd.DataFrame({"x": sample(14, 300, loc=0.2), "channel": ["web", "app", "shop", "app"] * 75})
    histograms = reference_histograms(reference)

    restored = json.loads(json.dumps(histograms, allow_nan=False))

    for name in ("x", "channel"):
        assert psi_from_reference(restored[name], current[name]) == psi_from_reference(histograms[name], current[name])


def test_psi_categorical_matches_reference():
    reference = ["web", "app", "app", None, "shop", "web", "web"] * 30
    current = ["web", "app", "kiosk", None, None, "web"] * 20

    value = psi(pd.Series(reference, dtype="str"), pd.Series(current, dtype="str"))

    assert value == pytest.approx(reference_psi_categorical(reference, current), rel=1e-9)


def test_psi_categorical_forced_for_integer_codes():
    reference = [1, 2, 2, 3] * 50
    current = [1, 2, 4, 4] * 50

    value = psi(reference, current, categorical=True)

    assert value == pytest.approx(reference_psi_categorical(reference, current), rel=1e-9)


def test_psi_categorical_dtype_and_bool():
    reference = pd.Series(pd.Categorical(["a", "b", "b", "c"] * 25))
    flags = pd.Series([True, False, False, False] * 25)

    histogram = reference_histogram(reference)

    assert histogram["categories"] == ["a", "b", "c"]
    assert histogram["fractions"] == [0.25, 0.5, 0.25, 0.0, 0.0]
    assert reference_histogram(flags)["kind"] == "categorical"
    assert psi(reference, reference) == pytest.approx(0.0, abs=1e-12)


def test_psi_rejects_bad_input():
    with pytest.raises(ValueError, match="strictly increasing"):
        psi([1.0, 2.0], [1.0], bins=[1.0, 1.0])
    with pytest.raises(ValueError, match="n_bins"):
        reference_histogram([1.0, 2.0], n_bins=1)
    with pytest.raises(ValueError, match="non-empty current"):
        psi([1.0, 2.0], [])
    with pytest.raises(ValueError, match="non-empty reference"):
        reference_histogram([])
    with pytest.raises(ValueError, match="kind"):
        psi_from_reference({"kind": "text"}, [1.0])
    with pytest.raises(ValueError, match="Expected numeric values"):
        psi_from_reference(reference_histogram([1.0, 2.0]), ["a", "b"])


def test_drift_report_flags_shifted_feature(caplog):
    reference = pd.DataFrame({"stable": sample(15, 2000), "shifted": sample(16, 2000), "channel": ["a", "b"] * 1000})
    current = pd.DataFrame(
        {"stable": sample(17, 1000), "shifted": sample(18, 1000, loc=1.0), "channel": ["a", "b"] * 500, "extra": 1.0}
    )

    with caplog.at_level(logging.WARNING, logger="seqchurn.drift"):
        report = drift_report(reference_histograms(reference), current, threshold=0.2)

    assert report["feature"].tolist() == ["stable", "shifted", "channel"]
    assert report["kind"].tolist() == ["numeric", "numeric", "categorical"]
    assert report["drifted"].tolist() == [False, True, False]
    assert report.loc[1, "psi"] == pytest.approx(psi(reference["shifted"], current["shifted"]))
    assert "'shifted' drifted" in caplog.text
    assert "'stable'" not in caplog.text


def test_drift_report_missing_feature():
    histograms = reference_histograms(pd.DataFrame({"x": [1.0, 2.0, 3.0]}))

    with pytest.raises(ValueError, match=r"features \['x'\]"):
        drift_report(histograms, pd.DataFrame({"y": [1.0]}))
