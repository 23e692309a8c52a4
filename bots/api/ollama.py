"""Ollama-compatible routes: /api/generate, /api/chat, /api/tags, /api/version, /api/ps.

Follows https://github.com/ollama/ollama/blob/main/docs/api.md closely enough
for the official clients: streamed answers are NDJSON, one object per line,
the last with ``done: true`` and the timings (in nanoseconds).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bots.api.callers import accounted, turn_user
from bots.api.decoding import calls_text, function_specs, ollama_calls, ollama_format, stop_texts
from bots.api.http import RUNNER
from bots.api.models import MODELS
from bots.api.turns import Answer, ApiError, TurnRunner, decode_image, read_json
from shared import model_info
from shared.contract import IMAGE_ONLY_TEXT, FunctionSpec, Message, Sampling

# Options that would change the answer but have no equivalent here: only their
# "off" value is accepted (clients often send the defaults), anything else is a 400.
UNSUPPORTED_OPTIONS = {"typical_p": 1.0, "tfs_z": 1.0, "mirostat": 0}


class Options(BaseModel):
    # num_ctx, num_batch, num_gpu, num_thread, ...: how a server runs, not what it says.
    model_config = ConfigDict(extra="allow")

    temperature: float | None = None
    top_p: float | None = None
    num_predict: int | None = None
    stop: Any = None
    seed: int | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    def refuse_unsupported(self) -> None:
        extra = self.model_extra or {}
        for name, off in UNSUPPORTED_OPTIONS.items():
            if extra.get(name, off) != off:
                raise ApiError(400, f"options.{name} is not supported by this server")

    def sampling(self, format: Any = None) -> Sampling:
        self.refuse_unsupported()
        # Ollama uses -1 ("no limit") and -2 ("fill the context"); both mean our default.
        limit = self.num_predict if self.num_predict and self.num_predict > 0 else None
        penalise = self.repeat_last_n != 0  # 0: penalties off, as in Ollama
        window = self.repeat_last_n if self.repeat_last_n and self.repeat_last_n > 0 else None
        try:
            return Sampling(
                temperature=self.temperature,
                top_p=self.top_p,
                max_new_tokens=limit,
                stop=stop_texts(self.stop, "options.stop"),
                seed=None if self.seed == -1 else self.seed,  # -1: a random seed (llama.cpp)
                response_format=ollama_format(format),
                top_k=self.top_k if self.top_k and self.top_k > 0 else None,  # <= 0: off
                min_p=self.min_p,
                repetition_penalty=self.repeat_penalty if penalise else None,
                presence_penalty=self.presence_penalty if penalise else None,
                frequency_penalty=self.frequency_penalty if penalise else None,
                penalty_window=window,
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            renamed = {"max_new_tokens": "num_predict", "repetition_penalty": "repeat_penalty"}
            field = renamed.get(str(first["loc"][0]), first["loc"][0])
            raise ApiError(400, f"invalid field options.{field}: {first['msg']}") from None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # tool_name, thinking, ...

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[Any] | None = None  # on assistant messages: the calls it made

    def message(self, index: int, content: str, images: list[str]) -> Message:
        if self.tool_calls and self.role == "assistant":
            calls = calls_text(self.tool_calls, f"messages[{index}].tool_calls")
            return Message(role="assistant", content=calls)
        role = "ipython" if self.role == "tool" else self.role  # a tool's result
        return Message(role=role, content=content, images=images)


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")  # keep_alive, ...: accepted, unused

    model: str = Field(min_length=1)
    stream: bool = True
    options: Options = Field(default_factory=Options)
    format: Any = None  # "json" or a JSON schema: enforced by the worker

    def sampling(self) -> Sampling:
        return self.options.sampling(self.format)


class GenerateRequest(_Common):
    prompt: str = ""
    system: str | None = None
    images: list[str] | None = None
    raw: bool = False  # the prompt as is: no chat template, no system prompt
    # Would change the answer, no equivalent here: refused unless empty.
    context: list[int] | None = None
    template: str | None = None
    suffix: str | None = None

    def refuse_unsupported(self) -> None:
        for name in ("context", "template", "suffix"):
            if getattr(self, name):
                raise ApiError(400, f"{name} is not supported by this server")


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(default_factory=list)
    tools: list[Any] | None = None


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _final_fields(answer: Answer) -> dict[str, Any]:
    usage = answer.usage
    return {
        "done": True,
        # stop or length; also timeout/cancelled, which Ollama itself never sends.
        "done_reason": answer.finish_reason,
        "total_duration": answer.total_ns,
        # The model stays resident, so there is no load; the closest thing a caller
        # waits for before prompt processing is the queue.
        "load_duration": int(usage.queue_ms * 1e6),
        "prompt_eval_count": usage.prompt_tokens,
        "prompt_eval_duration": int(usage.prompt_ms * 1e6),
        "eval_count": usage.completion_tokens,
        "eval_duration": int(usage.generate_ms * 1e6),
    }


async def _answer(
    request: web.Request,
    runner: TurnRunner,
    messages: list[Message],
    sampling: Sampling,
    stream: bool,
    piece: Callable[[str], dict[str, Any]],
    model: str | None,
    raw: bool = False,
    tools: list[FunctionSpec] | None = None,
) -> web.StreamResponse:
    """Run the turn; ``piece(text)`` shapes the dialect's part of each chunk."""
    user = turn_user(request)
    async with (
        accounted(request, runner.client.aredis, model) as spent,
        runner.run(messages, sampling, user, model=model, raw=raw, tools=tools or []) as handle,
    ):
        spent(handle)
        if not stream:
            answer = await handle.collect()
            body = {"model": answer.model, "created_at": _now(), **_with_calls(piece, answer)}
            return web.json_response({**body, **_final_fields(answer)})
        response: web.StreamResponse | None = None
        try:
            async for text in handle.deltas():
                if response is None:
                    # Headers go out with the first text, so failures before it still get
                    # a proper status code instead of an error line in a 200 stream.
                    response = await _start_ndjson(request)
                chunk = {"model": handle.answer.model, "created_at": _now(), **piece(text)}
                await _write_line(response, {**chunk, "done": False})
        except ApiError as exc:
            if response is None:
                raise
            # Too late for a status code: Ollama clients raise on an "error" line.
            await _write_line(response, {"error": exc.message})
            await response.write_eof()
            return response
        if response is None:
            response = await _start_ndjson(request)
        answer = handle.answer
        if answer.tool_calls:  # Ollama sends the calls in a chunk of their own
            chunk = {"model": answer.model, "created_at": _now(), **_with_calls(piece, answer)}
            await _write_line(response, {**chunk, "done": False})
        await _write_line(
            response,
            {"model": answer.model, "created_at": _now(), **piece(""), **_final_fields(answer)},
        )
        await response.write_eof()
        return response


