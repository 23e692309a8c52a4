"""A local stand-in for Slack's Web API, served over real HTTP with aiohttp.

The real ``slack_sdk`` AsyncWebClient talks to it (``base_url=.../api/``). It
records every call, keeps the messages the bot posted and edited, answers
``auth.test`` so Bolt authorizes offline, and can be told to fail the next
call to a method (429 with Retry-After, or a Slack error such as
``not_in_channel``). Tests await conditions on its state instead of sleeping.

The AI-app surface is modelled too: ``assistant.threads.*`` (status, suggested
prompts, title, kept per thread), native streaming (``chat.startStream`` /
``appendStream`` / ``stopStream``: one message that grows, refused once stopped
or where the workspace has no streaming), ``views.publish`` (App Home) and
``users.info``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")

BOT_USER_ID = "UBOT"
BOT_ID = "BBOT"
TEAM_ID = "T1"


@dataclass
class Call:
    method: str
    args: dict[str, Any]
    at: float  # loop time, to check throttling and Retry-After waits
    status: int = 200


@dataclass
class Posted:
    channel: str
    ts: str
    text: str
    thread_ts: str | None
    metadata: dict[str, Any] | None = None
    edits: list[str] = field(default_factory=list)
    blocks: list[dict[str, Any]] = field(default_factory=list)
    streaming: bool = False  # between chat.startStream and chat.stopStream
    streamed: bool = False  # written with the streaming methods at all
    appends: list[str] = field(default_factory=list)  # each appendStream's text, in order


@dataclass
class _Failure:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


class FakeSlack:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.messages: dict[str, Posted] = {}  # ts -> message, in posting order
        self.responses: list[dict[str, Any]] = []  # bodies POSTed to response_url
        self.replies: dict[tuple[str, str], list[dict[str, Any]]] = {}  # seeded threads
        self.usergroups: dict[str, list[str]] = {}  # user group id -> member user ids
        self.files: dict[str, bytes] = {}  # served at /files/<name> to the bot token only
        self.downloads: list[str] = []  # file names the bot fetched, in order
        self.users: dict[str, dict[str, Any]] = {}  # user id -> profile, for users.info
        self.channel_names: dict[str, str] = {}  # channel id -> name, for conversations.info
        # Per assistant thread (channel, thread_ts): every status set, prompts, titles.
        self.statuses: dict[tuple[str, str], list[str]] = {}
        self.suggested: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.titles: dict[tuple[str, str], str] = {}
        self.home_views: dict[str, dict[str, Any]] = {}  # user id -> published App Home
        # What chat.startStream answers where streaming is off (None: streaming works).
        self.stream_error: str | None = None
        self._failures: dict[str, list[_Failure]] = {}
        self._ts = itertools.count(1)
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_post("/response/{id}", self._response_url)
        app.router.add_get("/files/{name}", self._file)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    def response_url(self, name: str = "1") -> str:
        return f"{self.url}/response/{name}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- scripting ---------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        *,
        status: int = 429,
        error: str = "ratelimited",
        retry_after: float | None = 1,
    ) -> None:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        failure = _Failure(status, {"ok": False, "error": error}, headers)
        self._failures.setdefault(method, []).append(failure)

    def expire_stream(self, ts: str) -> None:
        """The stream of message ``ts`` ends on Slack's side (it timed out): further
        appends are refused, and the message can be edited like any other."""
        self.messages[ts].streaming = False

    # -- inspection ----------------------------------------------------------------

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def bot_messages(self, channel: str, thread_ts: str | None = None) -> list[Posted]:
        return [
            m
            for m in self.messages.values()
            if m.channel == channel and (thread_ts is None or m.thread_ts == thread_ts)
        ]

    async def wait_for(
        self, predicate: Callable[[], T], timeout: float = 5.0, poll: float | None = None
    ) -> T:
        """Wait until ``predicate()`` is truthy and return it.

        It is re-checked after every API call; with ``poll`` also every ``poll``
        seconds, for predicates on state outside this fake (e.g. Redis).
        """
        result: T | None = None

        def check() -> bool:
            nonlocal result
            result = predicate()
            return bool(result)

        async def changed() -> None:
            async with self._changed:
                await self._changed.wait_for(check)

        async def polled() -> None:
            while not check():
                await asyncio.sleep(poll or 0)

        await asyncio.wait_for(polled() if poll else changed(), timeout)
        return result  # type: ignore[return-value]

    # -- HTTP handlers -------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            if request.content_type == "application/json":
                args.update(await request.json())
            else:
                args.update(await request.post())
        call = Call(method, args, asyncio.get_running_loop().time())
        failures = self._failures.get(method)
        if failures:
            failure = failures.pop(0)
            call.status = failure.status
            await self._record(call)
            return web.json_response(failure.body, status=failure.status, headers=failure.headers)
        body = self._answer(method, args)
        await self._record(call)
        return web.json_response(body)

    def file_url(self, name: str, data: bytes) -> str:
        """Host a file (as url_private_download) and return its URL."""
        self.files[name] = data
        return f"{self.url}/files/{name}"

    async def _file(self, request: web.Request) -> web.Response:
        if not request.headers.get("Authorization", "").startswith("Bearer xoxb-"):
            return web.Response(status=403)
        self.downloads.append(request.match_info["name"])
        data = self.files.get(request.match_info["name"])
        return web.Response(status=404) if data is None else web.Response(body=data)

    async def _response_url(self, request: web.Request) -> web.Response:
        self.responses.append(json.loads(await request.text()))
        await self._record(Call("response_url", self.responses[-1], 0.0))
        return web.Response(text="ok")

    async def _record(self, call: Call) -> None:
        async with self._changed:
            self.calls.append(call)
            self._changed.notify_all()

    def _answer(self, method: str, args: dict[str, Any]) -> dict[str, Any]:
        if method == "auth.test":
            return {
                "ok": True,
                "user_id": BOT_USER_ID,
                "bot_id": BOT_ID,
                "team_id": TEAM_ID,
                "user": "corral",
                "team": "Test",
            }
        if method == "chat.postMessage":
            n = next(self._ts)
            ts = f"{1800000000 + n}.{n:06d}"
            metadata = args.get("metadata")
            if isinstance(metadata, str):
                metadata = json.loads(metadata)
            self.messages[ts] = Posted(
                args["channel"], ts, args.get("text", ""), args.get("thread_ts"), metadata
            )
            self.messages[ts].blocks = _json_arg(args.get("blocks")) or []
            return {"ok": True, "channel": args["channel"], "ts": ts}
        if method == "chat.update":
            message = self.messages.get(args.get("ts", ""))
            if message is None:
                return {"ok": False, "error": "message_not_found"}
            if message.streaming:
                return {"ok": False, "error": "message_is_streaming"}
            message.text = args.get("text", "")
            message.edits.append(message.text)
            if "blocks" in args:
                message.blocks = _json_arg(args["blocks"]) or []
            return {"ok": True, "channel": message.channel, "ts": message.ts}
        if method.startswith("chat.") and method.endswith("Stream"):
            return self._stream(method, args)
        if method.startswith("assistant.threads."):
            return self._assistant(method, args)
        if method == "users.info":
            profile = self.users.get(args.get("user", ""))
            if profile is None:
                return {"ok": False, "error": "user_not_found"}
            return {"ok": True, "user": {"id": args["user"], "name": "x", "profile": profile}}
        if method == "conversations.info":
            name = self.channel_names.get(args.get("channel", ""))
            if name is None:
                return {"ok": False, "error": "channel_not_found"}
            return {"ok": True, "channel": {"id": args["channel"], "name": name}}
        if method == "views.publish":
            view = _json_arg(args.get("view"))
            if not args.get("user_id") or not isinstance(view, dict) or view.get("type") != "home":
                return {"ok": False, "error": "invalid_arguments"}
            self.home_views[args["user_id"]] = view
            return {"ok": True, "view": {"id": "V1", **view}}
        if method == "chat.delete":
            if self.messages.pop(args.get("ts", ""), None) is None:
                return {"ok": False, "error": "message_not_found"}
            return {"ok": True}
        if method == "usergroups.users.list":
            return {"ok": True, "users": self.usergroups.get(args.get("usergroup", ""), [])}
        if method == "conversations.replies":
            key = (args.get("channel", ""), args.get("ts", ""))
            return {"ok": True, "messages": self.replies.get(key, []), "has_more": False}
        return {"ok": True}

    # -- the AI-app surface ----------------------------------------------------------

    def _assistant(self, method: str, args: dict[str, Any]) -> dict[str, Any]:
        key = (str(args.get("channel_id", "")), str(args.get("thread_ts", "")))
        if not all(key):
            return {"ok": False, "error": "invalid_arguments"}
        if method == "assistant.threads.setStatus":
            self.statuses.setdefault(key, []).append(str(args.get("status", "")))
        elif method == "assistant.threads.setSuggestedPrompts":
            prompts = _json_arg(args.get("prompts"))
            if not isinstance(prompts, list) or not 1 <= len(prompts) <= 4:
                return {"ok": False, "error": "invalid_arguments"}  # Slack takes 1 to 4
            self.suggested[key] = prompts
        elif method == "assistant.threads.setTitle":
            self.titles[key] = str(args.get("title", ""))
        else:
            return {"ok": False, "error": "unknown_method"}
        return {"ok": True}

    def _stream(self, method: str, args: dict[str, Any]) -> dict[str, Any]:
        text = str(args.get("markdown_text") or "") + "".join(
            str(chunk.get("text", ""))
            for chunk in _json_arg(args.get("chunks")) or []
            if isinstance(chunk, dict) and chunk.get("type") == "markdown_text"
        )
        if method == "chat.startStream":
            if self.stream_error is not None:
                return {"ok": False, "error": self.stream_error}
            if not args.get("thread_ts"):
                return {"ok": False, "error": "invalid_arguments"}  # a stream is a reply
            if args["channel"].startswith("C") and not args.get("recipient_user_id"):
                # In channels Slack must know whom the stream answers.
                return {"ok": False, "error": "missing_recipient_user_id"}
            n = next(self._ts)
            ts = f"{1800000000 + n}.{n:06d}"
            posted = Posted(args["channel"], ts, text, args["thread_ts"])
            posted.streaming = posted.streamed = True
            self.messages[ts] = posted
            return {"ok": True, "channel": args["channel"], "ts": ts}
        message = self.messages.get(str(args.get("ts", "")))
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        if not message.streaming:
            return {"ok": False, "error": "message_not_in_streaming_state"}
        message.text += text
        if method == "chat.appendStream":
            message.appends.append(text)
        elif method == "chat.stopStream":
            message.streaming = False
            message.blocks = _json_arg(args.get("blocks")) or []
            message.metadata = _json_arg(args.get("metadata"))
        else:
            return {"ok": False, "error": "unknown_method"}
        return {"ok": True, "channel": message.channel, "ts": message.ts}


def _json_arg(value: Any) -> Any:
    """A structured argument, sent as JSON or as a JSON string in a form field."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value
