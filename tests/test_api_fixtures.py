"""Fixtures for the API tests: the server in a background thread, and a fake worker.

The fake worker takes jobs off the real RQ queue and publishes real
StreamEvents, exactly as ``corral worker`` does, so the server under test
runs its whole path (enqueue, follow the stream, cancel) without the model.
Imported by the test_api_* modules; it holds no tests itself.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis import Redis
from rq import Queue, Worker
from rq.job import Job

from bots.api.server import build_app, start
from bots.api.settings import ApiSettings
from shared.cancel import CANCEL_KEY
from shared.contract import StreamEvent, Turn, Usage
from shared.settings import Settings
from shared.streams import publish
from shared.turnqueue import MODEL_KEY

MODEL = "smollm2-135m-instruct"
REPLY = "Hello from the **fake** worker."
USAGE = Usage(prompt_tokens=11, completion_tokens=7, queue_ms=2.5, prompt_ms=12.5, generate_ms=40.0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class FakeWorker:
    """Answers every job with ``reply``, one word per delta; tests may swap ``behave``."""

    conn: Redis
    queue_name: str
    reply: str = REPLY
    delay: float = 0.0  # seconds between deltas
    finish_reason: str = "stop"
    turns: list[Turn] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    behave: Callable[[FakeWorker, Job, Turn], None] | None = None
    model: str = MODEL
    default: bool = True  # serves the default model, so the plain queue (as real workers do)
    _stop: threading.Event = field(default_factory=threading.Event)

    def emit(self, job: Job, seq: int, kind: str, **kw: object) -> None:
        publish(self.conn, StreamEvent(job_id=job.id, seq=seq, kind=kind, model=self.model, **kw))

    def answer(self, job: Job, turn: Turn) -> None:
        self.emit(job, 0, "started")
        sent = ""
        words = self.reply.split(" ")
        for seq, word in enumerate(words, start=1):
            if self.conn.exists(CANCEL_KEY.format(job_id=job.id)):
                self.cancelled.append(job.id)
                self.emit(job, seq, "done", text=sent, finish_reason="cancelled", usage=USAGE)
                return
            piece = word if seq == 1 else " " + word
            sent += piece
            self.emit(job, seq, "delta", text=piece)
            time.sleep(self.delay)
        self.emit(
            job,
            len(words) + 1,
            "done",
            text=self.reply,
            finish_reason=self.finish_reason,
            usage=USAGE,
        )

    def loop(self) -> None:
        # Exactly what a real worker consumes (shared/turnqueue.serving_queues): the plain
        # queue for the default model, its own otherwise.
        name = self.queue_name if self.default else f"{self.queue_name}:{self.model}"
        queues = [Queue(name, connection=self.conn)]
        while not self._stop.is_set():
            # Polled without blocking, so the fixture's teardown does not wait on BLMOVE.
            found = Queue.dequeue_any(queues, timeout=None, connection=self.conn)
            if found is None:
                time.sleep(0.02)
                continue
            job, _ = found
            turn = Turn.from_payload(job.args[0])
            self.turns.append(turn)
            (self.behave or FakeWorker.answer)(self, job, turn)


@contextmanager
def running_fake_worker(
    settings: Settings, redis_conn: Redis, model: str = MODEL, default: bool = True
) -> Iterator[FakeWorker]:
    worker = FakeWorker(redis_conn, settings.queue_name, model=model, default=default)
    # Registered like a real RQ worker, so the server's "is a worker up?" check passes.
    registration = Worker(
        [Queue(settings.queue_name, connection=redis_conn)],
        connection=redis_conn,
        name=f"fake-{uuid.uuid4().hex[:8]}",
    )
    registration.register_birth()
    redis_conn.hset(MODEL_KEY, registration.name, model)
    thread = threading.Thread(target=worker.loop, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker._stop.set()
        thread.join(timeout=5)
        registration.register_death()


@pytest.fixture
def fake_worker(settings: Settings, redis_conn: Redis) -> Iterator[FakeWorker]:
    with running_fake_worker(settings, redis_conn) as worker:
        yield worker


class ServerThread:
    """The API server on a free port, in its own event loop and thread."""

    def __init__(self, settings: Settings, redis_url: str, api: ApiSettings) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = build_app(settings, redis_url, api)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("API server did not start")

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.runner = self.loop.run_until_complete(start(self.app, "127.0.0.1", self.port))
        self._ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


StartApi = Callable[..., ServerThread]


@pytest.fixture
def start_api(settings: Settings, redis_url: str) -> Iterator[StartApi]:
    """Factory: ``start_api(token="t", max_body=2048)`` starts a server with those settings."""
    servers: list[ServerThread] = []

    def make(**api: object) -> ServerThread:
        api.setdefault("token", None)  # never pick up a developer's CORRAL_API_TOKEN
        server = ServerThread(settings, redis_url, ApiSettings(**api))  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def api(start_api: StartApi) -> ServerThread:
    """A server with defaults: no token, 1 MiB body limit."""
    return start_api()


def post_bytes(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """POST a raw JSON body; the status and the parsed answer, error statuses included."""
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
