"""OpenAI-compatible routes: /v1/chat/completions (streamed as SSE or not) and /v1/models."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal, cast

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bots.api.callers import accounted, turn_user
from bots.api.decoding import (
    calls_text,
    function_specs,
    openai_calls,
    openai_response_format,
    stop_texts,
    tool_choice,
)
from bots.api.http import RUNNER
from bots.api.models import MODELS
from bots.api.turns import Answer, ApiError, decode_image_url, read_json
from shared.contract import IMAGE_ONLY_TEXT, Message, Role, Sampling


class ImageUrl(BaseModel):
    model_config = ConfigDict(extra="ignore")  # detail: the worker decides the resolution

    url: str


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str = ""
    image_url: ImageUrl | str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # name, ...

    # "developer" is what newer OpenAI clients send instead of "system"; "tool": a
    # result of a tool the caller ran, fed to the model as Llama 3.1's ipython turn.
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = ""
    tool_calls: list[Any] | None = None  # on assistant messages: the calls it made
    tool_call_id: str = ""

    def parse(self, index: int) -> tuple[Message, list[bytes]]:
        """The message (images not yet stored) and the bytes of its images."""
        if self.tool_calls and self.role == "assistant":
            where = f"messages[{index}].tool_calls"
            return Message(role="assistant", content=calls_text(self.tool_calls, where)), []
        content = self.content or ""
        blobs: list[bytes] = []
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                where = f"messages[{index}].content[{j}]"
                if part.type == "text":
                    texts.append(part.text)
                elif part.type == "image_url" and self.role == "user":
                    url = part.image_url
                    url = url.url if isinstance(url, ImageUrl) else url or ""
                    blobs.append(decode_image_url(url, f"{where}.image_url"))
                elif part.type == "image_url":
                    raise ApiError(400, f"{where}: images are only accepted on user messages")
                else:
                    raise ApiError(
                        400, "only text and image_url content parts are supported by this server"
                    )
            content = "".join(texts) or (IMAGE_ONLY_TEXT if blobs else "")
        roles: dict[str, Role] = {"developer": "system", "tool": "ipython"}
        role = roles.get(self.role) or cast(Role, self.role)
        return Message(role=role, content=content), blobs


class StreamOptions(BaseModel):
    include_usage: bool = False


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # presence_penalty, ...: unused

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int = 1
    user: str = ""
    stream_options: StreamOptions | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    stop: Any = None
    seed: int | None = None
    response_format: Any = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    # vLLM's extensions (the openai client's extra_body)
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    # Would change the answer, not supported: refused unless off.
    logit_bias: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None

    def sampling(self) -> Sampling:
        if self.logit_bias or self.logprobs or self.top_logprobs:
            raise ApiError(400, "logit_bias and logprobs are not supported by this server")
        return checked_sampling(
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=self.max_completion_tokens or self.max_tokens,
            stop=stop_texts(self.stop, "stop"),
            seed=self.seed,
            response_format=openai_response_format(self.response_format),
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            top_k=self.top_k if self.top_k and self.top_k > 0 else None,  # vLLM: -1 = off
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
        )


def checked_sampling(**fields: Any) -> Sampling:
    """The contract's Sampling from an OpenAI request's fields; a value out of range is a
    400 naming the field as the caller sent it."""
    try:
        return Sampling(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = {"max_new_tokens": "max_tokens"}.get(str(first["loc"][0]), first["loc"][0])
        raise ApiError(400, f"invalid field {field}: {first['msg']}") from None


def _finish_reason(reason: str, calls: bool = False) -> str:
    # OpenAI knows only stop/length (and tool/filter reasons); a timeout cut the
    # answer short, which is what "length" tells a client.
    if calls:
        return "tool_calls"
    return "length" if reason in ("length", "timeout") else "stop"


def _usage(answer: Answer) -> dict[str, int]:
    prompt, completion = answer.usage.prompt_tokens, answer.usage.completion_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, CompletionRequest)
    if body.n != 1:
        raise ApiError(400, "only n=1 is supported by this server")
    specs = function_specs(body.tools)
    choice = tool_choice(body.tool_choice, specs)
    parsed = [m.parse(i) for i, m in enumerate(body.messages)]
    sampling = body.sampling()
    if sampling.response_format is not None and choice not in ("auto", "none"):
        raise ApiError(400, "response_format cannot be combined with a required tool call")
    model = await request.app[MODELS].resolve(request, body.model)
    runner = request.app[RUNNER]
    messages = [
        message.model_copy(update={"images": await runner.store_images(blobs)})
        for message, blobs in parsed
    ]
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    user = turn_user(request, body.user)
    turn = runner.run(messages, sampling, user, model=model, tools=specs, tool_choice=choice)
    async with accounted(request, runner.client.aredis, model) as spent, turn as handle:
        spent(handle)
        if not body.stream:
            answer = await handle.collect()
            message: dict[str, Any] = {"role": "assistant", "content": answer.text}
            if answer.tool_calls:
                message = {
                    **message,
                    "content": None,
                    "tool_calls": openai_calls(answer.tool_calls),
                }
            return web.json_response(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": answer.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": message,
                            "finish_reason": _finish_reason(
                                answer.finish_reason, bool(answer.tool_calls)
                            ),
                            "logprobs": None,
                        }
                    ],
                    "usage": _usage(answer),
                }
            )

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": handle.answer.model,
                "choices": [
                    {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
                ],
            }

        response: web.StreamResponse | None = None
        try:
            async for text in handle.deltas():
                if response is None:
                    response = await _start_sse(request)
                    await _send(response, chunk({"role": "assistant", "content": ""}))
                await _send(response, chunk({"content": text}))
        except ApiError as exc:
            if response is None:
                raise  # nothing sent yet: a plain JSON error with its status code
            # The openai client raises APIError on an event carrying "error".
            await _send(response, {"error": {"message": exc.message, "type": exc.kind}})
            await response.write_eof()
            return response
        if response is None:
            response = await _start_sse(request)
            await _send(response, chunk({"role": "assistant", "content": ""}))
        answer = handle.answer
        if answer.tool_calls:
            deltas = [{"index": i, **c} for i, c in enumerate(openai_calls(answer.tool_calls))]
            await _send(response, chunk({"tool_calls": deltas}))
        finish = _finish_reason(answer.finish_reason, bool(answer.tool_calls))
        await _send(response, chunk({}, finish))
        if body.stream_options and body.stream_options.include_usage:
            await _send(response, {**chunk({}), "choices": [], "usage": _usage(answer)})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


async def _start_sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    return response


async def _send(response: web.StreamResponse, obj: dict[str, Any]) -> None:
    await response.write(b"data: " + json.dumps(obj).encode() + b"\n\n")


async def models(request: web.Request) -> web.Response:
    served = await request.app[MODELS].served()
    data = [
        {"id": n, "object": "model", "created": 0, "owned_by": "corral"} for n in served.listed()
    ]
    return web.json_response({"object": "list", "data": data})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
