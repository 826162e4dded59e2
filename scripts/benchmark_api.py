"""Measure the scoring API: requests per second and p50 / p99 latency, single and batched.

Usage:
    python scripts/benchmark_api.py [--model-dir checkpoints/online_retail_gru] [--data online_retail]
        [--as-of 2011-12-09] [--max-requests 300] [--max-seconds 60] [--output docs/api.md]

Starts ``seqchurn serve`` as a subprocess on 127.0.0.1 and an ephemeral port, with a
random API key and no alert store, and sends it real customers' events from the data
config. Each case stops after ``--max-requests`` requests or ``--max-seconds`` seconds,
whichever comes first. The table replaces the part of ``--output`` between the
``benchmark:start`` and ``benchmark:end`` markers (the file is created if missing).

Client and server share the machine, so the numbers include the client's own CPU use.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import secrets
import shlex
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnxruntime
import pandas as pd

from seqchurn.alerts.cli import load_config
from seqchurn.data.io import load_events
from seqchurn.score import load_model, score_events
from seqchurn.serving.app import MAX_EVENTS_PER_CUSTOMER
from seqchurn.utils.atomic import atomic_write_text
from seqchurn.utils.machine import cpu_model

START, END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"
WARMUP_REQUESTS = 5


@dataclass(frozen=True)
class Case:
    name: str
    customers_per_request: int
    explain: bool
    concurrency: int


CASES = (
    Case("1 customer, reasons", 1, True, 1),
    Case("1 customer, no reasons", 1, False, 1),
    Case("1 customer, reasons, 4 clients", 1, True, 4),
    Case("100 customers, reasons", 100, True, 1),
    Case("100 customers, no reasons", 100, False, 1),
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request_bodies(events: pd.DataFrame, customers: list[str], size: int, explain: bool, as_of: str, count: int) -> list[bytes]:
    """Encode ``count`` request bodies of ``size`` customers each, cycling through ``customers``."""
    frame = pd.DataFrame(
        {
            "customer_id": events["customer_id"],
            "ts": events["ts"].map(pd.Timestamp.isoformat),
            "event_type": events["event_type"].astype(str),
            "amount": events["amount"],
            "quantity": events["quantity"],
            "item_id": events["item_id"],
            "order_id": events["order_id"],
        }
    )
    frame = frame.astype(object).where(frame.notna(), None)
    by_customer = {customer: group.drop(columns="customer_id").to_dict("records") for customer, group in frame.groupby("customer_id", sort=False)}
    bodies = []
    for i in range(count):
        chosen = [customers[(i * size + j) % len(customers)] for j in range(size)]
        body = {"customers": [{"customer_id": c, "events": by_customer[c]} for c in chosen], "as_of": as_of, "explain": explain}
        bodies.append(json.dumps(body).encode("utf-8"))
    return bodies


def run_case(url: str, key: str, bodies: list[bytes], case: Case, max_requests: int, max_seconds: float) -> dict:
    """Send requests until ``max_requests`` or ``max_seconds``; return throughput and latency."""
    headers = {"X-API-Key": key, "content-type": "application/json"}
    latencies: list[float] = []

    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        for i in range(WARMUP_REQUESTS):
            client.post("/v1/score", content=bodies[i % len(bodies)]).raise_for_status()

    def worker(offset: int) -> list[float]:
        own: list[float] = []
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            i = offset
            while time.monotonic() < deadline and len(own) < max_requests // case.concurrency:
                started = time.perf_counter()
                response = client.post("/v1/score", content=bodies[i % len(bodies)])
                own.append(time.perf_counter() - started)
                if response.status_code != 200:
                    raise RuntimeError(f"{case.name}: HTTP {response.status_code}: {response.text[:500]}")
                i += case.concurrency
        return own

    deadline = time.monotonic() + max_seconds
    started = time.perf_counter()
    with ThreadPoolExecutor(case.concurrency) as pool:
        for own in pool.map(worker, range(case.concurrency)):
            latencies += own
    wall = time.perf_counter() - started
    seconds = np.asarray(latencies)
    return {
        "case": case.name,
        "requests": len(latencies),
        "requests_per_s": len(latencies) / wall,
        "customers_per_s": len(latencies) * case.customers_per_request / wall,
        "p50_ms": float(np.percentile(seconds, 50) * 1000),
        "p99_ms": float(np.percentile(seconds, 99) * 1000),
    }


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"seqchurn serve exited with code {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"seqchurn serve was not ready within {timeout_s:.0f} s")


def write_section(path: Path, text: str) -> None:
    """Replace the text between the markers in ``path`` (or append the section)."""
    block = f"{START}\n{text.rstrip()}\n{END}"
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if START in old and END in old:
        head, rest = old.split(START, 1)
        new = head + block + rest.split(END, 1)[1]
    else:
        new = old.rstrip() + ("\n\n" if old else "") + block + "\n"
    atomic_write_text(path, new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="checkpoints/online_retail_gru", help="exported model folder")
    parser.add_argument("--data", default="online_retail", help="data config (name under conf/data/ or YAML file) to take customers from")
    parser.add_argument("--as-of", default="2011-12-09", help="as-of date of the requests")
    parser.add_argument("--max-requests", type=int, default=300, help="requests per case at most")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="seconds per case at most")
    parser.add_argument("--threads", type=int, default=1, help="--threads of seqchurn serve (onnxruntime threads per inference)")
    parser.add_argument("--output", type=Path, default=Path("docs/api.md"), help="Markdown file whose benchmark section is replaced")
    args = parser.parse_args()

    model = load_model(args.model_dir)
    events, _ = load_events(load_config("data", args.data))
    scored = score_events(events, model, pd.Timestamp(args.as_of, tz="UTC"))
    # A few wholesale customers have more event rows than one request may carry.
    sizes = events.groupby("customer_id").size()
    fits = sizes.index[sizes <= MAX_EVENTS_PER_CUSTOMER]
    customers = scored.loc[scored["customer_id"].isin(fits), "customer_id"].sample(frac=1.0, random_state=0).tolist()
    skipped = len(scored) - len(customers)
    events = events[events["customer_id"].isin(customers)]
    mean_events = float(events.groupby("customer_id").size().mean())

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    key = secrets.token_urlsafe(24)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "seqchurn.cli", "serve", "--model-dir", args.model_dir, "--port", str(port), "--store", "none", "--log-level", "WARNING", "--threads", str(args.threads)]
    server = subprocess.Popen(command, env={**os.environ, "SEQCHURN_API_KEYS": key})
    results = []
    try:
        wait_ready(url, server)
        for case in CASES:
            count = min(args.max_requests, 400 if case.customers_per_request == 1 else 40)
            bodies = request_bodies(events, customers, case.customers_per_request, case.explain, args.as_of, count)
            result = run_case(url, key, bodies, case, args.max_requests, args.max_seconds)
            print(json.dumps(result))
            results.append(result)
    finally:
        server.terminate()
        server.wait(timeout=30)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    invocation = "python scripts/benchmark_api.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [
        f"Measured with `{invocation.strip()}` on {dt.date.today().isoformat()}: {cpu_model()}, {cores} logical CPUs visible "
        f"(shared by client and server; 1-minute load average {load_before:.1f} at the start), Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}, "
        f"model `{model.version}`, server `--threads {args.threads}`. Customers are real ones from `{args.data}` active at "
        f"{args.as_of}, with {mean_events:.0f} events each on average (before merging order lines); the {skipped} with more "
        f"than {MAX_EVENTS_PER_CUSTOMER:,} events are left out. Each case ran until "
        f"{args.max_requests} requests or {args.max_seconds:g} s, after {WARMUP_REQUESTS} warm-up requests.",
        "",
        "| case | requests | requests/s | customers/s | p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(f"| {r['case']} | {r['requests']} | {r['requests_per_s']:.1f} | {r['customers_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
    write_section(args.output, "\n".join(lines))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
