"""``/openapi.json`` generated from the method table, so docs cannot drift from routing."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from pydantic import TypeAdapter

from exchange.api.context import Method, Param
from exchange.api.envelope import ERROR_STATUSES

REF = "#/components/schemas/{model}"


# What the parsers in params.py accept, spelled as JSON Schema so that schemathesis'
# negative cases ("this violates the schema, so it must be refused") hold: ASCII
# whitespace around a value is ignored, words are case-insensitive, empty = default.
_SPACE = "[ \\t\\n\\r\\f\\v]*"
_FLAG_WORDS = ("1", "0", "true", "false", "yes", "no", "on", "off")


def _any_case(word: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)


def _words(words: Iterable[str]) -> dict[str, Any]:
    alternatives = "|".join(_any_case(word) for word in words)
    return {"type": "string", "pattern": f"^{_SPACE}(?:{alternatives})?{_SPACE}$"}


_INTEGER_TEXT = {"type": "string", "pattern": f"^{_SPACE}(?:[+-]?[0-9]+)?{_SPACE}$"}


def _param_schema(param: Param[Any], *, json_body: bool) -> dict[str, Any]:
    schema: dict[str, Any]
    if param.enum:
        spellings = list(param.options)  # canonical values and their aliases
        schema = {"anyOf": [{"type": "string", "enum": spellings}, _words(spellings)]}
    elif param.type == "decimal":
        text = {"type": "string", "description": 'decimal number as text, e.g. "0.1"'}
        schema = {"anyOf": [text, {"type": "number"}]} if json_body else text
    elif param.type == "integer":
        number = {"type": "integer", "minimum": param.low, "maximum": param.high}
        schema = {"anyOf": [number, _INTEGER_TEXT]} if json_body else _INTEGER_TEXT
    elif param.type == "boolean":
        words = _words(_FLAG_WORDS)
        schema = {"anyOf": [{"type": "boolean"}, {"enum": [0, 1]}, words]} if json_body else words
    else:
        schema = {"type": "string"}
        if param.max_length is not None:
            schema["maxLength"] = param.max_length
        if json_body:  # a JSON number is taken as its text
            schema = {"anyOf": [schema, {"type": "number"}]}
    description = param.description
    if param.type == "integer":
        description += f" ({param.low}-{param.high}"
        description += ")" if param.required else f", default {param.default})"
    elif param.enum and not param.required and param.default is not None:
        description += f" (default {param.default})"
    if description:
        schema = {**schema, "description": description.strip()}
    return schema


def _body(params: Iterable[Param[Any]]) -> dict[str, Any]:
    content: dict[str, Any] = {}
    for media, json_body in (
        ("application/x-www-form-urlencoded", False),
        ("application/json", True),
    ):
        props = {p.name: _param_schema(p, json_body=json_body) for p in params}
        if json_body:  # an optional parameter sent as JSON null counts as not sent
            for p in params:
                if not p.required:
                    props[p.name] = {"anyOf": [props[p.name], {"type": "null"}]}
        required = [p.name for p in params if p.required]
        schema: dict[str, Any] = {"type": "object", "properties": props}
        if required:
            schema["required"] = required
        content[media] = {"schema": schema}
    return {"required": any(p.required for p in params), "content": content}


def _envelope(data: dict[str, Any], ok: bool | None) -> dict[str, Any]:
    status: dict[str, Any] = {"type": "boolean"}
    if ok is not None:
        status["enum"] = [ok]
    return {
        "type": "object",
        "required": ["status", "data", "description"],
        "additionalProperties": False,
        "properties": {
            "status": status,
            "data": data,
            "description": {"type": "string"},
        },
    }


def build_openapi(methods: Iterable[Method], *, version: str) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    error_body = {"content": {"application/json": {"schema": _envelope({"type": "null"}, False)}}}
    for method in methods:
        if method.data is None:
            data_schema: dict[str, Any] = {"type": "null"}
        else:
            data_schema = TypeAdapter(method.data).json_schema(ref_template=REF)
            schemas.update(data_schema.pop("$defs", {}))
        ok = None if method.name == "check_exist_name" else True
        responses: dict[str, Any] = {
            "200": {
                "description": "done",
                "content": {"application/json": {"schema": _envelope(data_schema, ok)}},
            }
        }
        for status in ERROR_STATUSES:
            responses[str(status)] = {"description": "refused; see `description`", **error_body}
        operation: dict[str, Any] = {
            "operationId": method.name,
            "summary": method.summary,
            "tags": [method.tag],
            "responses": responses,
        }
        if method.verb == "GET":
            operation["parameters"] = [
                {
                    "name": p.name,
                    "in": "query",
                    "required": p.required,
                    "schema": _param_schema(p, json_body=False),
                }
                for p in method.params
            ]
        elif method.params:
            operation["requestBody"] = _body(method.params)
        if method.auth:
            operation["security"] = [{"cookie": []}, {"bearer": []}]
        paths[f"/api/{method.name}"] = {method.verb.lower(): operation}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Exchange API",
            "version": version,
            "description": "Every method is also served at /router?router=<method>. Every "
            "answer is the envelope {status, data, description}.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "cookie": {"type": "apiKey", "in": "cookie", "name": "session"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }
