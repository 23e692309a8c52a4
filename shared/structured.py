"""Structured outputs: the grammar a :class:`~shared.contract.ResponseFormat` compiles to.

The worker masks every token with llguidance (bench/README.md has the measurements
behind that choice); the API checks a caller's schema with the same compiler before
enqueueing, so a schema llguidance cannot enforce is a 400 naming the keywords, never
an answer that quietly ignores them.
"""

from __future__ import annotations

import json
from typing import Any

from .contract import FunctionSpec, ResponseFormat

MAX_SCHEMA_BYTES = 64 * 1024


class SchemaError(ValueError):
    """A response format the worker cannot enforce; the message names what and why."""


def schema_of(fmt: ResponseFormat) -> dict[str, Any]:
    if fmt.type == "json_object":
        return {"type": "object"}
    if not isinstance(fmt.json_schema, dict):
        raise SchemaError("a json_schema response format needs the schema itself")
    return fmt.json_schema


# Where a schema leaves things open, the grammar narrows them so a small model cannot
# spend all its tokens in one place; every answer still validates against the caller's
# schema (the set only narrows):
# - numbers are plain decimals of bounded size ("lat":12.2333333333… otherwise; digits
#   past these are noise in a float64 anyway);
# - an object that declares its properties gets no undeclared ones ("":2023,"":2023,…
#   otherwise), unless the schema says what extra properties may be, or the object is
#   one branch of an allOf (the other branches may declare the rest).
DECIMAL_STEP = 1e-10  # at most 10 decimal places (llguidance takes no finer step)
NUMBER_LIMIT = 1e15
INTEGER_LIMIT = 2**53 - 1  # the largest integer every JSON reader (a float64) keeps exactly
_LOWER = ("minimum", "exclusiveMinimum")
_UPPER = ("maximum", "exclusiveMaximum")


_OPEN_OBJECT = ("additionalProperties", "patternProperties", "unevaluatedProperties")


def _bounded(node: Any, in_all_of: bool = False) -> Any:
    if isinstance(node, list):
        return [_bounded(item, in_all_of) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _bounded(value, key == "allOf") for key, value in node.items()}
    if isinstance(node.get("properties"), dict) and not in_all_of:
        if not any(k in node for k in _OPEN_OBJECT):
            out["additionalProperties"] = False
    kind = node.get("type")
    if kind in ("number", "integer"):
        limit = NUMBER_LIMIT if kind == "number" else INTEGER_LIMIT
        if not any(k in node for k in _LOWER):
            out["minimum"] = -limit
        if not any(k in node for k in _UPPER):
            out["maximum"] = limit
        if kind == "number" and "multipleOf" not in node:
            out["multipleOf"] = DECIMAL_STEP
    return out


def grammar(fmt: ResponseFormat) -> str:
    """llguidance's grammar for ``fmt``; :class:`SchemaError` when it cannot be enforced."""
    from llguidance import LLMatcher

    schema = schema_of(fmt)
    if len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise SchemaError(f"the JSON schema is larger than {MAX_SCHEMA_BYTES // 1024} KiB")
    try:
        # No free whitespace between tokens: a small model given the choice pads with
        # newlines until it runs out of tokens, and compact JSON parses just the same.
        compiled = LLMatcher.grammar_from_json_schema(
            _bounded(schema), defaults={"whitespace_flexible": False}
        )
    except ValueError as exc:
        raise SchemaError(f"invalid JSON schema: {exc}") from None
    problem = LLMatcher.validate_grammar(compiled)
    if problem:
        # e.g. 'Unimplemented keys: ["not"]' or 'Invalid type: strin'
        raise SchemaError(f"this JSON schema cannot be enforced: {problem}")
    return compiled


def call_schema(tool: FunctionSpec) -> dict[str, Any]:
    """A call to ``tool`` in Llama 3.1's JSON form: {"name": ..., "parameters": {...}}."""
    parameters = tool.parameters or {"type": "object"}
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "parameters": parameters},
        "required": ["name", "parameters"],
        "additionalProperties": False,
    }


def tool_call_format(tools: list[FunctionSpec], choice: str) -> ResponseFormat | None:
    """The grammar that forces a call: one named tool, or any of them ("required")."""
    if choice == "required":
        schema: dict[str, Any] = {"anyOf": [call_schema(t) for t in tools]}
    elif choice in ("auto", "none"):
        return None
    else:
        named = [t for t in tools if t.name == choice]
        if not named:
            raise SchemaError(f"tool_choice names {choice!r}, which is not among the tools")
        schema = call_schema(named[0])
    return ResponseFormat(type="json_schema", json_schema=schema)
