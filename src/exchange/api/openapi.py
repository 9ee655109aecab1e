"""``/openapi.json`` generated from the method table, so docs cannot drift from routing."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import TypeAdapter

from exchange.api.context import Method, Param
from exchange.api.envelope import ERROR_STATUSES

REF = "#/components/schemas/{model}"


def _param_schema(param: Param, *, json_body: bool) -> dict[str, Any]:
    schema: dict[str, Any]
    if param.type == "decimal":
        text = {"type": "string", "description": 'decimal number as text, e.g. "0.1"'}
        schema = {"anyOf": [text, {"type": "number"}]} if json_body else text
    elif param.type == "integer":
        schema = {"type": "integer"} if json_body else {"type": "string", "pattern": r"^\d+$"}
    elif param.type == "boolean":
        schema = {"type": "boolean"} if json_body else {"type": "string", "enum": ["true", "false"]}
    else:
        schema = {"type": "string"}
        if param.max_length is not None:
            schema["maxLength"] = param.max_length
    if param.enum:
        schema = {"type": "string", "enum": list(param.enum)}
    if param.description:
        schema = {**schema, "description": param.description}
    return schema


def _body(params: Iterable[Param]) -> dict[str, Any]:
    content: dict[str, Any] = {}
    for media, json_body in (
        ("application/x-www-form-urlencoded", False),
        ("application/json", True),
    ):
        props = {p.name: _param_schema(p, json_body=json_body) for p in params}
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
