"""The tools corral ships: useful with no outside service, plus two adapters.

Each tool is a plain function of its arguments and a :class:`ToolContext`;
it returns JSON-able data or raises :class:`ToolFailed` with a message the
model (and the user, in the compact trace) may see. Web search and Wolfram
Alpha are offered only when their API keys are set.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import os
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from shared.contract import Message

from .llama31 import ToolSpec

HTTP_TIMEOUT = 10


class ToolFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class ToolContext:
    history: list[Message]  # the conversation so far, for conversation search


@dataclass(frozen=True)
class Tool:
    spec: ToolSpec
    run: Callable[[dict[str, Any], ToolContext], Any]
    builtin: bool = False  # one of Llama 3.1's built-in tools (called via <|python_tag|>)


_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}  # fmt: skip
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_FUNCTIONS: dict[str, Callable[..., float]] = {
    "sqrt": math.sqrt, "log": math.log, "exp": math.exp, "sin": math.sin, "cos": math.cos,
    "tan": math.tan, "abs": abs, "round": round,
}  # fmt: skip
_CONSTANTS = {"pi": math.pi, "e": math.e}


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return node.value
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 1000:
            raise ToolFailed("exponent too large")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        function = _FUNCTIONS.get(node.func.id)
        if function and not node.keywords:
            return function(*(_evaluate(arg) for arg in node.args))
    raise ToolFailed("only numbers, + - * / // % ** and sqrt/log/exp/sin/cos/tan/abs/round")


def calculator(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    expression = str(args.get("expression", ""))[:500]
    try:
        value = _evaluate(ast.parse(expression, mode="eval").body)
    except SyntaxError:
        raise ToolFailed(f"not an arithmetic expression: {expression!r}") from None
    except (ArithmeticError, ValueError) as exc:
        raise ToolFailed(f"cannot compute {expression!r}: {exc}") from None
    return {"expression": expression, "result": value}


def current_time(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    name = str(args.get("timezone") or "UTC")
    try:
        zone = UTC if name.upper() == "UTC" else ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ToolFailed(f"unknown time zone {name!r}") from None
    now = datetime.now(zone)
    return {
        "timezone": name,
        "iso": now.isoformat(timespec="seconds"),
        "weekday": now.strftime("%A"),
    }


def search_conversation(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    query = str(args.get("query", "")).lower().strip()
    if not query:
        raise ToolFailed("query is empty")
    words = query.split()
    hits = [
        {"role": m.role, "text": m.content[:300]}
        for m in ctx.history
        if all(w in m.content.lower() for w in words)
    ]
    return {"query": query, "matches": hits[-5:]}


def _get_json(url: str, headers: dict[str, str]) -> Any:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            return json.loads(response.read())
    except (OSError, ValueError) as exc:
        # Never echo the URL: Wolfram Alpha's carries the app id.
        raise ToolFailed(f"the search service did not answer ({type(exc).__name__})") from None


def brave_search(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    query = str(args.get("query", ""))[:400]
    data = _get_json(
        "https://api.search.brave.com/res/v1/web/search?" + urllib.parse.urlencode({"q": query}),
        {"Accept": "application/json", "X-Subscription-Token": os.environ["BRAVE_API_KEY"]},
    )
    results = data.get("web", {}).get("results", [])[:5]
    return {
        "query": query,
        "top_k": [{k: r.get(k) for k in ("title", "url", "description")} for r in results],
    }


def wolfram_alpha(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    query = str(args.get("query", ""))[:400]
    params = {"input": query, "appid": os.environ["WOLFRAM_ALPHA_APP_ID"], "output": "json"}
    data = _get_json("https://api.wolframalpha.com/v2/query?" + urllib.parse.urlencode(params), {})
    pods = data.get("queryresult", {}).get("pods", [])
    return {
        "query": query,
        "pods": [
            {"title": p.get("title"), "text": (p.get("subpods") or [{}])[0].get("plaintext")}
            for p in pods[:5]
        ],
    }


def _spec(name: str, description: str, **properties: str) -> ToolSpec:
    return ToolSpec(
        name,
        description,
        {
            "type": "object",
            "properties": {k: {"type": "string", "description": v} for k, v in properties.items()},
            "required": list(properties)[:1],
        },
    )


def available_tools(env: dict[str, str] | None = None) -> dict[str, Tool]:
    env = dict(os.environ) if env is None else env
    tools = {
        "calculator": Tool(
            _spec(
                "calculator",
                "Evaluate an arithmetic expression exactly.",
                expression="e.g. (3 + 4) * 2 / sqrt(16)",
            ),
            calculator,
        ),
        "current_time": Tool(
            _spec(
                "current_time",
                "The current date and time.",
                timezone="IANA zone such as Europe/Paris; default UTC",
            ),
            current_time,
        ),
        "search_conversation": Tool(
            _spec(
                "search_conversation",
                "Find earlier messages of this conversation.",
                query="words to look for",
            ),
            search_conversation,
        ),
    }
    if env.get("BRAVE_API_KEY"):
        tools["brave_search"] = Tool(
            _spec("brave_search", "Search the web.", query="search terms"), brave_search, True
        )
    if env.get("WOLFRAM_ALPHA_APP_ID"):
        tools["wolfram_alpha"] = Tool(
            _spec("wolfram_alpha", "Ask Wolfram Alpha.", query="question"), wolfram_alpha, True
        )
    return tools


def select_tools(names: str, env: dict[str, str] | None = None) -> dict[str, Tool]:
    """The configured tools (``CORRAL_TOOLS``) that can run here; "all" means every one."""
    wanted = {n for n in names.split(",") if n}
    tools = available_tools(env)
    return tools if "all" in wanted else {k: v for k, v in tools.items() if k in wanted}


def run_tool(tools: dict[str, Tool], name: str, args: dict[str, Any], ctx: ToolContext) -> Any:
    tool = tools.get(name)
    if tool is None:
        return {"error": f"no tool named {name!r} is available"}
    try:
        return tool.run(args, ctx)
    except ToolFailed as exc:
        return {"error": str(exc)}
