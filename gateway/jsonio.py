"""How the gateway reads JSON bodies: text that parses but cannot travel on is refused here.

Two kinds of valid-looking JSON broke requests with a 500 (issue 19): a lone UTF-16
surrogate (``"\\ud800"`` decodes to a Python string that UTF-8 — and so protobuf — cannot
encode), and nesting deep enough to exhaust the parser's recursion. Both are now a
``ValueError`` from ``loads``, which Flask turns into a 400 (``request.get_json``).
"""

from __future__ import annotations

import json
from typing import Any

from flask.json.provider import DefaultJSONProvider

# Far beyond any body this API takes (credentials are flat objects), far below recursion limits.
MAX_DEPTH = 32


class JSONBodyError(ValueError):
    """The JSON text is not acceptable; the message is safe to show to a client."""


def check_value(value: Any) -> None:
    """Refuse strings UTF-8 cannot encode and nesting deeper than ``MAX_DEPTH``."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise JSONBodyError(f"JSON nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_text(key)
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise JSONBodyError("JSON strings must be valid Unicode (no lone surrogates)") from None


def loads(text: str | bytes) -> Any:
    try:
        value = json.loads(text)
    except RecursionError:
        raise JSONBodyError(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    check_value(value)
    return value


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider with ``loads`` checked as above (``app.json = …``)."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return loads(s)
