"""Prometheus metrics of the HTTP edge (``GET /metrics``).

Under gunicorn with several workers, set ``PROMETHEUS_MULTIPROC_DIR`` to an empty
writable directory: every worker then writes its samples there and ``/metrics`` adds
them up (prometheus_client's multiprocess mode; gunicorn_conf marks dead workers).
"""

from __future__ import annotations

import time

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

HTTP_REQUESTS = Counter(
    "gateway_http_requests_total",
    "HTTP requests answered, by route and status.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "gateway_http_request_duration_seconds",
    "Time to answer an HTTP request (streamed bodies excluded), by route.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


# Every label value comes from a fixed set, whatever a client sends: a made-up method
# name, path or status must never add a time series (issue 19: 3000 requests grew
# /metrics from 30 KB to 2.6 MB).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER = "other"


def _method() -> str:
    return request.method if request.method in METHODS else OTHER


def _route() -> str:
    # The rule, never the raw path: unknown paths must not create new label values.
    return request.url_rule.rule if request.url_rule is not None else "<unmatched>"


def _status(code: int) -> str:
    return str(code) if 100 <= code <= 599 else OTHER


def install(app: Flask) -> None:
    @app.before_request
    def start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def observe(response: Response) -> Response:
        started = g.get("started")
        route, method = _route(), _method()
        if started is not None:
            HTTP_LATENCY.labels(method, route).observe(time.perf_counter() - started)
        HTTP_REQUESTS.labels(method, route, _status(response.status_code)).inc()
        return response


def render(multiproc_dir: str) -> Response:
    if multiproc_dir:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=multiproc_dir)
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    return Response(body, mimetype=None, content_type=CONTENT_TYPE_LATEST)
