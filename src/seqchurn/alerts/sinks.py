"""Alert delivery: file, webhook and e-mail digest sinks, and the pending-delivery loop.

``deliver_pending`` reads every pending delivery from the store, hands the alerts of each
(sink, run) pair to the sink and commits the result of each alert as soon as the sink
reports it. An alert whose delivery fails stays pending and is sent again by the next
``deliver_pending`` or ``retry``. A permanent rejection (for example HTTP 400 or 401, or
SMTP 5xx) marks it failed, and ``retry(..., include_failed=True)`` sends it again after
the cause is fixed.

Receivers see each alert at least once. The webhook sends ``Idempotency-Key: <alert_id>``
and the file sink merges by alert id, so a receiver that honours the key never processes
an alert twice. No sink has a default URL or host: everything comes from configuration.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import logging
import os
import re
import smtplib
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Protocol

import httpx
import pandas as pd
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from seqchurn.alerts.store import AlertStore, RunMeta

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Seqchurn-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
PAYLOAD_COLUMNS = (
    "alert_id",
    "run_id",
    "model_version",
    "as_of",
    "customer_id",
    "probability",
    "rank",
    "tier",
    "reasons",
    "policy_reason",
    "expected_value",
    "details",
)
RETRYABLE_HTTP_STATUS = frozenset({408, 425, 429})
"""HTTP statuses below 500 that are worth retrying; every 5xx is retried too."""
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


# ---- results, payloads and secrets --------------------------------------------------------


@dataclass(frozen=True)
class DeliveryResult:
    """Result of delivering one alert to one sink.

    ``attempts`` counts the tries made in this call. ``permanent`` marks a failure that
    repeating the same request cannot fix, so the delivery is marked failed.
    """

    alert_id: str
    delivered: bool
    attempts: int
    error: str | None = None
    permanent: bool = False


class Sink(Protocol):
    """A delivery target. ``name`` is the key of its delivery rows in the store."""

    name: str

    def deliver(self, run: RunMeta, alerts: list[dict]) -> Iterator[DeliveryResult]:
        """Send alerts of one run and yield one result per alert as soon as it is known.

        A sink may stop early, and the alerts it yielded no result for stay pending
        without a counted attempt.
        """
        ...


class TransientDeliveryError(Exception):
    """A failure that a later attempt may not see (timeout, refused connection, HTTP 503)."""


class PermanentDeliveryError(Exception):
    """A rejection that the same request will get again (HTTP 400, 401, SMTP 550)."""


def alert_payloads(alerts: pd.DataFrame) -> list[dict]:
    """Convert stored alert rows to JSON-ready dicts with the ``PAYLOAD_COLUMNS`` keys.

    ``as_of`` becomes an ISO date string and missing numbers become None.
    """
    frame = alerts.loc[:, list(PAYLOAD_COLUMNS)].copy()
    frame["as_of"] = frame["as_of"].dt.strftime("%Y-%m-%d")
    frame["rank"] = frame["rank"].astype("int64")
    frame = frame.astype(object).where(frame.notna(), None)
    return frame.to_dict("records")


def canonical_json(payload: Mapping) -> bytes:
    """Encode a payload as compact, key-sorted UTF-8 JSON; these are the bytes that get signed."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def sign_body(body: bytes, secret: bytes) -> str:
    """Return the signature header value ``sha256=<hex HMAC-SHA256 of body>``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header_value: str | None, secret: bytes) -> bool:
    """Check a signature header in constant time, as a receiver does."""
    if not header_value:
        return False
    return hmac.compare_digest(sign_body(body, secret), header_value)


def load_secret(*, env: str | None = None, file: str | os.PathLike | None = None, label: str = "secret", environ: Mapping[str, str] | None = None) -> bytes:
    """Read a secret from an environment variable or a file, never from a config value.

    Exactly one source must be given. ``environ`` defaults to ``os.environ``. A file's
    trailing newline is dropped. Errors name the variable or file, never the value.
    """
    if (env is None) == (file is None):
        raise ValueError(f"Expected exactly one of `{label}_env` and `{label}_file` to name where the {label} is, but got {'both' if env else 'neither'}")
    if env is not None:
        value = (os.environ if environ is None else environ).get(env)
        if not value:
            raise ValueError(f"The {label} environment variable {env} is not set or empty; export it before delivering alerts")
        return value.encode("utf-8")
    path = Path(file).expanduser()
    try:
        value = path.read_bytes().rstrip(b"\r\n")
    except OSError as error:
        raise ValueError(f"Cannot read the {label} file {path}: {error.strerror}") from error
    if not value:
        raise ValueError(f"The {label} file {path} is empty")
    return value


# ---- retries ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of one delivery, with exponential backoff and full jitter.

    Before retry ``n`` (1-based) the sink sleeps a uniform random time in
    ``[0, min(backoff_max_s, backoff_base_s * 2 ** (n - 1))]``. It stops after
    ``max_attempts`` attempts, or before a sleep that would end more than ``max_total_s``
    seconds after the first attempt started. The total can still exceed ``max_total_s``
    by the duration of the last attempt (at most the request timeout).
    """

    max_attempts: int = 5
    max_total_s: float = 60.0
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or int(self.max_attempts) != self.max_attempts or self.max_attempts < 1:
            raise ValueError(f"Expected `max_attempts` to be an integer >= 1, but got {self.max_attempts!r}")
        for name in ("max_total_s", "backoff_base_s", "backoff_max_s"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"Expected `{name}` > 0 seconds, but got {getattr(self, name)!r}")

    def retrying(self, sleep: Callable[[float], None], describe: str) -> Retrying:
        """Return a tenacity ``Retrying`` that retries ``TransientDeliveryError`` and re-raises the last error."""

        def log_retry(state: RetryCallState) -> None:
            log.warning(
                "%s: attempt %d failed (%s); retrying in %.2f s",
                describe,
                state.attempt_number,
                state.outcome.exception() if state.outcome else "no outcome",
                state.upcoming_sleep,
            )

        return Retrying(
            stop=stop_after_attempt(int(self.max_attempts)) | stop_before_delay(float(self.max_total_s)),
            wait=wait_random_exponential(multiplier=float(self.backoff_base_s), max=float(self.backoff_max_s)),
            retry=retry_if_exception_type(TransientDeliveryError),
            sleep=sleep,
            before_sleep=log_retry,
            reraise=True,
        )

    @classmethod
    def from_config(cls, config: Mapping) -> RetryPolicy:
        return cls(**{key: config[key] for key in ("max_attempts", "max_total_s", "backoff_base_s", "backoff_max_s") if key in config})


