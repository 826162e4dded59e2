"""The scoring API on a real uvicorn server (loopback, ephemeral port) against the batch scorer."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import numpy as np
import pandas as pd
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from trained_model import get_trained_model

from seqchurn.alerts.policy import AlertPolicy, ThresholdRule, select_alerts
from seqchurn.alerts.reasons import explain
from seqchurn.alerts.store import AlertStore, RunMeta, Suppression
from seqchurn.score import load_model, score_events
from seqchurn.serving.app import ServeSettings, create_app, key_digest, key_matches
from seqchurn.serving.cli import main as serve_main
from seqchurn.serving.cli import read_api_keys

KEYS = ("first-test-key-4f1c", "second-test-key-9a7e")
AS_OF = "2011-09-01"
MAX_BODY = 1024 * 1024


@contextmanager
def running_server(app) -> Iterator[str]:
    """Run ``app`` on uvicorn in a thread on 127.0.0.1 and an ephemeral port; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start within 30 s")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def event_payloads(events: pd.DataFrame) -> list[dict]:
    """Request events (JSON-ready) from canonical event rows."""
    frame = pd.DataFrame(
        {
            "ts": events["ts"].map(pd.Timestamp.isoformat),
            "event_type": events["event_type"].astype(str),
            "amount": events["amount"],
            "quantity": events["quantity"],
            "item_id": events["item_id"],
            "category_id": events["category_id"],
            "order_id": events["order_id"],
        }
    )
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def customers_payload(events: pd.DataFrame, customer_ids) -> list[dict]:
    return [{"customer_id": c, "events": event_payloads(events[events["customer_id"] == c])} for c in customer_ids]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, retail_slice):
    return get_trained_model(tmp_path_factory, retail_slice)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("serving_store") / "alerts.db"
    store = AlertStore(path)
    scores = pd.DataFrame({"customer_id": ["c1", "c2"], "churn_probability": [0.9, 0.8], "rank": [1, 2]})
    alerts = select_alerts(scores, AlertPolicy(threshold=ThresholdRule(override=0.0)))
    store.record_run(RunMeta("r1", "m1", "2024-03-31"), alerts, suppression=Suppression(window_days=0))
    store.close()
    return path


@pytest.fixture(scope="module")
def server(trained, store_path):
    settings = ServeSettings(model_dir=trained.model_dir, api_keys=KEYS, store_url=str(store_path), max_body_bytes=MAX_BODY)
    with running_server(create_app(settings=settings)) as url:
        yield url


@pytest.fixture
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers={"X-API-Key": KEYS[0]}, timeout=60) as client:
        yield client


# ---- no model needed ---------------------------------------------------------------------------


def test_key_matching():
    digests = tuple(key_digest(key) for key in KEYS)
    assert key_matches(KEYS[1], digests)
    assert not key_matches(KEYS[1] + "x", digests)
    assert not key_matches("", digests)
    assert not key_matches(None, digests)


