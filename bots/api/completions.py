"""OpenAI's legacy ``/v1/completions``: a raw prompt continued by the model, no chat template.

The prompt becomes a stateless turn whose one user message is fed to the model as it is
(``Turn.raw_prompt``); control-token strings in it stay plain text.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from bots.api.callers import accounted, turn_user
from bots.api.decoding import stop_texts
from bots.api.http import RUNNER
from bots.api.models import MODELS
from bots.api.openai import (
    StreamOptions,
    _finish_reason,
    _send,
    _start_sse,
    _usage,
    checked_sampling,
)
from bots.api.turns import ApiError, read_json
from shared.contract import Message, Sampling

DEFAULT_MAX_TOKENS = 16  # OpenAI's (and vLLM's) default for this endpoint


class CompletionsRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # user: not used

    model: str = Field(min_length=1)
    prompt: str | list[str]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = DEFAULT_MAX_TOKENS
    temperature: float | None = None
    top_p: float | None = None
    stop: Any = None
    seed: int | None = None
    n: int = 1
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = None
    best_of: int | None = None
    user: str = ""
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None

    def text(self) -> str:
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        if len(prompts) != 1:
            raise ApiError(400, "prompt: one prompt per request is supported by this server")
        if not prompts[0]:
            raise ApiError(400, "prompt must not be empty")
        return prompts[0]

    def refuse_unsupported(self) -> None:
        if self.n != 1 or (self.best_of or 1) != 1:
            raise ApiError(400, "only n=1 (and best_of=1) is supported by this server")
        if self.echo or self.suffix or self.logprobs is not None or self.logit_bias:
            raise ApiError(
                400, "echo, suffix, logprobs and logit_bias are not supported by this server"
            )

    def sampling(self) -> Sampling:
        return checked_sampling(
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=self.max_tokens,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            stop=stop_texts(self.stop, "stop"),
            seed=self.seed,
        )


async def completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, CompletionsRequest)
    body.refuse_unsupported()
    prompt = body.text()
    sampling = body.sampling()
    model = await request.app[MODELS].resolve(request, body.model)
    runner = request.app[RUNNER]
    completion_id = f"cmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    messages = [Message(role="user", content=prompt)]
    user = turn_user(request, body.user)
    async with (
        accounted(request, runner.client.aredis, model) as spent,
        runner.run(messages, sampling, user, model=model, raw=True) as handle,
    ):
        spent(handle)

        def shaped(text: str, finish: str | None) -> dict[str, Any]:
            choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
            return {
                "id": completion_id,
                "object": "text_completion",
                "created": created,
                "model": handle.answer.model,
                "choices": [choice],
            }

        if not body.stream:
            answer = await handle.collect()
            reply = shaped(answer.text, _finish_reason(answer.finish_reason))
            return web.json_response({**reply, "usage": _usage(answer)})
        response: web.StreamResponse | None = None
        try:
            async for text in handle.deltas():
                if response is None:
                    response = await _start_sse(request)
                await _send(response, shaped(text, None))
        except ApiError as exc:
            if response is None:
                raise
            await _send(response, {"error": {"message": exc.message, "type": exc.kind}})
            await response.write_eof()
            return response
        if response is None:
            response = await _start_sse(request)
        answer = handle.answer
        await _send(response, shaped("", _finish_reason(answer.finish_reason)))
        if body.stream_options and body.stream_options.include_usage:
            await _send(response, {**shaped("", None), "choices": [], "usage": _usage(answer)})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/completions", completions)
