"""A worker SIGKILLed mid-answer, a second one alive: what the asker sees carries on.

Real worker processes with the embedded model, a real Redis, the real HTTP API
(through the ollama client) and the real discord.py client against the fake
Discord. The surviving worker resumes the answer (worker/resume.py) and every
reader keeps the text already shown (bots/answer.py, ``Reply._new_attempt``).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import threading
import time
from typing import Any

import ollama
import pytest
from fakes.discord_harness import running_bot
from fakes.discord_server import BOT_ID, FakeDiscord
from redis import Redis
from test_api_fixtures import ServerThread
from test_reliability_worker_death import running_job, running_pid

from bots.discord.settings import DiscordSettings
from shared.contract import StreamEvent
from shared.settings import Settings
from shared.streams import follow

pytest_plugins = ["test_api_fixtures"]

pytestmark = [pytest.mark.model, pytest.mark.timeout(300)]

CHANNEL = 800_000_000_000_000_010
STORY = "Tell me a long story about a lighthouse."


@pytest.fixture
def two_workers(start_worker) -> list[subprocess.Popen[bytes]]:  # type: ignore[no-untyped-def]
    # Exact-length answers (48 tokens, the test settings), so each runs a while.
    return [start_worker(ignore_eos="1", slots=2), start_worker(ignore_eos="1", slots=2)]


def kill_runner_of(conn: Redis, job_id: str) -> None:
    os.killpg(running_pid(conn, job_id), signal.SIGKILL)  # the worker's whole group


def resumed_start(events: list[StreamEvent]) -> StreamEvent:
    starts = [e for e in events if e.kind == "started"]
    assert len(starts) == 2, [e.kind for e in events]
    return starts[-1]


def test_a_streamed_api_answer_carries_on_in_the_same_response(
    two_workers: list[subprocess.Popen[bytes]], api: ServerThread, redis_conn: Redis
) -> None:
    chunks: list[str] = []
    outcome: dict[str, Any] = {}

    def call() -> None:
        client = ollama.Client(host=api.url, timeout=180)
        try:
            for part in client.chat(
                model=client.list().models[0].model,  # unknown names are 404s
                messages=[{"role": "user", "content": STORY}],
                stream=True,
                options={"num_predict": 48},
            ):
                chunks.append(part.message.content or "")
                if part.done:
                    outcome["done"] = part
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    job_id = running_job(redis_conn)
    deadline = time.monotonic() + 60
    while not "".join(chunks).strip():  # the caller already holds some of the answer
        assert time.monotonic() < deadline and caller.is_alive(), outcome
        time.sleep(0.02)
    kill_runner_of(redis_conn, job_id)
    sent_before_kill = "".join(chunks)
    caller.join(timeout=150)

    assert "error" not in outcome, outcome["error"]  # no 500 "failed in the middle"
    assert "done" in outcome and outcome["done"].done_reason in ("stop", "length")
    events = list(follow(redis_conn, job_id, timeout=5))
    final = events[-1]
    assert final.kind == "done" and any(e.kind == "error" and e.retrying for e in events)
    assert resumed_start(events).resume_from >= len(sent_before_kill.rstrip()) > 0
    # One response holds the whole answer exactly once: nothing repeated, nothing lost.
    received = "".join(chunks)
    assert received == final.text, (received, final.text)
    assert received.startswith(sent_before_kill) and len(received) > len(sent_before_kill)


def test_a_discord_answer_carries_on_in_one_message(
    two_workers: list[subprocess.Popen[bytes]], settings: Settings, redis_conn: Redis
) -> None:
    config = DiscordSettings(edit_interval=0.2, _env_file=None)  # type: ignore[call-arg]

    async def scenario() -> None:
        async with running_bot(settings, config) as (fake, _bot):
            question = await fake.user_says(CHANNEL, f"<@{BOT_ID}> {STORY}")
            thread_id = int(question["id"])
            job_id = await asyncio.to_thread(running_job, redis_conn)
            events: list[StreamEvent] = []
            stream = follow(redis_conn, job_id, timeout=150)
            for event in stream:  # the message shows some of the answer, then the kill
                events.append(event)
                if event.kind == "delta":
                    break
            delta = events[-1].text
            await fake.wait_for(
                lambda: any(delta in m["content"] for m in fake.bot_messages(thread_id)), 30
            )
            await asyncio.to_thread(kill_runner_of, redis_conn, job_id)
            events.extend(await asyncio.to_thread(list, stream))
            final = events[-1]
            assert final.kind == "done", final.error
            assert resumed_start(events).resume_from > 0
            await fake.wait_for(
                lambda: [m["content"] for m in fake.bot_messages(thread_id)] == [final.text], 30
            )
            shown_over_time(fake, thread_id, final.text)

    asyncio.run(scenario())


def shown_over_time(fake: FakeDiscord, thread_id: int, final: str) -> None:
    """Every text the one answer message showed, in order: once the answer began it only
    grew (each a prefix of the next, the retry's note aside), so nothing was taken back
    or repeated."""
    [message] = fake.bot_messages(thread_id)
    path = rf"/channels/{thread_id}/messages/{message['id']}"
    posted = [
        c.body["content"] for c in fake.rest_calls("POST", rf"/channels/{thread_id}/messages")
    ]
    edits = [c.body["content"] for c in fake.rest_calls("PATCH", path) if "content" in c.body]
    # While the retry was awaited, the text so far showed with a "Retrying…" line under it.
    texts = [t for t in [*posted, *edits] if "Retrying" not in t]
    assert len(texts) < len([*posted, *edits]), "the pause was not explained"
    answer = [t for t in texts if final.startswith(t) and t.strip()]
    assert len(answer) >= 3, texts  # shown before the kill, carried on, then complete
    first = texts.index(answer[0])
    assert texts[first:] == answer, texts  # no restart in between
    assert all(a != b and b.startswith(a) for a, b in itertools.pairwise(answer))
