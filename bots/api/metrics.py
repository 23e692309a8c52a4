"""Counters for ``GET /metrics``, written in the Prometheus text format by hand.

A handful of counters does not justify a dependency; the format is simple and
stable (https://prometheus.io/docs/instrumenting/exposition_formats/).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from shared.usage import Tokens


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: dict[str, str]) -> str:
    inner = ",".join(f'{key}="{_escape(value)}"' for key, value in pairs.items())
    return "{" + inner + "}" if inner else ""


@dataclass
class ApiMetrics:
    # (route, method, status) -> count. ``route`` is the route template, never the raw
    # path, so a scanner probing random URLs cannot blow up the number of series.
    requests: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    turns: Counter[str] = field(default_factory=Counter)  # finish reason -> count
    in_flight: int = 0

    def observe_request(self, route: str, method: str, status: int) -> None:
        self.requests[(route, method, str(status))] += 1

    def observe_turn(self, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.turns[finish_reason] += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens

    def render(
        self,
        queue_depth: int | None,
        workers: int | None,
        usage: dict[str, dict[str, Tokens]] | None = None,
    ) -> str:
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict, float]]) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                lines.append(f"{name}{_labels(labels)} {value:g}")

        metric(
            "corral_api_requests_total",
            "counter",
            "HTTP requests by route, method and status.",
            [
                ({"route": r, "method": m, "status": s}, n)
                for (r, m, s), n in sorted(self.requests.items())
            ],
        )
        metric(
            "corral_api_turns_total",
            "counter",
            "Turns answered through the API, by finish reason.",
            [({"finish_reason": reason}, n) for reason, n in sorted(self.turns.items())],
        )
        metric(
            "corral_api_prompt_tokens_total",
            "counter",
            "Prompt tokens of API turns.",
            [({}, self.prompt_tokens)],
        )
        metric(
            "corral_api_tokens_generated_total",
            "counter",
            "Tokens generated for API turns.",
            [({}, self.completion_tokens)],
        )
        metric(
            "corral_api_turns_in_flight",
            "gauge",
            "API turns waiting for or receiving an answer.",
            [({}, self.in_flight)],
        )
        # Redis may be down while we are scraped; then these gauges are left out
        # rather than reported as a misleading zero.
        if queue_depth is not None:
            metric(
                "corral_queue_depth", "gauge", "Turns waiting in the queue.", [({}, queue_depth)]
            )
        if workers is not None:
            metric("corral_workers", "gauge", "Registered workers.", [({}, workers)])
        if usage is not None:
            # Today's (UTC) tokens from shared/usage.py: every platform, by user/channel/model.
            samples = [
                ({"scope": scope, "name": name, "type": kind}, getattr(tokens, f"{kind}_tokens"))
                for scope, rows in usage.items()
                for name, tokens in rows.items()
                for kind in ("prompt", "completion")
            ]
            metric(
                "corral_usage_tokens_today",
                "gauge",
                "Tokens used today (UTC), by user, channel and model.",
                samples,
            )
        return "\n".join(lines) + "\n"
