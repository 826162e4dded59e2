"""The HTTP scoring API: a FastAPI app that scores customers' recent events with an exported model.

Endpoints:

- ``POST /v1/score``: churn probability, risk tier, alert flag and reasons for each customer
  in the request, as of ``as_of`` (default: now).
- ``POST /v1/outcomes``: record contacted, retained or churned for a stored alert.
- ``GET /healthz``: the process is up. ``GET /readyz``: the model is loaded and the alert
  store, if configured, responds.
- ``GET /metrics``: Prometheus metrics (requests, latency, errors, scores by tier).
- ``GET /openapi.json`` and ``GET /docs``: the OpenAPI document and its viewer.

The ``/v1`` endpoints need the header ``X-API-Key`` when keys are configured. Request
events go through the batch loader's steps (:func:`seqchurn.data.io.canonicalise` and
:func:`~seqchurn.data.io.finalise`) and then :func:`seqchurn.score.score_events`, so the API
and the batch scorer give the same probability for the same events.

:func:`create_app` loads the ONNX model once. Endpoints are plain functions, which FastAPI
runs in its thread pool, so requests are scored concurrently.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import sqlalchemy as sa
from fastapi import Depends, FastAPI, HTTPException, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import APIKeyHeader
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from seqchurn.alerts.feedback import OUTCOMES, record_outcome
from seqchurn.alerts.policy import RiskTiers
from seqchurn.alerts.reasons import ReasonSettings, explain
from seqchurn.alerts.store import AlertStore
from seqchurn.data.io import LogSpec, SourceSpec, canonicalise, finalise
from seqchurn.data.labels import to_utc
from seqchurn.data.schema import EVENT_TYPES, InputError, LoadReport
from seqchurn.score import LoadedModel, load_model, score_events

log = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
MAX_CUSTOMERS_PER_REQUEST = 1000
MAX_EVENTS_PER_CUSTOMER = 10_000
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
HORIZON_PREFIX = "p_churn_"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REQUEST_SOURCE = "request body"
"""Name that errors about request events use in place of a file name."""

EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]


def _reject_numbers(value: Any) -> Any:
    # Pydantic would read a number as epoch seconds; logs in milliseconds would then decode silently wrong.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ValueError("expected an ISO 8601 date-time string, such as 2011-12-09T14:05:00+00:00, not a number")
    return value


IsoDateTime = Annotated[dt.datetime, BeforeValidator(_reject_numbers)]


# ---- request and response bodies ----------------------------------------------------------------


class Event(BaseModel):
    """One event of a customer, in the canonical event schema (see ``seqchurn.data.schema``)."""

    model_config = ConfigDict(extra="forbid")

    ts: IsoDateTime = Field(description="ISO 8601 date-time; without a UTC offset it is read as UTC")
    event_type: EventType = Field(description="canonical event type")
    amount: float = Field(0.0, ge=0.0, allow_inf_nan=False, description="money value, >= 0 (returns are positive too)")
    quantity: float | None = Field(None, ge=0.0, allow_inf_nan=False, description="units")
    item_id: str | None = Field(None, max_length=256)
    category_id: str | None = Field(None, max_length=256)
    order_id: str | None = Field(None, max_length=256, description="invoice or order id; the lines of one order are merged")


class CustomerEvents(BaseModel):
    """A customer and their events; events at or after ``as_of`` are ignored."""

    model_config = ConfigDict(extra="forbid")

    customer_id: str = Field(min_length=1, max_length=256)
    events: list[Event] = Field(min_length=1, max_length=MAX_EVENTS_PER_CUSTOMER)


class ScoreRequest(BaseModel):
    """Customers to score as of one moment."""

    model_config = ConfigDict(extra="forbid")

    customers: list[CustomerEvents] = Field(min_length=1, max_length=MAX_CUSTOMERS_PER_REQUEST)
    as_of: str | None = Field(
        None, description="ISO 8601 date or date-time to score as of (without an offset: UTC); default: now", examples=["2011-12-09"]
    )
    explain: bool = Field(True, description="compute reasons (costs about one extra model run per candidate signal)")

    @field_validator("as_of")
    @classmethod
    def _parse_as_of(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            to_utc(value)
        except (ValueError, TypeError) as error:
            raise ValueError(f"expected an ISO 8601 date or date-time, such as 2011-12-09 ({error})") from None
        return value


class Reason(BaseModel):
    """A reason for the score: a signal in the customer's history that the model reacts to."""

    signal: str = Field(description="signal code, see seqchurn.alerts.reasons")
    text: str
    effect: float = Field(description="drop of the churn probability when the signal is neutralised")


