"""Reason codes for churn alerts: which parts of a customer's own history drive the score.

Candidate signals are computed from the customer's canonical events before ``as_of`` and
described in plain words, for example "no purchase for 74 days, 3.1x this customer's usual
gap of 24 days". A signal is reported only when the model agrees with it: the model inputs
are rebuilt with that signal neutralised (occlusion) and the ONNX model is run again. The
reported reasons are ordered by how much the churn probability drops, and a signal whose
neutralisation lowers the probability by less than ``min_effect`` is left out.

=============  ==========================================  ==============================================
signal         candidate when                              neutralised (on the model inputs) by
=============  ==========================================  ==============================================
recency        days since the last activity event          moving the recency features and every event's
               >= ``overdue_ratio`` x a reference gap:     age forward, so that the last activity is one
               the customer's own mean gap where it is     reference gap before as_of; tenure and the
               exceeded so, else the training mean of      window totals stay as they are
               days since the last activity
spend_trend    spend in the last 90 days                   setting the 90-day spend to the spend of the
               <= (1 - ``spend_drop``) x the spend in the  90 days before (the 365-day spend moves by the
               90 days before                              same amount) and scaling the amounts of the
                                                           last 90 days' purchases by the same factor
returns        at least one return among the last          dropping every return event from the sequence,
               ``recent_transactions`` purchases and       setting the return share to 0 and the event
               returns                                     count to the count without returns
frequency      activity events in the last 90 days         setting the 90-day activity count to the
               <= ``frequency_drop`` x the customer's      usual count
               usual count per 90 days (needs 180 days
               of history)
low_spend      spend in the last 365 days                  scaling the 365-day and 90-day spend and the
               < ``low_spend_share`` x the training mean   amounts of the last 365 days' purchases so
               (means of spend are taken on the log        that the 365-day spend is the training mean
               scale of the model inputs)
one_timer      exactly one activity event                  setting tenure, event count, mean gap and gap
                                                           ratio to the training mean
=============  ==========================================  ==============================================

"Activity" follows the model's churn definition (purchases for the bundled data), so the
texts say "purchase" where that is the only activity type. Spend counts purchases whose
order was not cancelled before ``as_of``, as the model's static features do.

Occlusion measures what the model does with the signal, not what caused the churn: a
neutralised input can be one that no real customer has, and two correlated signals can
share an effect.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from seqchurn.alerts.policy import MAX_REASONS
from seqchurn.data.labels import to_utc
from seqchurn.data.sequences import build_arrays, collapse_orders

log = logging.getLogger(__name__)

SIGNALS: tuple[str, ...] = ("recency", "spend_trend", "returns", "frequency", "low_spend", "one_timer")
WINDOW_DAYS = 90.0
"""Length of the recent window, the one of the model's 90-day static features."""
GAP_RATIO_CAP = 50.0
"""Upper bound of the ``gap_ratio`` static feature, as computed in ``seqchurn.data.sequences``."""

# Model inputs each signal edits; a signal whose features the model lacks is skipped.
_STATIC_NEEDS = {
    "recency": ("log_days_since_last_activity", "log_days_since_last_event", "gap_ratio"),
    "spend_trend": ("log_spend_90d", "log_spend_365d"),
    "returns": ("return_share", "log_n_events"),
    "frequency": ("log_n_activity_90d",),
    "low_spend": ("log_spend_90d", "log_spend_365d"),
    "one_timer": ("log_tenure_days", "log_n_events", "log_mean_gap_days", "gap_ratio"),
}
_NUMERIC_NEEDS = {
    "recency": ("log_days_before_cutoff",),
    "spend_trend": ("log_amount", "log_days_before_cutoff"),
    "low_spend": ("log_amount", "log_days_before_cutoff"),
}


