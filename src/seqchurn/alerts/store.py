"""The alert store: runs, alerts, delivery status per sink and outcomes, in SQL.

Any SQLAlchemy URL works. The default is a SQLite file in the working directory.

Tables:

- ``runs``: one row per scoring run (``run_id``, ``model_version``, ``as_of``, the
  threshold and policy used, and counts).
- ``alerts``: one row per alerted customer and run. ``alert_id`` is the SHA-256 of run id,
  customer id and as_of date, so recording the same run twice adds no rows. Outcome
  columns (``contacted_at``, ``outcome``, ``outcome_at``, ``outcome_note``) are filled later
  by :mod:`seqchurn.alerts.feedback`.
- ``deliveries``: one row per alert and sink with ``status`` (pending, delivered or
  failed), ``attempts`` and ``last_error``.

A run, its alerts and their pending deliveries are written in one transaction, so a crash
leaves either the whole run or nothing. Delivery status is committed per alert.

NOTE: the schema is created with ``create_all`` and has no migrations. A later change to
these tables needs a migration (for example with Alembic) for existing databases.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from seqchurn.alerts.policy import PROBABILITY, VALUE_COLUMNS, normalize_reasons, validate_scores
from seqchurn.data.labels import to_utc

log = logging.getLogger(__name__)

DEFAULT_URL = "sqlite:///seqchurn-alerts.sqlite"
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
DELIVERY_STATUSES = (PENDING, DELIVERED, FAILED)
HORIZON_COLUMN_PREFIX = "p_churn_"
# Probabilities are compared with this slack so that a rise from 0.6 to 0.7 counts as
# a rise of 0.1 although 0.7 - 0.6 < 0.1 in floating point.
RISE_TOLERANCE = 1e-9
_ID_CHUNK = 500

metadata = sa.MetaData()

runs_table = sa.Table(
    "runs",
    metadata,
    sa.Column("run_id", sa.String(128), primary_key=True),
    sa.Column("model_version", sa.String(128), nullable=False),
    sa.Column("as_of", sa.Date, nullable=False),
    sa.Column("threshold", sa.Float, nullable=True),
    sa.Column("policy", sa.JSON(none_as_null=True), nullable=True),
    sa.Column("n_scored", sa.Integer, nullable=True),
    sa.Column("n_selected", sa.Integer, nullable=False),
    sa.Column("n_suppressed", sa.Integer, nullable=False),
    sa.Column("n_alerts", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

alerts_table = sa.Table(
    "alerts",
    metadata,
    sa.Column("alert_id", sa.String(64), primary_key=True),
    sa.Column("run_id", sa.String(128), sa.ForeignKey("runs.run_id"), nullable=False, index=True),
    sa.Column("model_version", sa.String(128), nullable=False),
    sa.Column("as_of", sa.Date, nullable=False, index=True),
    sa.Column("customer_id", sa.String(256), nullable=False),
    sa.Column("probability", sa.Float, nullable=False),
    sa.Column("rank", sa.Integer, nullable=True),
    sa.Column("tier", sa.String(32), nullable=True),
    sa.Column("reasons", sa.JSON, nullable=False),
    sa.Column("policy_reason", sa.Text, nullable=True),
    sa.Column("expected_value", sa.Float, nullable=True),
    sa.Column("details", sa.JSON, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("contacted_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("outcome", sa.String(16), nullable=True),
    sa.Column("outcome_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("outcome_note", sa.Text, nullable=True),
    sa.Index("ix_alerts_customer_as_of", "customer_id", "as_of"),
)

deliveries_table = sa.Table(
    "deliveries",
    metadata,
    sa.Column("alert_id", sa.String(64), sa.ForeignKey("alerts.alert_id"), primary_key=True),
    sa.Column("sink", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint(f"status IN {DELIVERY_STATUSES!r}", name="ck_deliveries_status"),
    sa.Index("ix_deliveries_sink_status", "sink", "status"),
)


def to_date(value: dt.date | str | pd.Timestamp) -> dt.date:
    """Parse an as_of date. Timestamps are read as UTC and must be at midnight."""
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    try:
        ts = to_utc(value)
    except (ValueError, TypeError) as error:
        raise ValueError(f"Expected an as_of date such as '2024-05-31', but got {value!r}") from error
    if ts != ts.normalize():
        raise ValueError(f"Expected an as_of date (midnight UTC), but got the time {ts.isoformat()}; pass the date only")
    return ts.date()


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class RunMeta:
    """Run-level metadata of one batch scoring: what the store keys alerts on."""

    run_id: str
    model_version: str
    as_of: dt.date
    threshold: float | None = None

    def __post_init__(self) -> None:
        for name in ("run_id", "model_version"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"Expected `{name}` to be a non-empty string, but got {value!r}")
        object.__setattr__(self, "as_of", to_date(self.as_of))
        if self.threshold is not None and not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(f"Expected the model threshold in [0, 1], but got {self.threshold!r}")


@dataclass(frozen=True)
class Suppression:
    """Suppression of repeated alerts.

    A customer with an alert from another run whose as_of is fewer than ``window_days``
    days before (or on) this run's as_of is not alerted again, unless their churn
    probability is at least ``min_rise`` above the most recent such alert. Suppressed
    customers get no alert row, so the next comparison is again against the last alert
    that was raised. ``window_days = 0`` turns suppression off.
    """

    window_days: int = 30
    min_rise: float = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.window_days, bool) or int(self.window_days) != self.window_days or self.window_days < 0:
            raise ValueError(f"Expected `suppression.window_days` to be a non-negative integer, but got {self.window_days!r}")
        if not 0.0 <= float(self.min_rise) <= 1.0:
            raise ValueError(f"Expected `suppression.min_rise` in [0, 1], but got {self.min_rise!r}")


@dataclass
class RecordResult:
    """Result of ``AlertStore.record_run``: counts, the recorded alert ids and the suppressed customers.

    ``alert_ids`` lists the alerts of this recording that are stored, new or not.
    ``suppressed`` has one row per suppressed customer with ``customer_id``,
    ``probability``, ``prior_alert_id``, ``prior_as_of`` and ``prior_probability``.
    """

    run_id: str
    new_run: bool
    n_selected: int
    n_new: int
    n_existing: int
    n_suppressed: int
    alert_ids: list[str]
    suppressed: pd.DataFrame = field(repr=False)


def make_alert_ids(run_id: str, customer_ids: Iterable[str], as_of: dt.date) -> list[str]:
    """Return the deterministic alert id (hex SHA-256) of each customer in a run."""
    prefix = f"{run_id}\x1f"
    suffix = f"\x1f{as_of.isoformat()}"
    # hashlib has no vectorised form, so this is one call per alert (not per scored customer).
    return [hashlib.sha256(f"{prefix}{customer}{suffix}".encode()).hexdigest() for customer in customer_ids]


def _to_utc_series(values: pd.Series) -> pd.Series:
    """Convert to ``datetime64[ns, UTC]``, the unit of the canonical event frame; naive values are UTC."""
    converted = pd.to_datetime(values)
    if converted.dt.tz is None:
        converted = converted.dt.tz_localize("UTC")
    return converted.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")


def _frame(conn: Connection, statement: sa.Select) -> pd.DataFrame:
    result = conn.execute(statement)
    return pd.DataFrame(result.all(), columns=list(result.keys()))


def _chunks(values: Sequence, size: int = _ID_CHUNK) -> Iterable[Sequence]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _sqlite_url(url: str | os.PathLike) -> str:
    """Turn a plain file path into a SQLite URL and create the file's folder."""
    text = os.fspath(url)
    if "://" not in text:
        text = f"sqlite:///{Path(text).expanduser()}"
    parsed = sa.make_url(text)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return text


