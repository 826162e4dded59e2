"""Outcomes of alerts and the feedback report on past alerts.

Outcomes are recorded by alert id, or by customer id with an optional as_of date:

- ``contacted`` sets ``contacted_at``.
- ``retained`` and ``churned`` set ``outcome`` and ``outcome_at``.

The report measures precision from the event log with the same rule as the training
labels (:func:`seqchurn.data.labels.make_snapshot`): an alert is a true positive when its
customer has no activity event in ``[as_of, as_of + horizon)``, and a purchase whose order
was cancelled before the end of that window does not count as activity. Only alerts whose
window ends by ``observed_until`` (by default the last event in the log) are evaluable.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from seqchurn.alerts.store import AlertStore, utc_now
from seqchurn.data.labels import ChurnDefinition, to_utc
from seqchurn.data.schema import InputError, validate_events

log = logging.getLogger(__name__)

OUTCOMES = ("contacted", "retained", "churned")
NO_REASON = "(none)"


# ---- recording outcomes -------------------------------------------------------------------


def record_outcome(
    store: AlertStore,
    outcome: str,
    *,
    alert_id: str | None = None,
    customer_id: str | None = None,
    as_of: dt.date | str | None = None,
    at: dt.datetime | str | None = None,
    note: str | None = None,
) -> list[str]:
    """Record one outcome and return the ids of the alerts it was written to.

    Give ``alert_id``, or ``customer_id`` with an optional ``as_of``. Without ``as_of`` the
    customer's alerts at their latest as_of are updated. ``at`` defaults to now (UTC).
    Raises ``InputError`` when no stored alert matches.
    """
    row = {"outcome": outcome, "alert_id": alert_id, "customer_id": customer_id, "as_of": as_of, "at": at, "note": note}
    return record_outcomes(store, pd.DataFrame([row]), source="arguments")


def record_outcomes(store: AlertStore, outcomes: pd.DataFrame, *, source: str | None = None) -> list[str]:
    """Record a table of outcomes and return the ids of the alerts written to.

    Columns: ``outcome`` (one of ``OUTCOMES``), ``alert_id`` or ``customer_id`` per row,
    and optional ``as_of``, ``at`` and ``note``. ``source`` names the file in errors, whose
    rows are 1-based data rows. The whole table is checked before anything is written,
    and a later row for the same alert wins.
    """
    table = _normalize_outcomes(outcomes, source)
    resolved = _resolve_alert_ids(store, table, source)
    if resolved.empty:
        return []
    is_contact = (resolved["outcome"] == "contacted").to_numpy()
    updates = pd.DataFrame(
        {
            "alert_id": resolved["alert_id"].to_numpy(),
            "contacted_at": resolved["at"].where(is_contact),
            "outcome": resolved["outcome"].where(~is_contact),
            "outcome_at": resolved["at"].where(~is_contact),
            "outcome_note": resolved["note"],
        }
    )
    # groupby.last takes the last non-null value per column, so a later row wins.
    updates = updates.groupby("alert_id", sort=False, as_index=False).last()
    store.update_outcomes(updates)
    log.info("recorded %d outcomes for %d alerts", len(table), len(updates))
    return updates["alert_id"].tolist()


def _normalize_outcomes(outcomes: pd.DataFrame, source: str | None) -> pd.DataFrame:
    if "outcome" not in outcomes.columns:
        raise InputError(f"outcomes need an `outcome` column (they have {list(outcomes.columns)})", file=source)
    if "alert_id" not in outcomes.columns and "customer_id" not in outcomes.columns:
        raise InputError("outcomes need an `alert_id` or a `customer_id` column", file=source)
    n = len(outcomes)
    table = pd.DataFrame(index=pd.RangeIndex(n))
    for column in ("alert_id", "customer_id", "note"):
        values = outcomes[column].to_numpy(dtype=object) if column in outcomes.columns else np.full(n, None, dtype=object)
        table[column] = pd.Series(values, dtype=object).where(pd.notna(values), None)
    table["outcome"] = outcomes["outcome"].astype(object).to_numpy()

    bad = ~table["outcome"].isin(OUTCOMES).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"outcome must be one of {list(OUTCOMES)}", file=source, row=row + 1, column="outcome", value=table["outcome"].iloc[row])
    no_key = (table["alert_id"].isna() & table["customer_id"].isna()).to_numpy()
    if no_key.any():
        row = int(np.flatnonzero(no_key)[0])
        raise InputError("each outcome needs an alert_id or a customer_id", file=source, row=row + 1)
    table["customer_id"] = table["customer_id"].astype(str).where(table["customer_id"].notna(), None)

    table["as_of"] = _parse_times(outcomes, "as_of", source, date_only=True)
    table["at"] = _parse_times(outcomes, "at", source, date_only=False).fillna(pd.Timestamp(utc_now()))
    return table


def _parse_times(outcomes: pd.DataFrame, column: str, source: str | None, *, date_only: bool) -> pd.Series:
    """Parse an optional time column to UTC (naive values are UTC), naming the row of the first invalid cell."""
    n = len(outcomes)
    if column not in outcomes.columns:
        return pd.Series(pd.NaT, index=pd.RangeIndex(n), dtype="datetime64[ns, UTC]")
    raw = pd.Series(outcomes[column].to_numpy(dtype=object), index=pd.RangeIndex(n))
    parsed = pd.to_datetime(raw, errors="coerce", utc=True, format="mixed").astype("datetime64[ns, UTC]")
    invalid = (parsed.isna() & raw.notna()).to_numpy()
    if invalid.any():
        row = int(np.flatnonzero(invalid)[0])
        raise InputError(f"invalid {column}; expected an ISO date or time", file=source, row=row + 1, column=column, value=raw.iloc[row])
    if date_only:
        not_midnight = (parsed.notna() & (parsed != parsed.dt.normalize())).to_numpy()
        if not_midnight.any():
            row = int(np.flatnonzero(not_midnight)[0])
            raise InputError(f"{column} must be a date without a time", file=source, row=row + 1, column=column, value=raw.iloc[row])
    return parsed


def _resolve_alert_ids(store: AlertStore, table: pd.DataFrame, source: str | None) -> pd.DataFrame:
    """Return ``table`` with one row per matched alert and its ``alert_id`` filled in."""
    by_id = table.loc[table["alert_id"].notna()]
    by_customer = table.loc[table["alert_id"].isna()]
    parts = []

    if len(by_id):
        stored = set(store.alerts(alert_ids=by_id["alert_id"].unique().tolist())["alert_id"])
        unknown = ~by_id["alert_id"].isin(stored).to_numpy()
        if unknown.any():
            row = int(by_id.index[np.flatnonzero(unknown)[0]])
            raise InputError("alert_id not found in the alert store", file=source, row=row + 1, column="alert_id", value=by_id["alert_id"].iloc[np.flatnonzero(unknown)[0]])
        parts.append(by_id.assign(_row=by_id.index))

    if len(by_customer):
        alerts = store.alerts(customer_ids=by_customer["customer_id"].unique().tolist())[["alert_id", "customer_id", "as_of"]]
        latest = alerts.groupby("customer_id")["as_of"].transform("max")
        requests = by_customer.drop(columns="alert_id").assign(_row=by_customer.index)
        with_date = requests.loc[requests["as_of"].notna()].merge(alerts, on=["customer_id", "as_of"], how="left")
        without_date = requests.loc[requests["as_of"].isna()].drop(columns="as_of").merge(
            alerts.loc[alerts["as_of"] == latest], on="customer_id", how="left"
        )
        matched = pd.concat([with_date, without_date], ignore_index=True)
        missing = matched["alert_id"].isna().to_numpy()
        if missing.any():
            first = matched.loc[missing].sort_values("_row").iloc[0]
            where = f" as of {first['as_of'].date()}" if pd.notna(first["as_of"]) else ""
            raise InputError(f"no stored alert for this customer{where}", file=source, row=int(first["_row"]) + 1, column="customer_id", value=first["customer_id"])
        parts.append(matched)

    resolved = pd.concat(parts, ignore_index=True).sort_values("_row", kind="stable")
    return resolved.reset_index(drop=True)


# ---- the feedback report ------------------------------------------------------------------


def label_alerts(alerts: pd.DataFrame, events: pd.DataFrame, churn: ChurnDefinition) -> np.ndarray:
    """Return 1 where the alerted customer churned within the horizon after ``as_of``, else 0.

    ``alerts`` has ``customer_id`` and ``as_of`` (UTC timestamps). The rule is the one of
    ``make_snapshot``: no activity event in ``[as_of, as_of + horizon)``, where a purchase
    cancelled before the window's end is no activity.
    """
    validate_events(events)
    n = len(alerts)
    if n == 0:
        return np.zeros(0, dtype="int8")
    cutoff = pd.to_datetime(alerts["as_of"]).astype("datetime64[ns, UTC]").to_numpy()
    activity = events.loc[
        events["event_type"].isin(churn.activity_types)
        & events["customer_id"].isin(alerts["customer_id"])
        & (events["ts"] >= cutoff.min())
        & (events["ts"] < cutoff.max() + churn.horizon),
        ["customer_id", "ts", "cancelled_at"],
    ]
    pairs = pd.DataFrame({"customer_id": alerts["customer_id"].astype(str).to_numpy(), "_row": np.arange(n), "_cutoff": cutoff}).merge(
        activity, on="customer_id", how="inner"
    )
    end = pairs["_cutoff"] + churn.horizon
    cancelled_before_end = pairs["cancelled_at"].notna() & (pairs["cancelled_at"] < end)
    active = (pairs["ts"] >= pairs["_cutoff"]) & (pairs["ts"] < end) & ~cancelled_before_end
    label = np.ones(n, dtype="int8")
    label[pairs.loc[active, "_row"].unique()] = 0
    return label


@dataclass
class FeedbackReport:
    """Precision and save rate of past alerts, overall, by tier and by reason.

    ``precision`` is the share of evaluable alerts whose customer churned. Contacts that
    worked lower it, so ``precision_not_contacted`` is the one to compare with the model's
    offline precision. ``save_rate`` uses recorded outcomes: retained / (retained + churned)
    among contacted alerts. ``save_rate_observed`` uses the event log: the share of
    contacted, evaluable alerts whose customer did not churn.

    NOTE: neither save rate has a control group, so neither measures the effect of
    contacting. Compare with ``1 - precision_not_contacted`` for a rough baseline.
    """

    horizon_days: float
    observed_until: pd.Timestamp | None
    n_alerts: int
    n_evaluable: int
    n_true_positives: int
    precision: float | None
    n_evaluable_not_contacted: int
    precision_not_contacted: float | None
    n_contacted: int
    n_retained: int
    n_churned: int
    save_rate: float | None
    save_rate_observed: float | None
    by_tier: pd.DataFrame = field(repr=False)
    by_reason: pd.DataFrame = field(repr=False)

    def to_dict(self) -> dict:
        """Return the report as JSON-ready data, for the API and ``--json`` output."""
        scalars = {name: getattr(self, name) for name in self.__dataclass_fields__ if name not in ("by_tier", "by_reason", "observed_until")}
        scalars["observed_until"] = None if self.observed_until is None else self.observed_until.isoformat()
        scalars["by_tier"] = _records(self.by_tier)
        scalars["by_reason"] = _records(self.by_reason)
        return scalars

    def to_text(self) -> str:
        """Format the report as a few lines and two tables, for the CLI."""

        def share(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.3f}"

        observed = "no events" if self.observed_until is None else self.observed_until.isoformat()
        lines = [
            f"alerts: {self.n_alerts}, evaluable at the {self.horizon_days:g}-day horizon: {self.n_evaluable} (events observed until {observed})",
            f"precision: {share(self.precision)} ({self.n_true_positives} churned of {self.n_evaluable})",
            f"precision of alerts not contacted: {share(self.precision_not_contacted)} (of {self.n_evaluable_not_contacted})",
            f"contacted: {self.n_contacted}, recorded retained: {self.n_retained}, recorded churned: {self.n_churned}",
            f"save rate (recorded): {share(self.save_rate)}, save rate (event log): {share(self.save_rate_observed)}",
            "",
            "by tier:",
            self.by_tier.to_string(index=False) if len(self.by_tier) else "(none)",
            "",
            "by reason:",
            self.by_reason.to_string(index=False) if len(self.by_reason) else "(none)",
        ]
        return "\n".join(lines)


def feedback_report(
    store: AlertStore,
    events: pd.DataFrame,
    churn: ChurnDefinition,
    *,
    run_id: str | None = None,
    since: dt.date | str | None = None,
    until: dt.date | str | None = None,
    observed_until: str | pd.Timestamp | None = None,
) -> FeedbackReport:
    """Measure past alerts against a canonical event log.

    ``churn`` should be the model's churn definition (activity types and horizon).
    ``run_id``, ``since`` and ``until`` (inclusive as_of dates) select the alerts.
    ``observed_until`` is the time up to which the log is complete, by default its last
    event. Alerts whose horizon ends after it are counted but not evaluated.
    """
    validate_events(events)
    alerts = store.alerts(run_id=run_id, since=since, until=until)
    if observed_until is not None:
        observed = to_utc(observed_until)
    elif len(events):
        observed = events["ts"].max()
    else:
        observed = None

    evaluable = np.zeros(len(alerts), dtype=bool)
    if observed is not None:
        evaluable = (alerts["as_of"] + churn.horizon <= observed).to_numpy()
    label = np.zeros(len(alerts), dtype="int8")
    label[evaluable] = label_alerts(alerts.loc[evaluable], events, churn)

    contacted = alerts["contacted_at"].notna().to_numpy()
    frame = pd.DataFrame(
        {
            "alert_id": alerts["alert_id"].to_numpy(),
            "tier": alerts["tier"].fillna("(none)").to_numpy(),
            "reasons": alerts["reasons"].to_numpy(),
            "evaluable": evaluable,
            "true_positive": evaluable & (label == 1),
            "contacted": contacted,
            "retained": contacted & (alerts["outcome"] == "retained").to_numpy(),
            "churned": contacted & (alerts["outcome"] == "churned").to_numpy(),
            "contacted_evaluable_kept": contacted & evaluable & (label == 0),
        }
    )
    n_evaluable = int(frame["evaluable"].sum())
    not_contacted = frame["evaluable"] & ~frame["contacted"]
    n_retained, n_churned = int(frame["retained"].sum()), int(frame["churned"].sum())
    n_contacted_evaluable = int((frame["contacted"] & frame["evaluable"]).sum())
    report = FeedbackReport(
        horizon_days=float(churn.horizon_days),
        observed_until=observed,
        n_alerts=len(frame),
        n_evaluable=n_evaluable,
        n_true_positives=int(frame["true_positive"].sum()),
        precision=_ratio(frame["true_positive"].sum(), n_evaluable),
        n_evaluable_not_contacted=int(not_contacted.sum()),
        precision_not_contacted=_ratio((frame["true_positive"] & not_contacted).sum(), not_contacted.sum()),
        n_contacted=int(frame["contacted"].sum()),
        n_retained=n_retained,
        n_churned=n_churned,
        save_rate=_ratio(n_retained, n_retained + n_churned),
        save_rate_observed=_ratio(frame["contacted_evaluable_kept"].sum(), n_contacted_evaluable),
        by_tier=_summarise(frame, "tier"),
        by_reason=_summarise(_explode_reasons(frame), "reason"),
    )
    log.info(
        "feedback report: %d alerts, %d evaluable, precision %s", report.n_alerts, report.n_evaluable, report.precision
    )
    return report


def _ratio(numerator, denominator) -> float | None:
    return float(numerator) / float(denominator) if denominator else None


def _explode_reasons(frame: pd.DataFrame) -> pd.DataFrame:
    """Return one row per alert and reason; an alert without reasons gets ``NO_REASON``."""
    exploded = frame.explode("reasons", ignore_index=True)
    return exploded.assign(reason=exploded["reasons"].fillna(NO_REASON))


def _summarise(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    grouped = frame.groupby(key, sort=True).agg(
        alerts=("alert_id", "size"),
        evaluable=("evaluable", "sum"),
        true_positives=("true_positive", "sum"),
        contacted=("contacted", "sum"),
        retained=("retained", "sum"),
        churned=("churned", "sum"),
    )
    grouped = grouped.astype("int64")
    grouped["precision"] = (grouped["true_positives"] / grouped["evaluable"].where(grouped["evaluable"] > 0)).astype("float64")
    return grouped.reset_index()


def _records(frame: pd.DataFrame) -> list[dict]:
    return frame.astype(object).where(frame.notna(), None).to_dict("records")