@dataclass(frozen=True)
class ReasonSettings:
    """When a signal becomes a candidate reason, and how many reasons an alert gets.

    ``min_effect`` is in probability units: 0.005 means the churn probability must drop by
    at least half a percentage point when the signal is neutralised.
    """

    max_reasons: int = MAX_REASONS
    overdue_ratio: float = 1.5
    spend_drop: float = 0.3
    frequency_drop: float = 0.5
    recent_transactions: int = 5
    low_spend_share: float = 0.5
    min_effect: float = 0.005

    def __post_init__(self) -> None:
        if isinstance(self.max_reasons, bool) or int(self.max_reasons) != self.max_reasons or not 1 <= self.max_reasons <= MAX_REASONS:
            raise ValueError(f"Expected `reasons.max_reasons` to be an integer in [1, {MAX_REASONS}], but got {self.max_reasons!r}")
        if not float(self.overdue_ratio) > 1.0:
            raise ValueError(f"Expected `reasons.overdue_ratio` > 1, but got {self.overdue_ratio!r}")
        for name in ("spend_drop", "frequency_drop", "low_spend_share"):
            if not 0.0 < float(getattr(self, name)) < 1.0:
                raise ValueError(f"Expected `reasons.{name}` in (0, 1), but got {getattr(self, name)!r}")
        if isinstance(self.recent_transactions, bool) or int(self.recent_transactions) != self.recent_transactions or self.recent_transactions < 1:
            raise ValueError(f"Expected `reasons.recent_transactions` to be an integer >= 1, but got {self.recent_transactions!r}")
        if not 0.0 <= float(self.min_effect) < 1.0:
            raise ValueError(f"Expected `reasons.min_effect` in [0, 1), but got {self.min_effect!r}")

    @classmethod
    def from_dict(cls, config: Mapping | None) -> ReasonSettings:
        """Build settings from the ``reasons`` section of the alerts config (missing keys keep their defaults)."""
        config = dict(config or {})
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - allowed)
        if unknown:
            raise ValueError(f"Unknown keys {unknown} in the alerts config section `reasons`; expected some of {sorted(allowed)}")
        return cls(**config)


@dataclass
class Explanation:
    """Reasons for a set of customers, with the evidence behind them.

    ``reasons``: index ``customer_id``, one list of at most ``max_reasons`` texts per
    customer, largest effect first (empty when no signal qualifies).
    ``signals``: one row per customer and candidate signal with ``customer_id``, ``signal``,
    ``text``, ``effect`` (probability minus the probability with the signal neutralised),
    ``reported`` and ``position`` (1-based place among the reported reasons, 0 when not reported).
    ``probability``: index ``customer_id``, the model's churn probability on the unchanged inputs.
    """

    reasons: pd.Series
    signals: pd.DataFrame
    probability: pd.Series


# ---- candidate signals from the customer's history ------------------------------------------