class CustomerScore(BaseModel):
    """Score of one customer."""

    customer_id: str
    churn_probability: float
    tier: str
    alert: bool = Field(description="churn_probability >= the alert threshold")
    days_since_last_activity: float
    n_events: int = Field(description="events the model read (after merging order lines)")
    reasons: list[Reason]
    horizon_probabilities: dict[str, float] | None = Field(
        None, description="churn probability per horizon, for models that predict several (none does yet)"
    )


class NotScored(BaseModel):
    """A customer that was not scored, and why."""

    customer_id: str
    reason: str


class ScoreResponse(BaseModel):
    """Scores of the customers in a request, highest risk first."""

    model_version: str
    as_of: dt.datetime
    threshold: float
    results: list[CustomerScore]
    not_scored: list[NotScored]
    events_ignored: int = Field(description="events at or after as_of, which the model does not read")


class OutcomeRequest(BaseModel):
    """An outcome of an alert, found by ``alert_id`` or by ``customer_id`` (and ``as_of``)."""

    model_config = ConfigDict(extra="forbid")

    outcome: Literal[OUTCOMES]  # type: ignore[valid-type]
    alert_id: str | None = Field(None, max_length=64)
    customer_id: str | None = Field(None, max_length=256)
    as_of: dt.date | None = Field(None, description="with customer_id: the alert's as-of date (default: the latest)")
    at: IsoDateTime | None = Field(None, description="when it happened (default: now)")
    note: str | None = Field(None, max_length=2000)

    @model_validator(mode="after")
    def _one_key(self) -> OutcomeRequest:
        if (self.alert_id is None) == (self.customer_id is None):
            raise ValueError("give exactly one of alert_id and customer_id")
        return self


class OutcomeResponse(BaseModel):
    updated_alerts: list[str]


# ---- settings, keys and metrics -----------------------------------------------------------------


@dataclass(frozen=True)
class ServeSettings:
    """Settings of the scoring app. An empty ``api_keys`` turns authentication off."""

    model_dir: Path
    api_keys: tuple[str, ...] = ()
    tiers: RiskTiers = field(default_factory=RiskTiers)
    threshold_override: float | None = None
    reasons: ReasonSettings = field(default_factory=ReasonSettings)
    store_url: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    intra_op_threads: int = 1
    batch_size: int = 2048

    def __post_init__(self) -> None:
        if any(not key for key in self.api_keys):
            raise ValueError("API keys must not be empty")
        if int(self.max_body_bytes) < 1024:
            raise ValueError(f"Expected max_body_bytes >= 1024, but got {self.max_body_bytes!r}")


def key_digest(text: str) -> bytes:
    """Return the SHA-256 digest of a key, the form in which keys are kept and compared."""
    return hashlib.sha256(text.encode("utf-8")).digest()


def key_matches(presented: str | None, key_digests: Sequence[bytes]) -> bool:
    """Check a presented API key against the configured ones in constant time.

    Both sides are hashed first, so the comparison time does not depend on the key
    lengths, and every configured key is compared, so it does not depend on which matched.
    """
    if not presented:
        return False
    presented_digest = key_digest(presented)
    matched = False
    for digest in key_digests:
        matched |= hmac.compare_digest(presented_digest, digest)
    return matched


