"""An engine that streams answers from an OpenAI-compatible server.

With ``CORRAL_ENGINE=openai`` the worker loads no model: each turn becomes one
streamed ``POST {CORRAL_ENGINE_URL}/chat/completions`` (server-sent events) to
vLLM, TGI, Ollama, or another corral's ``corral api``. The server renders the
chat template and owns the tokenizer, so this engine takes *messages*, not
token ids (see :meth:`OpenAIEngine.generate`). Only the standard library is
used, so a worker of this kind needs neither torch nor an HTTP client package.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from itertools import islice
from typing import Any

from shared.contract import Message, ResponseFormat
from shared.images import sniff
from shared.settings import Settings

from .engine import Completion, EngineError
from .model_source import ModelUnavailable
from .speakers import attribute_speakers

log = logging.getLogger(__name__)

READ_TIMEOUT = 60.0  # seconds of upstream silence before a turn fails (and is retried)
CONNECT_TIMEOUT = 10.0
CHARS_PER_TOKEN = 3  # history trimming estimate; the server has the real tokenizer
TOKENS_PER_MESSAGE = 8  # template overhead per message, generously


def api_base(url: str) -> str:
    base = url.rstrip("/")
    return base if base.endswith("/v1") else base + "/v1"


def _finish(reason: str | None) -> str:
    # Ours are stop | length | timeout | cancelled | error; tool/filter reasons read as stop.
    return "length" if reason == "length" else "stop"


def wire_format(fmt: ResponseFormat) -> dict[str, Any]:
    """OpenAI's ``response_format`` for ``fmt`` (vLLM enforces it by guided decoding)."""
    if fmt.type == "json_object":
        return {"type": "json_object"}
    schema = {"name": "response", "schema": fmt.json_schema, "strict": True}
    return {"type": "json_schema", "json_schema": schema}


def wire_messages(messages: Sequence[Message], images: Sequence[bytes]) -> list[dict[str, Any]]:
    """Chat messages as OpenAI's API takes them; ``images`` (the messages' images, in
    order) become inline ``data:`` URLs before the text, where Llama 3.2 Vision wants them.
    A text-only server is given no images: its messages go as text, image ids or not."""
    pending = iter(images)
    messages = attribute_speakers(messages)  # a shared thread: each message names its author
    wired: list[dict[str, Any]] = []
    for m in messages:
        shown = list(islice(pending, len(m.images)))
        if not shown:
            wired.append({"role": m.role, "content": m.content})
            continue
        parts: list[dict[str, Any]] = []
        for data in shown:
            kind = sniff(data) or "image/png"
            url = f"data:{kind};base64,{base64.b64encode(data).decode()}"
            parts.append({"type": "image_url", "image_url": {"url": url}})
        parts.append({"type": "text", "text": m.content})
        wired.append({"role": m.role, "content": parts})
    return wired