def history_stats(events: pd.DataFrame, customers: pd.Index, as_of: pd.Timestamp, activity_types: Sequence[str], recent_transactions: int) -> pd.DataFrame:
    """Return one row of history statistics per customer in ``customers`` (same order).

    ``events`` are canonical (order-collapsed where the model collapses orders) and are
    read only before ``as_of``. Ages are in days before ``as_of``. A statistic that needs
    more history than the customer has is NaN.
    """
    n = len(customers)
    events = events.loc[(events["ts"] < as_of).to_numpy() & events["customer_id"].isin(customers).to_numpy()]
    events = events.sort_values(["customer_id", "ts"], kind="stable")
    row = customers.get_indexer(events["customer_id"])
    age = (as_of - events["ts"]).dt.total_seconds().to_numpy(dtype="float64") / 86400.0
    event_type = events["event_type"].astype(str).to_numpy()
    cancelled = (events["cancelled_at"].notna() & (events["cancelled_at"] < as_of)).to_numpy()
    is_activity = np.isin(event_type, list(activity_types)) & ~cancelled
    is_purchase = (event_type == "purchase") & ~cancelled
    is_return = event_type == "return"
    amount = events["amount"].to_numpy(dtype="float64")
    recent = age < WINDOW_DAYS
    prior = (age >= WINDOW_DAYS) & (age < 2 * WINDOW_DAYS)

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(row, weights=mask.astype("float64"), minlength=n)

    def total(mask: np.ndarray) -> np.ndarray:
        return np.bincount(row, weights=np.where(mask, amount, 0.0), minlength=n)

    def extreme(mask: np.ndarray, how: str) -> np.ndarray:
        values = pd.Series(age[mask]).groupby(row[mask]).agg(how)
        out = np.full(n, np.nan)
        out[values.index.to_numpy()] = values.to_numpy()
        return out

    n_activity = count(is_activity)
    last_activity = extreme(is_activity, "min")
    first_activity = extreme(is_activity, "max")
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_gap = np.where(n_activity > 1, (first_activity - last_activity) / (n_activity - 1), np.nan)
        n_activity_recent = count(is_activity & recent)
        # Usual count per window over the history before the recent window.
        usual = np.where(
            first_activity >= 2 * WINDOW_DAYS,
            (n_activity - n_activity_recent) * WINDOW_DAYS / (first_activity - WINDOW_DAYS),
            np.nan,
        )

    # The last `recent_transactions` purchases and returns (cancelled purchases included).
    is_transaction = np.isin(event_type, ["purchase", "return"])
    transaction_row = row[is_transaction]
    from_end = pd.Series(transaction_row).groupby(transaction_row).cumcount(ascending=False).to_numpy()
    latest = from_end < recent_transactions
    n_recent_transactions = np.bincount(transaction_row[latest], minlength=n)
    n_recent_returns = np.bincount(transaction_row[latest], weights=is_return[is_transaction][latest].astype("float64"), minlength=n)

    return pd.DataFrame(
        {
            "customer_id": customers.to_numpy(),
            "n_events": np.bincount(row, minlength=n),
            "n_activity": n_activity.astype("int64"),
            "last_activity_days": last_activity,
            "first_activity_days": first_activity,
            "last_event_days": extreme(np.ones(len(age), dtype=bool), "min"),
            "mean_gap_days": mean_gap,
            "spend_recent": total(is_purchase & recent),
            "spend_prior": total(is_purchase & prior),
            "spend_365d": total(is_purchase & (age < 365.0)),
            "n_activity_recent": n_activity_recent.astype("int64"),
            "usual_activity_per_window": usual,
            "n_returns": count(is_return).astype("int64"),
            "n_recent_transactions": n_recent_transactions.astype("int64"),
            "n_recent_returns": n_recent_returns.astype("int64"),
        }
    )


def add_references(stats: pd.DataFrame, spec, settings: ReasonSettings) -> pd.DataFrame:
    """Add the reference values that the signals compare against, from the history and the feature spec.

    ``recency_reference_days`` is the customer's own mean gap when the customer has one
    (two or more activity events at least a day apart on average) and exceeds it
    ``overdue_ratio`` times, else the training mean of days since the last activity.
    ``typical_spend_365d`` is the training mean of the 365-day spend. Both training means
    are taken on the log scale of the model's static features.
    """
    typical_recency = float(np.expm1(spec.static_mean[spec.static_features.index("log_days_since_last_activity")]))
    own_gap = stats["mean_gap_days"].to_numpy()
    has_own_gap = ~np.isnan(own_gap) & (np.nan_to_num(own_gap) >= 1.0)
    overdue_on_own_gap = has_own_gap & (stats["last_activity_days"].to_numpy() >= float(settings.overdue_ratio) * np.nan_to_num(own_gap))
    typical_spend = np.nan
    if "log_spend_365d" in spec.static_features:
        typical_spend = float(np.expm1(spec.static_mean[spec.static_features.index("log_spend_365d")]))
    return stats.assign(
        recency_reference_days=np.where(overdue_on_own_gap, own_gap, typical_recency),
        recency_reference_is_own=overdue_on_own_gap,
        typical_spend_365d=typical_spend,
    )