class AlertStore:
    """SQL store of alert runs, alerts, deliveries and outcomes."""

    def __init__(self, url: str | os.PathLike = DEFAULT_URL, *, engine: Engine | None = None) -> None:
        """Open (and create if needed) the store at ``url``, a SQLAlchemy URL or a SQLite file path."""
        if engine is None:
            engine = sa.create_engine(_sqlite_url(url))
        if engine.dialect.name == "sqlite":
            sa.event.listen(engine, "connect", _enable_sqlite_foreign_keys)
        self.engine = engine
        metadata.create_all(engine)

    @classmethod
    def from_config(cls, config: Mapping) -> AlertStore:
        """Open the store named by ``config["url"]`` (SQLAlchemy URL or file path), or the default."""
        unknown = sorted(set(config) - {"url"})
        if unknown:
            raise ValueError(f"Unknown alert store keys {unknown}; expected `url`")
        return cls(config.get("url") or DEFAULT_URL)

    def __repr__(self) -> str:
        return f"AlertStore({self.engine.url.render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        self.engine.dispose()

    # ---- recording runs -------------------------------------------------------------------

    def record_run(
        self,
        run: RunMeta,
        alerts: pd.DataFrame,
        *,
        sinks: Sequence[str] = (),
        suppression: Suppression | None = None,
        policy: Mapping | None = None,
        n_scored: int | None = None,
    ) -> RecordResult:
        """Record a run and its selected alerts, with a pending delivery per alert and sink.

        ``alerts`` is the output of ``select_alerts``. Suppressed customers are dropped,
        counted and logged. Recording a run that is already stored is idempotent: alerts
        already there are kept as they are, and only missing alerts and delivery rows are
        added. A stored run with the same ``run_id`` but another model version or as_of
        raises ``ValueError``. Everything is written in one transaction.
        """
        validate_scores(alerts)
        suppression = suppression or Suppression()
        sinks = list(dict.fromkeys(sinks))
        alert_ids = make_alert_ids(run.run_id, alerts["customer_id"].astype(str), run.as_of)
        candidates = alerts.assign(alert_id=alert_ids)
        now = utc_now()

        with self.engine.begin() as conn:
            stored_run = conn.execute(sa.select(runs_table).where(runs_table.c.run_id == run.run_id)).mappings().first()
            if stored_run is not None:
                _check_same_run(stored_run, run)
            stored_ids = set(
                conn.execute(sa.select(alerts_table.c.alert_id).where(alerts_table.c.run_id == run.run_id)).scalars()
            )
            is_new = ~candidates["alert_id"].isin(stored_ids).to_numpy()
            suppressed = self._find_suppressed(conn, run, candidates.loc[is_new], suppression)
            to_insert = candidates.loc[is_new & ~candidates["customer_id"].isin(suppressed["customer_id"]).to_numpy()]

            if stored_run is None:
                conn.execute(
                    sa.insert(runs_table).values(
                        run_id=run.run_id,
                        model_version=run.model_version,
                        as_of=run.as_of,
                        threshold=run.threshold,
                        policy=dict(policy) if policy is not None else None,
                        n_scored=n_scored,
                        n_selected=len(alerts),
                        n_suppressed=len(suppressed),
                        n_alerts=len(to_insert),
                        created_at=now,
                    )
                )
            if len(to_insert):
                conn.execute(sa.insert(alerts_table), _alert_rows(to_insert, run, now))
            if stored_run is not None:
                n_alerts = conn.execute(
                    sa.select(sa.func.count()).select_from(alerts_table).where(alerts_table.c.run_id == run.run_id)
                ).scalar_one()
                conn.execute(sa.update(runs_table).where(runs_table.c.run_id == run.run_id).values(n_alerts=n_alerts))
            recorded_ids = candidates.loc[~is_new, "alert_id"].tolist() + to_insert["alert_id"].tolist()
            self._add_missing_deliveries(conn, recorded_ids, sinks)

        n_existing = int((~is_new).sum())
        if len(suppressed):
            log.info(
                "run %s: suppressed %d of %d selected customers alerted within the last %d days "
                "whose churn probability rose by less than %.3f",
                run.run_id,
                len(suppressed),
                len(alerts),
                suppression.window_days,
                suppression.min_rise,
            )
        if stored_run is not None:
            log.info("run %s was already recorded: %d alerts already stored, %d added", run.run_id, n_existing, len(to_insert))
        log.info("run %s: recorded %d new alerts for sinks %s", run.run_id, len(to_insert), sinks)
        return RecordResult(
            run_id=run.run_id,
            new_run=stored_run is None,
            n_selected=len(alerts),
            n_new=len(to_insert),
            n_existing=n_existing,
            n_suppressed=len(suppressed),
            alert_ids=recorded_ids,
            suppressed=suppressed,
        )

    def _find_suppressed(self, conn: Connection, run: RunMeta, candidates: pd.DataFrame, suppression: Suppression) -> pd.DataFrame:
        columns = ["customer_id", "probability", "prior_alert_id", "prior_as_of", "prior_probability"]
        if suppression.window_days == 0 or candidates.empty:
            return pd.DataFrame(columns=columns)
        window_start = run.as_of - dt.timedelta(days=int(suppression.window_days) - 1)
        prior = _frame(
            conn,
            sa.select(
                alerts_table.c.customer_id,
                alerts_table.c.alert_id.label("prior_alert_id"),
                alerts_table.c.as_of.label("prior_as_of"),
                alerts_table.c.probability.label("prior_probability"),
                alerts_table.c.created_at,
            ).where(
                alerts_table.c.as_of >= window_start,
                alerts_table.c.as_of <= run.as_of,
                alerts_table.c.run_id != run.run_id,
            ),
        )
        if prior.empty:
            return pd.DataFrame(columns=columns)
        latest = prior.sort_values(["prior_as_of", "created_at", "prior_alert_id"]).drop_duplicates("customer_id", keep="last")
        current = pd.DataFrame(
            {"customer_id": candidates["customer_id"].astype(str).to_numpy(), "probability": candidates[PROBABILITY].to_numpy(dtype="float64")}
        )
        merged = current.merge(latest.drop(columns="created_at"), on="customer_id", how="inner")
        rise = merged["probability"] - merged["prior_probability"]
        return merged.loc[rise < float(suppression.min_rise) - RISE_TOLERANCE, columns].reset_index(drop=True)

    def _add_missing_deliveries(self, conn: Connection, alert_ids: Sequence[str], sinks: Sequence[str]) -> None:
        if not alert_ids or not sinks:
            return
        existing: set[tuple[str, str]] = set()
        for chunk in _chunks(alert_ids):
            rows = conn.execute(
                sa.select(deliveries_table.c.alert_id, deliveries_table.c.sink).where(deliveries_table.c.alert_id.in_(chunk))
            )
            existing.update((row.alert_id, row.sink) for row in rows)
        missing = [
            {"alert_id": alert_id, "sink": sink, "status": PENDING, "attempts": 0}
            for alert_id in alert_ids
            for sink in sinks
            if (alert_id, sink) not in existing
        ]
        if missing:
            conn.execute(sa.insert(deliveries_table), missing)

    # ---- reading --------------------------------------------------------------------------

    def get_run(self, run_id: str) -> RunMeta:
        """Return the metadata of a stored run, raising ``KeyError`` if it is not stored."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(runs_table).where(runs_table.c.run_id == run_id)).mappings().first()
        if row is None:
            raise KeyError(f"Run {run_id!r} is not in the alert store")
        return RunMeta(run_id=row["run_id"], model_version=row["model_version"], as_of=row["as_of"], threshold=row["threshold"])

    def runs(self) -> pd.DataFrame:
        """Return all stored runs, oldest first."""
        with self.engine.connect() as conn:
            frame = _frame(conn, sa.select(runs_table).order_by(runs_table.c.created_at))
        return _convert_times(frame, ("as_of", "created_at"))

    def alerts(
        self,
        *,
        run_id: str | None = None,
        alert_ids: Sequence[str] | None = None,
        customer_ids: Sequence[str] | None = None,
        since: dt.date | str | None = None,
        until: dt.date | str | None = None,
    ) -> pd.DataFrame:
        """Return stored alerts, filtered by run, ids, customers or an inclusive as_of range.

        ``as_of`` comes back as a UTC midnight timestamp, the scoring cutoff.
        """
        statement = sa.select(alerts_table)
        if run_id is not None:
            statement = statement.where(alerts_table.c.run_id == run_id)
        if since is not None:
            statement = statement.where(alerts_table.c.as_of >= to_date(since))
        if until is not None:
            statement = statement.where(alerts_table.c.as_of <= to_date(until))
        frames = []
        with self.engine.connect() as conn:
            if alert_ids is None and customer_ids is None:
                frames.append(_frame(conn, statement))
            else:
                column, values = (
                    (alerts_table.c.alert_id, list(alert_ids)) if alert_ids is not None else (alerts_table.c.customer_id, list(customer_ids))
                )
                frames.extend(_frame(conn, statement.where(column.in_(chunk))) for chunk in _chunks(values))
                if not frames:
                    frames.append(_frame(conn, statement.where(sa.false())))
        frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        frame = _convert_times(frame, ("as_of", "created_at", "contacted_at", "outcome_at"))
        frame["expected_value"] = pd.to_numeric(frame["expected_value"]).astype("float64")
        return frame.sort_values(["as_of", "run_id", "rank", "customer_id"], kind="stable").reset_index(drop=True)

    def deliveries(self, *, run_id: str | None = None, sink: str | None = None, status: str | None = None) -> pd.DataFrame:
        """Return delivery rows joined with their alert's run, customer and probability."""
        statement = sa.select(
            deliveries_table,
            alerts_table.c.run_id,
            alerts_table.c.customer_id,
            alerts_table.c.probability,
        ).join(alerts_table, alerts_table.c.alert_id == deliveries_table.c.alert_id)
        if run_id is not None:
            statement = statement.where(alerts_table.c.run_id == run_id)
        if sink is not None:
            statement = statement.where(deliveries_table.c.sink == sink)
        if status is not None:
            if status not in DELIVERY_STATUSES:
                raise ValueError(f"Expected a delivery status in {list(DELIVERY_STATUSES)}, but got {status!r}")
            statement = statement.where(deliveries_table.c.status == status)
        with self.engine.connect() as conn:
            frame = _frame(conn, statement.order_by(alerts_table.c.run_id, alerts_table.c.rank, deliveries_table.c.sink))
        return _convert_times(frame, ("last_attempt_at", "delivered_at"))

    def pending(self, *, run_id: str | None = None, sinks: Sequence[str] | None = None) -> pd.DataFrame:
        """Return pending deliveries with every alert column, the ``sink`` and its ``attempts`` so far."""
        statement = (
            sa.select(alerts_table, deliveries_table.c.sink, deliveries_table.c.attempts, deliveries_table.c.last_error)
            .join(deliveries_table, alerts_table.c.alert_id == deliveries_table.c.alert_id)
            .join(runs_table, runs_table.c.run_id == alerts_table.c.run_id)
            .where(deliveries_table.c.status == PENDING)
            .order_by(runs_table.c.created_at, alerts_table.c.run_id, deliveries_table.c.sink, alerts_table.c.rank, alerts_table.c.customer_id)
        )
        if run_id is not None:
            statement = statement.where(alerts_table.c.run_id == run_id)
        if sinks is not None:
            statement = statement.where(deliveries_table.c.sink.in_(list(sinks)))
        with self.engine.connect() as conn:
            frame = _frame(conn, statement)
        frame["expected_value"] = pd.to_numeric(frame["expected_value"]).astype("float64")
        return _convert_times(frame, ("as_of", "created_at", "contacted_at", "outcome_at"))

    # ---- delivery status ------------------------------------------------------------------

    def mark_delivery(self, alert_id: str, sink: str, *, delivered: bool, attempts: int, error: str | None = None, permanent: bool = False) -> None:
        """Commit the result of one delivery attempt series for an alert and sink.

        ``attempts`` is added to the stored count. A failure keeps the delivery pending
        unless ``permanent``, which marks it failed so that only ``requeue_failed`` retries it.
        """
        now = utc_now()
        if delivered:
            values = {"status": DELIVERED, "delivered_at": now, "last_error": None}
        else:
            values = {"status": FAILED if permanent else PENDING, "last_error": error}
        if attempts:
            values["last_attempt_at"] = now
        with self.engine.begin() as conn:
            result = conn.execute(
                sa.update(deliveries_table)
                .where(deliveries_table.c.alert_id == alert_id, deliveries_table.c.sink == sink)
                .values(attempts=deliveries_table.c.attempts + int(attempts), **values)
            )
        if result.rowcount != 1:
            raise KeyError(f"No delivery of alert {alert_id!r} to sink {sink!r} in the alert store")

    def requeue_failed(self, *, run_id: str | None = None, sink: str | None = None) -> int:
        """Set failed deliveries back to pending, keeping attempts and last_error. Returns how many."""
        statement = sa.update(deliveries_table).where(deliveries_table.c.status == FAILED).values(status=PENDING)
        if sink is not None:
            statement = statement.where(deliveries_table.c.sink == sink)
        if run_id is not None:
            statement = statement.where(
                deliveries_table.c.alert_id.in_(sa.select(alerts_table.c.alert_id).where(alerts_table.c.run_id == run_id))
            )
        with self.engine.begin() as conn:
            count = conn.execute(statement).rowcount
        log.info("requeued %d failed deliveries (run %s, sink %s)", count, run_id or "any", sink or "any")
        return count

    # ---- outcomes -------------------------------------------------------------------------

    def update_outcomes(self, updates: pd.DataFrame) -> int:
        """Write outcome columns for alerts, one row per alert id.

        ``updates`` has ``alert_id`` and any of ``contacted_at``, ``outcome``,
        ``outcome_at`` and ``outcome_note``. Null cells leave the stored value unchanged.
        Returns the number of alerts updated.
        """
        settable = ("contacted_at", "outcome", "outcome_at", "outcome_note")
        count = 0
        with self.engine.begin() as conn:
            for column in settable:
                if column not in updates.columns:
                    continue
                present = updates.loc[updates[column].notna(), ["alert_id", column]]
                if present.empty:
                    continue
                values = present[column]
                if column in ("contacted_at", "outcome_at"):
                    values = _to_utc_series(values).dt.to_pydatetime()
                params = [{"key": key, "value": value} for key, value in zip(present["alert_id"], values)]
                conn.execute(
                    sa.update(alerts_table)
                    .where(alerts_table.c.alert_id == sa.bindparam("key"))
                    .values({column: sa.bindparam("value")}),
                    params,
                )
            count = len(updates["alert_id"].unique())
        return count


