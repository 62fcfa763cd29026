"""Checks a response against the API's own OpenAPI document: its status must be one the
operation documents, and its JSON body must validate against the documented schema."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import httpx
import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

PREFIX = "/api/v1"


@dataclass
class DocumentedResponses:
    document: dict[str, Any]
    answered: set[tuple[str, str, int]] = field(default_factory=set)

    def __post_init__(self) -> None:
        resource = Resource.from_contents(self.document, default_specification=DRAFT202012)
        self._registry: Registry = Registry().with_resource("urn:openapi", resource)
        self._templates = []
        for path, methods in self.document["paths"].items():
            pattern = re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$")
            for method in methods:
                self._templates.append((method.upper(), pattern, path))

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]] | None:
        # Literal segments win over parameters (/courses/search before /courses/{id}), as in
        # the router: try the templates with the fewest parameters first.
        matches = [(t.count("{"), t) for m, p, t in self._templates if m == method and p.match(path)]
        if not matches:
            return None
        template = min(matches)[1]
        return template, self.document["paths"][template][method.lower()]

    def check(self, response: httpx.Response) -> None:
        request = response.request
        found = self.operation(request.method, request.url.path)
        if found is None:
            return  # not an operation (openapi.json, /docs, an unknown path)
        template, op = found
        status = str(response.status_code)
        assert status in op["responses"], (
            f"{request.method} {template} answered {status}, not documented "
            f"({sorted(op['responses'])}): {response.text[:300]}")
        self.answered.add((request.method, template, response.status_code))
        for name, spec in op["responses"][status].get("headers", {}).items():
            value = response.headers.get(name)
            assert value is not None, (
                f"{request.method} {template} answered {status} without its {name} header")
            if spec.get("schema", {}).get("type") == "integer":
                assert value.isdigit(), f"{request.method} {template}: {name}: {value!r}"
        content = op["responses"][status].get("content")
        if not content:
            assert not response.content, f"{request.method} {template}: unexpected body"
            return
        media = response.headers["content-type"].split(";")[0]
        assert media in content, f"{request.method} {template}: {media} not in {list(content)}"
        schema = {"$ref": "urn:openapi#" + content[media]["schema"]["$ref"][1:]} \
            if "$ref" in content[media]["schema"] else content[media]["schema"]
        validator = jsonschema.Draft202012Validator(
            schema, registry=self._registry, format_checker=jsonschema.FormatChecker())
        errors = sorted(validator.iter_errors(response.json()), key=str)
        assert not errors, f"{request.method} {template} {status}: {errors[0].message}"

    async def hook(self, response: httpx.Response) -> None:
        await response.aread()
        self.check(response)
