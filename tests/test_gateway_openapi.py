"""The OpenAPI document (gateway/openapi.yaml) is valid and describes exactly the app's routes."""

from __future__ import annotations

import re
from typing import Any

from flask import Flask
from openapi_spec_validator import validate

from gateway import openapi

# Flask answers these for every rule by itself (HEAD with GET); the document lists the others.
IMPLIED_METHODS = {"HEAD", "OPTIONS"}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def app_operations(app: Flask) -> set[tuple[str, str]]:
    """(METHOD, /path/{param}) of every route the gateway app serves."""
    found = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - IMPLIED_METHODS:
            found.add((method, path))
    return found


def documented_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def test_the_document_is_valid_openapi_3_1() -> None:
    document = openapi.document()
    assert document["openapi"].startswith("3.1.")
    validate(document)  # raises with the first schema violation


def test_every_route_is_documented_and_nothing_else(auth_gateway: Flask) -> None:
    served, documented = app_operations(auth_gateway), documented_operations(openapi.document())
    missing = sorted(f"{m} {p}" for m, p in served - documented)
    extra = sorted(f"{m} {p}" for m, p in documented - served)
    assert not missing, f"routes the app serves but gateway/openapi.yaml does not document: {missing}"
    assert not extra, f"operations gateway/openapi.yaml documents but the app does not serve: {extra}"


def test_openapi_json_is_served(auth_http: Any) -> None:
    response = auth_http.get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert response.get_json() == openapi.document()


def test_route_check_names_a_missing_route(auth_gateway: Flask) -> None:
    """The check itself can fail: a document without /me reports exactly GET /me."""
    document = dict(openapi.document())
    document["paths"] = {k: v for k, v in document["paths"].items() if k != "/me"}
    assert app_operations(auth_gateway) - documented_operations(document) == {("GET", "/me")}
