"""The OpenAPI 3.1 document, generated from the operations' declarations and the pydantic
shapes (JSON Schema 2020-12, which OpenAPI 3.1 uses as is)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api.http.operations import Operation

__all__ = ["COMMON_ERRORS", "openapi_document"]

_REF = "#/components/schemas/{model}"
_PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "format": "uri-reference"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "request_id": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "each bad field (validation errors)",
            "items": {
                "type": "object",
                "required": ["in", "field", "message"],
                "properties": {
                    "in": {"enum": ["body", "query", "path", "header"]},
                    "field": {"type": "string"},
                    "message": {"type": "string"},
                },
            },
        },
    },
}
_REASONS = {
    400: "Bad request", 401: "No valid access token", 403: "Not allowed for this caller",
    404: "Not found", 409: "Conflicts with the current state", 413: "Request body too large",
    422: "Invalid request (each bad field named)", 429: "Rate limit hit (see Retry-After)",
    500: "Internal error", 503: "Data layer unavailable (see Retry-After)",
}
# Every operation may answer these.
COMMON_ERRORS = (413, 422, 429, 500, 503)


def _problem(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _REASONS.get(status, "Error"),
        "content": {"application/problem+json": {
            "schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    if status in (429, 503):
        response["headers"] = {"Retry-After": {
            "description": "seconds to wait", "schema": {"type": "integer"}}}
    return response


def _query_parameters(model: type[BaseModel], schemas: dict[str, Any]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=_REF, mode="validation")
    for name, sub in schema.pop("$defs", {}).items():
        schemas.setdefault(name, sub)
    required = set(schema.get("required", []))
    return [{"name": name, "in": "query", "required": name in required, "schema": prop}
            for name, prop in schema.get("properties", {}).items()]


def openapi_document(operations: list[Operation], *, prefix: str, title: str, version: str,
                     metrics_url: str | None) -> dict[str, Any]:
    models: set[tuple[type[BaseModel], Literal["validation", "serialization"]]] = set()
    for op in operations:
        if op.body is not None:
            models.add((op.body, "validation"))
        if op.response is not None:
            models.add((op.response, "serialization"))
    ordered = sorted(models, key=lambda m: (m[0].__name__, m[1]))
    keyed, defs = models_json_schema(ordered, ref_template=_REF)
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    schemas["Problem"] = _PROBLEM_SCHEMA

    def ref(model: type[BaseModel], mode: str) -> dict[str, Any]:
        return keyed[(model, mode)]  # type: ignore[index]

    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        entry: dict[str, Any] = {
            "operationId": op.operation_id, "summary": op.summary, "tags": [op.tag],
        }
        if op.description:
            entry["description"] = op.description
        parameters = [{"name": name, "in": "path", "required": True,
                       "schema": {"type": "string", "format": "uuid"}} for name in op.params()]
        if op.query is not None:
            parameters += _query_parameters(op.query, schemas)
        for header in op.headers:
            param: dict[str, Any] = {"name": header.name, "in": "header",
                                     "required": header.required,
                                     "description": header.description,
                                     "schema": {"type": "string"}}
            if header.pattern:
                param["schema"]["pattern"] = header.pattern
            parameters.append(param)
        if parameters:
            entry["parameters"] = parameters
        if op.body is not None:
            entry["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": ref(op.body, "validation")}}}
        success: dict[str, Any] = {"description": "Success"}
        if op.response is not None:
            success["content"] = {"application/json": {
                "schema": ref(op.response, "serialization")}}
        responses: dict[str, Any] = {str(op.status): success}
        statuses = set(COMMON_ERRORS) | set(op.errors)
        if op.roles is not None:
            statuses |= {401, 403}
            entry["security"] = [{"bearerAuth": []}]
        elif op.optional_bearer:  # no token, or a valid one
            statuses.add(401)
            entry["security"] = [{}, {"bearerAuth": []}]
        if op.params():
            statuses.add(404)
        for status in sorted(statuses):
            responses[str(status)] = _problem(status)
        entry["responses"] = responses
        paths.setdefault(prefix + op.path, {})[op.method.lower()] = entry

    info: dict[str, Any] = {
        "title": title, "version": version,
        "description": "The e-learning platform's REST API over georoute. Errors are RFC 9457 "
                       "problem details; access tokens are JWTs (HS256) from /auth/login.",
    }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": info,
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "bearerFormat": "JWT"}},
        },
    }
    if metrics_url:
        document["externalDocs"] = {"description": "the router's Prometheus metrics",
                                    "url": metrics_url}
    return document