def test_api_keys_from_env_and_file(tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text("# rotated monthly\nfile-key\n\n")
    assert read_api_keys("KEYS", str(key_file), environ={"KEYS": " a , b,,a"}) == ("a", "b", "file-key")
    assert read_api_keys("KEYS", None, environ={}) == ()
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    with pytest.raises(ValueError, match="contains no key"):
        read_api_keys(None, str(empty), environ={})


def test_serve_refuses_to_start_without_keys(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SEQCHURN_API_KEYS", raising=False)
    assert serve_main(["--model-dir", str(tmp_path)]) == 2
    assert "no API key configured" in capsys.readouterr().err
    assert serve_main(["--model-dir", str(tmp_path), "--no-auth", "--host", "0.0.0.0"]) == 2
    assert "only on a loopback host" in capsys.readouterr().err
    monkeypatch.setenv("SEQCHURN_API_KEYS", "k")
    assert serve_main(["--model-dir", str(tmp_path), "--store", "none"]) == 2
    assert "model file not found" in capsys.readouterr().err


# ---- on a running server --------------------------------------------------------------------------


@pytest.mark.slow
def test_health_and_readiness(server, trained):
    assert httpx.get(f"{server}/healthz", timeout=10).json() == {"status": "ok"}
    ready = httpx.get(f"{server}/readyz", timeout=10)
    assert ready.status_code == 200
    assert ready.json()["model_version"] == load_model(trained.model_dir).version
    assert ready.json()["store"] == "ok"


@pytest.mark.slow
def test_missing_or_wrong_key_is_401(server, trained, caplog):
    body = {"customers": customers_payload(trained.events, trained.events["customer_id"].iloc[:1]), "as_of": AS_OF}
    with caplog.at_level(logging.DEBUG):
        missing = httpx.post(f"{server}/v1/score", json=body, timeout=30)
        wrong = httpx.post(f"{server}/v1/score", json=body, headers={"X-API-Key": KEYS[0][:-1]}, timeout=30)
        second = httpx.post(f"{server}/v1/score", json=body, headers={"X-API-Key": KEYS[1]}, timeout=30)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "ApiKey"
    assert wrong.status_code == 401
    assert second.status_code == 200
    for key in KEYS:
        assert key not in caplog.text
        assert key[:-1] not in caplog.text


@pytest.mark.slow
def test_api_matches_batch_scores(client, trained):
    model = load_model(trained.model_dir)
    events = trained.events
    batch = score_events(events, model, pd.Timestamp(AS_OF, tz="UTC")).set_index("customer_id")
    returners = events.loc[events["event_type"] == "return", "customer_id"].unique()
    chosen = list(dict.fromkeys([*batch.index[:12], *[c for c in returners if c in batch.index][:6]]))
    ghost = {"customer_id": "ghost", "events": [{"ts": "2009-12-05T10:00:00", "event_type": "purchase", "amount": 12.5}]}
    body = {"customers": [*customers_payload(events, chosen), ghost], "as_of": AS_OF}

    response = client.post("/v1/score", json=body)

    assert response.status_code == 200, response.text
    result = response.json()
    assert result["model_version"] == model.version
    assert result["threshold"] == pytest.approx(model.threshold)
    got = pd.DataFrame(result["results"]).set_index("customer_id")
    assert sorted(got.index) == sorted(chosen)
    np.testing.assert_allclose(got["churn_probability"].to_numpy(), batch.loc[got.index, "churn_probability"].to_numpy(), atol=1e-6)
    assert got["n_events"].tolist() == batch.loc[got.index, "n_events"].tolist()
    assert np.all(np.diff(got["churn_probability"].to_numpy()) <= 0)
    assert (got["alert"] == (got["churn_probability"] >= model.threshold)).all()
    assert set(got["tier"]) <= {"low", "medium", "high"}
    assert result["not_scored"] == [{"customer_id": "ghost", "reason": "no activity event (purchase) in the 365 days before as_of"}]
    sent = events[events["customer_id"].isin(chosen)]
    assert result["events_ignored"] == int((sent["ts"] >= pd.Timestamp(AS_OF, tz="UTC")).sum())

    expected = explain(events, chosen, model, AS_OF).reasons
    for customer, reasons in got["reasons"].items():
        assert [reason["text"] for reason in reasons] == expected[customer], customer
        assert all(reason["effect"] > 0 for reason in reasons)


@pytest.mark.slow
def test_invalid_fields_are_named(client, trained):
    customers = customers_payload(trained.events, trained.events["customer_id"].unique()[:2])
    customers[1]["events"][2]["event_type"] = "click"
    customers[0]["events"][0]["ts"] = 1323427200
    response = client.post("/v1/score", json={"customers": customers})
    assert response.status_code == 422
    errors = {tuple(error["loc"]): error["msg"] for error in response.json()["detail"]}
    assert ("body", "customers", 1, "events", 2, "event_type") in errors
    assert "not a number" in errors[("body", "customers", 0, "events", 0, "ts")]

    valid = customers_payload(trained.events, trained.events["customer_id"].unique()[:1])
    duplicate = client.post("/v1/score", json={"customers": [valid[0], valid[0]]})
    assert duplicate.status_code == 422
    assert duplicate.json()["detail"][0]["loc"] == ["body", "customers", 1, "customer_id"]

    old = {"customer_id": "x", "events": [{"ts": "2011-01-01T00:00:00", "event_type": "purchase"}, {"ts": "1950-01-01T00:00:00", "event_type": "purchase"}]}
    implausible = client.post("/v1/score", json={"customers": [old]})
    assert implausible.status_code == 422
    detail = implausible.json()["detail"][0]
    assert detail["loc"] == ["body", "customers", 0, "events", 1, "ts"]
    assert "outside the plausible range" in detail["msg"]

    assert client.post("/v1/score", json={"customers": []}).json()["detail"][0]["loc"] == ["body", "customers"]
    assert client.post("/v1/score", json={"customers": valid, "as_of": "yesterday"}).json()["detail"][0]["loc"] == ["body", "as_of"]


@pytest.mark.slow
def test_body_size_limit_is_413(server):
    headers = {"X-API-Key": KEYS[0], "content-type": "application/json"}
    declared = httpx.post(f"{server}/v1/score", content=b" " * (MAX_BODY + 1), headers=headers, timeout=30)
    assert declared.status_code == 413

    def chunks():
        for _ in range(3):
            yield b" " * (MAX_BODY // 2)

    streamed = httpx.post(f"{server}/v1/score", content=chunks(), headers=headers, timeout=30)
    assert streamed.status_code == 413
    assert "larger than the limit" in streamed.json()["detail"]


@pytest.mark.slow
def test_outcomes_endpoint(client, store_path):
    recorded = client.post("/v1/outcomes", json={"customer_id": "c2", "outcome": "contacted", "note": "called"})
    assert recorded.status_code == 200, recorded.text
    store = AlertStore(store_path)
    stored = store.alerts().set_index("customer_id")
    store.close()
    assert recorded.json()["updated_alerts"] == [stored.loc["c2", "alert_id"]]
    assert stored.loc["c2", "outcome_note"] == "called"

    unknown = client.post("/v1/outcomes", json={"customer_id": "nobody", "outcome": "retained"})
    assert unknown.status_code == 404
    assert "no stored alert" in unknown.json()["detail"]
    invalid = client.post("/v1/outcomes", json={"customer_id": "c1", "outcome": "won_back"})
    assert invalid.status_code == 422
    assert invalid.json()["detail"][0]["loc"] == ["body", "outcome"]
    both = client.post("/v1/outcomes", json={"customer_id": "c1", "alert_id": "a", "outcome": "retained"})
    assert both.status_code == 422
    assert "exactly one of alert_id and customer_id" in both.json()["detail"][0]["msg"]


@pytest.mark.slow
def test_metrics_count_requests(client, server, trained):
    body = {"customers": customers_payload(trained.events, trained.events["customer_id"].unique()[:3]), "as_of": AS_OF}
    assert client.post("/v1/score", json=body).status_code == 200
    assert httpx.post(f"{server}/v1/score", json=body, timeout=30).status_code == 401

    text = httpx.get(f"{server}/metrics", timeout=10).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert samples[("seqchurn_api_requests_total", (("method", "POST"), ("path", "/v1/score"), ("status", "200")))] >= 1
    assert samples[("seqchurn_api_errors_total", (("path", "/v1/score"), ("status", "401")))] >= 1
    assert samples[("seqchurn_api_request_duration_seconds_count", (("path", "/v1/score"),))] >= 2
    assert sum(value for (name, _), value in samples.items() if name == "seqchurn_api_scores_total") >= 1


@pytest.mark.slow
def test_openapi_document(server):
    document = httpx.get(f"{server}/openapi.json", timeout=10).json()
    assert {"/v1/score", "/v1/outcomes", "/healthz", "/readyz", "/metrics"} <= set(document["paths"])
    score = document["paths"]["/v1/score"]["post"]
    assert score["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ScoreRequest")
    assert score["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/ScoreResponse")
    assert "422" in score["responses"]
    schemas = document["components"]["schemas"]
    assert {"customers", "as_of", "explain"} <= set(schemas["ScoreRequest"]["properties"])
    assert {"ts", "event_type", "amount", "quantity", "item_id", "order_id"} <= set(schemas["Event"]["properties"])
    assert schemas["Event"]["required"] == ["ts", "event_type"]
    assert {"churn_probability", "tier", "reasons", "horizon_probabilities"} <= set(schemas["CustomerScore"]["properties"])
    security = document["components"]["securitySchemes"]
    assert [scheme for scheme in security.values()] == [{"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "one of the keys the server was started with"}]
    assert httpx.get(f"{server}/docs", timeout=10).status_code == 200


@pytest.mark.slow
def test_serve_command_starts_and_responds(trained, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "seqchurn.cli", "serve", "--model-dir", str(trained.model_dir), "--port", str(port), "--store", "none", "--log-level", "WARNING"]
    process = subprocess.Popen(command, env={**os.environ, "SEQCHURN_API_KEYS": KEYS[0]}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "seqchurn serve did not become ready within 60 s"
            time.sleep(0.2)
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).json()
        assert ready["store"] is None
        outcome = httpx.post(f"http://127.0.0.1:{port}/v1/outcomes", json={"customer_id": "c1", "outcome": "retained"}, headers={"X-API-Key": KEYS[0]}, timeout=5)
        assert outcome.status_code == 503
    finally:
        process.terminate()
        process.wait(timeout=20)
        output = process.stdout.read()
    assert KEYS[0] not in output


def test_nan_amount_is_422_not_500(client, trained):
    customers = customers_payload(trained.events, trained.events["customer_id"].unique()[:1])
    body = json.dumps({"customers": customers}).replace('"amount": ', '"amount": NaN, "_x": ', 1)
    response = client.post("/v1/score", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert any("amount" in error["loc"] for error in response.json()["detail"])
    assert client.get("/healthz").status_code == 200