def _run_with_retries(policy: RetryPolicy, sleep: Callable[[float], None], describe: str, action: Callable[[], None]) -> tuple[int, Exception | None]:
    """Run ``action`` under ``policy`` and return (attempts made, final error or None)."""
    attempts = 0
    try:
        for attempt in policy.retrying(sleep, describe):
            with attempt:
                attempts += 1
                action()
    except (TransientDeliveryError, PermanentDeliveryError) as error:
        return attempts, error
    return attempts, None


def _result(alert_id: str, attempts: int, error: Exception | None) -> DeliveryResult:
    if error is None:
        return DeliveryResult(alert_id, True, attempts)
    return DeliveryResult(alert_id, False, attempts, error=str(error), permanent=isinstance(error, PermanentDeliveryError))


# ---- file sink ----------------------------------------------------------------------------


def _atomic_write(path: Path, write: Callable[[io.TextIOBase], None]) -> None:
    """Write a file through a temporary file in the same folder and ``os.replace``."""
    handle = tempfile.NamedTemporaryFile("w", encoding="utf-8", newline="", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def _file_stem(run_id: str) -> str:
    safe = _SAFE_NAME.sub("_", run_id)
    if safe == run_id:
        return f"alerts-{run_id}"
    # Two run ids that differ only in unsafe characters still get different files.
    return f"alerts-{safe}-{hashlib.sha256(run_id.encode()).hexdigest()[:8]}"


class FileSink:
    """Write each run's alerts to ``<directory>/alerts-<run_id>.<csv|jsonl>``.

    A later delivery for the same run merges into the file by ``alert_id``, so the file
    never contains an alert twice. In CSV, ``reasons`` is a JSON list and each ``details``
    key becomes its own column.
    """

    FORMATS = ("jsonl", "csv")

    def __init__(self, name: str, directory: str | os.PathLike, *, format: str = "jsonl") -> None:
        if format not in self.FORMATS:
            raise ValueError(f"Expected file sink format in {list(self.FORMATS)}, but got {format!r}")
        self.name = name
        self.directory = Path(directory).expanduser()
        self.format = format

    def __repr__(self) -> str:
        return f"FileSink({self.name!r}, {str(self.directory)!r}, format={self.format!r})"

    def path_for(self, run_id: str) -> Path:
        return self.directory / f"{_file_stem(run_id)}.{self.format}"

    def deliver(self, run: RunMeta, alerts: list[dict]) -> Iterator[DeliveryResult]:
        path = self.path_for(run.run_id)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if self.format == "jsonl":
                self._write_jsonl(path, alerts)
            else:
                self._write_csv(path, alerts)
        except (OSError, ValueError) as error:
            log.error("file sink %s: writing %d alerts of run %s to %s failed: %s", self.name, len(alerts), run.run_id, path, error)
            message = f"writing {path} failed: {error}"
            for alert in alerts:
                yield DeliveryResult(alert["alert_id"], False, 1, error=message)
            return
        log.info("file sink %s: wrote %d alerts of run %s to %s", self.name, len(alerts), run.run_id, path)
        for alert in alerts:
            yield DeliveryResult(alert["alert_id"], True, 1)

    def _write_jsonl(self, path: Path, alerts: list[dict]) -> None:
        new = pd.DataFrame(alerts, columns=list(PAYLOAD_COLUMNS))
        frame = new
        if path.exists():
            old = pd.read_json(path, lines=True, dtype=False)
            old["customer_id"] = old["customer_id"].astype(str)
            frame = pd.concat([old, new], ignore_index=True).drop_duplicates("alert_id", keep="last")
        frame = frame.sort_values(["rank", "customer_id"], kind="stable")
        text = frame.to_json(orient="records", lines=True, force_ascii=False, double_precision=15)
        _atomic_write(path, lambda handle: handle.write(text))

    def _write_csv(self, path: Path, alerts: list[dict]) -> None:
        new = pd.DataFrame(alerts, columns=list(PAYLOAD_COLUMNS))
        details = pd.json_normalize(new["details"].tolist()) if len(new) else pd.DataFrame()
        details.index = new.index
        new = pd.concat([new.drop(columns="details"), details], axis=1)
        new["reasons"] = new["reasons"].map(json.dumps)
        frame = new
        if path.exists():
            # Existing rows are read and written back as text, so their values do not change.
            old = pd.read_csv(path, dtype=str, keep_default_na=False)
            frame = pd.concat([old, new.astype(object).where(new.notna(), "")], ignore_index=True)
            frame = frame.drop_duplicates("alert_id", keep="last")
            frame = frame.iloc[pd.to_numeric(frame["rank"]).argsort(kind="stable")]
        _atomic_write(path, lambda handle: frame.to_csv(handle, index=False, quoting=csv.QUOTE_MINIMAL, lineterminator="\n"))


# ---- webhook sink -------------------------------------------------------------------------


class WebhookSink:
    """POST each alert as JSON to a configured URL, signed with HMAC-SHA256.

    Headers: ``X-Seqchurn-Signature: sha256=<hex>`` over the exact body bytes and
    ``Idempotency-Key: <alert_id>``. Transport errors, 5xx, 408, 425 and 429 are retried
    under ``retry``. Any other non-2xx status is a permanent failure. After
    ``defer_after_failures`` alerts in a row fail (permanently or out of retries), the rest
    of the batch stays pending for the next run, so that a receiver that is down or rejects
    everything does not get one request series per alert.

    NOTE: a ``Retry-After`` header is not read. The backoff alone spaces the retries.
    """

    def __init__(
        self,
        name: str,
        url: str,
        secret: bytes,
        *,
        retry: RetryPolicy | None = None,
        timeout_s: float = 10.0,
        defer_after_failures: int = 3,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"Expected an http(s) webhook URL with a host, but got {url!r}")
        if not secret:
            raise ValueError("Expected a non-empty webhook secret")
        if parsed.scheme == "http" and parsed.host not in ("127.0.0.1", "::1", "localhost"):
            log.warning("webhook sink %s posts to %s over plain http: alerts travel unencrypted", name, parsed.host)
        if not float(timeout_s) > 0:
            raise ValueError(f"Expected `timeout_s` > 0, but got {timeout_s!r}")
        if int(defer_after_failures) < 1:
            raise ValueError(f"Expected `defer_after_failures` >= 1, but got {defer_after_failures!r}")
        self.name = name
        self.url = url
        self._secret = secret
        self.retry = retry or RetryPolicy()
        self.timeout_s = float(timeout_s)
        self.defer_after_failures = int(defer_after_failures)
        self._sleep = sleep
        self._transport = transport

    def __repr__(self) -> str:
        return f"WebhookSink({self.name!r}, {self.url!r})"

    def deliver(self, run: RunMeta, alerts: list[dict]) -> Iterator[DeliveryResult]:
        failures_in_row = 0
        with httpx.Client(timeout=self.timeout_s, transport=self._transport, follow_redirects=False) as client:
            for position, alert in enumerate(alerts):
                alert_id = alert["alert_id"]
                body = canonical_json(alert)
                headers = {
                    "Content-Type": "application/json",
                    SIGNATURE_HEADER: sign_body(body, self._secret),
                    IDEMPOTENCY_HEADER: alert_id,
                    "User-Agent": "seqchurn-alerts",
                }

                def post() -> None:
                    self._post(client, body, headers)

                attempts, error = _run_with_retries(self.retry, self._sleep, f"webhook {self.name} alert {alert_id}", post)
                result = _result(alert_id, attempts, error)
                if error is None:
                    failures_in_row = 0
                else:
                    log.error("webhook %s: alert %s of run %s not delivered after %d attempts: %s", self.name, alert_id, run.run_id, attempts, error)
                    failures_in_row += 1
                yield result
                if failures_in_row >= self.defer_after_failures:
                    left = len(alerts) - position - 1
                    if left:
                        log.warning(
                            "webhook %s: %d alerts in a row failed, so %d remaining alerts of run %s stay pending for the next run",
                            self.name,
                            failures_in_row,
                            left,
                            run.run_id,
                        )
                    return

    def _post(self, client: httpx.Client, body: bytes, headers: Mapping[str, str]) -> None:
        try:
            response = client.post(self.url, content=body, headers=headers)
        except httpx.TransportError as error:
            raise TransientDeliveryError(f"{type(error).__name__}: {error}") from error
        if response.is_success:
            return
        message = f"HTTP {response.status_code} from {self.url}: {response.text[:200]}"
        if response.status_code >= 500 or response.status_code in RETRYABLE_HTTP_STATUS:
            raise TransientDeliveryError(message)
        raise PermanentDeliveryError(message)


# ---- e-mail digest sink -------------------------------------------------------------------


class EmailDigestSink:
    """Send one e-mail per run listing its pending alerts, with all of them attached as CSV.

    The body lists at most ``max_rows`` alerts, best rank first. The Message-ID is derived
    from the run and alert ids, so a resent digest carries the same id.

    NOTE: SMTP has no idempotency key. If the connection drops after the server accepted
    the message but before it confirmed, the digest is sent again on the next run.
    """

    def __init__(
        self,
        name: str,
        host: str,
        from_addr: str,
        to_addrs: Sequence[str],
        *,
        port: int = 587,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = True,
        use_ssl: bool = False,
        timeout_s: float = 30.0,
        max_rows: int = 200,
        subject_prefix: str = "[seqchurn]",
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not host:
            raise ValueError("Expected an SMTP `host` for the e-mail sink, but got none")
        if isinstance(to_addrs, str) or not to_addrs:
            raise ValueError(f"Expected `to_addrs` to be a non-empty list of addresses, but got {to_addrs!r}")
        if "@" not in from_addr:
            raise ValueError(f"Expected `from_addr` to be an e-mail address, but got {from_addr!r}")
        if starttls and use_ssl:
            raise ValueError("Set at most one of `starttls` and `use_ssl`")
        if username and not (starttls or use_ssl):
            raise ValueError("SMTP login without `starttls` or `use_ssl` would send the password in clear text; enable one")
        self.name = name
        self.host = host
        self.port = int(port)
        self.from_addr = from_addr
        self.to_addrs = list(to_addrs)
        self.username = username
        self._password = password
        self.starttls = starttls
        self.use_ssl = use_ssl
        self.timeout_s = float(timeout_s)
        self.max_rows = int(max_rows)
        self.subject_prefix = subject_prefix
        self.retry = retry or RetryPolicy()
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"EmailDigestSink({self.name!r}, '{self.host}:{self.port}', to={self.to_addrs!r})"

    def build_message(self, run: RunMeta, alerts: list[dict]) -> EmailMessage:
        """Build the digest for the alerts of one run."""
        frame = pd.DataFrame(alerts, columns=list(PAYLOAD_COLUMNS)).sort_values("rank", kind="stable")
        message = EmailMessage()
        message["Subject"] = f"{self.subject_prefix} {len(frame)} churn alerts as of {run.as_of.isoformat()} (run {run.run_id})"
        message["From"] = self.from_addr
        message["To"] = ", ".join(self.to_addrs)
        message["Date"] = formatdate(localtime=False, usegmt=True)
        digest = hashlib.sha256("\n".join([run.run_id, *sorted(frame["alert_id"])]).encode()).hexdigest()[:32]
        message["Message-ID"] = f"<{digest}@{self.from_addr.rsplit('@', 1)[1]}>"

        listed = frame.head(self.max_rows)
        table = pd.DataFrame(
            {
                "rank": listed["rank"],
                "customer_id": listed["customer_id"],
                "probability": listed["probability"].map("{:.3f}".format),
                "tier": listed["tier"],
                "reasons": listed["reasons"].map(lambda reasons: ", ".join(reasons or [])),
            }
        )
        lines = [
            f"Run {run.run_id}, model {run.model_version}, as of {run.as_of.isoformat()}: {len(frame)} churn alerts.",
            "",
            table.to_string(index=False) if len(table) else "(no alerts)",
        ]
        if len(frame) > len(listed):
            lines += ["", f"{len(frame) - len(listed)} more alerts are in the attached CSV."]
        message.set_content("\n".join(lines) + "\n")

        attachment = frame.assign(reasons=frame["reasons"].map(json.dumps), details=frame["details"].map(json.dumps))
        message.add_attachment(
            attachment.to_csv(index=False).encode("utf-8"),
            maintype="text",
            subtype="csv",
            filename=f"{_file_stem(run.run_id)}.csv",
        )
        return message

    def deliver(self, run: RunMeta, alerts: list[dict]) -> Iterator[DeliveryResult]:
        if not alerts:
            return
        message = self.build_message(run, alerts)

        def send() -> None:
            self._send(message)

        attempts, error = _run_with_retries(self.retry, self._sleep, f"e-mail {self.name} run {run.run_id}", send)
        if error is None:
            log.info("e-mail %s: sent the digest of %d alerts of run %s to %d recipients", self.name, len(alerts), run.run_id, len(self.to_addrs))
        else:
            log.error("e-mail %s: digest of run %s not sent after %d attempts: %s", self.name, run.run_id, attempts, error)
        for alert in alerts:
            yield _result(alert["alert_id"], attempts, error)

    def _send(self, message: EmailMessage) -> None:
        smtp_class = smtplib.SMTP_SSL if self.use_ssl else smtplib.SMTP
        try:
            with smtp_class(self.host, self.port, timeout=self.timeout_s) as smtp:
                if self.starttls:
                    smtp.starttls()
                if self.username:
                    smtp.login(self.username, self._password or "")
                rejected = smtp.send_message(message, from_addr=self.from_addr, to_addrs=self.to_addrs)
        except smtplib.SMTPRecipientsRefused as error:
            codes = [code for code, _ in error.recipients.values()]
            kind = TransientDeliveryError if any(400 <= code < 500 for code in codes) else PermanentDeliveryError
            raise kind(f"the server rejected all recipients: {error.recipients}") from error
        except smtplib.SMTPResponseException as error:
            kind = TransientDeliveryError if 400 <= error.smtp_code < 500 or error.smtp_code < 0 else PermanentDeliveryError
            raise kind(f"SMTP {error.smtp_code}: {error.smtp_error!r}") from error
        except smtplib.SMTPNotSupportedError as error:
            raise PermanentDeliveryError(f"SMTP server {self.host} does not support a required command: {error}") from error
        except (smtplib.SMTPException, OSError) as error:
            raise TransientDeliveryError(f"{type(error).__name__}: {error}") from error
        if rejected:
            log.warning("e-mail %s: the server rejected some recipients: %s", self.name, rejected)


# ---- configuration ------------------------------------------------------------------------

SINK_KINDS = ("file", "webhook", "email")
_RETRY_KEYS = ("max_attempts", "max_total_s", "backoff_base_s", "backoff_max_s")
_SINK_KEYS = {
    "file": {"kind", "directory", "format"},
    "webhook": {"kind", "url", "secret_env", "secret_file", "timeout_s", "defer_after_failures", *_RETRY_KEYS},
    "email": {
        "kind",
        "host",
        "port",
        "from_addr",
        "to_addrs",
        "username",
        "password_env",
        "password_file",
        "starttls",
        "use_ssl",
        "timeout_s",
        "max_rows",
        "subject_prefix",
        *_RETRY_KEYS,
    },
}


def build_sinks(config: Mapping[str, Mapping], *, environ: Mapping[str, str] | None = None, sleep: Callable[[float], None] = time.sleep) -> list[Sink]:
    """Build sinks from ``{name: settings}``, such as a Hydra config section.

    ``settings["kind"]`` is one of ``SINK_KINDS`` and defaults to the name. Webhook secrets
    and SMTP passwords come from ``*_env`` (a variable in ``environ``, by default
    ``os.environ``) or ``*_file``.
    """
    sinks: list[Sink] = []
    for name, settings in config.items():
        if not isinstance(settings, Mapping):
            raise ValueError(f"Expected sink {name!r} to be a mapping of settings, but got {settings!r}")
        kind = settings.get("kind", name)
        if kind not in SINK_KINDS:
            raise ValueError(f"Sink {name!r} has unknown kind {kind!r}; set `kind` to one of {list(SINK_KINDS)}")
        if "secret" in settings or "password" in settings:
            raise ValueError(
                f"Sink {name!r} has a secret in its config, which would end up in logs and saved configs; "
                "name an environment variable with `secret_env`/`password_env` or a file with `secret_file`/`password_file`"
            )
        unknown = sorted(set(settings) - _SINK_KEYS[kind])
        if unknown:
            raise ValueError(f"Unknown keys {unknown} for {kind} sink {name!r}; expected some of {sorted(_SINK_KEYS[kind])}")
        sinks.append(_build_sink(str(name), kind, settings, environ, sleep))
    _index_sinks(sinks)
    return sinks


def _build_sink(name: str, kind: str, settings: Mapping, environ: Mapping[str, str] | None, sleep: Callable[[float], None]) -> Sink:
    if kind == "file":
        if not settings.get("directory"):
            raise ValueError(f"File sink {name!r} needs `directory`")
        return FileSink(name, settings["directory"], format=settings.get("format", "jsonl"))
    retry = RetryPolicy.from_config(settings)
    if kind == "webhook":
        if not settings.get("url"):
            raise ValueError(f"Webhook sink {name!r} needs `url`; there is no default")
        secret = load_secret(env=settings.get("secret_env"), file=settings.get("secret_file"), label="secret", environ=environ)
        return WebhookSink(
            name,
            settings["url"],
            secret,
            retry=retry,
            timeout_s=settings.get("timeout_s", 10.0),
            defer_after_failures=settings.get("defer_after_failures", 3),
            sleep=sleep,
        )
    password = None
    if settings.get("password_env") or settings.get("password_file"):
        password = load_secret(env=settings.get("password_env"), file=settings.get("password_file"), label="password", environ=environ).decode("utf-8")
    for key in ("host", "from_addr", "to_addrs"):
        if not settings.get(key):
            raise ValueError(f"E-mail sink {name!r} needs `{key}`; there is no default")
    return EmailDigestSink(
        name,
        settings["host"],
        settings["from_addr"],
        list(settings["to_addrs"]),
        port=settings.get("port", 587),
        username=settings.get("username"),
        password=password,
        starttls=settings.get("starttls", True),
        use_ssl=settings.get("use_ssl", False),
        timeout_s=settings.get("timeout_s", 30.0),
        max_rows=settings.get("max_rows", 200),
        subject_prefix=settings.get("subject_prefix", "[seqchurn]"),
        retry=retry,
        sleep=sleep,
    )


def _index_sinks(sinks: Iterable[Sink]) -> dict[str, Sink]:
    by_name: dict[str, Sink] = {}
    for sink in sinks:
        if sink.name in by_name:
            raise ValueError(f"Two sinks are named {sink.name!r}; sink names must be unique")
        by_name[sink.name] = sink
    return by_name


# ---- the delivery loop --------------------------------------------------------------------


def _zero_counts() -> dict[str, int]:
    return {"delivered": 0, "pending": 0, "failed": 0, "deferred": 0}


@dataclass
class DeliveryReport:
    """Counts of one delivery pass per sink: delivered, still pending, failed and deferred.

    ``deferred`` alerts were not attempted because their sink stopped the batch early.
    ``unconfigured`` counts pending deliveries for sinks that were not passed in.
    """

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    unconfigured: dict[str, int] = field(default_factory=dict)

    def total(self, key: str) -> int:
        return sum(sink_counts[key] for sink_counts in self.counts.values())

    @property
    def complete(self) -> bool:
        """True when every pending delivery found by the pass was delivered."""
        return self.total("pending") == 0 and self.total("failed") == 0 and self.total("deferred") == 0 and not self.unconfigured

    def to_dict(self) -> dict:
        return {"counts": {name: dict(c) for name, c in self.counts.items()}, "unconfigured": dict(self.unconfigured)}


def deliver_pending(store: AlertStore, sinks: Iterable[Sink], *, run_id: str | None = None) -> DeliveryReport:
    """Send every pending delivery of the given sinks and commit each alert's result.

    ``run_id`` restricts the pass to one run. Pending deliveries for sinks that are not in
    ``sinks`` stay pending and are counted in a warning.

    NOTE: deliveries are not locked, so two passes running at once send the same alerts
    twice. A webhook receiver drops the repeat by its idempotency key and the file sink
    merges by alert id, but the e-mail digest goes out twice. Run one pass at a time.
    """
    by_name = _index_sinks(sinks)
    report = DeliveryReport(counts={name: _zero_counts() for name in by_name})
    pending = store.pending(run_id=run_id)
    configured = pending["sink"].isin(list(by_name)).to_numpy()
    report.unconfigured = {str(k): int(v) for k, v in pending.loc[~configured].groupby("sink").size().items()}
    if report.unconfigured:
        log.warning("pending deliveries for sinks that are not configured stay pending: %s", report.unconfigured)

    for (sink_name, group_run_id), group in pending.loc[configured].groupby(["sink", "run_id"], sort=False):
        _deliver_group(store, by_name[sink_name], store.get_run(group_run_id), group, report.counts[sink_name])

    log.info("delivery pass finished: %s", report.to_dict())
    return report


def _deliver_group(store: AlertStore, sink: Sink, run: RunMeta, group: pd.DataFrame, counts: dict[str, int]) -> None:
    payloads = alert_payloads(group)
    finished: set[str] = set()
    results = iter(sink.deliver(run, payloads))
    while True:
        try:
            result = next(results)
        except StopIteration:
            break
        except Exception as error:
            # A sink that raises (a bug, or an error it does not classify) must not stop the
            # other sinks. Its unfinished alerts stay pending with the error recorded.
            log.exception("sink %s raised while delivering run %s; its unfinished alerts stay pending", sink.name, run.run_id)
            message = f"{type(error).__name__}: {error}"
            for alert in payloads:
                if alert["alert_id"] not in finished:
                    store.mark_delivery(alert["alert_id"], sink.name, delivered=False, attempts=1, error=message)
                    counts["pending"] += 1
                    finished.add(alert["alert_id"])
            break
        # Store errors are not caught: the next pass resends this alert with the same id.
        store.mark_delivery(
            result.alert_id, sink.name, delivered=result.delivered, attempts=result.attempts, error=result.error, permanent=result.permanent
        )
        finished.add(result.alert_id)
        if result.delivered:
            counts["delivered"] += 1
        elif result.permanent:
            counts["failed"] += 1
        else:
            counts["pending"] += 1
    counts["deferred"] += len(payloads) - len(finished)


def retry(store: AlertStore, sinks: Iterable[Sink], *, include_failed: bool = False, run_id: str | None = None) -> DeliveryReport:
    """Send pending deliveries again, and with ``include_failed`` also those marked failed."""
    sinks = list(sinks)
    if include_failed:
        for sink in sinks:
            store.requeue_failed(run_id=run_id, sink=sink.name)
    return deliver_pending(store, sinks, run_id=run_id)