def candidate_signals(stats: pd.DataFrame, settings: ReasonSettings) -> dict[str, np.ndarray]:
    """Return, per signal, a boolean array marking the customers for whom it is a candidate.

    ``stats`` comes from :func:`history_stats` and :func:`add_references`.
    """
    n_activity = stats["n_activity"].to_numpy()
    last = stats["last_activity_days"].to_numpy()
    reference = stats["recency_reference_days"].to_numpy()
    prior = stats["spend_prior"].to_numpy()
    usual = stats["usual_activity_per_window"].to_numpy()
    with np.errstate(invalid="ignore"):
        return {
            "recency": (n_activity >= 1) & (last >= float(settings.overdue_ratio) * np.maximum(reference, 1.0)),
            "spend_trend": (prior > 0) & (stats["spend_recent"].to_numpy() <= (1.0 - float(settings.spend_drop)) * prior),
            "returns": stats["n_recent_returns"].to_numpy() >= 1,
            "frequency": (usual >= 1.0) & (stats["n_activity_recent"].to_numpy() <= float(settings.frequency_drop) * usual),
            "low_spend": (n_activity >= 1)
            & (stats["spend_365d"].to_numpy() > 0)
            & (stats["spend_365d"].to_numpy() < float(settings.low_spend_share) * stats["typical_spend_365d"].to_numpy()),
            "one_timer": n_activity == 1,
        }


def _number(values: np.ndarray, pattern: str) -> np.ndarray:
    return np.char.mod(pattern, np.asarray(values, dtype="float64"))


def _join(*parts: np.ndarray | str) -> np.ndarray:
    out = np.asarray(parts[0], dtype=object)
    for part in parts[1:]:
        out = np.char.add(out.astype(str), part)
    return np.asarray(out, dtype=object)


