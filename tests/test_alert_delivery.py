"""Alert delivery against real loopback receivers: a webhook server and an SMTP server.

Every server binds 127.0.0.1 on an ephemeral port, and every test has a timeout.
"""

from __future__ import annotations

import email
import hashlib
import hmac
import io
import json
import logging
import os
import socket
import threading
from email import policy as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest
from aiosmtpd.controller import Controller

from seqchurn.alerts.pipeline import AlertSettings, process_scores
from seqchurn.alerts.policy import AlertPolicy, BudgetRule, select_alerts
from seqchurn.alerts.sinks import (
    EmailDigestSink,
    FileSink,
    RetryPolicy,
    WebhookSink,
    build_sinks,
    canonical_json,
    deliver_pending,
    load_secret,
    retry,
    verify_signature,
)
from seqchurn.alerts.store import AlertStore, RunMeta, Suppression

pytestmark = pytest.mark.timeout(60)

SECRET = b"test-secret-\x00\xff-bytes"


# ---- loopback servers -------------------------------------------------------------------------


class WebhookReceiver:
    """Webhook receiver that checks the HMAC signature and processes each idempotency key once.

    The first ``fail_first`` requests get ``fail_status``. With ``fail_after_processing`` the
    receiver processes those requests before failing, as when a response is lost.
    """

    def __init__(self, secret: bytes, *, fail_first: int = 0, fail_status: int = 503, fail_after_processing: bool = False) -> None:
        self.secret = secret
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.fail_after_processing = fail_after_processing
        self.lock = threading.Lock()
        self.n_requests = 0
        self.bad_signatures = 0
        self.duplicates = 0
        self.processed: dict[str, dict] = {}
        self.process_count: dict[str, int] = {}
        self.headers: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.handle(body, dict(self.headers))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def handle(self, body: bytes, headers: dict) -> int:
        with self.lock:
            self.n_requests += 1
            number = self.n_requests
            self.headers.append(headers)
            expected = "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(expected, headers.get("X-Seqchurn-Signature", "")):
                self.bad_signatures += 1
                return 401
            failing = number <= self.fail_first
            if failing and not self.fail_after_processing:
                return self.fail_status
            key = headers["Idempotency-Key"]
            if key in self.processed:
                self.duplicates += 1
            else:
                self.processed[key] = json.loads(body)
                self.process_count[key] = self.process_count.get(key, 0) + 1
            return self.fail_status if failing else 200

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class DigestCollector:
    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd naming
        self.messages.append(envelope)
        return "250 Message accepted for delivery"

    def __init__(self) -> None:
        self.messages = []


class LoopbackSMTP(Controller):
    """aiosmtpd controller that reads back the ephemeral port it was given with ``port=0``."""

    def _trigger_server(self):
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@pytest.fixture
def smtp_server():
    collector = DigestCollector()
    controller = LoopbackSMTP(collector, hostname="127.0.0.1", port=0, ready_timeout=10)
    controller.start()
    yield controller, collector
    controller.stop()


