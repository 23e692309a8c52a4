"""What the queue costs one request: bot-side enqueue → worker → streamed reply vs bare generate.

    python bench/queue_overhead.py [--tokens 64] [--repeat 5]

One process holds a real ``WorkerProcess`` (the embedded model, one slot) and
a private redis-server. "bare" calls the worker's engine directly with the
prompt the worker would build; "end to end" enqueues the same conversation as
a bot does and follows its Redis stream to the final event. Both generate
exactly ``--tokens`` tokens; runs alternate so drift hits both alike.
"""

from __future__ import annotations

import argparse
import time

from common import bench_settings, machine, make_turn, median, print_table, question
from redis import Redis

from corral.redis_server import RedisServer
from shared.contract import Message
from shared.streams import follow
from shared.turnqueue import enqueue_turn
from worker.prompt import build_prompt
from worker.runner import WorkerProcess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {machine()}; {args.tokens} new tokens, {args.repeat} runs each", flush=True)

    server = RedisServer(aof=False).start()
    settings = bench_settings(server.url, args.tokens).model_copy(update={"slots": 1})
    process = WorkerProcess(settings, server.url)
    engine = process.load()
    process.start()
    conn = Redis.from_url(server.url)
    bare: list[tuple[float, float]] = []
    e2e: list[tuple[float, float]] = []
    try:
        ids = build_prompt(engine.tokenizer, [Message(role="user", content=question(0))]).input_ids
        for _ in range(args.repeat):
            c = engine.generate(ids, max_new_tokens=args.tokens, temperature=0.0)
            assert c.completion_tokens == args.tokens, c
            bare.append((c.first_token_s, c.total_s))

            arrived = time.monotonic()
            job = enqueue_turn(conn, settings, make_turn(0, args.tokens, str(time.time_ns())))
            first = 0.0
            for event in follow(conn, job.id, timeout=120):
                if event.kind == "delta" and not first:
                    first = time.monotonic() - arrived
                if event.final:
                    assert event.kind == "done", event
                    assert event.usage and event.usage.completion_tokens == args.tokens
            e2e.append((first, time.monotonic() - arrived))
    finally:
        conn.close()
        process.stop()
        process.wait()
        process.close()
        server.close()

    b_first, b_total = median([b[0] for b in bare]), median([b[1] for b in bare])
    e_first, e_total = median([e[0] for e in e2e]), median([e[1] for e in e2e])
    print()
    rows = [
        ["bare engine.generate", b_first, b_total],
        ["enqueue → worker → stream", e_first, e_total],
    ]
    print_table(
        ["path", "first token s (median)", "last token s (median)", "tok/s"],
        [[name, f"{f:.3f}", f"{t:.3f}", f"{args.tokens / t:.1f}"] for name, f, t in rows],
    )
    ratio = e_total / b_total
    print(
        f"\nend to end / bare: {ratio:.3f}x "
        f"(target <= 1.1x: {'met' if ratio <= 1.1 else 'not met'}); "
        f"overhead {1000 * (e_total - b_total):.0f} ms per request"
    )


if __name__ == "__main__":
    main()