class Metrics:
    """Prometheus metrics of one app, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("seqchurn_api_requests", "HTTP requests by route, method and status", ["path", "method", "status"], registry=self.registry)
        self.latency = Histogram(
            "seqchurn_api_request_duration_seconds", "Time from request to response", ["path"], buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.errors = Counter("seqchurn_api_errors", "Responses with status >= 400 by route and status", ["path", "status"], registry=self.registry)
        self.scores = Counter("seqchurn_api_scores", "Customers scored, by risk tier", ["tier"], registry=self.registry)
        self.not_scored = Counter("seqchurn_api_customers_not_scored", "Customers in score requests that were not scored", registry=self.registry)


# ---- ASGI middleware ----------------------------------------------------------------------------


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """Reject request bodies over ``max_bytes`` with 413, also bodies sent without Content-Length."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _send_json(send, 400, {"detail": "invalid Content-Length header"})
                return
            if int(declared) > self.max_bytes:
                await self._reject(send)
                return

        received = 0
        exceeded = False
        started = False

        async def limited_receive():
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message) -> None:
            nonlocal started
            if exceeded:
                return  # the app's own error response for the cut-off body is replaced by 413
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            pass
        if exceeded and not started:
            await self._reject(send)

    async def _reject(self, send) -> None:
        await _send_json(send, 413, {"detail": f"request body is larger than the limit of {self.max_bytes} bytes; send fewer customers per request"})


