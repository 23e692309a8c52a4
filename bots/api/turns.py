"""Running one stateless API turn through the queue: the part both dialects share.

The Ollama and OpenAI handlers only translate requests and responses; this
module reads and checks request bodies and images, enqueues the turn, follows
its events through the shared reducer, turns failures into :class:`ApiError`
and cancels the job when the caller goes away.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from bots.answer import Reply, silence_timeout
from bots.api.metrics import ApiMetrics
from bots.client import TurnClient
from shared import model_info
from shared.cancel import cancel_job
from shared.contract import FunctionSpec, Message, Sampling, ToolCallOut, Turn, Usage
from shared.images import check_image, store_image
from shared.settings import Settings
from shared.team_config import Limits
from shared.turnqueue import QueueFull

ModelT = TypeVar("ModelT", bound=BaseModel)


class ApiError(Exception):
    """A failure with the HTTP status and the message the caller should see."""

    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", code: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.code = code  # machine-readable cause (OpenAI's error.code), e.g. from the worker


async def read_json(request: web.Request, model: type[ModelT]) -> ModelT:
    """Parse and validate the body; every failure is a 400 that says what is wrong."""
    try:
        data = json.loads(await request.read() or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "request body is not valid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    try:
        return model.model_validate(data)
    except RecursionError:
        raise ApiError(400, "request body JSON is nested too deeply") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "body"
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        raise ApiError(400, f"invalid field {where}: {message}") from None


# The API has no team config: the default per-image limit applies (and the body limit).
IMAGE_LIMIT: int = Limits.model_fields["image_max_bytes"].default
URL_REFUSED = "image URLs are not fetched; send the image inline as a data: URL"


def decode_image(value: str, where: str, limit: int = IMAGE_LIMIT) -> bytes:
    """Base64 image bytes (plain, or a ``data:`` URL), checked like a chat attachment."""
    text = value.strip()
    if text.startswith(("http://", "https://")):
        raise ApiError(400, f"{where}: {URL_REFUSED}")
    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not comma or not header.endswith(";base64"):
            raise ApiError(
                400, f"{where}: a data: URL must be base64, e.g. data:image/png;base64,…"
            )
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{where} is not valid base64") from None
    checked = check_image(where, len(data), data, limit)
    if checked.data is None:
        raise ApiError(400, checked.problem)
    return checked.data


def decode_image_url(url: str, where: str) -> bytes:
    """An OpenAI ``image_url``: only inline ``data:`` URLs; the server fetches nothing."""
    if not url.strip().startswith("data:"):
        raise ApiError(400, f"{where}: {URL_REFUSED}")
    return decode_image(url, where)


@dataclass
class Answer:
    """The outcome of a finished turn, in the terms both dialects report."""

    text: str = ""
    finish_reason: str = "stop"
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    started: float = field(default_factory=time.monotonic)
    tool_calls: list[ToolCallOut] = field(default_factory=list)  # caller-declared tools

    @property
    def total_ns(self) -> int:
        return int((time.monotonic() - self.started) * 1e9)


class TurnHandle:
    """One enqueued turn; iterate :meth:`deltas` (or await :meth:`collect`), then read
    :attr:`answer`."""

    def __init__(self, runner: TurnRunner, job_id: str, answer: Answer) -> None:
        self._runner = runner
        self.job_id = job_id
        self.answer = answer
        self.reply = Reply(model=answer.model)

    @property
    def finished(self) -> bool:
        """The job is over (answered or failed for good): nothing left to cancel."""
        return self.reply.phase in ("done", "failed")

    async def deltas(self, streamed: bool = True) -> AsyncIterator[str]:
        """Yield new text as it comes; return once the answer is complete.

        ``streamed``: the caller has been sent every piece yielded so far, so a
        retried attempt that takes text back cannot be shown (one that resumes the
        answer just carries on); without it a retry is simply waited for.
        """
        events = self._runner.client.events(self.job_id, timeout=self._runner.silence_timeout)
        async for event in events:
            change = self.reply.apply(event)
            self.answer.model = self.reply.model
            if change.dropped and streamed:
                # Text already went out and a new attempt would repeat or contradict it, so
                # give up; the job is not finished, so the retry gets cancelled on the way out.
                self._runner.metrics.observe_turn("error", 0, 0)
                raise ApiError(500, "the worker failed in the middle of the answer", "server_error")
            if change.appended and streamed:
                yield change.appended
            if self.reply.phase == "failed":
                self._runner.metrics.observe_turn("error", 0, 0)
                message = self.reply.problem or "the worker could not answer"
                if self.reply.code:  # the caller's mistake, named by the worker
                    raise ApiError(400, message, "invalid_request_error", self.reply.code)
                raise ApiError(500, message, "server_error")
            if self.reply.phase == "done":
                self._finish()
                return
        raise ApiError(504, "no answer from a worker in time; try again later", "timeout")

    def _finish(self) -> None:
        self.answer.text = self.reply.text
        self.answer.finish_reason = self.reply.finish_reason
        self.answer.usage = self.reply.usage or Usage()
        self.answer.tool_calls = list(self.reply.tool_calls)
        usage = self.answer.usage
        self._runner.metrics.observe_turn(
            self.answer.finish_reason, usage.prompt_tokens, usage.completion_tokens
        )

    async def collect(self) -> Answer:
        """The whole answer, however many attempts it took (nothing was sent before it)."""
        async for _ in self.deltas(streamed=False):
            pass
        return self.answer


class TurnRunner:
    def __init__(
        self,
        client: TurnClient,
        settings: Settings,
        metrics: ApiMetrics,
        require_worker: bool,
        queue_model: Callable[[str | None], str | None] = lambda name: name,
    ) -> None:
        self.client = client
        self.queue_model = queue_model  # the name a turn is queued under (models.py)
        self.settings = settings
        self.metrics = metrics
        self.require_worker = require_worker
        self.silence_timeout = silence_timeout(settings)

    async def store_images(self, blobs: Sequence[bytes]) -> list[str]:
        """Keep a request's images for the worker; their ids go in ``Message.images``."""
        # Only this turn reads them: as long as it may wait, run and be retried (twice).
        ttl = self.settings.job_ttl + 3 * self.settings.job_timeout
        return [await store_image(self.client.aredis, blob, ttl) for blob in blobs]

    async def model_names(self) -> list[str]:
        status = await self.client.status()
        return status.models or [self.settings.display_model_name]

    async def _check_decoding(self, model: str, sampling: Sampling, forced_call: bool) -> None:
        """A 400 when the model's workers cannot constrain, seed or shape its tokens (a
        vision model), as their record says, rather than a worker error after the queue."""
        shaping = bool(sampling.shaping())
        if not (forced_call or shaping or sampling.response_format or sampling.seed is not None):
            return
        info = await model_info.read(self.client.aredis, model)
        if not info.get("structured_outputs", True):
            raise ApiError(
                400,
                f"the model {model} cannot take a response format, a seed, top_k, min_p, "
                "penalties or a required tool call",
            )
        if shaping and not info.get("per_request_shaping", True):
            raise ApiError(
                400, f"the model {model}'s workers cannot take top_k, min_p or penalties"
            )

    @asynccontextmanager
    async def run(
        self,
        messages: Sequence[Message],
        sampling: Sampling,
        user: str = "",
        model: str | None = None,
        raw: bool = False,
        tools: Sequence[FunctionSpec] = (),
        tool_choice: str = "auto",
    ) -> AsyncIterator[TurnHandle]:
        """Enqueue a stateless turn; cancel it on the way out unless it finished."""
        answer = Answer()  # starts the clock for total_duration
        status = await self.client.status()
        if self.require_worker and status.workers == 0:
            raise ApiError(
                503, "no worker is running; start one with `corral worker`", "overloaded"
            )
        last_user = next((m.content for m in reversed(messages) if m.role == "user"), None)
        if last_user is None:
            raise ApiError(400, "the conversation needs at least one user message")
        forced_call = bool(tools) and tool_choice not in ("auto", "none")
        await self._check_decoding(model or self.settings.display_model_name, sampling, forced_call)
        turn = Turn(
            platform="api",
            # A fresh channel per request: API turns share no state, so they need not
            # wait for one another the way turns of one chat conversation do.
            channel=f"req-{uuid.uuid4().hex}",
            user=user or "api",
            message_id=uuid.uuid4().hex,
            text=last_user,
            messages=list(messages),
            sampling=sampling,
            model=self.queue_model(model),  # its queue; None: the default model's, the plain one
            raw_prompt=raw,
            tools=list(tools),
            tool_choice=tool_choice,
        )
        try:
            job_id = await self.client.submit(turn)
        except QueueFull as exc:
            raise ApiError(429, exc.user_message, "rate_limit_exceeded") from None
        answer.model = model or (
            status.models[0] if status.models else self.settings.display_model_name
        )
        handle = TurnHandle(self, job_id, answer)
        self.metrics.in_flight += 1
        try:
            yield handle
        finally:
            self.metrics.in_flight -= 1
            if not handle.finished:
                self.metrics.observe_turn("cancelled", 0, 0)
                # Shielded: this often runs while the handler task is being cancelled.
                await asyncio.shield(asyncio.to_thread(cancel_job, self.client.redis, job_id))
