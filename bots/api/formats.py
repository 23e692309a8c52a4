"""Both dialects' decoding fields in the contract's terms: response format, stop, seed.

A response format is checked here with the worker's own grammar compiler, so a
schema it cannot enforce is refused before anything is queued, naming the keywords.
"""

from __future__ import annotations

from typing import Any

from bots.api.turns import ApiError
from shared.contract import MAX_STOPS, ResponseFormat
from shared.structured import SchemaError, grammar


def checked(fmt: ResponseFormat, where: str) -> ResponseFormat:
    try:
        grammar(fmt)
    except SchemaError as exc:
        raise ApiError(400, f"{where}: {exc}") from None
    return fmt


def ollama_format(value: Any) -> ResponseFormat | None:
    """Ollama ``format``: ``"json"`` or a JSON schema object ("" or null: free text)."""
    if value is None or value == "":
        return None
    if value == "json":
        return ResponseFormat(type="json_object")
    if isinstance(value, dict):
        return checked(ResponseFormat(type="json_schema", json_schema=value), "format")
    raise ApiError(400, 'format must be "json" or a JSON schema object')


def openai_response_format(value: Any) -> ResponseFormat | None:
    """OpenAI ``response_format``: text, json_object, or json_schema (strict or not:
    corral always enforces the schema)."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat(type="json_object")
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise ApiError(400, "response_format.json_schema.schema must be a JSON schema object")
        fmt = ResponseFormat(type="json_schema", json_schema=schema)
        return checked(fmt, "response_format.json_schema.schema")
    raise ApiError(400, "response_format.type must be one of text, json_object, json_schema")


def stop_texts(value: Any, where: str) -> list[str]:
    """``stop`` as a string or a list of strings; empty strings mean nothing."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise ApiError(400, f"{where} must be a string or a list of strings")
    stops = [s for s in items if s]
    if len(stops) > MAX_STOPS:
        raise ApiError(400, f"{where} takes at most {MAX_STOPS} stop texts")
    return stops
