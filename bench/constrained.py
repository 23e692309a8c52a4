"""Per-token cost of constrained decoding (JSON schema) against unconstrained, side by side.

One in-process :class:`~worker.engine.TransformersEngine` (the embedded SmolLM2-135M unless
``CORRAL_MODEL`` says otherwise), N concurrent requests per round, every request exactly
``--tokens`` new tokens (``CORRAL_IGNORE_EOS``; the schema asks for an array longer than
that, so the grammar never lets a request end early either). The two sides alternate,
``--repeat`` rounds each (alternating which goes first); each side reports its median
round: wall time, tok/s, the time per token of one request (wall ÷ tokens per request),
and the process CPU seconds per token (less at the mercy of other load on a shared
machine than wall time), plus the CPU time spent in the grammar processor itself.
Target: constrained ≤ 1.15x per token.

    python bench/constrained.py [--n 1,16] [--tokens 48] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import machine, question  # noqa: E402
from shared.contract import Message, ResponseFormat  # noqa: E402
from shared.settings import load_settings  # noqa: E402

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "role", "tags", "active"],
    "additionalProperties": False,
}
# Far longer than any run's token budget: requests end by length on both sides.
SCHEMA = {"type": "array", "items": PERSON, "minItems": 200}
FORMAT = ResponseFormat(type="json_schema", json_schema=SCHEMA)


class MaskClock:
    """CPU seconds the grammar processor spends (host masks and applying them)."""

    def __init__(self) -> None:
        from worker.constrained import GrammarMask

        self.spent = 0.0
        clock = self
        prepare, apply = GrammarMask.prepare_tensor_args, GrammarMask.__call__

        def timed_prepare(mask: Any, requests: Any) -> Any:
            start = time.thread_time()
            try:
                return prepare(mask, requests)
            finally:
                clock.spent += time.thread_time() - start

        def timed_apply(mask: Any, scores: Any, arg: Any) -> Any:
            start = time.thread_time()
            try:
                return apply(mask, scores, arg)
            finally:
                clock.spent += time.thread_time() - start

        GrammarMask.prepare_tensor_args = timed_prepare  # type: ignore[method-assign]
        GrammarMask.__call__ = timed_apply  # type: ignore[method-assign]


def run_round(
    engine: Any, prompts: list[list[int]], tokens: int, fmt: Any
) -> tuple[float, float, int]:
    """Wall and process CPU seconds for all prompts at once, and the tokens generated."""
    done: list[int] = []
    lock = threading.Lock()

    def one(ids: list[int]) -> None:
        completion = engine.generate(ids, max_new_tokens=tokens, response_format=fmt)
        with lock:
            done.append(completion.completion_tokens)

    threads = [threading.Thread(target=one, args=(p,)) for p in prompts]
    start, cpu = time.perf_counter(), time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, time.process_time() - cpu, sum(done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="1,16")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(n) for n in args.n.split(",")]

    from worker.engine import TransformersEngine
    from worker.model_source import load
    from worker.prompt import build_prompt

    settings = load_settings(ignore_eos=True, max_new_tokens=args.tokens, max_batch=max(sizes))
    clock = MaskClock()
    engine = TransformersEngine(load(settings), settings)
    print(f"# {machine()}; model {engine.name} on {engine.device}; {args.tokens} tokens each")

    def prompts(n: int) -> list[list[int]]:
        asks = [f"{question(i)} Then list people as JSON." for i in range(n)]
        built = [build_prompt(engine.tokenizer, [Message(role="user", content=a)]) for a in asks]
        return [p.input_ids for p in built]

    run_round(engine, prompts(1), 4, FORMAT)  # warm up both paths (and the grammar tokenizer)
    run_round(engine, prompts(1), 4, None)
    rows = []
    for n in sizes:
        batch = prompts(n)
        rounds: dict[str, list[tuple[float, float, int]]] = {"unconstrained": [], "json schema": []}
        clock.spent = 0.0
        for r in range(args.repeat):
            order = [("unconstrained", None), ("json schema", FORMAT)]
            for side, fmt in order if r % 2 == 0 else order[::-1]:  # neither side always first
                rounds[side].append(run_round(engine, batch, args.tokens, fmt))
        per_token, cpu_per_token = {}, {}
        for side, results in rounds.items():
            wall, _, produced = sorted(results)[len(results) // 2]  # the median round
            cpu = statistics.median(c for _, c, _ in results)
            per_token[side] = wall / (produced / n)
            cpu_per_token[side] = cpu / produced
            rows.append(
                (n, side, f"{produced}", f"{produced / wall:.1f}", f"{wall:.2f}",
                 f"{per_token[side] * 1e3:.1f}", f"{cpu_per_token[side] * 1e3:.2f}")
            )  # fmt: skip
        steps = args.repeat * args.tokens  # decode steps that carried grammar rows
        rows.append(
            (n, "**json schema / unconstrained**", "", "", "",
             f"**{per_token['json schema'] / per_token['unconstrained']:.3f}x**",
             f"**{cpu_per_token['json schema'] / cpu_per_token['unconstrained']:.3f}x**")
        )  # fmt: skip
        rows.append(
            (n, "grammar processor CPU ms per decode step", "", "", "",
             f"{clock.spent / steps * 1e3:.2f}", "")
        )  # fmt: skip
    engine.close()

    print("|  N | side | tokens | tok/s | wall s | ms/token per request | CPU ms/token |")
    print("|----|------|--------|-------|--------|----------------------|--------------|")
    for n, *cells in rows:
        print(f"| {n:2d} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
