"""What the benchmarks share: a private Redis, a real worker, timed turns, the reference side.

Run the benchmarks from the repository root (``python bench/<name>.py``); this
module puts the root on ``sys.path`` so they import corral like the tests do.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The reference side gets the same OpenMP setting the worker uses (worker/engine.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from redis import Redis  # noqa: E402
from rq import Worker  # noqa: E402

from shared.contract import Message, Sampling, Turn  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.streams import follow  # noqa: E402
from shared.turnqueue import enqueue_turn  # noqa: E402

# Distinct questions, so no two conversations share a prompt (and a prefix-cache hit).
QUESTIONS = [
    "What is the capital of France?",
    "Explain what a hash map is.",
    "Give me three tips for writing clear emails.",
    "How do I reverse a list in Python?",
    "What causes the seasons on Earth?",
    "Write a haiku about autumn.",
    "What is the difference between TCP and UDP?",
    "Suggest a name for a team chat bot.",
    "How does a bicycle stay upright?",
    "What is a good way to learn a new language?",
    "Summarize the plot of Romeo and Juliet.",
    "Why is the sky blue?",
    "What is recursion? Give an example.",
    "List some healthy breakfast ideas.",
    "How do vaccines work?",
    "What is the Pythagorean theorem?",
]


def question(i: int) -> str:
    return QUESTIONS[i % len(QUESTIONS)] + ("" if i < len(QUESTIONS) else f" (#{i})")


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}"


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (p50 of 1 value is that value)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class Timing:
    first_s: float  # arrival -> first streamed token
    last_s: float  # arrival -> last token
    tokens: int


@dataclass
class Summary:
    n: int
    tokens: int
    wall_s: float
    ttft: list[float]
    ttlt: list[float]

    @property
    def tok_s(self) -> float:
        return self.tokens / self.wall_s

    @classmethod
    def of(cls, n: int, timings: list[Timing], wall_s: float) -> Summary:
        return cls(
            n,
            sum(t.tokens for t in timings),
            wall_s,
            [t.first_s for t in timings],
            [t.last_s for t in timings],
        )


def bench_settings(redis_url: str, max_new_tokens: int, ignore_eos: bool = True) -> Settings:
    return Settings(
        redis_url=redis_url,
        queue_name=f"bench-{uuid.uuid4().hex[:6]}",
        max_new_tokens=max_new_tokens,
        temperature=0.0,
        ignore_eos=ignore_eos,
        # Bot-side admission control: the benchmark's burst is not abuse.
        queue_max_per_user=0,
        user_turns_per_minute=0,
    )


def start_worker(settings: Settings, slots: int, log_path: Path, **env: str) -> subprocess.Popen:
    """A real ``corral worker`` subprocess; returns once its slots are registered."""
    conn = Redis.from_url(str(settings.redis_url))
    environ = dict(os.environ)
    environ.update(
        REDIS_URL=str(settings.redis_url),
        CORRAL_QUEUE_NAME=settings.queue_name,
        CORRAL_MAX_NEW_TOKENS=str(settings.max_new_tokens),
        CORRAL_TEMPERATURE=str(settings.temperature),
        CORRAL_IGNORE_EOS="1" if settings.ignore_eos else "0",
        CORRAL_SLOTS=str(slots),
        **env,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "corral.cli", "worker"],
        env=environ,
        cwd=ROOT,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 300
    while len(Worker.all(connection=conn)) < slots:
        if process.poll() is not None or time.monotonic() > deadline:
            stop_worker(process)
            raise RuntimeError(
                f"worker did not start:\n{log_path.read_text(errors='replace')[-2000:]}"
            )
        time.sleep(0.2)
    conn.close()
    return process


def stop_worker(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def make_turn(i: int, max_new_tokens: int, tag: str) -> Turn:
    return Turn(
        platform="local",
        channel=f"bench-{tag}",
        thread=f"conv-{i}",
        user=f"bench-{tag}-{i}",
        message_id=uuid.uuid4().hex,
        text=question(i),
        messages=[Message(role="user", content=question(i))],
        sampling=Sampling(max_new_tokens=max_new_tokens, temperature=0.0),
    )


def run_turns(redis_url: str, settings: Settings, n: int, max_new_tokens: int) -> Summary:
    """Enqueue ``n`` conversations at once (as bots would) and time each streamed reply."""
    conn = Redis.from_url(redis_url)
    tag = uuid.uuid4().hex[:6]
    turns = [make_turn(i, max_new_tokens, tag) for i in range(n)]
    timings: list[Timing | None] = [None] * n
    errors: list[str] = []
    start = time.monotonic()

    def one(i: int) -> None:
        try:
            follow_one(i)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    def follow_one(i: int) -> None:
        local = Redis.from_url(redis_url)
        arrived = time.monotonic()
        job = enqueue_turn(local, settings, turns[i])
        first = 0.0
        for event in follow(local, job.id, timeout=300):
            if event.kind == "delta" and not first:
                first = time.monotonic() - arrived
            if event.kind == "error":
                errors.append(event.error or "error")
            if event.final:
                tokens = event.usage.completion_tokens if event.usage else 0
                timings[i] = Timing(first, time.monotonic() - arrived, tokens)
        local.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - start
    conn.close()
    if errors or any(t is None for t in timings):
        raise RuntimeError(f"turns failed: {errors}")
    return Summary.of(n, [t for t in timings if t is not None], wall)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        print("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if index == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_api(settings: Settings, log_path: Path) -> tuple[subprocess.Popen, str]:
    """A real ``corral api`` subprocess on a free loopback port; returns it and its base URL."""
    port = free_port()
    environ = dict(os.environ)
    environ.update(
        REDIS_URL=str(settings.redis_url),
        CORRAL_QUEUE_NAME=settings.queue_name,
        CORRAL_QUEUE_MAX_PER_USER="0",
        CORRAL_USER_TURNS_PER_MINUTE="0",
        CORRAL_API_HOST="127.0.0.1",
        CORRAL_API_PORT=str(port),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "corral.cli", "api"],
        env=environ,
        cwd=ROOT,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2):
                return process, url
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop_worker(process)
                raise RuntimeError(
                    f"api did not start:\n{log_path.read_text(errors='replace')[-2000:]}"
                ) from None
            time.sleep(0.2)


def run_http_turns(base_url: str, model: str, n: int, max_new_tokens: int) -> Summary:
    """``n`` streamed ``/api/chat`` requests sent at once, each timed from its arrival."""
    import asyncio

    import aiohttp

    async def one(session: aiohttp.ClientSession, i: int) -> Timing:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": question(i)}],
            "stream": True,
            "options": {"num_predict": max_new_tokens, "temperature": 0},
        }
        arrived = time.monotonic()
        first = 0.0
        tokens = 0
        async with session.post(base_url + "/api/chat", json=body) as resp:
            resp.raise_for_status()
            async for line in resp.content:
                if not line.strip():
                    continue
                chunk = json.loads(line)
                if chunk.get("error"):
                    raise RuntimeError(chunk["error"])
                if chunk.get("message", {}).get("content") and not first:
                    first = time.monotonic() - arrived
                if chunk.get("done"):
                    tokens = int(chunk.get("eval_count") or 0)
        return Timing(first, time.monotonic() - arrived, tokens)

    async def all_of() -> tuple[list[Timing], float]:
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            start = time.monotonic()
            timings = await asyncio.gather(*(one(session, i) for i in range(n)))
            return list(timings), time.monotonic() - start

    timings, wall = asyncio.run(all_of())
    return Summary.of(n, timings, wall)


def served_model(base_url: str) -> str:
    """The first model name ``/api/tags`` lists (what a client would pick)."""
    with urllib.request.urlopen(base_url + "/api/tags", timeout=10) as resp:
        return str(json.load(resp)["models"][0]["name"])