class RecordMetrics:
    """Count requests and errors and time them, labelled by route template (unknown paths: ``other``)."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "other")
            self.metrics.requests.labels(path, scope.get("method", ""), str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - started)
            if status >= 400:
                self.metrics.errors.labels(path, str(status)).inc()


async def _send_json(send, status: int, body: dict) -> None:
    payload = json.dumps(body).encode("utf-8")
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


# ---- request events to the canonical frame ------------------------------------------------------

_API_LOG_SPEC = LogSpec(
    sources=[
        SourceSpec(
            path=REQUEST_SOURCE,
            columns={
                "customer_id": "customer_id",
                "timestamp": "ts",
                "event_type": "event_type",
                "amount": "amount",
                "quantity": "quantity",
                "item_id": "item_id",
                "category_id": "category_id",
                "order_id": "order_id",
            },
        )
    ],
    timezone="UTC",
    unknown_event_type="error",
    strict=True,
)


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


def event_owners(customers: Sequence[CustomerEvents]) -> np.ndarray:
    """Return, per event of the flattened request, the index of its customer."""
    return np.repeat(np.arange(len(customers)), [len(customer.events) for customer in customers])


def request_events(customers: Sequence[CustomerEvents]) -> pd.DataFrame:
    """Build the canonical event frame of a request with the batch loader's steps.

    Raises ``InputError`` whose row is the 1-based position of the event in the request's
    events flattened in customer order.
    """
    events = [event for customer in customers for event in customer.events]
    owner = event_owners(customers)
    table = pa.table(
        {
            "customer_id": pa.array([customers[i].customer_id for i in owner], type=pa.string()),
            "ts": pa.array([_utc(event.ts) for event in events], type=pa.timestamp("us", tz="UTC")),
            "event_type": pa.array([event.event_type for event in events], type=pa.string()),
            "amount": pa.array([event.amount for event in events], type=pa.float64()),
            "quantity": pa.array([event.quantity for event in events], type=pa.float64()),
            "item_id": pa.array([event.item_id for event in events], type=pa.string()),
            "category_id": pa.array([event.category_id for event in events], type=pa.string()),
            "order_id": pa.array([event.order_id for event in events], type=pa.string()),
        }
    )
    report = LoadReport(rows_read=table.num_rows)
    frame = canonicalise(table, _API_LOG_SPEC.sources[0], _API_LOG_SPEC, report, file=REQUEST_SOURCE)
    return finalise([frame], report)


def _validation_error(loc: Sequence[Any], message: str, value: Any = None) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": tuple(loc), "msg": message, "input": value}])


def _input_error_as_422(error: InputError, customers: Sequence[CustomerEvents]) -> RequestValidationError:
    """Turn a loader error about a flattened request row into a 422 naming the event field."""
    owner = event_owners(customers)
    loc: list[Any] = ["body", "customers"]
    if error.row is not None and 1 <= error.row <= len(owner):
        customer = int(owner[error.row - 1])
        first = int(np.searchsorted(owner, customer))
        loc += [customer, "events", error.row - 1 - first]
        if error.column:
            loc.append(error.column)
    message = str(error).removeprefix(f"file {REQUEST_SOURCE}, ")
    return _validation_error(loc, message, error.value)


# ---- the app ------------------------------------------------------------------------------------


def create_app(model_dir: str | Path | None = None, *, settings: ServeSettings | None = None, model: LoadedModel | None = None) -> FastAPI:
    """Build the scoring API for the model in ``model_dir`` (or ``settings.model_dir``).

    The model is loaded here, once per process, unless ``model`` is passed. The alert
    store is opened when ``settings.store_url`` is set. Without it ``/v1/outcomes`` returns 503.
    """
    if settings is None:
        if model_dir is None:
            raise ValueError("Expected `model_dir` or `settings`")
        settings = ServeSettings(model_dir=Path(model_dir))
    model = model or load_model(settings.model_dir, intra_op_threads=settings.intra_op_threads)
    store = AlertStore(settings.store_url) if settings.store_url else None
    key_digests = tuple(key_digest(key) for key in settings.api_keys)
    threshold = model.threshold if settings.threshold_override is None else float(settings.threshold_override)
    metrics = Metrics()
    if not key_digests:
        log.warning("the scoring API runs without API keys: anyone who can reach it can score and record outcomes")

    app = FastAPI(
        title="seqchurn scoring API",
        version="1",
        description="Churn probability, risk tier and reasons from customers' recent events.",
        lifespan=_lifespan(store),
    )
    app.state.model = model
    app.state.store = store
    app.state.metrics = metrics

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        """422 naming each invalid field, without echoing the input back.

        FastAPI's default handler echoes the rejected value, and a NaN or Infinity there
        cannot be written as JSON, which turned a 422 into a 500.
        """
        errors = [{"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in exc.errors()]
        return Response(json.dumps({"detail": errors}, default=str), status_code=422, media_type="application/json")

    api_key = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="one of the keys the server was started with")

    def require_key(key: str | None = Security(api_key)) -> None:
        if key_digests and not key_matches(key, key_digests):
            log.info("rejected a request with a %s API key", "missing" if not key else "wrong")
            raise HTTPException(status_code=401, detail=f"missing or invalid API key in the {API_KEY_HEADER} header", headers={"WWW-Authenticate": "ApiKey"})

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, str]:
        """Liveness: the process responds."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], responses={503: {"description": "not ready"}})
    def readyz(response: Response) -> dict[str, Any]:
        """Readiness: the model is loaded and the alert store, if configured, responds."""
        body: dict[str, Any] = {"status": "ready", "model_version": app.state.model.version, "store": None}
        if store is not None:
            try:
                with store.engine.connect() as conn:
                    conn.execute(sa.text("SELECT 1"))
                body["store"] = "ok"
            except sa.exc.SQLAlchemyError as error:
                log.error("readiness check failed: the alert store %r does not respond: %s", store, error)
                body.update(status="not ready", store=f"error: {type(error).__name__}")
                response.status_code = 503
        return body

    @app.get("/metrics", tags=["operations"], response_class=Response)
    def prometheus_metrics() -> Response:
        """Prometheus metrics in the text exposition format."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/score", response_model=ScoreResponse, dependencies=[Depends(require_key)], tags=["scoring"])
    def score(request: ScoreRequest) -> ScoreResponse:
        """Score the customers of the request as of ``as_of``, highest risk first."""
        return _score(request, app.state.model, settings, threshold, metrics)

    @app.post(
        "/v1/outcomes",
        response_model=OutcomeResponse,
        dependencies=[Depends(require_key)],
        tags=["alerts"],
        responses={404: {"description": "no stored alert matches"}, 503: {"description": "no alert store configured"}},
    )
    def outcomes(request: OutcomeRequest) -> OutcomeResponse:
        """Record an outcome of a stored alert."""
        if store is None:
            raise HTTPException(status_code=503, detail="outcome recording is off: start the server with an alert store (--store)")
        try:
            updated = record_outcome(
                store, request.outcome, alert_id=request.alert_id, customer_id=request.customer_id, as_of=request.as_of, at=request.at, note=request.note
            )
        except InputError as error:
            log.info("outcome %s not recorded: %s", request.outcome, error)
            raise HTTPException(status_code=404, detail=str(error).removeprefix("file arguments, ")) from None
        log.info("recorded outcome %s for alerts %s", request.outcome, updated)
        return OutcomeResponse(updated_alerts=updated)

    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RecordMetrics, metrics=metrics)
    return app


def _lifespan(store: AlertStore | None):
    @asynccontextmanager
    async def lifespan(_app):
        yield
        if store is not None:
            store.close()

    return lifespan


def _score(request: ScoreRequest, model: LoadedModel, settings: ServeSettings, threshold: float, metrics: Metrics) -> ScoreResponse:
    ids = [customer.customer_id for customer in request.customers]
    duplicated = pd.Series(ids).duplicated().to_numpy()
    if duplicated.any():
        i = int(np.flatnonzero(duplicated)[0])
        raise _validation_error(["body", "customers", i, "customer_id"], "customer_id appears twice in the request; send each customer once", ids[i])
    as_of = to_utc(request.as_of) if request.as_of else pd.Timestamp.now(tz="UTC")

    try:
        events = request_events(request.customers)
    except InputError as error:
        log.info("rejected score request events: %s", error)
        raise _input_error_as_422(error, request.customers) from None
    events_ignored = int((events["ts"] >= as_of).sum())
    scored = score_events(events, model, as_of, batch_size=settings.batch_size)
    scored = scored.sort_values(["churn_probability", "customer_id"], ascending=[False, True], kind="stable", ignore_index=True)
    probability = scored["churn_probability"].to_numpy(dtype="float64")
    tiers = settings.tiers.assign(probability)

    reasons: dict[str, list[Reason]] = {customer: [] for customer in scored["customer_id"]}
    if request.explain and len(scored):
        explanation = explain(events, scored["customer_id"], model, as_of, settings=settings.reasons)
        reported = explanation.signals.loc[explanation.signals["reported"]].sort_values(["customer_id", "position"])
        for row in reported.itertuples(index=False):
            reasons[row.customer_id].append(Reason(signal=row.signal, text=row.text, effect=float(row.effect)))

    horizon_columns = [c for c in scored.columns if c.startswith(HORIZON_PREFIX)]
    horizons = scored[horizon_columns].to_dict("records") if horizon_columns else [None] * len(scored)
    results = [
        CustomerScore(
            customer_id=customer,
            churn_probability=float(p),
            tier=str(tier),
            alert=bool(p >= threshold),
            days_since_last_activity=round(float(days), 2),
            n_events=int(n),
            reasons=reasons[customer],
            horizon_probabilities=horizon,
        )
        for customer, p, tier, days, n, horizon in zip(
            scored["customer_id"], probability, tiers, scored["days_since_last_activity"], scored["n_events"], horizons
        )
    ]
    scored_ids = set(scored["customer_id"])
    lookback = model.churn.lookback_days
    not_scored = [
        NotScored(customer_id=customer, reason=f"no activity event ({', '.join(model.churn.activity_types)}) in the {lookback:g} days before as_of")
        for customer in ids
        if customer not in scored_ids
    ]
    for tier, count in pd.Series(tiers, dtype=object).value_counts().items():
        metrics.scores.labels(str(tier)).inc(int(count))
    metrics.not_scored.inc(len(not_scored))
    return ScoreResponse(
        model_version=model.version, as_of=as_of.to_pydatetime(), threshold=threshold, results=results, not_scored=not_scored, events_ignored=events_ignored
    )