def _enable_sqlite_foreign_keys(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    # Write-ahead log with synchronous=NORMAL: a commit no longer waits for an fsync, which
    # made one commit per delivered alert the slowest step of a scoring run. A process crash
    # loses nothing; a power cut may lose the last commits, which the next delivery pass
    # then sends again under the same idempotency keys.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _check_same_run(stored: Mapping, run: RunMeta) -> None:
    if stored["model_version"] != run.model_version or stored["as_of"] != run.as_of:
        raise ValueError(
            f"Run {run.run_id!r} is already stored for model {stored['model_version']!r} as of {stored['as_of']}, "
            f"but this recording is for model {run.model_version!r} as of {run.as_of}; give a new run a new run_id"
        )


def _convert_times(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    for column in columns:
        if column in frame.columns:
            frame[column] = _to_utc_series(frame[column])
    return frame


def _nullable(values: pd.DataFrame) -> pd.DataFrame:
    """Return an object frame with None in place of NaN, so that it can go to SQL and JSON."""
    return values.astype(object).where(values.notna(), None)


def _alert_rows(alerts: pd.DataFrame, run: RunMeta, created_at: dt.datetime) -> list[dict]:
    reasons = normalize_reasons(alerts["reasons"] if "reasons" in alerts.columns else None, len(alerts))
    detail_columns = [c for c in alerts.columns if c.startswith(HORIZON_COLUMN_PREFIX) or c in VALUE_COLUMNS]
    details = _nullable(alerts[detail_columns]).to_dict("records") if detail_columns else [{} for _ in range(len(alerts))]
    expected_value = alerts["expected_value"] if "expected_value" in alerts.columns else pd.Series(np.nan, index=alerts.index)
    optional = _nullable(
        pd.DataFrame(
            {
                "tier": alerts["tier"] if "tier" in alerts.columns else None,
                "policy_reason": alerts["policy_reason"] if "policy_reason" in alerts.columns else None,
                "expected_value": pd.to_numeric(expected_value, errors="coerce"),
            },
            index=alerts.index,
        )
    )
    rows = pd.DataFrame(
        {
            "alert_id": alerts["alert_id"].to_numpy(),
            "run_id": run.run_id,
            "model_version": run.model_version,
            "as_of": run.as_of,
            "customer_id": alerts["customer_id"].astype(str).to_numpy(),
            "probability": alerts[PROBABILITY].to_numpy(dtype="float64"),
            "rank": alerts["rank"].to_numpy(dtype="int64"),
            "tier": optional["tier"].to_numpy(),
            "policy_reason": optional["policy_reason"].to_numpy(),
            "expected_value": optional["expected_value"].to_numpy(),
            "reasons": pd.Series(reasons, dtype=object).to_numpy(),
            "details": pd.Series(details, dtype=object).to_numpy(),
            "created_at": created_at,
        }
    )
    return rows.to_dict("records")
