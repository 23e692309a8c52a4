"""Images sent to the HTTP API: inline base64 only, checked, stored for the worker, and
named by id in the turn's messages; everything else is a clear 400."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import ollama
from PIL import Image
from redis import Redis
from test_api_fixtures import MODEL, REPLY, FakeWorker, ServerThread, post_bytes

from shared.contract import IMAGE_ONLY_TEXT, Message
from shared.images import load_image

pytest_plugins = ["test_api_fixtures"]

UNSUPPORTED = "only PNG, JPEG, GIF and WebP images are supported"


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, "PNG")
    return buf.getvalue()


PNG = png()
B64 = base64.b64encode(PNG).decode()


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return post_bytes(url, json.dumps(body).encode())


def test_ollama_generate_and_chat_store_images(
    api: ServerThread, fake_worker: FakeWorker, redis_conn: Redis
) -> None:
    client = ollama.Client(host=api.url)
    result = client.generate(model=MODEL, prompt="What is this?", images=[PNG], stream=False)
    assert result.response == REPLY
    (turn,) = fake_worker.turns
    [message] = turn.messages or []
    assert (message.role, message.content) == ("user", "What is this?")
    [ident] = message.images
    assert load_image(redis_conn, ident) == PNG
    assert turn.text == "What is this?"

    # Only an image, no prompt: not a warm-up call; the contract's text is asked.
    status, body = post(
        f"{api.url}/api/generate", {"model": MODEL, "images": [B64], "stream": False}
    )
    assert status == 200 and body["response"] == REPLY
    assert fake_worker.turns[-1].messages == [
        Message(role="user", content=IMAGE_ONLY_TEXT, images=[ident])
    ]

    conversation = [
        {"role": "user", "content": "Look:", "images": [B64]},
        {"role": "assistant", "content": "A red square."},
        {"role": "user", "content": "Which colour?"},
    ]
    status, body = post(
        f"{api.url}/api/chat", {"model": MODEL, "messages": conversation, "stream": False}
    )
    assert status == 200 and body["message"]["content"] == REPLY
    turn = fake_worker.turns[-1]
    assert [m.images for m in turn.messages or []] == [[ident], [], []]
    assert turn.text == "Which colour?"


def test_openai_data_url_image_part_is_stored(
    api: ServerThread, fake_worker: FakeWorker, redis_conn: Redis
) -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {
            "type": "image_url",
            "image_url": {"url": f"data:image/png;base64,{B64}", "detail": "low"},
        },
    ]
    status, body = post(
        f"{api.url}/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": content}]},
    )
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == REPLY
    [message] = fake_worker.turns[-1].messages or []
    assert message.content == "What is this?"
    [ident] = message.images
    assert load_image(redis_conn, ident) == PNG


def test_bad_images_are_refused_clearly(
    api: ServerThread, fake_worker: FakeWorker, redis_conn: Redis
) -> None:
    generate = f"{api.url}/api/generate"
    status, body = post(generate, {"model": MODEL, "prompt": "x", "images": ["not base64!"]})
    assert (status, body["error"]) == (400, "images[0] is not valid base64")

    junk = base64.b64encode(b"just some text, not a picture").decode()
    status, body = post(generate, {"model": MODEL, "prompt": "x", "images": [junk]})
    assert (status, body["error"]) == (400, f"images[0]: {UNSUPPORTED}")

    status, body = post(generate, {"model": MODEL, "prompt": "x", "images": ["http://x/a.png"]})
    assert status == 400 and "image URLs are not fetched" in body["error"]

    chat = {"model": MODEL, "messages": [{"role": "user", "content": "x", "images": [junk]}]}
    status, body = post(f"{api.url}/api/chat", chat)
    assert (status, body["error"]) == (400, f"messages[0].images[0]: {UNSUPPORTED}")

    openai = f"{api.url}/v1/chat/completions"
    for url, wanted in (
        ("https://example.com/cat.png", "image URLs are not fetched; send the image inline"),
        (f"data:image/png;base64,{junk}", UNSUPPORTED),
        ("data:image/png;base64,%%%", "is not valid base64"),
    ):
        part = {"type": "image_url", "image_url": {"url": url}}
        messages = [{"role": "user", "content": [{"type": "text", "text": "x"}, part]}]
        status, body = post(openai, {"model": MODEL, "messages": messages})
        assert status == 400 and wanted in body["error"]["message"], body
        assert "messages[0].content[1].image_url" in body["error"]["message"]

    assert fake_worker.turns == []
    assert not redis_conn.keys("corral:image:*")