class OpenAIEngine:
    """The :class:`~worker.engines.Engine` of a model behind an OpenAI-compatible server."""

    tokenizer = None  # prompts are rendered upstream; worker/turn.py sends messages
    device = "remote"
    quantization = "remote"
    structured_outputs = True  # forwarded: the server enforces response_format and seed
    per_request_shaping = True  # forwarded too (vLLM takes top_k, min_p and penalties)

    def __init__(self, settings: Settings) -> None:
        if not settings.engine_url:
            raise ModelUnavailable(
                "CORRAL_ENGINE=openai needs CORRAL_ENGINE_URL (e.g. http://gpu-box:8000/v1)"
            )
        self.settings = settings
        self.base = api_base(settings.engine_url)
        key = settings.engine_api_key
        self._headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if key is not None and key.get_secret_value():
            self._headers["Authorization"] = f"Bearer {key.get_secret_value()}"
        self.model = settings.engine_model or self._first_model()
        self.name = settings.model_name or self.model
        # The server's model sees images (e.g. vLLM serving Llama 3.2 Vision): send them
        # inline; otherwise turns with images get the "can't see images" note.
        self.vision = settings.engine_vision
        self.max_images = settings.vision_max_images

    def _open(self, path: str, body: dict[str, Any] | None, timeout: float) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, headers=self._headers)
        try:
            return urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            detail = exc.read(500).decode(errors="replace")
            raise EngineError(f"{self.base}{path}: HTTP {exc.code}: {detail}"[:300]) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise EngineError(f"{self.base}{path}: cannot connect: {reason}"[:300]) from None

    def _first_model(self) -> str:
        try:
            with self._open("/models", None, CONNECT_TIMEOUT) as response:
                models = json.load(response).get("data") or []
        except EngineError as exc:
            raise ModelUnavailable(f"CORRAL_ENGINE_URL: {exc}") from None
        if not models:
            raise ModelUnavailable(f"{self.base}/models lists no model; set CORRAL_ENGINE_MODEL")
        return str(models[0]["id"])

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """An over-estimate, for trimming history to ``CORRAL_CONTEXT_TOKENS``."""
        return sum(len(m.content) // CHARS_PER_TOKEN + TOKENS_PER_MESSAGE for m in messages)

    def generate(
        self,
        prompt: Sequence[int] | Sequence[Message],
        *,
        images: Sequence[bytes] = (),
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        on_text: Callable[[str], None] | None = None,
        deadline: float | None = None,
        cancelled: Callable[[], bool] | None = None,
        response_format: ResponseFormat | None = None,
        seed: int | None = None,
        shaping: dict[str, Any] | None = None,
    ) -> Completion:
        """Stream one reply; same contract as :meth:`worker.engines.Engine.generate`.

        ``deadline`` and ``cancelled`` are checked between streamed chunks; ending
        early closes the connection, which tells the server to stop generating.
        """
        messages = [m for m in prompt if isinstance(m, Message)]
        if not messages or len(messages) != len(prompt):
            raise TypeError("OpenAIEngine.generate takes messages, not token ids")
        settings = self.settings
        limit = max_new_tokens or settings.max_new_tokens
        body: dict[str, Any] = {
            "model": self.model,
            "messages": wire_messages(messages, images),
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": limit,
            "temperature": settings.temperature if temperature is None else temperature,
            "top_p": settings.top_p if top_p is None else top_p,
        }
        if response_format is not None:
            body["response_format"] = wire_format(response_format)
        if seed is not None:
            body["seed"] = seed
        # vLLM takes all of these (penalty_window is corral's own: not forwarded).
        body.update({k: v for k, v in (shaping or {}).items() if k != "penalty_window"})
        if settings.ignore_eos:  # vLLM's extension; other servers ignore it
            body.update(ignore_eos=True, min_tokens=limit)
        start = time.monotonic()
        first = 0.0
        parts: list[str] = []
        chunks = 0
        usage: dict[str, Any] = {}
        finish = "length"
        timeout = READ_TIMEOUT
        if deadline is not None:
            timeout = max(min(timeout, deadline - time.monotonic()), 1.0)
        with self._open("/chat/completions", body, timeout) as response:
            for raw in response:
                line = raw.decode("utf-8", errors="replace").strip()
                if deadline is not None and time.monotonic() > deadline:
                    finish = "timeout"
                    break
                if cancelled is not None and cancelled():
                    finish = "cancelled"
                    break
                if not line.startswith("data:"):
                    continue  # blank separators, comments, "event:" lines
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if event.get("error"):
                    error = event["error"]
                    message = error.get("message") if isinstance(error, dict) else error
                    raise EngineError(f"upstream error: {message}"[:300])
                if event.get("usage"):
                    usage = event["usage"]
                for choice in event.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content") or ""
                    if text:
                        chunks += 1
                        if not first:
                            first = time.monotonic() - start
                        parts.append(text)
                        if on_text is not None:
                            on_text(text)
                    if choice.get("finish_reason"):
                        finish = _finish(choice["finish_reason"])
        return Completion(
            text="".join(parts),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or chunks),
            finish_reason=finish,
            first_token_s=first,
            total_s=time.monotonic() - start,
        )

    def close(self) -> None:
        """Nothing to release: every request has its own connection."""
