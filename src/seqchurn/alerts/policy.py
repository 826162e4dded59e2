"""Alert policies: which scored customers get an alert, and in which risk tier.

A policy combines up to three rules. ``threshold`` and ``expected_value`` are filters, and
a customer must pass every filter that is configured. ``budget`` then caps how many of the
remaining customers are alerted, taking the best-ranked first. So "threshold AND budget"
alerts at most ``top_k`` customers, all at or above the threshold.

The functions here are pure and vectorised: they take the scores frame that the batch
scorer writes and return the alerted subset, with ``tier`` and ``policy_reason`` added.
When nothing passes they return an empty frame and the caller decides how loudly to log it.

Scores frame columns:

=================  ======================================================================
customer_id        str, unique
churn_probability  float in [0, 1]
rank               int, 1 = highest risk
customer_value     optional: historical spend, used by ``expected_value``
clv                optional: customer lifetime value, preferred by ``expected_value``
reasons            optional: list of up to ``MAX_REASONS`` strings per customer
p_churn_<h>d       optional: churn probability within ``h`` days
=================  ======================================================================
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from seqchurn.data.schema import InputError

log = logging.getLogger(__name__)

PROBABILITY = "churn_probability"
REQUIRED_COLUMNS: tuple[str, ...] = ("customer_id", PROBABILITY, "rank")
VALUE_COLUMNS: tuple[str, ...] = ("clv", "customer_value")
"""Columns that ``expected_value`` reads the customer value from, in order of preference."""
MAX_REASONS = 3
RANK_BY = ("probability", "expected_value")


@dataclass(frozen=True)
class RiskTiers:
    """Probability cut points between risk tiers, lowest tier first.

    A probability equal to a cut point belongs to the higher tier, so with the defaults
    ``p < 0.4`` is low, ``0.4 <= p < 0.7`` is medium and ``p >= 0.7`` is high.
    """

    cuts: tuple[float, ...] = (0.4, 0.7)
    names: tuple[str, ...] = ("low", "medium", "high")

    def __post_init__(self) -> None:
        object.__setattr__(self, "cuts", tuple(float(c) for c in self.cuts))
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        for i, cut in enumerate(self.cuts):
            if not 0.0 <= cut <= 1.0:
                raise ValueError(f"Expected risk tier cut points in [0, 1], but cut {cut!r} at position {i} is outside")
            if i > 0 and not cut > self.cuts[i - 1]:
                raise ValueError(
                    f"Expected strictly increasing risk tier cut points, but cut {cut!r} at position {i} "
                    f"is not greater than {self.cuts[i - 1]!r} before it"
                )
        if len(self.names) != len(self.cuts) + 1:
            raise ValueError(
                f"Expected {len(self.cuts) + 1} tier names for {len(self.cuts)} cut points, "
                f"but got {len(self.names)}: {list(self.names)}"
            )
        if len(set(self.names)) != len(self.names) or "" in self.names:
            raise ValueError(f"Expected distinct, non-empty tier names, but got {list(self.names)}")

    def assign(self, probability: np.ndarray | pd.Series) -> np.ndarray:
        """Return the tier name of each probability as an object array."""
        index = np.searchsorted(np.asarray(self.cuts), np.asarray(probability, dtype="float64"), side="right")
        return np.asarray(self.names, dtype=object)[index]


@dataclass(frozen=True)
class ThresholdRule:
    """Alert where ``churn_probability >= threshold``.

    The threshold is the model's own (chosen at training time) unless ``override`` is set.
    """

    override: float | None = None

    def __post_init__(self) -> None:
        if self.override is not None and not 0.0 <= float(self.override) <= 1.0:
            raise ValueError(f"Expected `threshold.override` in [0, 1], but got {self.override!r}")


@dataclass(frozen=True)
class BudgetRule:
    """Alert at most ``top_k`` customers, or at most ``top_k_percent`` percent of those scored.

    The percentage is of all scored customers and is rounded down, so a budget never
    exceeds it. ``rank_by`` orders the candidates: by the scorer's ``rank`` column
    ("probability") or by descending expected value ("expected_value", which needs the
    ``expected_value`` rule for its save rate and contact cost).
    """

    top_k: int | None = None
    top_k_percent: float | None = None
    rank_by: str = "probability"

    def __post_init__(self) -> None:
        if (self.top_k is None) == (self.top_k_percent is None):
            raise ValueError(
                f"Expected exactly one of `budget.top_k` and `budget.top_k_percent`, but got "
                f"top_k={self.top_k!r} and top_k_percent={self.top_k_percent!r}"
            )
        if self.top_k is not None and (isinstance(self.top_k, bool) or int(self.top_k) != self.top_k or self.top_k < 0):
            raise ValueError(f"Expected `budget.top_k` to be a non-negative integer, but got {self.top_k!r}")
        if self.top_k_percent is not None and not 0.0 < float(self.top_k_percent) <= 100.0:
            raise ValueError(f"Expected `budget.top_k_percent` in (0, 100], but got {self.top_k_percent!r}")
        if self.rank_by not in RANK_BY:
            raise ValueError(f"Expected `budget.rank_by` to be one of {list(RANK_BY)}, but got {self.rank_by!r}")

    def size(self, n_scored: int) -> int:
        """Return the maximum number of alerts for ``n_scored`` scored customers."""
        if self.top_k is not None:
            return int(self.top_k)
        # Rounding before the floor keeps 29 % of 100 at 29 although 100 * 0.29 < 29 in floats.
        return int(np.floor(round(n_scored * float(self.top_k_percent) / 100.0, 9)))


@dataclass(frozen=True)
class ExpectedValueRule:
    """Alert where ``value * churn_probability * save_rate - contact_cost > 0``.

    ``save_rate`` is the expected share of contacted churners that the contact keeps, and
    ``contact_cost`` is in the currency of the value column. ``value_column`` names the
    column with the customer value. When unset, ``clv`` is used if present, else
    ``customer_value``.
    """

    save_rate: float
    contact_cost: float = 0.0
    value_column: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 < float(self.save_rate) <= 1.0:
            raise ValueError(f"Expected `expected_value.save_rate` in (0, 1], but got {self.save_rate!r}")
        if not float(self.contact_cost) >= 0.0:
            raise ValueError(f"Expected `expected_value.contact_cost` >= 0, but got {self.contact_cost!r}")

    def pick_value_column(self, columns: pd.Index) -> str:
        """Return the name of the value column to use, raising ``ValueError`` if it is missing."""
        if self.value_column is not None:
            if self.value_column not in columns:
                raise ValueError(
                    f"Expected value column {self.value_column!r} (from `expected_value.value_column`) in the scores, "
                    f"but the scores have only {list(columns)}"
                )
            return self.value_column
        for name in VALUE_COLUMNS:
            if name in columns:
                return name
        raise ValueError(
            f"The expected_value rule needs a customer value column, one of {list(VALUE_COLUMNS)}, but the scores "
            f"have only {list(columns)}. Score with a value column or set `expected_value.value_column`"
        )


@dataclass(frozen=True)
class AlertPolicy:
    """The rules that decide who is alerted, plus the risk tiers. A rule set to None is off."""

    threshold: ThresholdRule | None = field(default_factory=ThresholdRule)
    budget: BudgetRule | None = None
    expected_value: ExpectedValueRule | None = None
    tiers: RiskTiers = field(default_factory=RiskTiers)

    def __post_init__(self) -> None:
        if self.threshold is None and self.budget is None and self.expected_value is None:
            raise ValueError("Expected at least one alert rule (threshold, budget or expected_value), but all are off")
        if self.budget is not None and self.budget.rank_by == "expected_value" and self.expected_value is None:
            raise ValueError(
                "`budget.rank_by: expected_value` needs the expected_value rule for its save rate and contact cost; "
                "configure `expected_value` or rank by probability"
            )

    @classmethod
    def from_dict(cls, config: Mapping) -> AlertPolicy:
        """Build a policy from a plain mapping, such as a Hydra config section.

        Keys are ``threshold``, ``budget``, ``expected_value`` and ``tiers``, each a mapping
        of the matching dataclass's fields. A missing key keeps the default (threshold on,
        the others off, default tiers), and ``null`` turns a rule off.
        """
        sections = {"threshold": ThresholdRule, "budget": BudgetRule, "expected_value": ExpectedValueRule, "tiers": RiskTiers}
        unknown = sorted(set(config) - set(sections))
        if unknown:
            raise ValueError(f"Unknown alert policy keys {unknown}; expected some of {list(sections)}")
        kwargs = {}
        for key, section_type in sections.items():
            if key not in config:
                continue
            value = config[key]
            if value is None:
                if key == "tiers":
                    raise ValueError("Expected `tiers` to be a mapping with `cuts` and `names`, but got null")
                kwargs[key] = None
                continue
            if not isinstance(value, Mapping):
                raise ValueError(f"Expected `{key}` to be a mapping or null, but got {value!r}")
            allowed = {f.name for f in dataclasses.fields(section_type)}
            bad = sorted(set(value) - allowed)
            if bad:
                raise ValueError(f"Unknown keys {bad} in alert policy section `{key}`; expected some of {sorted(allowed)}")
            kwargs[key] = section_type(**dict(value))
        return cls(**kwargs)

    def to_dict(self) -> dict:
        """Return the policy as plain JSON-ready data, as stored with each run."""
        return dataclasses.asdict(self)


def validate_scores(scores: pd.DataFrame) -> None:
    """Raise ``InputError`` unless ``scores`` follows the scores frame contract.

    The error names the column, the first offending row (1-based position in the frame,
    so the data row of the file the frame was read from) and its value.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in scores.columns]
    if missing:
        raise InputError(
            f"scores frame is missing columns {missing} (it has {list(scores.columns)})",
            hint="Pass the frame the batch scorer writes",
        )
    probability = pd.to_numeric(scores[PROBABILITY], errors="coerce").to_numpy(dtype="float64")
    bad = ~((probability >= 0.0) & (probability <= 1.0))  # NaN fails both comparisons
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"churn probability must be a number in [0, 1]; {int(bad.sum())} rows are not",
            row=row + 1,
            column=PROBABILITY,
            value=scores[PROBABILITY].iloc[row],
        )
    rank = pd.to_numeric(scores["rank"], errors="coerce").to_numpy(dtype="float64")
    bad = ~(rank >= 1) | (rank != np.floor(rank))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError("rank must be an integer >= 1 (1 = highest risk)", row=row + 1, column="rank", value=scores["rank"].iloc[row])
    customer = scores["customer_id"]
    if customer.isna().any():
        row = int(np.flatnonzero(customer.isna().to_numpy())[0])
        raise InputError("customer_id is missing", row=row + 1, column="customer_id")
    duplicated = customer.duplicated(keep="first").to_numpy()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated)[0])
        raise InputError(
            f"customer_id must be unique in one scoring run; {int(duplicated.sum())} rows repeat an earlier id",
            row=row + 1,
            column="customer_id",
            value=customer.iloc[row],
        )


