"""N concurrent conversations through the real queue and worker vs the reference pipeline.

    python bench/cpu_concurrency.py [--n 1,4,16] [--tokens 64] [--repeat 3]
    python bench/cpu_concurrency.py --n 16 --skip-reference --compare-env CORRAL_FAST_SAMPLING=0
    python bench/cpu_concurrency.py --n 16 --http --static --skip-reference

corral side: a private redis-server, a real ``corral worker`` subprocess (the
embedded SmolLM2-135M, ``CORRAL_SLOTS`` = the largest N), N turns enqueued at
once as bots would, each reply followed on its Redis stream. Reference side:
``transformers.pipeline("text-generation")`` with the same model and prompts,
one request after another (all N arrive at t=0, so request i also waits for
the i-1 before it). ``--http`` adds the same N conversations sent at once as
streamed ``/api/chat`` requests to a real ``corral api`` in front of the same
worker (the whole bot-side path); ``--static`` adds the ceiling for this work on
this machine: one ``model.generate`` call on a static batch of the N prompts.
All sides generate exactly ``--tokens`` new tokens (end-of-turn ignored), near-greedy.
Times are from a request's arrival.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import (
    Summary,
    Timing,
    bench_settings,
    machine,
    pct,
    print_table,
    question,
    run_http_turns,
    run_turns,
    served_model,
    start_api,
    start_worker,
    stop_worker,
)

from corral.redis_server import RedisServer


def median_run(runs: list[Summary]) -> Summary:
    """The run with the median throughput (this VM's speed drifts ±10% between runs)."""
    return sorted(runs, key=lambda s: s.tok_s)[len(runs) // 2]


def corral_side(
    ns: list[int],
    tokens: int,
    log_dir: Path,
    env: dict[str, str],
    repeat: int = 1,
    http: bool = False,
    natural: bool = False,
) -> tuple[list[Summary], list[Summary]]:
    """Redis-direct runs, and (``http``) the same through ``corral api``, on one worker.

    The two paths alternate per repeat so the machine's drift hits both alike.
    """
    server = RedisServer(aof=False).start()
    try:
        settings = bench_settings(server.url, tokens, ignore_eos=not natural)
        worker = start_worker(settings, max(ns), log_dir / "worker.log", **env)
        api = start_api(settings, log_dir / "api.log") if http else None
        try:
            run_turns(server.url, settings, 1, 4)  # warm-up, as after any deploy
            model = ""
            if api is not None:
                model = served_model(api[1])
                run_http_turns(api[1], model, 1, 4)
            direct, through_api = [], []
            for n in ns:
                runs, api_runs = [], []
                for _ in range(repeat):
                    runs.append(run_turns(server.url, settings, n, tokens))
                    print(f"corral N={n}: {runs[-1].tok_s:.1f} tok/s", flush=True)
                    if api is not None:
                        api_runs.append(run_http_turns(api[1], model, n, tokens))
                        print(f"corral api N={n}: {api_runs[-1].tok_s:.1f} tok/s", flush=True)
                direct.append(median_run(runs))
                if api_runs:
                    through_api.append(median_run(api_runs))
            return direct, through_api
        finally:
            if api is not None:
                stop_worker(api[0])
            stop_worker(worker)
    finally:
        server.close()


def static_side(
    ns: list[int], tokens: int, repeat: int = 1, natural: bool = False
) -> list[Summary]:
    """The ceiling: one ``generate`` call on a static, left-padded batch of the N prompts.

    ``natural``: answers end at the model's end of turn, and only a row's own tokens (up to
    and including its stop token) count, as corral counts them.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shared.contract import Message
    from shared.settings import Settings
    from worker.engine import cpu_dtype
    from worker.model_input import chat_input
    from worker.model_source import model_location
    from worker.prompt import stop_token_ids

    settings = Settings()
    location = model_location(settings)
    tokenizer = AutoTokenizer.from_pretrained(location)
    dtype = cpu_dtype(settings)
    model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype).eval()
    stops = stop_token_ids(tokenizer, model.generation_config)
    print(f"static batch: model.generate, {dtype}", flush=True)

    def once(n: int) -> Summary:
        # Exactly the ids the worker feeds the model (corral's system prompt included).
        prompts = [
            chat_input(tokenizer, [Message(role="user", content=question(i))], settings)[
                1
            ].input_ids
            for i in range(n)
        ]
        width = max(len(ids) for ids in prompts)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
        input_ids = torch.tensor([[pad] * (width - len(ids)) + list(ids) for ids in prompts])
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts])
        length = {"max_new_tokens": tokens, "min_new_tokens": 0 if natural else tokens}
        start = time.monotonic()
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                do_sample=False,
                eos_token_id=stops,
                pad_token_id=pad,
                **length,
            )
        wall = time.monotonic() - start
        new = out[:, width:].tolist()
        counts = [_own_tokens(row, stops) if natural else tokens for row in new]
        # Every request arrives at 0 and gets its whole answer at the end.
        return Summary.of(n, [Timing(wall, wall, count) for count in counts], wall)

    once(1)  # warm-up
    results = []
    for n in ns:
        runs = [once(n) for _ in range(repeat)]
        for run in runs:
            print(f"static N={n}: {run.tok_s:.1f} tok/s", flush=True)
        results.append(median_run(runs))
    return results


def reference_side(ns: list[int], tokens: int, repeat: int = 1) -> list[Summary]:
    import torch
    from transformers import AutoTokenizer, TextStreamer, pipeline

    from shared.settings import Settings
    from worker.engine import cpu_dtype
    from worker.model_source import model_location

    location = model_location(Settings())
    tokenizer = AutoTokenizer.from_pretrained(location)
    # The weights in the dtype the worker runs them in (CORRAL_CPU_DTYPE), so only the
    # serving approach differs.
    dtype = cpu_dtype(Settings())
    print(f"reference: pipeline('text-generation'), {dtype}", flush=True)
    pipe = pipeline("text-generation", model=location, tokenizer=tokenizer, dtype=dtype)

    class FirstToken(TextStreamer):
        def __init__(self) -> None:
            super().__init__(tokenizer, skip_prompt=True)
            self.calls = 0
            self.first = 0.0

        def put(self, value: torch.Tensor) -> None:
            self.calls += 1  # call 1 is the prompt, call 2 the first new token
            if self.calls == 2:
                self.first = time.monotonic()

        def end(self) -> None:
            pass

    def once(i: int) -> tuple[float, float]:
        streamer = FirstToken()
        out = pipe(
            [{"role": "user", "content": question(i)}],
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            streamer=streamer,
            return_full_text=False,
        )
        assert out
        return streamer.first, time.monotonic()

    once(0)  # warm-up
    results = []
    for n in ns:
        runs = []
        for _ in range(repeat):
            start = time.monotonic()
            timings = []
            for i in range(n):
                first, last = once(i)
                timings.append(Timing(first - start, last - start, tokens))
            runs.append(Summary.of(n, timings, time.monotonic() - start))
            print(f"reference N={n}: {runs[-1].tok_s:.1f} tok/s", flush=True)
        results.append(median_run(runs))
    return results


def _own_tokens(row: list[int], stops: list[int]) -> int:
    """A row's answer length: up to and including its first stop token."""
    for index, token in enumerate(row):
        if token in stops:
            return index + 1
    return len(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="1,4,16", help="concurrent conversations, comma-separated")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per reply")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--http", action="store_true", help="also through `corral api`")
    parser.add_argument("--static", action="store_true", help="also the static-batch ceiling")
    parser.add_argument(
        "--natural",
        action="store_true",
        help="answers end at the model's end of turn (at most --tokens), not at exactly --tokens",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per N and side; the median run is reported"
    )
    parser.add_argument(
        "--env", action="append", default=[], help="extra worker env, NAME=VALUE (repeatable)"
    )
    parser.add_argument(
        "--compare-env",
        action="append",
        default=[],
        help="also run corral with this worker env (NAME=VALUE, repeatable) and compare",
    )
    args = parser.parse_args()
    ns = [int(n) for n in args.n.split(",")]
    env = dict(item.split("=", 1) for item in args.env)
    variant = dict(item.split("=", 1) for item in args.compare_env)

    print(
        f"machine: {machine()}; {args.tokens} new tokens per reply; N = {ns}; "
        f"median of {args.repeat} run(s) per N and side",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        corral, api = corral_side(
            ns, args.tokens, Path(tmp), env, args.repeat, args.http, args.natural
        )
        other = (
            corral_side(ns, args.tokens, Path(tmp), {**env, **variant}, args.repeat)[0]
            if variant
            else []
        )
    static = static_side(ns, args.tokens, args.repeat, args.natural) if args.static else []
    reference = [] if args.skip_reference else reference_side(ns, args.tokens, args.repeat)
    label = " ".join(f"{k}={v}" for k, v in variant.items())

    rows = []
    for index, n in enumerate(ns):
        sides = [("corral", corral[index])]
        if api:
            sides.append(("corral via api", api[index]))
        if static:
            sides.append(("static batch", static[index]))
        if other:
            sides.append((f"corral {label}", other[index]))
        if reference:
            sides.append(("reference", reference[index]))
        for name, s in sides:
            rows.append(
                [
                    n,
                    name,
                    s.tokens,
                    f"{s.tok_s:.1f}",
                    f"{pct(s.ttft, 50):.2f}",
                    f"{pct(s.ttft, 95):.2f}",
                    f"{pct(s.ttlt, 50):.2f}",
                    f"{pct(s.ttlt, 95):.2f}",
                ]
            )
    print()
    print_table(
        ["N", "side", "tokens", "tok/s", "TTFT p50 s", "TTFT p95 s", "last p50 s", "last p95 s"],
        rows,
    )
    if other:
        print()
        print_table(
            ["N", f"corral / corral {label} tok/s"],
            [[n, f"{c.tok_s / o.tok_s:.2f}x"] for n, c, o in zip(ns, corral, other, strict=True)],
        )
    if api or static:
        print()
        rows = []
        for index, n in enumerate(ns):
            row: list[object] = [n]
            if static:
                row.append(f"{corral[index].tok_s / static[index].tok_s:.2f}")
                if api:
                    row.append(f"{api[index].tok_s / static[index].tok_s:.2f}")
            if api:
                direct_p95 = pct(corral[index].ttft, 95)
                row.append(f"{pct(api[index].ttft, 95) / direct_p95:.2f}" if direct_p95 else "-")
            rows.append(row)
        headers = ["N"]
        if static:
            headers.append("corral / static tok/s")
            if api:
                headers.append("api / static tok/s")
        if api:
            headers.append("api / direct TTFT p95")
        print_table(headers, rows)
    if reference:
        print()
        base = reference[0].tok_s
        print_table(
            ["N", "corral / reference tok/s", "corral TTFT p95 s", "target"],
            [
                [n, f"{c.tok_s / r.tok_s:.2f}x", f"{pct(c.ttft, 95):.2f}", ""]
                for n, c, r in zip(ns, corral, reference, strict=True)
            ],
        )
        print(f"\nreference single-stream: {base:.1f} tok/s")
        if 16 in ns:
            c = corral[ns.index(16)]
            r = reference[ns.index(16)]
            print(
                f"targets at N=16: throughput {c.tok_s / r.tok_s:.2f}x (>= 8x: "
                f"{'met' if c.tok_s / r.tok_s >= 8 else 'not met'}); TTFT p95 "
                f"{pct(c.ttft, 95):.2f} s (<= 1.5 s: "
                f"{'met' if pct(c.ttft, 95) <= 1.5 else 'not met'})"
            )


if __name__ == "__main__":
    main()
