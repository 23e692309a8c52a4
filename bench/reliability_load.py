"""Reliability under load: N turns over M conversations through real workers, with faults.

    python bench/reliability_load.py [--turns 1000] [--conversations 100] [--workers 2]

Starts its own Redis (AOF on) and real `corral worker` processes with the embedded small
model answering a few tokens per turn, enqueues every turn, and meanwhile SIGKILLs one
worker (a fresh one replaces it) and crashes and restarts Redis in place. Then it checks
every turn from what Redis holds:

* answered / failed (a final error) / lost (no final event) / duplicated (more than one
  ``done`` in a turn's stream, or its question twice in the conversation's history);
* per-conversation order: each conversation's history holds its questions exactly in
  enqueue order, and each turn's (last) start comes after the previous turn's answer;
* queue-wait fairness: ``usage.queue_ms`` max over median (and p95), turns that waited
  behind their own conversation's earlier turns included.

Prints a JSON summary; exits 1 if anything was lost, duplicated or out of order.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError
from rq import Worker

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from corral.redis_server import RedisServer  # noqa: E402
from shared.contract import Message, Sampling, StreamEvent, Turn  # noqa: E402
from shared.history import ConversationStore  # noqa: E402
from shared.settings import load_settings  # noqa: E402
from shared.streams import stream_key  # noqa: E402
from shared.turnqueue import enqueue_turn  # noqa: E402

QUEUE = "corral-bench-reliability"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def retrying(call, *args, attempts: int = 60, **kwargs):  # type: ignore[no-untyped-def]
    """Call through a Redis outage, backing off like the bots do."""
    for attempt in range(attempts):
        try:
            return call(*args, **kwargs)
        except RedisError:
            time.sleep(min(0.25 * 2**attempt, 2.0))
    return call(*args, **kwargs)


class Workers:
    def __init__(self, url: str, logs: Path, slots: int, tokens: int) -> None:
        self.url, self.logs, self.slots, self.tokens = url, logs, slots, tokens
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.update(
            REDIS_URL=self.url, CORRAL_QUEUE_NAME=QUEUE, CORRAL_SLOTS=str(self.slots),
            CORRAL_MAX_NEW_TOKENS=str(self.tokens), CORRAL_KV_CACHE_TOKENS="8192",
        )  # fmt: skip
        log_file = (self.logs / f"worker-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "corral.cli", "worker"],
            env=env, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def wait_registered(self, conn: Redis, count: int, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while len(retrying(Worker.all, connection=conn)) < count:
            if time.monotonic() > deadline:
                raise SystemExit("workers did not come up; see " + str(self.logs))
            time.sleep(0.5)

    def busy_pid(self, conn: Redis) -> int | None:
        for worker in Worker.all(connection=conn):
            if worker.get_state() == "busy" and worker.pid:
                return int(worker.pid)
        return None

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def read_events(conn: Redis, job_id: str) -> list[tuple[str, StreamEvent]]:
    return [
        (entry.decode(), StreamEvent.model_validate_json(fields[b"e"]))
        for entry, fields in conn.xrange(stream_key(job_id))
    ]


def stream_ms(entry_id: str) -> int:
    return int(entry_id.split("-")[0])


def main() -> int:
    # SIGTERM ends the run through the finally clauses (workers and Redis stopped).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=1000)
    parser.add_argument("--conversations", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--no-faults", action="store_true")
    parser.add_argument("--job-ttl", type=int, default=3600)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="corral-reliability-"))
    server = RedisServer(data_dir=tmp / "redis", aof=True).start()
    conn = Redis.from_url(server.url)
    # Admission limits off: this measures delivery, not politeness.
    settings = load_settings(
        redis_url=server.url, queue_name=QUEUE, max_new_tokens=args.tokens,
        queue_max=0, queue_max_per_user=0, user_turns_per_minute=0,
        # Every turn is enqueued at once: keep them from being dropped as stale
        # (CORRAL_JOB_TTL, 10 min by default) while a slow machine works through them.
        job_ttl=args.job_ttl,
    )  # fmt: skip
    workers = Workers(server.url, tmp, args.slots, args.tokens)
    try:
        return run(args, server, conn, settings, workers)
    finally:
        workers.stop()
        server.stop()


def run(args, server, conn, settings, workers) -> int:  # type: ignore[no-untyped-def]
    tmp = workers.logs
    for _ in range(args.workers):
        workers.start()
    log(f"starting {args.workers} workers (logs in {tmp})")
    workers.wait_registered(conn, args.workers * args.slots)

    conversations = [f"conv-{i:03d}" for i in range(args.conversations)]
    jobs: list[tuple[str, str, str]] = []  # (job id, conversation, question)
    began = time.monotonic()
    for index in range(args.turns):
        conversation = conversations[index % len(conversations)]
        question = f"Question {index} of {conversation}: say hi."
        turn = Turn(
            platform="local", channel="bench", thread=conversation, user=conversation,
            message_id=uuid.uuid4().hex, text=question,
            sampling=Sampling(max_new_tokens=args.tokens),
        )  # fmt: skip
        job = retrying(enqueue_turn, conn, settings, turn)
        jobs.append((job.id, conversation, question))
    log(f"enqueued {len(jobs)} turns in {time.monotonic() - began:.1f} s")

    faults: list[str] = []
    killed = restarted = args.no_faults

    def finished_count() -> int:
        with conn.pipeline(transaction=False) as pipe:
            for job_id, _, _ in jobs:
                pipe.hget(f"rq:job:{job_id}", "status")
            statuses = pipe.execute()
        return sum(1 for s in statuses if s in (b"finished", b"failed"))

    deadline = time.monotonic() + args.timeout
    done = 0
    while time.monotonic() < deadline:
        done = retrying(finished_count)
        if done >= len(jobs):
            break
        if not killed and done >= len(jobs) * 0.25:
            pid = workers.busy_pid(conn)
            if pid:
                os.kill(pid, signal.SIGKILL)
                faults.append(f"SIGKILL worker pid {pid} at {done} turns done")
                log(faults[-1])
                workers.start()
                killed = True
        elif killed and not restarted and done >= len(jobs) * 0.5:
            server.kill()
            time.sleep(2)
            server.start()
            faults.append(f"Redis SIGKILLed and restarted (AOF) at {done} turns done")
            log(faults[-1])
            restarted = True
        time.sleep(0.5)
    elapsed = time.monotonic() - began
    log(f"{done}/{len(jobs)} turns settled in {elapsed:.1f} s")

    answered = failed = lost = unsettled = stale = duplicated = order_violations = retried = 0
    with conn.pipeline(transaction=False) as pipe:
        for job_id, _, _ in jobs:
            pipe.hget(f"rq:job:{job_id}", "status")
        statuses = dict(zip([j for j, _, _ in jobs], pipe.execute(), strict=True))
    waits: list[float] = []
    by_conversation: dict[str, list[tuple[str, str]]] = {}
    previous_done: dict[str, int] = {}
    for job_id, conversation, question in jobs:
        by_conversation.setdefault(conversation, []).append((job_id, question))
        events = read_events(conn, job_id)
        kinds = [e.kind for _, e in events]
        dones = [(entry, e) for entry, e in events if e.kind == "done"]
        finals = [e for _, e in events if e.final]
        if kinds.count("started") > 1:
            retried += 1
        if len(dones) > 1:
            duplicated += 1
        if dones:
            answered += 1
            entry, event = dones[-1]
            if event.usage:
                waits.append(event.usage.queue_ms)
            starts = [entry_id for entry_id, e in events if e.kind == "started"]
            last_start = stream_ms(starts[-1]) if starts else 0
            if last_start < previous_done.get(conversation, 0):
                order_violations += 1
            previous_done[conversation] = stream_ms(entry)
        elif finals:
            failed += 1
        elif statuses.get(job_id) in (b"queued", b"started", b"rate_limited", b"scheduled"):
            unsettled += 1  # still waiting when the run timed out: slow, not lost
        elif statuses.get(job_id) is None and not events:
            stale += 1  # never started within --job-ttl: RQ dropped it as stale, by design
        else:
            lost += 1

    store = ConversationStore(conn, settings.history_ttl)
    history_problems = 0
    for conversation, turns in by_conversation.items():
        key = Turn(platform="local", channel="bench", thread=conversation, user="x",
                   message_id="x", text="x").conversation_key  # fmt: skip
        history: list[Message] = store.load(key) or []
        asked = [m.content for m in history if m.role == "user"]
        answered_questions = [q for job_id, q in turns if read_events(conn, job_id)[-1:]
                              and read_events(conn, job_id)[-1][1].kind == "done"]  # fmt: skip
        if asked != answered_questions:
            history_problems += 1
    waits.sort()
    median = statistics.median(waits) if waits else 0.0
    summary = {
        "turns": len(jobs),
        "conversations": len(conversations),
        "workers": args.workers,
        "slots_per_worker": args.slots,
        "max_new_tokens": args.tokens,
        "faults": faults,
        "elapsed_s": round(elapsed, 1),
        "answered": answered,
        "failed_with_message": failed,
        "lost": lost,
        "unsettled_at_timeout": unsettled,
        "dropped_stale_never_started": stale,
        "duplicated": duplicated,
        "retried_after_fault": retried,
        "order_violations": order_violations,
        "conversations_whose_history_differs": history_problems,
        "queue_wait_ms": {
            "median": round(median, 1),
            "p95": round(waits[int(len(waits) * 0.95) - 1], 1) if waits else 0.0,
            "max": round(waits[-1], 1) if waits else 0.0,
            "max_over_median": round(waits[-1] / median, 2) if median else None,
        },
    }
    print(json.dumps(summary, indent=2))
    bad = lost or duplicated or order_violations or history_problems
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