def signal_texts(stats: pd.DataFrame, activity_types: Sequence[str]) -> dict[str, np.ndarray]:
    """Return, per signal, the reason text of every customer (meaningful only where it is a candidate)."""
    noun, plural = ("purchase", "purchases") if list(activity_types) == ["purchase"] else ("activity event", "activity events")
    last = stats["last_activity_days"].to_numpy()
    reference = stats["recency_reference_days"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = last / np.maximum(reference, 1.0)
    recency = np.where(
        stats["recency_reference_is_own"].to_numpy(),
        _join(f"no {noun} for ", _number(last, "%.0f"), " days, ", _number(ratio, "%.1f"), "x this customer's usual gap of ", _number(reference, "%.0f"), " days"),
        _join(f"no {noun} for ", _number(last, "%.0f"), " days, ", _number(ratio, "%.1f"), f"x the typical time since the last {noun} (", _number(reference, "%.0f"), " days)"),
    )

    recent, prior = stats["spend_recent"].to_numpy(), stats["spend_prior"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        drop_percent = 100.0 * (1.0 - recent / prior)
    spend = np.where(
        recent > 0,
        _join(
            "spend in the last 90 days down ", _number(drop_percent, "%.0f"), "% on the 90 days before (",
            _number(recent, "%.2f"), " vs ", _number(prior, "%.2f"), ")",
        ),
        _join("no spend in the last 90 days, after ", _number(prior, "%.2f"), " in the 90 days before"),
    )

    returns = _join(
        _number(stats["n_recent_returns"].to_numpy(), "%.0f"), " of the last ",
        _number(stats["n_recent_transactions"].to_numpy(), "%.0f"), " purchases and returns were returns",
    )

    count = stats["n_activity_recent"].to_numpy()
    frequency = _join(
        _number(count, "%.0f"), np.where(count == 1, f" {noun}", f" {plural}"), " in the last 90 days, against ",
        _number(stats["usual_activity_per_window"].to_numpy(), "%.1f"), " per 90 days before",
    )

    low_spend = _join(
        "spent ", _number(stats["spend_365d"].to_numpy(), "%.2f"), " in the last 365 days, against a typical ",
        _number(stats["typical_spend_365d"].to_numpy(), "%.2f"),
    )
    one_timer = _join(f"a single {noun} so far, ", _number(last, "%.0f"), " days ago")
    return {"recency": recency, "spend_trend": spend, "returns": returns, "frequency": frequency, "low_spend": low_spend, "one_timer": one_timer}


# ---- neutralising a signal on the model inputs -------------------------------------------------


class _Inputs:
    """Normalised model inputs for some customers, with edits in raw feature units."""

    def __init__(self, inputs: dict[str, np.ndarray], spec) -> None:
        self.arrays = {name: array.copy() for name, array in inputs.items()}
        self.static_index = {name: i for i, name in enumerate(spec.static_features)}
        self.numeric_index = {name: i for i, name in enumerate(spec.numeric_features)}
        self.static_mean, self.static_std = np.asarray(spec.static_mean), np.asarray(spec.static_std)
        self.numeric_mean, self.numeric_std = np.asarray(spec.numeric_mean), np.asarray(spec.numeric_std)
        self.event_types = list(spec.event_types)

    def set_static(self, name: str, raw: np.ndarray) -> None:
        j = self.static_index[name]
        self.arrays["static"][:, j] = (np.asarray(raw, dtype="float64") - self.static_mean[j]) / self.static_std[j]

    def set_static_to_training_mean(self, name: str) -> None:
        self.arrays["static"][:, self.static_index[name]] = 0.0

    def numeric_raw(self, name: str) -> np.ndarray:
        j = self.numeric_index[name]
        return self.arrays["numeric"][:, :, j].astype("float64") * self.numeric_std[j] + self.numeric_mean[j]

    def set_numeric(self, name: str, raw: np.ndarray, where: np.ndarray) -> None:
        j = self.numeric_index[name]
        normalised = ((raw - self.numeric_mean[j]) / self.numeric_std[j]).astype(np.float32)
        self.arrays["numeric"][:, :, j] = np.where(where, normalised, self.arrays["numeric"][:, :, j])

    def event_type_is(self, name: str) -> np.ndarray:
        return (self.arrays["event_type"] == self.event_types.index(name)) & self.arrays["mask"]

    def event_age_days(self) -> np.ndarray:
        return np.expm1(self.numeric_raw("log_days_before_cutoff"))

    def scale_amounts(self, factor: np.ndarray, where: np.ndarray) -> None:
        amount = np.maximum(np.expm1(self.numeric_raw("log_amount")), 0.0)
        self.set_numeric("log_amount", np.log1p(amount * factor[:, None]), where)

    def drop_events(self, drop: np.ndarray) -> None:
        """Remove events from the sequences and move the remaining ones to the front, in order."""
        mask = self.arrays["mask"] & ~drop
        order = np.argsort(~mask, axis=1, kind="stable")
        for name in ("event_type", "item", "mask"):
            values = np.where(mask, self.arrays[name], np.zeros((), self.arrays[name].dtype))
            self.arrays[name] = np.take_along_axis(values, order, axis=1)
        numeric = np.where(mask[..., None], self.arrays["numeric"], np.float32(0.0))
        self.arrays["numeric"] = np.take_along_axis(numeric, order[..., None], axis=1)


def _neutralise_recency(inputs: _Inputs, stats: pd.DataFrame) -> None:
    target = stats["recency_reference_days"].to_numpy()
    shift = stats["last_activity_days"].to_numpy() - target
    inputs.set_static("log_days_since_last_activity", np.log1p(target))
    inputs.set_static("log_days_since_last_event", np.log1p(np.maximum(stats["last_event_days"].to_numpy() - shift, 0.0)))
    own_gap = stats["mean_gap_days"].to_numpy()
    with np.errstate(invalid="ignore"):
        gap_ratio = np.where(np.isnan(own_gap), 0.0, np.minimum(target / np.maximum(own_gap, 1.0), GAP_RATIO_CAP))
    inputs.set_static("gap_ratio", gap_ratio)
    age = inputs.event_age_days()
    inputs.set_numeric("log_days_before_cutoff", np.log1p(np.maximum(age - shift[:, None], 0.0)), inputs.arrays["mask"])


def _neutralise_spend_trend(inputs: _Inputs, stats: pd.DataFrame) -> None:
    recent, prior = stats["spend_recent"].to_numpy(), stats["spend_prior"].to_numpy()
    inputs.set_static("log_spend_90d", np.log1p(prior))
    inputs.set_static("log_spend_365d", np.log1p(np.maximum(stats["spend_365d"].to_numpy() - recent + prior, 0.0)))
    factor = np.where(recent > 0, prior / np.where(recent > 0, recent, 1.0), 1.0)
    inputs.scale_amounts(factor, inputs.event_type_is("purchase") & (inputs.event_age_days() < WINDOW_DAYS))


def _neutralise_returns(inputs: _Inputs, stats: pd.DataFrame) -> None:
    inputs.drop_events(inputs.event_type_is("return"))
    inputs.set_static("return_share", np.zeros(len(stats)))
    inputs.set_static("log_n_events", np.log1p(stats["n_events"].to_numpy() - stats["n_returns"].to_numpy()))


def _neutralise_frequency(inputs: _Inputs, stats: pd.DataFrame) -> None:
    inputs.set_static("log_n_activity_90d", np.log1p(stats["usual_activity_per_window"].to_numpy()))


def _neutralise_low_spend(inputs: _Inputs, stats: pd.DataFrame) -> None:
    spend = stats["spend_365d"].to_numpy()
    factor = stats["typical_spend_365d"].to_numpy() / np.where(spend > 0, spend, 1.0)
    inputs.set_static("log_spend_365d", np.log1p(spend * factor))
    inputs.set_static("log_spend_90d", np.log1p(stats["spend_recent"].to_numpy() * factor))
    inputs.scale_amounts(factor, inputs.event_type_is("purchase") & (inputs.event_age_days() < 365.0))


def _neutralise_one_timer(inputs: _Inputs, stats: pd.DataFrame) -> None:
    for name in _STATIC_NEEDS["one_timer"]:
        inputs.set_static_to_training_mean(name)


NEUTRALISERS: dict[str, Callable[[_Inputs, pd.DataFrame], None]] = {
    "recency": _neutralise_recency,
    "spend_trend": _neutralise_spend_trend,
    "returns": _neutralise_returns,
    "frequency": _neutralise_frequency,
    "low_spend": _neutralise_low_spend,
    "one_timer": _neutralise_one_timer,
}


def neutralised_inputs(signal: str, inputs: dict[str, np.ndarray], stats: pd.DataFrame, spec) -> dict[str, np.ndarray]:
    """Return a copy of normalised model ``inputs`` with ``signal`` neutralised (rows aligned with ``stats``)."""
    edited = _Inputs(inputs, spec)
    NEUTRALISERS[signal](edited, stats.reset_index(drop=True))
    return edited.arrays


def usable_signals(spec) -> tuple[str, ...]:
    """Return the signals whose model inputs the feature spec has."""
    usable = []
    for signal in SIGNALS:
        missing = [f for f in _STATIC_NEEDS.get(signal, ()) if f not in spec.static_features]
        missing += [f for f in _NUMERIC_NEEDS.get(signal, ()) if f not in spec.numeric_features]
        if signal == "returns" and "return" not in spec.event_types:
            missing.append("event type 'return'")
        if missing:
            log.info("reason signal %s is off: the model has no input %s", signal, missing)
        else:
            usable.append(signal)
    return tuple(usable)


# ---- putting it together ------------------------------------------------------------------------


def explain(
    events: pd.DataFrame,
    customer_ids: Sequence[str] | pd.Series,
    model,
    as_of: str | pd.Timestamp,
    *,
    settings: ReasonSettings | None = None,
    batch_size: int = 2048,
) -> Explanation:
    """Compute ranked, model-checked reasons for ``customer_ids`` as of ``as_of``.

    ``events`` is a canonical event frame that contains the customers' histories (other
    customers' rows are ignored) and ``model`` a :class:`seqchurn.score.LoadedModel`. Costs
    one model run over the customers plus one over the candidates of each signal.
    """
    from seqchurn.score import predict

    settings = settings or ReasonSettings()
    as_of = to_utc(as_of)
    customers = pd.Index(pd.unique(pd.Series(customer_ids, dtype="str").to_numpy()), dtype="str", name="customer_id")
    spec = model.spec

    # Orders are merged before the as_of cut, as the batch scorer does, so the inputs match its scores.
    events = events.loc[events["customer_id"].isin(customers).to_numpy()]
    if spec.collapse_orders:
        events = collapse_orders(events)
    snapshots = pd.DataFrame({"customer_id": customers.to_numpy(), "cutoff": as_of})
    inputs = build_arrays(events, snapshots, spec).as_inputs()
    probability = predict(model, inputs, batch_size) if len(customers) else np.zeros(0, dtype=np.float32)

    stats = history_stats(events, customers, as_of, spec.activity_types, int(settings.recent_transactions))
    stats = add_references(stats, spec, settings)
    signals = usable_signals(spec)
    candidates = candidate_signals(stats, settings)
    texts = signal_texts(stats, spec.activity_types)

    parts = []
    for signal in signals:
        rows = np.flatnonzero(candidates[signal])
        if not len(rows):
            continue
        subset = {name: array[rows] for name, array in inputs.items()}
        edited = neutralised_inputs(signal, subset, stats.iloc[rows], spec)
        effect = probability[rows].astype("float64") - predict(model, edited, batch_size).astype("float64")
        parts.append(
            pd.DataFrame(
                {"row": rows, "customer_id": customers.to_numpy()[rows], "signal": signal, "text": texts[signal][rows], "effect": effect}
            )
        )
    table = _rank(parts, settings)
    reported = table.loc[table["reported"]]
    reasons = reported.groupby("row", sort=True)["text"].agg(list).reindex(np.arange(len(customers)))
    reasons = pd.Series([r if isinstance(r, list) else [] for r in reasons.to_numpy()], index=customers, dtype=object, name="reasons")
    log.info(
        "reasons: %d customers, %d candidate signals, %d reported (signals: %s)",
        len(customers),
        len(table),
        len(reported),
        ", ".join(signals) or "none",
    )
    return Explanation(
        reasons=reasons,
        signals=table.drop(columns="row").reset_index(drop=True),
        probability=pd.Series(probability, index=customers, name="churn_probability"),
    )


def _rank(parts: list[pd.DataFrame], settings: ReasonSettings) -> pd.DataFrame:
    """Order each customer's signals by effect and mark the reported ones."""
    columns = {"row": "int64", "customer_id": "str", "signal": "str", "text": "str", "effect": "float64"}
    if not parts:
        table = pd.DataFrame({name: pd.Series([], dtype=dtype) for name, dtype in columns.items()})
    else:
        table = pd.concat(parts, ignore_index=True)
    # Ties in effect are broken by the signal order of SIGNALS, so the output is deterministic.
    table["_signal_order"] = pd.Index(SIGNALS).get_indexer(table["signal"])
    table = table.sort_values(["row", "effect", "_signal_order"], ascending=[True, False, True], kind="stable", ignore_index=True)
    qualifies = (table["effect"] >= float(settings.min_effect)).to_numpy() & (table["effect"] > 0).to_numpy()
    place = table.assign(_q=qualifies.astype("int64")).groupby("row")["_q"].cumsum().to_numpy()
    table["reported"] = qualifies & (place <= int(settings.max_reasons))
    table["position"] = np.where(table["reported"], place, 0).astype("int64")
    return table.drop(columns="_signal_order")


def reason_hook(events: pd.DataFrame, model, as_of: str | pd.Timestamp, *, settings: ReasonSettings | None = None) -> Callable[[pd.DataFrame], pd.Series]:
    """Return a ``reason_codes`` function for :func:`seqchurn.alerts.pipeline.process_scores`.

    The function explains the selected alerts and logs a warning when the model, run on
    ``events``, does not reproduce their scored probability (the events are then not the
    ones that were scored, and the reasons may not fit the score).
    """

    def reason_codes(alerts: pd.DataFrame) -> pd.Series:
        explanation = explain(events, alerts["customer_id"].astype(str), model, as_of, settings=settings)
        customer_ids = alerts["customer_id"].astype(str).to_numpy()
        rescored = explanation.probability.reindex(customer_ids).to_numpy(dtype="float64")
        difference = np.abs(rescored - alerts["churn_probability"].to_numpy(dtype="float64"))
        mismatched = int((~(difference <= 1e-4)).sum())
        if mismatched:
            log.warning(
                "reasons: for %d of %d alerts the model gives another probability on the events passed than in the scores; "
                "pass the events that were scored, or their reasons may not fit the score",
                mismatched,
                len(alerts),
            )
        return pd.Series(explanation.reasons.reindex(customer_ids).to_numpy(), index=alerts.index, dtype=object, name="reasons")

    return reason_codes
