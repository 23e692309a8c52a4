"""A local stand-in for Discord: enough REST API and gateway for discord.py 2.x.

The real discord.py client connects to it (``point_discord_py_at``): it logs
in over REST, opens the gateway websocket (HELLO, IDENTIFY, READY,
GUILD_CREATE, heartbeats) and receives the MESSAGE_CREATE, MESSAGE_DELETE,
INTERACTION_CREATE (slash and message context-menu commands) and
MESSAGE_REACTION_ADD dispatches a test injects. Every REST call is recorded,
messages live in per-channel lists, and any route can be made to answer 429
with ``retry_after`` and rate-limit headers, like Discord does.

Everything runs on the test's event loop; tests wait on ``wait_for`` (an
``asyncio.Condition`` woken by every state change), never on sleeps.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import discord
import yarl
from aiohttp import WSMsgType, web

TOKEN = "fake-bot-token"
BOT_ID = 900_000_000_000_000_001
APP_ID = BOT_ID  # a bot's application id is its user id
OWNER_ID = 900_000_000_000_000_002
ALICE_ID = 700_000_000_000_000_001  # the default user of messages and interactions


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # discord.py only parses a body whose Content-Type is exactly "application/json"
    # (aiohttp's json_response appends a charset).
    headers = {**(headers or {}), "Content-Type": "application/json"}
    return web.Response(body=json.dumps(payload).encode(), status=status, headers=headers)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def user_payload(user_id: int, name: str, bot: bool = False) -> dict[str, Any]:
    return {
        "id": str(user_id),
        "username": name,
        "global_name": name,
        "discriminator": "0",
        "avatar": None,
        "bot": bot,
    }


BOT_USER = user_payload(BOT_ID, "corral", bot=True)


@dataclass
class Call:
    """One REST request as the fake received it."""

    method: str
    path: str  # below /api/v10
    query: dict[str, str]
    body: Any
    status: int = 200


@dataclass
class RateLimitRule:
    method: str
    pattern: re.Pattern[str]
    times: int
    retry_after: float


@dataclass
class FakeDiscord:
    guild_id: int = 800_000_000_000_000_001
    channel_ids: tuple[int, ...] = (800_000_000_000_000_010, 800_000_000_000_000_011)
    extra_guilds: tuple[int, ...] = ()
    role_ids: tuple[int, ...] = ()  # extra roles of the main guild (members may hold them)
    calls: list[Call] = field(default_factory=list)
    messages: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    channels: dict[int, dict[str, Any]] = field(default_factory=dict)
    originals: dict[str, dict[str, Any]] = field(default_factory=dict)  # token -> response
    interaction_callbacks: list[dict[str, Any]] = field(default_factory=list)
    followups: list[dict[str, Any]] = field(default_factory=list)  # webhook follow-ups
    handled: set[int] = field(default_factory=set)  # message ids the bot finished with
    handled_times: dict[int, int] = field(default_factory=dict)  # ... and how often
    last_message_create: dict[str, Any] = field(default_factory=dict)  # for replaying it
    commands: list[dict[str, Any]] = field(default_factory=list)  # the last synced set
    # Loop time each interaction was sent at and first answered at (Discord allows 3 s).
    interaction_sent: dict[int, float] = field(default_factory=dict)
    interaction_acked: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._ids = itertools.count(810_000_000_000_000_000)
        self._seq = itertools.count(1)
        self._sockets: list[web.WebSocketResponse] = []
        self._rules: list[RateLimitRule] = []
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._token_channels: dict[str, int] = {}  # interaction token -> channel id
        self.files: dict[str, bytes] = {}  # attachment path -> content, served over HTTP
        self.downloads: list[str] = []  # attachment paths the bot fetched, in order
        self.port = 0
        self.identified = asyncio.Event()
        for guild in (self.guild_id, *self.extra_guilds):
            for index, channel_id in enumerate(self._channels_of(guild)):
                self.channels[channel_id] = {
                    "id": str(channel_id),
                    "type": 0,
                    "guild_id": str(guild),
                    "name": f"general-{index}",
                    "position": index,
                    "permission_overwrites": [],
                    "parent_id": None,
                    "nsfw": False,
                    "topic": None,
                    "last_message_id": None,
                    "rate_limit_per_user": 0,
                }

    def _channels_of(self, guild: int) -> tuple[int, ...]:
        if guild == self.guild_id:
            return self.channel_ids
        return (guild + 10,)

    # Serving

    async def start(self) -> FakeDiscord:
        app = web.Application()
        app.router.add_get("/", self._gateway)
        app.router.add_get("/files/{tail:.*}", self._file)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._rest)
        # Teardown waits are short: a bot that already left must not hold the test up to
        # aiohttp's defaults (10 s per socket close, 60 s for open handlers) past its timeout.
        self._runner = web.AppRunner(app, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def close(self) -> None:
        for socket in list(self._sockets):
            await socket.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def point_discord_py_at(self) -> None:
        """Aim discord.py's REST routes and gateway here (both are class attributes)."""
        discord.http.Route.BASE = self.base_url
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)

    # Test controls

    def rate_limit(self, method: str, path_regex: str, times: int, retry_after: float) -> None:
        """Answer the next ``times`` matching requests with 429 (``retry_after`` seconds)."""
        self._rules.append(RateLimitRule(method, re.compile(path_regex), times, retry_after))

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Wait until ``predicate()`` is truthy (re-checked on every change) and return it."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                result = predicate()
                while not result:
                    await self._changed.wait()
                    result = predicate()
                return result

    async def notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def new_id(self) -> int:
        return next(self._ids)

    def bot_messages(self, channel_id: int) -> list[dict[str, Any]]:
        return [m for m in self.messages.get(channel_id, []) if m["author"]["id"] == str(BOT_ID)]

    def threads(self) -> list[dict[str, Any]]:
        return [c for c in self.channels.values() if c["type"] == 11]

    def rest_calls(self, method: str, path_regex: str) -> list[Call]:
        pattern = re.compile(path_regex)
        return [c for c in self.calls if c.method == method and pattern.fullmatch(c.path)]

    async def user_says(
        self,
        channel_id: int,
        content: str,
        *,
        author: dict[str, Any] | None = None,
        mentions: list[dict[str, Any]] | None = None,
        dm: bool = False,
        roles: list[int] | None = None,
        files: dict[str, bytes] | None = None,
        content_types: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """A message from a user (or bot) appears: stored, then dispatched to the bot.

        ``roles`` are the author's role ids; ``files`` become attachments (name -> content),
        with the ``content_type`` Discord declares when ``content_types`` names one.
        """
        author = author or user_payload(700_000_000_000_000_001, "alice")
        if mentions is None:
            mentions = [BOT_USER] if f"<@{BOT_ID}>" in content else []
        message = self._store_message(channel_id, content, author, mentions)
        for name, data in (files or {}).items():
            path = f"{self.new_id()}/{name}"
            self.files[path] = data
            url = f"http://127.0.0.1:{self.port}/files/{path}"
            attachment = {"id": path.split("/")[0], "filename": name, "size": len(data)}
            if name in (content_types or {}):
                attachment["content_type"] = (content_types or {})[name]
            message["attachments"].append({**attachment, "url": url, "proxy_url": url})
        payload = dict(message)
        if not dm:
            payload["guild_id"] = self.channels[channel_id]["guild_id"]
            payload["member"] = {
                "roles": [str(role) for role in roles or []],
                "joined_at": now_iso(),
                "deaf": False,
                "mute": False,
                "flags": 0,
            }
        self.last_message_create = payload
        await self.dispatch("MESSAGE_CREATE", payload)
        return message

    async def user_deletes(self, channel_id: int, message_id: int) -> None:
        """A user deletes a message: it goes from the channel, and MESSAGE_DELETE is sent."""
        message = self._find(channel_id, message_id)
        if message is not None:
            self.messages[channel_id].remove(message)
        payload = {"id": str(message_id), "channel_id": str(channel_id)}
        guild = self.channels.get(channel_id, {}).get("guild_id")
        if guild:
            payload["guild_id"] = guild
        await self.dispatch("MESSAGE_DELETE", payload)

    async def interact(
        self,
        channel_id: int,
        name: str,
        options: dict[str, str] | None = None,
        *,
        user: dict[str, Any] | None = None,
        roles: list[int] | None = None,
    ) -> dict[str, Any]:
        """A user runs a slash command in a guild channel or thread."""
        payload = self._command_payload(channel_id, user, roles)
        payload["data"] = {
            "id": str(self.new_id()),
            "name": name,
            "type": 1,
            "options": [
                {"name": key, "type": 3, "value": value} for key, value in (options or {}).items()
            ],
        }
        await self._send_interaction(payload)
        return payload

    async def use_message_command(
        self,
        channel_id: int,
        name: str,
        target: dict[str, Any],
        *,
        user: dict[str, Any] | None = None,
        roles: list[int] | None = None,
    ) -> dict[str, Any]:
        """A user picks the message context-menu command ``name`` on message ``target``.

        As Discord sends it: an application command (interaction type 2) whose data has
        type 3 (MESSAGE), the ``target_id`` and the message under ``resolved.messages``.
        """
        payload = self._command_payload(channel_id, user, roles)
        payload["data"] = {
            "id": str(self.new_id()),
            "name": name,
            "type": 3,
            "target_id": target["id"],
            "resolved": {"messages": {target["id"]: target}},
        }
        await self._send_interaction(payload)
        return payload

    async def use_message_command_in_dm(
        self, name: str, target: dict[str, Any], *, user: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The same, in a DM the bot is not part of: the app is installed to the user only.

        Discord says so with ``authorizing_integration_owners`` naming just the user (key
        "1") and ``context`` 1 (the bot's DM) or 2 (a private channel); no guild, no member.
        """
        user = user or user_payload(ALICE_ID, "alice")
        channel_id = int(target["channel_id"])
        interaction_id = self.new_id()
        payload = {
            "id": str(interaction_id),
            "application_id": str(APP_ID),
            "type": 2,
            "token": f"itoken-{interaction_id}",
            "version": 1,
            "channel_id": str(channel_id),
            "channel": {"id": str(channel_id), "type": 1, "recipients": [user]},
            "user": user,
            "data": {
                "id": str(self.new_id()),
                "name": name,
                "type": 3,
                "target_id": target["id"],
                "resolved": {"messages": {target["id"]: target}},
            },
            "locale": "en-US",
            "app_permissions": "0",
            "entitlements": [],
            "authorizing_integration_owners": {"1": user["id"]},
            "context": 2,
            "attachment_size_limit": 10_000_000,
        }
        await self._send_interaction(payload)
        return payload

    def dm_message(self, channel_id: int, content: str, author: dict[str, Any]) -> dict[str, Any]:
        """A message in a DM between users (the bot is not there: nothing is dispatched)."""
        return self._store_message(channel_id, content, author, [])

    def _command_payload(
        self, channel_id: int, user: dict[str, Any] | None, roles: list[int] | None
    ) -> dict[str, Any]:
        user = user or user_payload(ALICE_ID, "alice")
        channel = self.channels[channel_id]
        interaction_id = self.new_id()
        return {
            "id": str(interaction_id),
            "application_id": str(APP_ID),
            "type": 2,
            "token": f"itoken-{interaction_id}",
            "version": 1,
            "guild_id": channel["guild_id"],
            "channel_id": str(channel_id),
            "channel": channel,
            "member": {
                "user": user,
                "roles": [str(role) for role in roles or []],
                "joined_at": now_iso(),
                "deaf": False,
                "mute": False,
                "flags": 0,
                "permissions": "2248473465835073",
            },
            "locale": "en-US",
            "guild_locale": "en-US",
            "app_permissions": "2248473465835073",
            "entitlements": [],
            "authorizing_integration_owners": {"0": channel["guild_id"]},
            "context": 0,
            "attachment_size_limit": 10_000_000,
        }

    async def _send_interaction(self, payload: dict[str, Any]) -> None:
        self._token_channels[payload["token"]] = int(payload["channel_id"])
        self.interaction_sent[int(payload["id"])] = asyncio.get_running_loop().time()
        await self.dispatch("INTERACTION_CREATE", payload)

    async def user_reacts(
        self, channel_id: int, message_id: int, emoji: str, *, user_id: int = ALICE_ID
    ) -> None:
        """A user adds a (unicode) reaction to a message: stored, then MESSAGE_REACTION_ADD."""
        message = self._find(channel_id, message_id)
        if message is not None:
            self._add_reaction(message, emoji, me=False)
        payload: dict[str, Any] = {
            "user_id": str(user_id),
            "channel_id": str(channel_id),
            "message_id": str(message_id),
            "emoji": {"id": None, "name": emoji},
            "type": 0,
            "burst": False,
        }
        guild = self.channels.get(channel_id, {}).get("guild_id")
        if guild:
            payload["guild_id"] = guild
            payload["member"] = {
                "user": user_payload(user_id, "reactor"),
                "roles": [],
                "joined_at": now_iso(),
                "deaf": False,
                "mute": False,
                "flags": 0,
            }
        if message is not None:
            payload["message_author_id"] = message["author"]["id"]
        await self.dispatch("MESSAGE_REACTION_ADD", payload)

    @staticmethod
    def _add_reaction(message: dict[str, Any], emoji: str, *, me: bool) -> None:
        reactions = message.setdefault("reactions", [])
        for reaction in reactions:
            if reaction["emoji"]["name"] == emoji:
                reaction["count"] += 1
                reaction["me"] = reaction["me"] or me
                return
        reactions.append({"emoji": {"id": None, "name": emoji}, "count": 1, "me": me})

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        await self.identified.wait()
        frame = {"op": 0, "t": event, "s": next(self._seq), "d": data}
        for socket in list(self._sockets):
            await socket.send_str(json.dumps(frame))

    # Gateway

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(timeout=2.0)  # the close handshake's wait
        await socket.prepare(request)
        self._sockets.append(socket)
        await socket.send_json({"op": 10, "d": {"heartbeat_interval": 41250}})
        try:
            async for frame in socket:
                if frame.type != WSMsgType.TEXT:
                    break
                payload = json.loads(frame.data)
                if payload["op"] == 1:  # heartbeat
                    await socket.send_json({"op": 11})
                elif payload["op"] == 2:  # identify
                    if payload["d"]["token"] != TOKEN:
                        await socket.close(code=4004, message=b"Authentication failed.")
                        break
                    await self._ready(socket)
        finally:
            self._sockets.remove(socket)
        return socket

    async def _ready(self, socket: web.WebSocketResponse) -> None:
        guilds = (self.guild_id, *self.extra_guilds)
        ready = {
            "v": 10,
            "user": BOT_USER,
            "guilds": [{"id": str(g), "unavailable": True} for g in guilds],
            "session_id": "fake-session",
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(APP_ID), "flags": 0},
            "private_channels": [],
            "relationships": [],
        }
        await socket.send_json({"op": 0, "t": "READY", "s": next(self._seq), "d": ready})
        for guild in guilds:
            data = {
                "id": str(guild),
                "name": f"guild-{guild}",
                "icon": None,
                "owner_id": str(OWNER_ID),
                "unavailable": False,
                "member_count": 2,
                "large": False,
                "features": [],
                "roles": [
                    {
                        "id": str(role),
                        "name": "@everyone" if role == guild else f"role-{role}",
                        "permissions": "2248473465835073",
                        "position": index,
                        "color": 0,
                        "hoist": False,
                        "managed": False,
                        "mentionable": False,
                    }
                    for index, role in enumerate(
                        (guild, *(self.role_ids if guild == self.guild_id else ()))
                    )
                ],
                "emojis": [],
                "stickers": [],
                "channels": [c for c in self.channels.values() if c["guild_id"] == str(guild)],
                "threads": [],
                "members": [],
                "voice_states": [],
                "presences": [],
                "joined_at": now_iso(),
            }
            await socket.send_json({"op": 0, "t": "GUILD_CREATE", "s": next(self._seq), "d": data})
        self.identified.set()

    async def _file(self, request: web.Request) -> web.Response:
        self.downloads.append(request.match_info["tail"])
        data = self.files.get(request.match_info["tail"])
        return web.Response(status=404) if data is None else web.Response(body=data)

    # REST

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        body = await request.json() if request.can_read_body else None
        call = Call(request.method, path, dict(request.query), body)
        self.calls.append(call)
        if request.headers.get("Authorization") not in (f"Bot {TOKEN}", None):
            call.status = 401
            return _json({"message": "401: Unauthorized", "code": 0}, status=401)
        for rule in self._rules:
            if rule.times > 0 and rule.method == request.method and rule.pattern.fullmatch(path):
                rule.times -= 1
                call.status = 429
                await self.notify()
                return self._too_many(rule.retry_after)
        try:
            status, payload = await self._handle(request.method, path, request.query, body)
        finally:
            await self.notify()
        call.status = status
        headers = {
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "4",
            "X-RateLimit-Reset-After": "1.0",
            "X-RateLimit-Bucket": "fake-" + request.method + re.sub(r"\d+", "N", path),
        }
        if status == 204:
            return web.Response(status=204, headers=headers)
        return _json(payload, status=status, headers=headers)

    @staticmethod
    def _too_many(retry_after: float) -> web.Response:
        # Discord's answer to a rate-limited request; discord.py only trusts a
        # 429 carrying a `Via` header (else it assumes a Cloudflare ban).
        return _json(
            {"message": "You are being rate limited.", "retry_after": retry_after, "global": False},
            status=429,
            headers={
                "Via": "1.1 google",
                "Retry-After": str(max(1, round(retry_after))),
                "X-RateLimit-Limit": "5",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset-After": str(retry_after),
                "X-RateLimit-Bucket": "fake-limited",
                "X-RateLimit-Scope": "user",
            },
        )

    async def _handle(self, method: str, path: str, query: Any, body: Any) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        if path == "/gateway/bot":
            limit = {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}
            return 200, {"url": self.gateway_url, "shards": 1, "session_start_limit": limit}
        if path == "/gateway":
            return 200, {"url": self.gateway_url}
        if path == "/users/@me":
            return 200, BOT_USER
        if path == "/oauth2/applications/@me":
            return 200, self._application()
        if parts[0] == "applications" and parts[-1] == "commands" and method == "PUT":
            # Discord answers context menus (which send none) with an empty description.
            self.commands = [
                {
                    "description": "",
                    **command,
                    "id": str(self.new_id()),
                    "application_id": str(APP_ID),
                    "version": "1",
                }
                for command in body
            ]
            return 200, self.commands
        if parts[0] == "channels":
            return await self._channel_route(method, parts[1:], query, body)
        if parts[0] == "interactions" and parts[-1] == "callback":
            return await self._callback(int(parts[1]), parts[2], body)
        if parts[0] == "webhooks":
            return self._webhook_route(method, parts[2], parts[3:], body)
        return 404, {"message": f"fake Discord has no route {method} {path}", "code": 0}

    def _application(self) -> dict[str, Any]:
        return {
            "id": str(APP_ID),
            "name": "corral",
            "description": "",
            "icon": None,
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": user_payload(OWNER_ID, "owner"),
            "team": None,
            "verify_key": "0" * 64,
            "flags": 0,
            "interactions_endpoint_url": None,
        }

    async def _channel_route(
        self, method: str, parts: list[str], query: Any, body: Any
    ) -> tuple[int, Any]:
        channel_id = int(parts[0])
        rest = parts[1:]
        if rest == ["typing"] and method == "POST":
            return 204, None
        if rest == ["messages"] and method == "POST":
            author = BOT_USER
            message = self._store_message(channel_id, body.get("content", ""), author, [])
            if body.get("message_reference"):
                message["message_reference"] = body["message_reference"]
                message["type"] = 19
            await self._echo(channel_id, message)
            return 200, message
        if rest == ["messages"] and method == "GET":
            return 200, self._history(channel_id, query)
        if len(rest) == 2 and rest[0] == "messages":
            message = self._find(channel_id, int(rest[1]))
            if message is None:
                return 404, {"message": "Unknown Message", "code": 10008}
            if method == "GET":
                return 200, message
            if method == "PATCH":
                message["content"] = body.get("content", message["content"])
                message["edited_timestamp"] = now_iso()
                message.setdefault("edits", 0)
                message["edits"] += 1
                return 200, message
            if method == "DELETE":
                self.messages[channel_id].remove(message)
                return 204, None
        if len(rest) == 5 and rest[0] == "messages" and rest[2] == "reactions" and method == "PUT":
            # PUT /channels/{c}/messages/{m}/reactions/{emoji}/@me: the bot reacts.
            target = self._find(channel_id, int(rest[1]))
            if target is None:
                return 404, {"message": "Unknown Message", "code": 10008}
            self._add_reaction(target, urllib.parse.unquote(rest[3]), me=True)
            return 204, None
        if len(rest) == 3 and rest[0] == "messages" and rest[2] == "threads" and method == "POST":
            return 201, await self._create_thread(channel_id, int(rest[1]), body)
        return 404, {"message": "fake Discord: unknown channel route", "code": 0}

    async def _create_thread(
        self, parent_id: int, message_id: int, body: Any, owner_id: int = BOT_ID
    ) -> dict[str, Any]:
        parent = self.channels[parent_id]
        thread = {
            "id": str(message_id),  # a thread started on a message takes its id
            "type": 11,
            "guild_id": parent["guild_id"],
            "parent_id": str(parent_id),
            "owner_id": str(owner_id),
            "name": body["name"],
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "message_count": 0,
            "member_count": 1,
            "flags": 0,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": body.get("auto_archive_duration", 1440),
                "archive_timestamp": now_iso(),
                "locked": False,
            },
        }
        self.channels[message_id] = thread
        await self.dispatch("THREAD_CREATE", {**thread, "newly_created": True})
        return thread

    async def open_thread(self, parent_id: int, owner_id: int) -> int:
        """A thread someone else started (without a starter message); returns its id."""
        thread_id = self.new_id()
        await self._create_thread(parent_id, thread_id, {"name": "a user's thread"}, owner_id)
        return thread_id

    async def _callback(self, interaction_id: int, token: str, body: Any) -> tuple[int, Any]:
        self.interaction_callbacks.append({"id": interaction_id, "token": token, **body})
        self.interaction_acked.setdefault(interaction_id, asyncio.get_running_loop().time())
        kind = body["type"]
        data = body.get("data") or {}
        ephemeral = bool(data.get("flags", 0) & 64)
        if kind == 4:  # a message now
            channel_id = self._token_channels[token]
            message = self._store_message(channel_id, data.get("content", ""), BOT_USER, [])
            message["interaction_token"] = token
            self.originals[token] = message
        elif kind == 5:  # "thinking…": the first follow-up or an edit replaces it
            # A whole message, as Discord returns it when the response is edited.
            shell = self._message_shell(self._token_channels.get(token, 0), "", BOT_USER, [])
            self.originals[token] = {**shell, "ephemeral": ephemeral, "loading": True}
        answer = {
            "interaction": {
                "id": str(interaction_id),
                "type": 2,
                "response_message_loading": kind == 5,
                "response_message_ephemeral": ephemeral,
            }
        }
        return 200, answer

    def _webhook_route(
        self, method: str, token: str, rest: list[str], body: Any
    ) -> tuple[int, Any]:
        if rest == ["messages", "@original"]:
            original = self.originals.get(token)
            if original is None:
                return 404, {"message": "Unknown Webhook", "code": 10015}
            if method == "PATCH":
                original["content"] = body.get("content", original.get("content", ""))
            return 200, original
        if not rest and method == "POST":
            followup = {
                "id": str(self.new_id()),
                "content": body.get("content", ""),
                "flags": body.get("flags", 0),
                "token": token,
            }
            self.followups.append(followup)
            channel_id = self._token_channels.get(token, 0)
            shell = self._message_shell(channel_id, followup["content"], BOT_USER, [])
            return 200, {**shell, "id": followup["id"], "flags": followup["flags"]}
        return 404, {"message": "fake Discord: unknown webhook route", "code": 0}

    # Messages

    def _message_shell(
        self, channel_id: int, content: str, author: dict[str, Any], mentions: list[Any]
    ) -> dict[str, Any]:
        return {
            "id": str(self.new_id()),
            "channel_id": str(channel_id),
            "author": author,
            "content": content,
            "timestamp": now_iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": mentions,
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": 0,
            "flags": 0,
            "components": [],
        }

    def _store_message(
        self, channel_id: int, content: str, author: dict[str, Any], mentions: list[Any]
    ) -> dict[str, Any]:
        message = self._message_shell(channel_id, content, author, mentions)
        self.messages.setdefault(channel_id, []).append(message)
        return message

    async def _echo(self, channel_id: int, message: dict[str, Any]) -> None:
        # Discord sends a bot its own messages too; the bot must ignore them.
        payload = dict(message)
        guild = self.channels.get(channel_id, {}).get("guild_id")
        if guild:
            payload["guild_id"] = guild
        await self.dispatch("MESSAGE_CREATE", payload)

    def _find(self, channel_id: int, message_id: int) -> dict[str, Any] | None:
        for message in self.messages.get(channel_id, []):
            if int(message["id"]) == message_id:
                return message
        return None

    def _history(self, channel_id: int, query: Any) -> list[dict[str, Any]]:
        found = list(self.messages.get(channel_id, []))
        if "before" in query:
            found = [m for m in found if int(m["id"]) < int(query["before"])]
        if "after" in query:
            found = [m for m in found if int(m["id"]) > int(query["after"])]
        limit = int(query.get("limit", 50))
        if "after" in query and "before" not in query:
            found = found[:limit]  # the oldest ones after `after`
        else:
            found = found[-limit:]
        return list(reversed(found))  # Discord lists newest first
