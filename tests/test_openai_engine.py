"""CORRAL_ENGINE=openai: the engine against real HTTP servers that speak the SSE protocol.

First a small aiohttp server written here (exact chunks, usage, errors, a client
that hangs up); then corral's own ``corral api`` backed by a real worker as the
upstream of a second, model-less worker: corral-as-upstream end to end.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from redis import Redis
from test_api_fixtures import ServerThread, free_port

from shared.contract import Attachment, Message, ResponseFormat, Turn
from shared.settings import Settings
from shared.streams import follow
from shared.turnqueue import enqueue_turn
from worker.engine import EngineError
from worker.engines import build_engine
from worker.model_source import ModelUnavailable
from worker.openai_engine import OpenAIEngine
from worker.turn import Prepared, TurnJob, generate, prepare

pytest_plugins = ["test_api_fixtures"]

PIECES = ["Hel", "lo", ", wor", "ld ✓"]


class Upstream:
    """An OpenAI-style server on a free port; records what it was sent."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.mode = "ok"
        self.disconnected = threading.Event()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            self.runner = web.AppRunner(app, handler_cancellation=True)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", self.port)
            self.loop.run_until_complete(site.start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        assert ready.wait(10)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "up-model"}]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        if self.mode == "reject":
            return web.json_response({"error": {"message": "bad model"}}, status=404)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def send(obj: Any) -> None:
            await response.write(b"data: " + json.dumps(obj).encode() + b"\n\n")

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"object": "chat.completion.chunk", "choices": [{"delta": delta, "index": 0,
                    "finish_reason": finish}]}  # fmt: skip

        await response.write(b": keep-alive comment\n\n")
        await send(chunk({"role": "assistant", "content": ""}))
        if self.mode == "error":
            await send(chunk({"content": "par"}))
            await send({"error": {"message": "upstream exploded", "type": "server_error"}})
            return response
        if self.mode == "slow":
            try:
                for _ in range(200):
                    await send(chunk({"content": "x"}))
                    await asyncio.sleep(0.05)
            except (ConnectionResetError, asyncio.CancelledError):
                self.disconnected.set()
                raise
            return response
        for piece in PIECES:
            await send(chunk({"content": piece}))
        await send(chunk({}, "length"))
        await send({"choices": [], "usage": {"prompt_tokens": 17, "completion_tokens": 4}})
        await response.write(b"data: [DONE]\n\n")
        return response

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


def remote_settings(url: str, **fields: Any) -> Settings:
    return Settings(engine="openai", engine_url=url, **fields)


USER = [Message(role="user", content="Hi")]


def test_streams_and_maps_usage_and_finish_reason(upstream: Upstream) -> None:
    engine = build_engine(remote_settings(upstream.url, engine_api_key="sk-test"))
    assert isinstance(engine, OpenAIEngine)
    assert engine.tokenizer is None and engine.model == "up-model"  # from /v1/models
    seen: list[str] = []
    completion = engine.generate(USER, max_new_tokens=4, temperature=0.2, on_text=seen.append)
    assert seen == PIECES and completion.text == "".join(PIECES)
    assert completion.finish_reason == "length"
    assert (completion.prompt_tokens, completion.completion_tokens) == (17, 4)
    assert 0 < completion.first_token_s <= completion.total_s
    sent = upstream.requests[-1]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["messages"] == [{"role": "user", "content": "Hi"}]
    assert (sent["model"], sent["max_tokens"], sent["temperature"]) == ("up-model", 4, 0.2)
    assert upstream.headers[-1]["Authorization"] == "Bearer sk-test"


def test_upstream_errors_raise_so_the_turn_is_retried(upstream: Upstream) -> None:
    engine = OpenAIEngine(remote_settings(upstream.url, engine_model="named"))
    assert engine.model == "named"
    upstream.mode = "error"
    with pytest.raises(EngineError, match="upstream exploded"):
        engine.generate(USER)
    upstream.mode = "reject"
    with pytest.raises(EngineError, match="HTTP 404"):
        engine.generate(USER)
    dead = OpenAIEngine(remote_settings(f"http://127.0.0.1:{free_port()}", engine_model="m"))
    with pytest.raises(EngineError, match="cannot connect"):
        dead.generate(USER)
    with pytest.raises(ModelUnavailable, match="CORRAL_ENGINE_URL"):
        OpenAIEngine(Settings(engine="openai"))


def test_cancel_and_deadline_hang_up_on_the_server(upstream: Upstream) -> None:
    engine = OpenAIEngine(remote_settings(upstream.url + "/v1/", engine_model="m"))
    upstream.mode = "slow"
    texts: list[str] = []
    completion = engine.generate(USER, on_text=texts.append, cancelled=lambda: len(texts) >= 3)
    assert completion.finish_reason == "cancelled" and completion.text == "xxx"
    assert upstream.disconnected.wait(10), "the server kept generating for nobody"
    completion = engine.generate(USER, deadline=time.monotonic() + 0.3)
    assert completion.finish_reason == "timeout" and 0 < len(completion.text) < 200