def _with_calls(piece: Callable[[str], dict[str, Any]], answer: Answer) -> dict[str, Any]:
    """The answer's part of a body, with its tool calls (chat only) when it made any."""
    shaped = piece(answer.text)
    if answer.tool_calls and "message" in shaped:
        shaped["message"] = {**shaped["message"], "tool_calls": ollama_calls(answer.tool_calls)}
    return shaped


async def _start_ndjson(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    return response


async def _write_line(response: web.StreamResponse, obj: dict[str, Any]) -> None:
    await response.write(json.dumps(obj).encode() + b"\n")


def _load_only(model: str, piece: dict[str, Any]) -> web.Response:
    # Ollama answers an empty prompt by loading the model and returning at once;
    # clients use it to warm a model up. Ours is always loaded.
    return web.json_response(
        {"model": model, "created_at": _now(), **piece, "done": True, "done_reason": "load"}
    )


async def generate(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, GenerateRequest)
    body.refuse_unsupported()
    model = await request.app[MODELS].resolve(request, body.model)
    blobs = [decode_image(v, f"images[{i}]") for i, v in enumerate(body.images or [])]
    if not body.prompt and not blobs:
        return _load_only(body.model, {"response": ""})
    runner = request.app[RUNNER]
    if body.raw and (blobs or not body.prompt):
        raise ApiError(400, "a raw prompt is text only")
    system = body.system and not body.raw
    messages = [Message(role="system", content=body.system or "")] if system else []
    prompt = body.prompt or IMAGE_ONLY_TEXT
    messages.append(Message(role="user", content=prompt, images=await runner.store_images(blobs)))
    return await _answer(
        request,
        runner,
        messages,
        body.sampling(),
        body.stream,
        lambda text: {"response": text},
        model,
        body.raw,
    )


async def chat(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, ChatRequest)
    model = await request.app[MODELS].resolve(request, body.model)
    specs = function_specs(body.tools)
    decoded = [_images_of(m, i) for i, m in enumerate(body.messages)]
    if not body.messages:
        return _load_only(body.model, {"message": {"role": "assistant", "content": ""}})
    runner = request.app[RUNNER]
    messages = []
    for i, (m, blobs) in enumerate(zip(body.messages, decoded, strict=True)):
        content = m.content or (IMAGE_ONLY_TEXT if blobs else "")
        messages.append(m.message(i, content, await runner.store_images(blobs)))
    return await _answer(
        request,
        runner,
        messages,
        body.sampling(),
        body.stream,
        lambda text: {"message": {"role": "assistant", "content": text}},
        model,
        tools=specs,
    )


def _images_of(message: ChatMessage, index: int) -> list[bytes]:
    where = f"messages[{index}].images"
    if message.images and message.role != "user":
        raise ApiError(400, f"{where}: images are only accepted on user messages")
    return [decode_image(v, f"{where}[{j}]") for j, v in enumerate(message.images or [])]


def _model_entry(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "modified_at": _now(),
        "size": 0,
        "digest": "",
        "details": {
            "format": "",
            "family": "llama",
            "parameter_size": "",
            "quantization_level": "",
        },
    }


async def tags(request: web.Request) -> web.Response:
    served = await request.app[MODELS].served()
    return web.json_response({"models": [_model_entry(n) for n in served.listed()]})


async def ps(request: web.Request) -> web.Response:
    status = await request.app[RUNNER].client.status()
    # Only models a live worker has loaded count as running.
    models = [{**_model_entry(n), "expires_at": None, "size_vram": 0} for n in status.models]
    return web.json_response({"models": models if status.workers else []})


class ShowRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # verbose: every field is always there

    model: str = ""
    name: str = ""  # what older clients send instead of model


async def show(request: web.Request) -> web.Response:
    """Ollama's /api/show: what a served model is, from the record its workers keep."""
    body = await read_json(request, ShowRequest)
    asked = body.model or body.name
    if not asked:
        raise ApiError(400, "model is required")
    router = request.app[MODELS]
    name = await router.resolve(request, asked) or router.settings.display_model_name
    runner = request.app[RUNNER]
    info = await model_info.read(runner.client.aredis, name)
    settings = runner.settings
    family = str(info.get("family") or "")
    return web.json_response(
        {
            "modelfile": f"# served by corral\nFROM {name}\n",
            "parameters": (
                f"temperature {settings.temperature}\ntop_p {settings.top_p}\n"
                f"num_predict {settings.max_new_tokens}"
            ),
            "template": info.get("template", ""),
            "details": {
                "parent_model": "",
                "format": "",
                "family": family,
                "families": [family] if family else [],
                "parameter_size": info.get("parameter_size", ""),
                "quantization_level": info.get("quantization_level", ""),
            },
            "model_info": info.get("model_info")
            or {"general.basename": name, "general.context_length": settings.context_tokens},
            "capabilities": info.get("capabilities") or ["completion"],
            "modified_at": _now(),
        }
    )


def corral_version() -> str:
    try:
        return version("corral")
    except PackageNotFoundError:
        return "0.0.0"


async def api_version(request: web.Request) -> web.Response:
    return web.json_response({"version": corral_version()})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/generate", generate)
    app.router.add_post("/api/chat", chat)
    app.router.add_get("/api/tags", tags)
    app.router.add_post("/api/show", show)
    app.router.add_get("/api/ps", ps)
    app.router.add_get("/api/version", api_version)
