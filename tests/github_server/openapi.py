"""Validate the fake's traffic against GitHub's official OpenAPI description (npm ``@octokit/openapi``).

The full description is ~13 MB; only the operations the fake implements are extracted (with the
components they reference, transitively) and handed to openapi-core once per test session. Responses are
validated strictly: a property the schema does not declare is an error too, so the fake cannot drift
into inventing fields. A status the operation does not document (GitHub answers 401 and 429 on every
endpoint, but the description lists them on few) is checked against GitHub's ``basic-error`` schema.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from github_server.app import ROUTES, Exchange

SPEC_ENV = "AUTOPACK_GITHUB_OPENAPI_SPEC"
PACKAGE_FILE = Path("node_modules/@octokit/openapi/generated/api.github.com.json")
REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "https://api.github.com"
_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
#: Statuses GitHub may send on any endpoint whether or not an operation lists them.
UNIVERSAL_STATUSES = {401, 403, 429}


class SpecUnavailable(RuntimeError):
    """The npm package with GitHub's OpenAPI description is not installed."""


def spec_file() -> Path:
    """Where ``api.github.com.json`` is: $AUTOPACK_GITHUB_OPENAPI_SPEC, else ./node_modules (after ``npm ci``)."""
    override = os.environ.get(SPEC_ENV)
    candidate = Path(override) if override else REPO_ROOT / PACKAGE_FILE
    if not candidate.is_file():
        raise SpecUnavailable(
            f"GitHub's OpenAPI description is missing ({candidate}); run `npm ci` at the repository root "
            f"(package.json pins @octokit/openapi) or set {SPEC_ENV}"
        )
    return candidate


def implemented_operations() -> list[tuple[str, str]]:
    """(OpenAPI path, method) of every route the fake serves."""
    return sorted({(pattern, method.lower()) for method, _, pattern, _ in ROUTES})


def extract_subset(spec: dict[str, Any], operations: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """A self-contained OpenAPI document with only ``operations`` and the components they reference."""
    paths: dict[str, Any] = {}
    for pattern, method in operations:
        if pattern not in spec["paths"] or method not in spec["paths"][pattern]:
            raise KeyError(f"GitHub's OpenAPI description has no {method.upper()} {pattern}")
        item = spec["paths"][pattern]
        target = paths.setdefault(pattern, {k: copy.deepcopy(v) for k, v in item.items() if k not in _METHODS})
        target[method] = _without_examples(copy.deepcopy(item[method]))

    components: dict[str, dict[str, Any]] = {}
    pending = list(_refs(paths))
    while pending:
        ref = pending.pop()
        _, _, kind, name = ref.split("/", 3)
        if name in components.get(kind, {}):
            continue
        node = _without_examples(copy.deepcopy(spec["components"][kind][name]))
        components.setdefault(kind, {})[name] = node
        pending.extend(_refs(node))
    return {
        "openapi": spec["openapi"],
        "info": spec["info"],
        "servers": [{"url": HOST}],
        "paths": paths,
        "components": components,
    }


def _without_examples(node: Any) -> Any:
    """Drop ``examples`` of media types and parameters (large, and irrelevant to validation)."""
    if isinstance(node, dict):
        return {
            k: _without_examples(v)
            for k, v in node.items()
            if not (k == "examples" and isinstance(v, dict) and ("schema" in node or "content" in node))
        }
    if isinstance(node, list):
        return [_without_examples(v) for v in node]
    return node


def _refs(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/"):
            yield ref
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


@dataclass(frozen=True)
class Problem:
    exchange: Exchange
    message: str

    def __str__(self) -> str:
        e = self.exchange
        return f"{e.method} {e.path} -> {e.status}: {self.message}"


class GitHubOpenAPI:
    """openapi-core over the extracted subset; ``check(exchanges)`` lists every mismatch."""

    def __init__(self, subset: dict[str, Any]) -> None:
        from openapi_core import Config, OpenAPI
        from openapi_schema_validator import OAS30Validator

        self.subset = subset
        self.app = OpenAPI.from_dict(subset, config=Config(additional_properties_default_policy="forbid"))
        self.basic_error = OAS30Validator(subset["components"]["schemas"]["basic-error"])
        self.documented = {
            (pattern, method): {int(s) if s.isdigit() else s for s in op.get("responses", {})}
            for pattern, item in subset["paths"].items()
            for method, op in item.items() if method in _METHODS
        }

    @classmethod
    def load(cls, path: Path | None = None) -> GitHubOpenAPI:
        spec = json.loads((path or spec_file()).read_text(encoding="utf-8"))
        return cls(extract_subset(spec, implemented_operations()))

    def check(self, exchanges: Iterable[Exchange], *, requests: bool = True) -> list[Problem]:
        problems: list[Problem] = []
        for exchange in exchanges:
            problems.extend(Problem(exchange, m) for m in self.check_one(exchange, requests=requests))
        return problems

    def check_one(self, exchange: Exchange, *, requests: bool = True) -> list[str]:
        from openapi_core.testing import MockRequest, MockResponse

        if exchange.path_pattern is None:
            return ["the fake does not implement this path (no matching OpenAPI operation)"]
        method = exchange.method.lower()
        content_type = exchange.request_headers.get("Content-Type", "application/json").split(";")[0]
        request = MockRequest(
            HOST, method, exchange.path, path_pattern=exchange.path_pattern, args=_multi(exchange.query),
            view_args=exchange.path_params, headers=exchange.request_headers,
            data=exchange.request_body or None, content_type=content_type,
        )
        problems: list[str] = []
        if requests:
            try:
                self.app.validate_request(request)
            except Exception as exc:  # openapi-core raises a family of errors; all mean "not per spec"
                problems.append(f"request does not match the operation: {_explain(exc)}")
        documented = self.documented[(exchange.path_pattern, method)]
        response_type = exchange.response_headers.get("Content-Type", "application/json").split(";")[0]
        if exchange.status in documented or "default" in documented:
            response = MockResponse(exchange.response_body, exchange.status, exchange.response_headers,
                                    content_type=response_type)
            try:
                self.app.validate_response(request, response)
            except Exception as exc:
                problems.append(f"response does not match the operation: {_explain(exc)}")
        elif exchange.status in UNIVERSAL_STATUSES:
            errors = list(self.basic_error.iter_errors(exchange.json()))
            problems += [f"error body is not a basic-error: {e.message}" for e in errors]
        else:
            problems.append(f"status {exchange.status} is not documented for {method.upper()} {exchange.path_pattern}")
        return problems


def _multi(pairs: list[tuple[str, str]]) -> Any:
    from werkzeug.datastructures import MultiDict

    return MultiDict(pairs)


def _explain(exc: BaseException) -> str:
    """openapi-core wraps jsonschema errors; name each innermost one by its JSON path, never dump values."""
    found: list[str] = []

    def leaves(error: Any) -> None:
        path = tuple(getattr(error, "absolute_path", ()) or ())
        context = getattr(error, "context", None) or []
        if context:
            for inner in context:
                leaves(inner)
        else:
            message = str(getattr(error, "message", error))
            found.append(f"{'/'.join(map(str, path)) or '<root>'}: {message[:160]}")

    current: BaseException | None = exc
    while current is not None:
        for inner in getattr(current, "schema_errors", None) or []:
            leaves(inner)
        current = current.__cause__
    if not found:
        return f"{type(exc).__name__}: {str(exc)[:300]}"
    return f"{type(exc).__name__}: " + "; ".join(dict.fromkeys(found))