@pytest.mark.model
def test_corral_worker_on_openai_engine_served_by_corral_api(
    api: ServerThread,
    worker_proc: subprocess.Popen[bytes],
    start_worker: Any,
    redis_conn: Redis,
    settings: Settings,
) -> None:
    """bot → queue → model-less worker → HTTP SSE → corral api → queue → model worker."""
    start_worker(queue_name="corral-remote", engine="openai", engine_url=f"{api.url}/v1", slots=2)
    remote = settings.model_copy(update={"queue_name": "corral-remote"})
    turn = Turn(
        platform="local", channel="c", thread="t", user="u", message_id=uuid.uuid4().hex,
        text="Name a colour.",
    )  # fmt: skip
    job = enqueue_turn(redis_conn, remote, turn)
    events = list(follow(redis_conn, job.id, timeout=120))
    kinds = [e.kind for e in events]
    assert kinds[0] == "started" and kinds[-1] == "done" and "delta" in kinds, events[-1]
    done = events[-1]
    assert done.text.strip() and done.text == "".join(e.text for e in events if e.kind == "delta")
    assert done.finish_reason in ("stop", "length")
    assert done.usage and done.usage.prompt_tokens > 10  # counted by the real tokenizer upstream
    assert 0 < done.usage.completion_tokens <= settings.max_new_tokens


def png(color: str) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (30, 20), color).save(buf, "PNG")
    return buf.getvalue()


def test_images_go_upstream_inline_before_the_text(upstream: Upstream) -> None:
    import base64

    engine = build_engine(remote_settings(upstream.url, engine_vision=True))
    assert engine.vision
    picture = png("red")
    convo = [
        Message(role="user", content="What is it?", images=["id-1"]),
        Message(role="assistant", content="A red square."),
        Message(role="user", content="Sure?"),
    ]
    engine.generate(convo, images=[picture], max_new_tokens=4)
    first, second, third = upstream.requests[-1]["messages"]
    [image, text] = first["content"]
    assert text == {"type": "text", "text": "What is it?"}
    prefix = "data:image/png;base64,"
    assert image["type"] == "image_url" and image["image_url"]["url"].startswith(prefix)
    assert base64.b64decode(image["image_url"]["url"][len(prefix) :]) == picture
    assert second == {"role": "assistant", "content": "A red square."}
    assert third == {"role": "user", "content": "Sure?"}
    assert not build_engine(remote_settings(upstream.url)).vision  # only when told


def test_a_text_only_server_answers_the_words_sent_with_a_picture(
    upstream: Upstream, redis_conn: Redis, settings: Settings
) -> None:
    remote = settings.model_copy(update={"engine": "openai", "engine_url": upstream.url})
    job = TurnJob("job-1", redis_conn, build_engine(remote))
    photo = Attachment(name="dog.png", content_type="image/png", image_id="a" * 64)
    turn = Turn(platform="discord", channel="c", user="u", message_id="m",
                text="what animal barks?", attachments=[photo])  # fmt: skip
    ready = prepare(job, turn)
    assert isinstance(ready, Prepared) and "can't see images" in ready.note
    assert generate(job, ready, lambda: False).completion.text == "".join(PIECES)
    question = upstream.requests[-1]["messages"][-1]
    assert question == {"role": "user", "content": "what animal barks?"}  # no picture parts


@pytest.mark.model
def test_a_picture_reaches_a_vision_model_behind_corral_api(
    api: ServerThread,
    start_worker: Any,
    tiny_mllama_dir: Any,
    redis_conn: Redis,
    settings: Settings,
) -> None:
    """bot turn with an image → model-less worker → data: URL over HTTP → corral api →
    a worker with a (tiny) Llama 3.2 Vision model."""
    from shared.contract import Attachment
    from shared.images import image_id, image_key

    start_worker(model=str(tiny_mllama_dir), max_new_tokens=6)
    start_worker(
        queue_name="corral-remote", engine="openai", engine_url=f"{api.url}/v1", engine_vision=1
    )
    remote = settings.model_copy(update={"queue_name": "corral-remote"})
    answers = []
    for color in ("red", "blue"):
        data = png(color)
        redis_conn.set(image_key(image_id(data)), data, ex=600)
        turn = Turn(
            platform="local", channel="c", thread=color, user="u", message_id=color,
            text="What colour?", sampling={"temperature": 0.0},
            attachments=[Attachment(name=f"{color}.png", image_id=image_id(data))],
        )  # fmt: skip
        job = enqueue_turn(redis_conn, remote, turn)
        done = list(follow(redis_conn, job.id, timeout=120))[-1]
        assert done.kind == "done" and done.text.strip(), done.error
        answers.append(done.text)
    assert answers[0] != answers[1]  # the picture made it all the way to the model


def test_response_format_and_seed_are_forwarded_for_the_server_to_enforce(
    upstream: Upstream,
) -> None:
    engine = build_engine(remote_settings(upstream.url))
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    engine.generate(
        USER, response_format=ResponseFormat(type="json_schema", json_schema=schema), seed=42
    )
    sent = upstream.requests[-1]
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema, "strict": True},
    }
    assert sent["seed"] == 42
    engine.generate(USER, response_format=ResponseFormat(type="json_object"))
    assert upstream.requests[-1]["response_format"] == {"type": "json_object"}
    assert "seed" not in upstream.requests[-1]
    engine.generate(USER)
    assert "response_format" not in upstream.requests[-1]