def normalize_reasons(reasons: pd.Series | None, n_rows: int) -> list[list[str]]:
    """Return the reason codes of each row as lists of at most ``MAX_REASONS`` strings.

    A missing column or a null entry becomes an empty list. Anything that is not a list of
    strings, or a list longer than ``MAX_REASONS``, raises ``InputError`` naming the row
    (1-based).
    """
    if reasons is None:
        return [[] for _ in range(n_rows)]
    try:
        array = pa.array(reasons.to_numpy(dtype=object), type=pa.list_(pa.string()), from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise InputError(
            f"reasons must be lists of strings ({error})", column="reasons", hint="Pass one list of reason codes per customer"
        ) from error
    lengths = pc.fill_null(pc.list_value_length(array), 0).to_numpy(zero_copy_only=False)
    too_long = lengths > MAX_REASONS
    if too_long.any():
        row = int(np.flatnonzero(too_long)[0])
        raise InputError(f"at most {MAX_REASONS} reasons per customer", row=row + 1, column="reasons", value=reasons.iloc[row])
    array = pc.if_else(pc.is_null(array), pa.scalar([], type=pa.list_(pa.string())), array)
    return array.to_pylist()


def _format_number(values: np.ndarray, decimals: int) -> np.ndarray:
    return np.char.mod(f"%.{decimals}f", np.asarray(values, dtype="float64"))


def select_alerts(scores: pd.DataFrame, policy: AlertPolicy, *, model_threshold: float | None = None) -> pd.DataFrame:
    """Apply ``policy`` to a scores frame and return the alerted customers, best rank first.

    The result keeps every input column and adds ``tier``, ``policy_reason`` and, when an
    expected value was computed, ``expected_value``. ``model_threshold`` is the model's
    decision threshold, needed by the threshold rule unless it has an override. Customers
    whose value is missing cannot pass the expected_value rule and are counted in a warning.
    """
    validate_scores(scores)
    n_scored = len(scores)
    probability = scores[PROBABILITY].to_numpy(dtype="float64")
    rank = scores["rank"].to_numpy(dtype="float64")
    keep = np.ones(n_scored, dtype=bool)
    reason_parts: list[np.ndarray] = []

    if policy.threshold is not None:
        threshold = policy.threshold.override if policy.threshold.override is not None else model_threshold
        if threshold is None:
            raise ValueError("The threshold rule needs the model threshold or `threshold.override`, but both are missing")
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"Expected the model threshold in [0, 1], but got {threshold!r}")
        passed = probability >= float(threshold)
        keep &= passed
        log.info("threshold rule: %d of %d customers have churn probability >= %.4f", int(passed.sum()), n_scored, threshold)
        reason_parts.append(np.char.add(np.char.add("p=", _format_number(probability, 3)), f" >= threshold {float(threshold):.3f}"))

    expected_value = None
    if policy.expected_value is not None:
        rule = policy.expected_value
        value_column = rule.pick_value_column(scores.columns)
        value = pd.to_numeric(scores[value_column], errors="coerce").to_numpy(dtype="float64")
        expected_value = value * probability * float(rule.save_rate) - float(rule.contact_cost)
        n_missing = int(np.isnan(value).sum())
        if n_missing:
            log.warning(
                "expected_value rule: %d of %d customers have no usable %r and cannot be alerted by this rule",
                n_missing,
                n_scored,
                value_column,
            )
        passed = expected_value > 0  # NaN compares False
        keep &= passed
        log.info("expected_value rule: %d of %d customers have a positive expected value", int(passed.sum()), n_scored)
        reason_parts.append(np.char.add("expected value ", _format_number(expected_value, 2)))

    if policy.budget is not None:
        budget = policy.budget.size(n_scored)
        candidates = np.flatnonzero(keep)
        if policy.budget.rank_by == "expected_value":
            # lexsort sorts by the last key first: descending expected value, then rank.
            order = np.lexsort((rank[candidates], -expected_value[candidates]))
        else:
            order = np.lexsort((candidates, rank[candidates]))
        chosen = candidates[order[:budget]]
        log.info("budget rule: %d of %d remaining customers fit the budget of %d", len(chosen), len(candidates), budget)
        budget_position = np.zeros(n_scored, dtype="int64")
        budget_position[chosen] = np.arange(1, len(chosen) + 1)
        keep = budget_position > 0
        reason_parts.append(np.char.add("budget position ", budget_position.astype(str)))
        reason_parts[-1] = np.char.add(reason_parts[-1], f" of {budget}")

    alerts = scores.loc[keep].copy()
    alerts["tier"] = policy.tiers.assign(probability[keep])
    if expected_value is not None:
        alerts["expected_value"] = expected_value[keep]
    policy_reason = reason_parts[0][keep]
    for part in reason_parts[1:]:
        policy_reason = np.char.add(np.char.add(policy_reason, "; "), part[keep])
    alerts["policy_reason"] = policy_reason.astype(object)
    return alerts.sort_values("rank", kind="stable").reset_index(drop=True)
