"""Shared fixtures: a real redis-server on a private port, flushed around each test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rq import Worker

from corral.redis_server import RedisServer
from shared.settings import Settings, load_settings

# Meta's Llama 3 tokenizer, in the team folder beside the checkout (absent in a user's clone).
LLAMA3_TOKENIZER = (
    Path(__file__).resolve().parents[2] / "shared" / "refs" / "llama3" / "tokenizer.model"
)


@pytest.fixture(scope="session")
def smol() -> Any:
    """The embedded model's tokenizer (converting the model once if needed)."""
    from transformers import AutoTokenizer

    from worker.model_source import materialize_embedded

    return AutoTokenizer.from_pretrained(materialize_embedded(load_settings().cache_dir))


@pytest.fixture(scope="session")
def llama3() -> Any:
    """A real Llama 3 tokenizer; the tests that need it skip in a clone without ../shared."""
    if not LLAMA3_TOKENIZER.exists():
        pytest.skip("Meta's Llama 3 tokenizer.model is not beside this checkout (../shared/refs)")
    from worker.llama3_tokenizer import from_tiktoken

    return from_tiktoken(LLAMA3_TOKENIZER)


@pytest.fixture(scope="session")
def tiny_mllama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Llama 3.2 Vision model directory (see fakes/tiny_mllama.py)."""
    from fakes.tiny_mllama import build_tiny_mllama

    from worker.model_source import materialize_embedded

    tokenizer_dir = materialize_embedded(load_settings().cache_dir)
    return build_tiny_mllama(tmp_path_factory.mktemp("mllama"), tokenizer_dir)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(aof=False).start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    conn = Redis.from_url(redis_server.url)
    conn.flushall()
    yield redis_server.url
    conn.flushall()
    conn.close()


@pytest.fixture
def redis_conn(redis_url: str) -> Iterator[Redis]:
    conn = Redis.from_url(redis_url)
    yield conn
    conn.close()


@pytest.fixture
def settings(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings isolated from the developer's environment and .env file."""
    monkeypatch.chdir("/")
    return load_settings(redis_url=redis_url, queue_name="corral-test", max_new_tokens=48)


# Social security numbers (S7, privacy) are blocked everywhere but in channel C-open.
MODERATION_RULES = """
rules:
  - category: S7
    pattern: '\\b\\d{3}-\\d{2}-\\d{4}\\b'
block:
  "*": [S7]
  C-open: []
"""


@pytest.fixture
def moderated(settings: Settings, tmp_path: Path) -> Settings:
    """The test settings with MODERATION_RULES as the moderation rules file."""
    rules = tmp_path / "moderation.yaml"
    rules.write_text(MODERATION_RULES)
    return settings.model_copy(update={"moderation_rules": rules})


WorkerFactory = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def start_worker(settings: Settings, redis_conn: Redis, tmp_path: Path) -> Iterator[WorkerFactory]:
    """Start real `corral worker` processes (the embedded model) against the test Redis.

    Keyword arguments become CORRAL_* environment variables of the worker.
    """
    started: list[subprocess.Popen[bytes]] = []

    def start(wait: bool = True, **overrides: object) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.update(
            REDIS_URL=str(settings.redis_url),
            CORRAL_QUEUE_NAME=settings.queue_name,
            CORRAL_MAX_NEW_TOKENS=str(settings.max_new_tokens),
            CORRAL_SLOTS="4",
            CORRAL_KV_CACHE_TOKENS="4096",  # several workers may share the machine
        )
        env.update({f"CORRAL_{k.upper()}": str(v) for k, v in overrides.items()})
        log_path = tmp_path / f"worker-{len(started)}.log"
        before = {w.name for w in Worker.all(connection=redis_conn)}
        process = subprocess.Popen(
            [sys.executable, "-m", "corral.cli", "worker"],
            env=env,
            cwd=tmp_path,
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: tests signal the whole group
        )
        started.append(process)
        deadline = time.monotonic() + 240
        while wait:
            names = {w.name for w in Worker.all(connection=redis_conn)} - before
            if names:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                log = log_path.read_text(errors="replace")[-3000:]
                pytest.fail(f"worker did not come up (exit {process.returncode}):\n{log}")
            time.sleep(0.2)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGCONT)  # a test may have left it frozen
            process.terminate()
    for process in started:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_listening(conn: Redis, slots: int, limit: float = 60.0) -> None:
    """Wait until ``slots`` worker slots block in a dequeue (BLMOVE) on this Redis.

    A worker registers before its slots reach their dequeue (the model loads
    in between, longer on a slow machine), so a test that freezes an idle
    worker to have it swallow a turn first waits for this.
    """
    deadline = time.monotonic() + limit
    while len(listening_clients(conn)) < slots:
        assert time.monotonic() < deadline, f"fewer than {slots} slots ever waited for a turn"
        time.sleep(0.05)


def listening_clients(conn: Redis) -> list[dict[str, Any]]:
    """Redis clients blocked in a dequeue: Redis hands the next turn to one of them."""
    return [c for c in conn.client_list() if c.get("cmd") == "blmove" and "b" in c["flags"]]


@pytest.fixture
def worker_proc(start_worker: WorkerFactory) -> subprocess.Popen[bytes]:
    """One running worker with the embedded small model."""
    return start_worker()
