"""Redis killed and restarted (AOF on, same port and data): accepted turns are not lost,
and workers and readers reconnect by themselves. Its own Redis; the session one is untouched."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from rq import Worker
from rq.job import Job

from corral.redis_server import RedisServer
from shared.contract import Sampling, StreamEvent, Turn
from shared.settings import Settings, load_settings
from shared.streams import follow
from shared.turnqueue import enqueue_turn

pytestmark = pytest.mark.model

QUEUE = "corral-aof"


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(data_dir=tmp_path / "redis", aof=True).start()
    yield server
    server.stop()


def restart(server: RedisServer, down_s: float) -> None:
    """Crash it (SIGKILL: no shutdown save), stay down a while, start it again in place."""
    server.kill()
    time.sleep(down_s)
    server.start()


def start_worker(server: RedisServer, log: Path, **env: str) -> subprocess.Popen[bytes]:
    environ = dict(os.environ)
    environ.update(
        REDIS_URL=server.url, CORRAL_QUEUE_NAME=QUEUE, CORRAL_SLOTS="2",
        CORRAL_KV_CACHE_TOKENS="4096", CORRAL_IGNORE_EOS="1", **env,
    )  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "corral.cli", "worker"],
        env=environ, cwd=log.parent, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    conn = Redis.from_url(server.url)
    deadline = time.monotonic() + 120
    while not Worker.all(connection=conn):
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.2)
    return process


def a_turn(conversation: str, tokens: int) -> Turn:
    return Turn(
        platform="local", channel="c1", thread=conversation, user=f"u-{conversation}",
        message_id=uuid.uuid4().hex, text="Say something.",
        sampling=Sampling(max_new_tokens=tokens),
    )  # fmt: skip


def test_turns_survive_a_redis_crash(aof_redis: RedisServer, tmp_path: Path) -> None:
    settings: Settings = load_settings(redis_url=aof_redis.url, queue_name=QUEUE)
    worker = start_worker(aof_redis, tmp_path / "worker.log")
    try:
        conn = Redis.from_url(aof_redis.url)
        running = enqueue_turn(conn, settings, a_turn("first", 30))
        waiting = [enqueue_turn(conn, settings, a_turn(f"c{i % 3}", 6)) for i in range(6)]
        jobs = [running, *waiting]

        # A reader follows the running turn across the outage.
        seen: list[StreamEvent] = []
        reader = threading.Thread(
            target=lambda: seen.extend(follow(Redis.from_url(aof_redis.url), running.id, 120))
        )
        reader.start()
        deadline = time.monotonic() + 60
        while not any(e.kind == "delta" for e in seen):
            assert time.monotonic() < deadline
            time.sleep(0.05)

        restart(aof_redis, down_s=3)
        conn = Redis.from_url(aof_redis.url)
        # Bots enqueue again once it is back.
        jobs.append(enqueue_turn(conn, settings, a_turn("after", 6)))

        reader.join(timeout=150)
        assert not reader.is_alive()
        kinds = [e.kind for e in seen]
        assert kinds.count("done") == 1 and kinds[-1] == "done", kinds

        for job in jobs:
            events = list(follow(conn, job.id, timeout=120))
            assert [e.kind for e in events].count("done") == 1, (job.id, events[-3:])
            assert events[-1].kind == "done", (job.id, events[-1])
        deadline = time.monotonic() + 20
        while any(Job.fetch(j.id, connection=conn).get_status() != "finished" for j in jobs):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        # The same worker process reconnected: it is alive and registered again.
        assert worker.poll() is None
        assert len(Worker.all(connection=conn)) == 2
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