def free_port() -> int:
    """Return a loopback port with nothing listening (it was just released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- store helpers ----------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    store = AlertStore(tmp_path / "alerts.sqlite")
    yield store
    store.close()


def make_scores(n: int = 3, offset: float = 0.0) -> pd.DataFrame:
    probability = [round(0.9 - 0.1 * i + offset, 4) for i in range(n)]
    return pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(n)],
            "churn_probability": probability,
            "rank": list(range(1, n + 1)),
            "reasons": [["recency", "returns"]] + [["frequency"]] * (n - 1),
            "p_churn_30d": [p / 2 for p in probability],
        }
    )


def record(store: AlertStore, sinks, run_id: str = "r1", as_of: str = "2024-03-31", n: int = 3) -> list[str]:
    alerts = select_alerts(make_scores(n), AlertPolicy(), model_threshold=0.0)
    run = RunMeta(run_id=run_id, model_version="m1", as_of=as_of, threshold=0.0)
    return store.record_run(run, alerts, sinks=[s.name for s in sinks], suppression=Suppression(window_days=0)).alert_ids


class RecordingSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def statuses(store: AlertStore, sink: str) -> pd.DataFrame:
    return store.deliveries(sink=sink).set_index("alert_id")


# ---- webhook --------------------------------------------------------------------------------


def test_webhook_signed_and_delivered(store):
    with WebhookReceiver(SECRET) as receiver:
        sink = WebhookSink("hook", receiver.url, SECRET, sleep=RecordingSleep())
        ids = record(store, [sink])
        report = deliver_pending(store, [sink])

    assert report.counts["hook"] == {"delivered": 3, "pending": 0, "failed": 0, "deferred": 0}
    assert report.complete
    assert receiver.bad_signatures == 0
    assert sorted(receiver.processed) == sorted(ids)
    payload = receiver.processed[ids[0]]
    assert payload["customer_id"] == "c0"
    assert payload["as_of"] == "2024-03-31"
    assert payload["reasons"] == ["recency", "returns"]
    assert payload["details"] == {"p_churn_30d": 0.45}
    assert payload["probability"] == 0.9
    assert payload["tier"] == "high"
    header = receiver.headers[0]
    assert header["Content-Type"] == "application/json"
    assert header["X-Seqchurn-Signature"].startswith("sha256=")
    assert len(header["X-Seqchurn-Signature"]) == len("sha256=") + 64
    rows = statuses(store, "hook")
    assert (rows["status"] == "delivered").all()
    assert (rows["attempts"] == 1).all()


def test_signature_helpers_match_hmac():
    body = canonical_json({"b": 1, "a": [1.5, None]})
    assert body == b'{"a":[1.5,null],"b":1}'
    header = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    assert verify_signature(body, header, SECRET)
    assert not verify_signature(body + b" ", header, SECRET)
    assert not verify_signature(body, None, SECRET)


def test_webhook_wrong_secret_fails_permanently(store):
    sleep = RecordingSleep()
    with WebhookReceiver(SECRET) as receiver:
        wrong = WebhookSink("hook", receiver.url, b"wrong secret", sleep=sleep)
        ids = record(store, [wrong])
        report = deliver_pending(store, [wrong])
        rows = statuses(store, "hook")
        assert report.counts["hook"]["failed"] == 3
        assert (rows["status"] == "failed").all()
        assert (rows["attempts"] == 1).all()
        assert rows["last_error"].str.contains("HTTP 401").all()
        assert sleep.delays == []
        assert receiver.processed == {}

        # A failed delivery is not retried on its own, but `retry --include-failed` is.
        assert deliver_pending(store, [wrong]).total("failed") == 0
        assert receiver.n_requests == 3
        fixed = WebhookSink("hook", receiver.url, SECRET, sleep=sleep)
        report = retry(store, [fixed], include_failed=True)

    assert report.counts["hook"]["delivered"] == 3
    assert sorted(receiver.processed) == sorted(ids)
    assert (statuses(store, "hook")["attempts"] == 2).all()


def test_flaky_receiver_retries_then_recovers(store):
    sleep = RecordingSleep()
    policy = RetryPolicy(max_attempts=3, backoff_base_s=0.5, backoff_max_s=4.0)
    with WebhookReceiver(SECRET, fail_first=4) as receiver:
        sink = WebhookSink("hook", receiver.url, SECRET, retry=policy, sleep=sleep)
        ids = record(store, [sink])

        # Requests 1-3 (c0) fail, so c0 stays pending. Request 4 (c1) fails and 5 succeeds.
        first = deliver_pending(store, [sink])
        rows = statuses(store, "hook")
        assert first.counts["hook"] == {"delivered": 2, "pending": 1, "failed": 0, "deferred": 0}
        assert rows.loc[ids[0], "status"] == "pending"
        assert rows.loc[ids[0], "attempts"] == 3
        assert "HTTP 503" in rows.loc[ids[0], "last_error"]
        assert rows.loc[ids[1], "status"] == "delivered"
        assert rows.loc[ids[1], "attempts"] == 2
        assert len(sleep.delays) == 3
        assert receiver.n_requests == 6

        second = deliver_pending(store, [sink])
        assert second.counts["hook"]["delivered"] == 1
        assert statuses(store, "hook").loc[ids[0], "attempts"] == 4

        third = deliver_pending(store, [sink])
        assert third.counts["hook"] == {"delivered": 0, "pending": 0, "failed": 0, "deferred": 0}

    assert receiver.n_requests == 7
    assert sorted(receiver.processed) == sorted(ids)
    assert set(receiver.process_count.values()) == {1}
    assert receiver.duplicates == 0
    assert (statuses(store, "hook")["status"] == "delivered").all()


def test_lost_response_processed_once(store):
    # The receiver processes the first two requests but responds with 503, as if the response
    # were lost. The retries carry the same Idempotency-Key, so nothing is processed twice.
    with WebhookReceiver(SECRET, fail_first=2, fail_after_processing=True) as receiver:
        sink = WebhookSink("hook", receiver.url, SECRET, retry=RetryPolicy(max_attempts=5), sleep=RecordingSleep())
        ids = record(store, [sink])
        report = deliver_pending(store, [sink])

    assert report.counts["hook"]["delivered"] == 3
    assert receiver.n_requests == 5
    assert receiver.duplicates == 2
    assert set(receiver.process_count.values()) == {1}
    assert sorted(receiver.processed) == sorted(ids)
    keys = [h["Idempotency-Key"] for h in receiver.headers]
    assert keys[:3] == [ids[0]] * 3


def test_backoff_has_full_jitter_bounds(store):
    sleep = RecordingSleep()
    policy = RetryPolicy(max_attempts=7, max_total_s=1000.0, backoff_base_s=0.5, backoff_max_s=4.0)
    with WebhookReceiver(SECRET, fail_first=10**6, fail_status=500) as receiver:
        sink = WebhookSink("hook", receiver.url, SECRET, retry=policy, sleep=sleep, defer_after_failures=1)
        record(store, [sink], n=1)
        deliver_pending(store, [sink])

    assert receiver.n_requests == 7
    assert len(sleep.delays) == 6
    for retry_number, delay in enumerate(sleep.delays, start=1):
        assert 0.0 <= delay <= min(4.0, 0.5 * 2 ** (retry_number - 1))


def test_total_time_bounds_retries(store):
    # Real sleeps: the attempt cap (1000) is far away, so only max_total_s can stop it.
    sleep = RecordingSleep()

    def real_sleep(seconds: float) -> None:
        sleep(seconds)
        threading.Event().wait(seconds)

    policy = RetryPolicy(max_attempts=1000, max_total_s=0.3, backoff_base_s=0.02, backoff_max_s=0.05)
    with WebhookReceiver(SECRET, fail_first=10**6) as receiver:
        sink = WebhookSink("hook", receiver.url, SECRET, retry=policy, sleep=real_sleep)
        ids = record(store, [sink], n=1)
        deliver_pending(store, [sink])

    assert receiver.n_requests < 1000
    assert sum(sleep.delays) <= 0.3
    assert statuses(store, "hook").loc[ids[0], "status"] == "pending"
    assert statuses(store, "hook").loc[ids[0], "attempts"] == receiver.n_requests


def test_unreachable_receiver_defers_batch(store, caplog):
    sleep = RecordingSleep()
    url = f"http://127.0.0.1:{free_port()}/hook"
    sink = WebhookSink("hook", url, SECRET, retry=RetryPolicy(max_attempts=2), timeout_s=2.0, sleep=sleep, defer_after_failures=1)
    ids = record(store, [sink])
    with caplog.at_level(logging.WARNING, logger="seqchurn.alerts.sinks"):
        report = deliver_pending(store, [sink])

    assert report.counts["hook"] == {"delivered": 0, "pending": 1, "failed": 0, "deferred": 2}
    rows = statuses(store, "hook")
    assert rows.loc[ids[0], "attempts"] == 2
    assert "ConnectError" in rows.loc[ids[0], "last_error"]
    assert (rows.loc[ids[1:], "attempts"] == 0).all()
    assert (rows["status"] == "pending").all()
    assert "2 remaining alerts of run r1 stay pending" in caplog.text


# ---- secrets and configuration ------------------------------------------------------------------


def test_secret_from_env_or_file(tmp_path, monkeypatch):
    assert load_secret(env="HOOK_SECRET", environ={"HOOK_SECRET": "abc"}) == b"abc"
    monkeypatch.setenv("SEQCHURN_TEST_HOOK_SECRET", "from-os-environ")
    assert load_secret(env="SEQCHURN_TEST_HOOK_SECRET") == b"from-os-environ"
    path = tmp_path / "secret"
    path.write_bytes(b"from-file\n")
    assert load_secret(file=path) == b"from-file"
    with pytest.raises(ValueError, match="HOOK_SECRET is not set") as error:
        load_secret(env="HOOK_SECRET", environ={})
    assert "abc" not in str(error.value)
    with pytest.raises(ValueError, match="exactly one"):
        load_secret()
    with pytest.raises(ValueError, match="Cannot read"):
        load_secret(file=tmp_path / "missing")


def test_build_sinks_from_config(tmp_path):
    config = {
        "archive": {"kind": "file", "directory": str(tmp_path / "out"), "format": "csv"},
        "webhook": {"url": "http://127.0.0.1:9/hook", "secret_env": "HOOK_SECRET", "max_attempts": 2},
        "email": {"host": "127.0.0.1", "port": 2525, "from_addr": "a@example.org", "to_addrs": ["b@example.org"], "starttls": False},
    }
    sinks = build_sinks(config, environ={"HOOK_SECRET": "super-secret-value"})
    assert [type(s) for s in sinks] == [FileSink, WebhookSink, EmailDigestSink]
    assert [s.name for s in sinks] == ["archive", "webhook", "email"]
    assert sinks[1].retry.max_attempts == 2
    assert "super-secret-value" not in repr(sinks[1])


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"webhook": {"secret_env": "HOOK_SECRET"}}, "needs `url`; there is no default"),
        ({"webhook": {"url": "http://127.0.0.1:9/", "secret": "inline"}}, "secret in its config"),
        ({"email": {"from_addr": "a@example.org", "to_addrs": ["b@example.org"]}}, "needs `host`; there is no default"),
        ({"pager": {"url": "x"}}, "unknown kind 'pager'"),
        ({"webhook": {"url": "ftp://127.0.0.1/", "secret_env": "HOOK_SECRET"}}, "http"),
        ({"archive": {"kind": "file", "directory": "x", "fmt": "csv"}}, r"Unknown keys \['fmt'\]"),
    ],
)
def test_build_sinks_invalid(config, message):
    with pytest.raises(ValueError, match=message):
        build_sinks(config, environ={"HOOK_SECRET": "s"})


def test_duplicate_sink_names_raise(tmp_path):
    sinks = [FileSink("out", tmp_path), FileSink("out", tmp_path)]
    with pytest.raises(ValueError, match="Two sinks are named 'out'"):
        deliver_pending(AlertStore(tmp_path / "a.sqlite"), sinks)


# ---- file sinks -------------------------------------------------------------------------------


def test_jsonl_file_sink_merges_without_duplicates(store, tmp_path):
    sink = FileSink("archive", tmp_path / "out", format="jsonl")
    ids = record(store, [sink], n=2)
    deliver_pending(store, [sink])
    path = sink.path_for("r1")
    lines = path.read_text().splitlines()
    assert [json.loads(line)["alert_id"] for line in lines] == ids
    assert json.loads(lines[0])["reasons"] == ["recency", "returns"]
    assert json.loads(lines[0])["details"] == {"p_churn_30d": 0.45}

    # Re-delivering the run (after a requeue, or a crash before marking) keeps one line per alert.
    ids = record(store, [sink], n=3)
    store.mark_delivery(ids[0], "archive", delivered=False, attempts=0, error="simulated crash before marking")
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE deliveries SET status = 'pending'")
    deliver_pending(store, [sink])
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["alert_id"] for r in records] == ids
    assert [r["customer_id"] for r in records] == ["c0", "c1", "c2"]
    assert list(path.parent.glob(".*.tmp")) == []


def test_csv_file_sink(store, tmp_path):
    sink = FileSink("archive", tmp_path / "out", format="csv")
    ids = record(store, [sink], n=2)
    deliver_pending(store, [sink])
    frame = pd.read_csv(sink.path_for("r1"), dtype=str)
    assert frame["alert_id"].tolist() == ids
    assert json.loads(frame["reasons"].iloc[0]) == ["recency", "returns"]
    assert frame["p_churn_30d"].astype(float).tolist() == [0.45, 0.4]

    ids = record(store, [sink], n=3)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE deliveries SET status = 'pending'")
    deliver_pending(store, [sink])
    frame = pd.read_csv(sink.path_for("r1"), dtype=str)
    assert frame["alert_id"].tolist() == ids
    assert frame["probability"].astype(float).tolist() == [0.9, 0.8, 0.7]


def test_file_sink_failure_keeps_old_file(store, tmp_path, monkeypatch):
    sink = FileSink("archive", tmp_path / "out", format="jsonl")
    record(store, [sink], n=1)
    deliver_pending(store, [sink])
    path = sink.path_for("r1")
    before = path.read_bytes()

    ids = record(store, [sink], run_id="r1", n=2)

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    report = deliver_pending(store, [sink])
    monkeypatch.undo()

    assert report.counts["archive"]["pending"] == 1
    assert path.read_bytes() == before
    assert list(path.parent.glob(".*.tmp")) == []
    rows = statuses(store, "archive")
    assert "No space left on device" in rows.loc[ids[1], "last_error"]

    assert deliver_pending(store, [sink]).counts["archive"]["delivered"] == 1
    assert len(path.read_text().splitlines()) == 2


def test_file_name_for_unsafe_run_id(tmp_path):
    sink = FileSink("archive", tmp_path)
    assert sink.path_for("2024-03-31_m1").name == "alerts-2024-03-31_m1.jsonl"
    unsafe = sink.path_for("a/b")
    assert unsafe.parent == tmp_path
    assert unsafe.name.startswith("alerts-a_b-")
    assert sink.path_for("a/b") != sink.path_for("a:b")


# ---- e-mail digest ----------------------------------------------------------------------------


def make_email_sink(controller, **kwargs) -> EmailDigestSink:
    return EmailDigestSink(
        "email",
        controller.hostname,
        "alerts@example.org",
        ["crm@example.org", "ops@example.org"],
        port=controller.port,
        starttls=False,
        timeout_s=5.0,
        sleep=RecordingSleep(),
        **kwargs,
    )


def test_email_digest_per_run(store, smtp_server):
    controller, collector = smtp_server
    sink = make_email_sink(controller, max_rows=2)
    first_ids = record(store, [sink], run_id="r1", n=3)
    record(store, [sink], run_id="r2", as_of="2024-04-30", n=1)

    report = deliver_pending(store, [sink])
    assert report.counts["email"]["delivered"] == 4
    assert len(collector.messages) == 2

    envelope = collector.messages[0]
    assert envelope.mail_from == "alerts@example.org"
    assert envelope.rcpt_tos == ["crm@example.org", "ops@example.org"]
    message = email.message_from_bytes(envelope.content, policy=email_policy.default)
    assert message["Subject"] == "[seqchurn] 3 churn alerts as of 2024-03-31 (run r1)"
    body = message.get_body(preferencelist=("plain",)).get_content()
    assert "c0" in body
    assert "c1" in body
    assert "recency, returns" in body
    assert "1 more alerts are in the attached CSV" in body
    attachments = list(message.iter_attachments())
    assert len(attachments) == 1
    attached = pd.read_csv(io.BytesIO(attachments[0].get_content().encode()), dtype=str)
    assert attached["alert_id"].tolist() == first_ids

    assert deliver_pending(store, [sink]).total("delivered") == 0
    assert len(collector.messages) == 2


def test_email_server_down_then_up(store, smtp_server):
    controller, collector = smtp_server
    down = EmailDigestSink(
        "email",
        "127.0.0.1",
        "alerts@example.org",
        ["crm@example.org"],
        port=free_port(),
        starttls=False,
        timeout_s=2.0,
        retry=RetryPolicy(max_attempts=2),
        sleep=RecordingSleep(),
    )
    ids = record(store, [down], n=2)
    report = deliver_pending(store, [down])
    assert report.counts["email"]["pending"] == 2
    rows = statuses(store, "email")
    assert (rows["attempts"] == 2).all()
    assert rows["last_error"].str.contains("ConnectionRefusedError").all()

    up = make_email_sink(controller)
    assert deliver_pending(store, [up]).counts["email"]["delivered"] == 2
    assert len(collector.messages) == 1
    assert sorted(statuses(store, "email").index) == sorted(ids)


def test_email_login_without_tls_rejected():
    with pytest.raises(ValueError, match="clear text"):
        EmailDigestSink("email", "127.0.0.1", "a@example.org", ["b@example.org"], username="u", password="p", starttls=False)


# ---- the delivery loop and the pipeline ---------------------------------------------------------


def test_unconfigured_sink_stays_pending(store, tmp_path, caplog):
    archive = FileSink("archive", tmp_path / "out")
    record(store, [archive, FileSink("old-hook", tmp_path)], n=2)
    with caplog.at_level(logging.WARNING, logger="seqchurn.alerts.sinks"):
        report = deliver_pending(store, [archive])
    assert report.unconfigured == {"old-hook": 2}
    assert not report.complete
    assert "old-hook" in caplog.text
    assert len(store.pending(sinks=["old-hook"])) == 2


def test_raising_sink_does_not_stop_others(store, tmp_path, caplog):
    class BrokenSink:
        name = "broken"

        def deliver(self, run, alerts):
            raise RuntimeError("bug in a custom sink")
            yield  # pragma: no cover - makes this a generator

    archive = FileSink("archive", tmp_path / "out")
    ids = record(store, [BrokenSink(), archive], n=2)
    with caplog.at_level(logging.ERROR, logger="seqchurn.alerts.sinks"):
        report = deliver_pending(store, [BrokenSink(), archive])
    assert report.counts["archive"]["delivered"] == 2
    assert report.counts["broken"]["pending"] == 2
    rows = statuses(store, "broken")
    assert rows.loc[ids[0], "last_error"] == "RuntimeError: bug in a custom sink"
    assert "sink broken raised" in caplog.text


def test_process_scores_rerun_sends_nothing_twice(store, tmp_path):
    policy = AlertPolicy(budget=BudgetRule(top_k=2))
    run = RunMeta("r1", "m1", "2024-03-31", threshold=0.5)
    with WebhookReceiver(SECRET, fail_first=1) as receiver:
        sinks = [
            WebhookSink("hook", receiver.url, SECRET, retry=RetryPolicy(max_attempts=1), sleep=RecordingSleep()),
            FileSink("archive", tmp_path / "out"),
        ]
        first = process_scores(make_scores(4), run, policy=policy, store=store, sinks=sinks)
        assert first.record.n_new == 2
        assert first.delivery.counts["hook"] == {"delivered": 1, "pending": 1, "failed": 0, "deferred": 0}

        second = process_scores(make_scores(4), run, policy=policy, store=store, sinks=sinks)
        assert second.record.n_new == 0
        assert second.delivery.counts["hook"]["delivered"] == 1
        assert second.delivery.complete

    assert receiver.n_requests == 3
    assert sorted(receiver.processed) == sorted(first.record.alert_ids)
    assert set(receiver.process_count.values()) == {1}
    assert len(FileSink("archive", tmp_path / "out").path_for("r1").read_text().splitlines()) == 2


def test_process_scores_zero_alerts_warns(store, caplog):
    run = RunMeta("r1", "m1", "2024-03-31", threshold=0.99)
    with caplog.at_level(logging.WARNING, logger="seqchurn.alerts.pipeline"):
        result = process_scores(make_scores(3), run, policy=AlertPolicy(), store=store, sinks=[])
    assert result.selected.empty
    assert result.delivery is None
    assert "no customer out of 3 scored passed the alert policy" in caplog.text
    assert store.runs()["n_alerts"].tolist() == [0]


def test_alert_settings_from_dict(tmp_path):
    config = {
        "policy": {"threshold": {"override": 0.7}, "budget": {"top_k": 10}},
        "suppression": {"window_days": 14, "min_rise": 0.05},
        "store": {"url": str(tmp_path / "a.sqlite")},
        "sinks": {"archive": {"kind": "file", "directory": str(tmp_path / "out")}},
    }
    settings = AlertSettings.from_dict(config)
    assert settings.policy.budget.top_k == 10
    assert settings.suppression == Suppression(window_days=14, min_rise=0.05)
    assert [s.name for s in settings.sinks] == ["archive"]
    settings.store.close()
    with pytest.raises(ValueError, match="Unknown alerts config keys"):
        AlertSettings.from_dict({"polcy": {}})


def test_reason_code_hook_sees_only_alerts(store):
    seen = []

    def reason_codes(alerts: pd.DataFrame) -> pd.Series:
        seen.append(alerts["customer_id"].tolist())
        return pd.Series([[f"because {c}"] for c in alerts["customer_id"]], index=alerts.index)

    run = RunMeta("r1", "m1", "2024-03-31", threshold=0.75)
    result = process_scores(make_scores(4), run, policy=AlertPolicy(), store=store, reason_codes=reason_codes)
    assert seen == [["c0", "c1"]]
    assert store.alerts()["reasons"].tolist() == [["because c0"], ["because c1"]]
    assert result.selected["reasons"].tolist() == [["because c0"], ["because c1"]]

    with pytest.raises(ValueError, match="aligned with the index"):
        process_scores(make_scores(4), run, policy=AlertPolicy(), store=store, reason_codes=lambda alerts: pd.Series([["x"]]))
