"""Embedding routes: Ollama ``/api/embed`` (and the older ``/api/embeddings``) and OpenAI
``/v1/embeddings``. A worker of the named model computes them through the queue
(``worker/embed.py``: the model's mean-pooled last hidden states, unit length)."""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from rq.job import Job, JobStatus

from bots.api.callers import accounted
from bots.api.http import RUNNER
from bots.api.models import MODELS
from bots.api.turns import ApiError, read_json
from shared.contract import Usage
from shared.embeddings import MAX_INPUTS, EmbedRequest, embed_result, enqueue_embed

POLL_S = 0.05


def _texts(value: Any, where: str) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ApiError(400, f"{where} must be a string or a non-empty list of strings")
    if len(texts) > MAX_INPUTS:
        raise ApiError(400, f"{where} takes at most {MAX_INPUTS} inputs")
    return texts


async def _embed(
    request: web.Request, model: str, texts: list[str], truncate: bool = True
) -> tuple[list[list[float]], int, str]:
    """Vectors, prompt tokens and the model's name, from a worker of ``model``."""
    runner = request.app[RUNNER]
    routed = await request.app[MODELS].resolve(request, model)
    status = await runner.client.status()
    if runner.require_worker and status.workers == 0:
        raise ApiError(503, "no worker is running; start one with `corral worker`", "overloaded")
    async with accounted(request, runner.client.aredis, routed) as spent:
        vectors, tokens = await _run_job(
            request, routed, EmbedRequest(inputs=texts, truncate=truncate)
        )
        spent(Usage(prompt_tokens=tokens))
    return vectors, tokens, routed or runner.settings.display_model_name


async def _run_job(
    request: web.Request, routed: str | None, embed_request: EmbedRequest
) -> tuple[list[list[float]], int]:
    runner = request.app[RUNNER]
    conn, settings = runner.client.redis, runner.settings
    queue = runner.queue_model(routed)
    job = await asyncio.to_thread(enqueue_embed, conn, settings, queue, embed_request)
    deadline = time.monotonic() + runner.silence_timeout
    try:
        while time.monotonic() < deadline:
            state = await asyncio.to_thread(job.get_status, True)
            if state == JobStatus.FINISHED:
                vectors, tokens, error = embed_result(await asyncio.to_thread(job.return_value))
                if error:
                    raise ApiError(400, error)
                return vectors, tokens
            if state in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
                raise ApiError(500, "the worker failed computing the embeddings", "server_error")
            await asyncio.sleep(POLL_S)
        raise ApiError(504, "no embeddings from a worker in time; try again later", "timeout")
    finally:
        if await asyncio.to_thread(job.get_status, True) in (JobStatus.QUEUED, JobStatus.STARTED):
            await asyncio.shield(asyncio.to_thread(_cancel, job))


def _cancel(job: Job) -> None:
    try:
        job.cancel()
    except Exception:  # noqa: BLE001 - it finished meanwhile: nothing to cancel
        pass


class OllamaEmbed(BaseModel):
    model_config = ConfigDict(extra="ignore")  # options, keep_alive: not ours per call

    model: str = Field(min_length=1)
    input: Any = None
    prompt: Any = None  # /api/embeddings (the older route)
    truncate: bool = True


async def ollama_embed(request: web.Request) -> web.Response:
    started = time.monotonic()
    body = await read_json(request, OllamaEmbed)
    texts = _texts(body.input, "input")
    vectors, tokens, _ = await _embed(request, body.model, texts, body.truncate)
    return web.json_response(
        {
            "model": body.model,
            "embeddings": vectors,
            "total_duration": int((time.monotonic() - started) * 1e9),
            "load_duration": 0,
            "prompt_eval_count": tokens,
        }
    )


async def ollama_embeddings(request: web.Request) -> web.Response:
    body = await read_json(request, OllamaEmbed)
    vectors, _, _ = await _embed(request, body.model, _texts(body.prompt, "prompt"))
    return web.json_response({"embedding": vectors[0]})


class OpenAIEmbed(BaseModel):
    model_config = ConfigDict(extra="ignore")  # user: not used

    model: str = Field(min_length=1)
    input: Any
    encoding_format: str = "float"
    dimensions: int | None = None


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":  # little-endian float32, as OpenAI sends it
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


async def openai_embeddings(request: web.Request) -> web.Response:
    body = await read_json(request, OpenAIEmbed)
    if body.encoding_format not in ("float", "base64"):
        raise ApiError(400, "encoding_format must be float or base64")
    if body.dimensions is not None:
        raise ApiError(400, "dimensions is not supported: the model's vectors have one size")
    texts = _texts(body.input, "input")  # token-id inputs are refused here too
    vectors, tokens, name = await _embed(request, body.model, texts)
    data = [
        {"object": "embedding", "index": i, "embedding": _encoded(v, body.encoding_format)}
        for i, v in enumerate(vectors)
    ]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return web.json_response({"object": "list", "data": data, "model": name, "usage": usage})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/embed", ollama_embed)
    app.router.add_post("/api/embeddings", ollama_embeddings)
    app.router.add_post("/v1/embeddings", openai_embeddings)
