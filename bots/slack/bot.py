"""Entry point of the Slack bot: build the Bolt app, serve it over Socket Mode or HTTP.

Socket Mode (an app-level ``xapp-`` token) needs no public URL, which suits
self-hosting; HTTP mode (the Events API, verified with the signing secret)
suits deployments behind a reverse proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import ClientError, web
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from bots.answer import Pipeline
from bots.client import TurnClient
from bots.slack.app import register_listeners
from bots.slack.extras import register_extras
from bots.slack.settings import SlackSettings, load_slack_settings
from bots.slack.state import SlackState
from bots.team import TeamControls, env_over_file
from shared.settings import Settings, SettingsError
from shared.team_config import ConfigWatcher

log = logging.getLogger(__name__)


class _SameTokenWarning(logging.Filter):
    """Bolt also reads SLACK_BOT_TOKEN and warns it is unused beside our client: same token."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`token` will be unused" not in record.getMessage()


logging.getLogger("slack_bolt.AsyncApp").addFilter(_SameTokenWarning())


def pick_mode(settings: Settings, slack: SlackSettings) -> str:
    if slack.mode != "auto":
        return slack.mode
    return "socket" if settings.slack_app_token else "http"


def make_client(token: str, base_url: str | None = None) -> AsyncWebClient:
    return AsyncWebClient(
        token=token,
        base_url=base_url or AsyncWebClient.BASE_URL,
        # Waits out 429s (honouring Retry-After) and retries dropped connections.
        retry_handlers=[
            AsyncConnectionErrorRetryHandler(),
            AsyncRateLimitErrorRetryHandler(max_retry_count=2),
        ],
    )


def build_app(
    settings: Settings,
    turns: TurnClient,
    slack: SlackSettings | None = None,
    *,
    socket_mode: bool = False,
    base_url: str | None = None,
    watcher: ConfigWatcher | None = None,
) -> AsyncApp:
    """The configured Bolt app; ``base_url`` points the Web API client elsewhere (tests)."""
    slack = slack or load_slack_settings()
    if settings.slack_bot_token is None:
        raise SettingsError("SLACK_BOT_TOKEN is not set: the bot token (xoxb-…) of the Slack app")
    if not socket_mode and settings.slack_signing_secret is None:
        raise SettingsError(
            "SLACK_SIGNING_SECRET is not set: HTTP mode needs it to verify requests "
            "(or set SLACK_APP_TOKEN to use Socket Mode)"
        )
    client = make_client(settings.slack_bot_token.get_secret_value(), base_url)
    secret = settings.slack_signing_secret
    app = AsyncApp(
        name="corral",
        client=client,
        signing_secret=secret.get_secret_value() if secret else "",
        # Socket Mode requests arrive over our own authenticated websocket, unsigned.
        request_verification_enabled=not socket_mode,
    )
    state = SlackState(turns.aredis, slack.dedup_ttl, settings.history_ttl)
    # The CORRAL_SLACK_* allow-lists and channel prompts win over corral.yaml.
    fold = env_over_file(slack, slack.allowed_teams)
    team = TeamControls(
        "slack", turns.aredis, fold, watcher=watcher, view_command="`/ask settings`"
    )
    with contextlib.suppress(RuntimeError):  # no running loop: nothing to watch from
        team.watch()  # live reload of corral.yaml
    host = register_listeners(app, Pipeline(settings, turns, team), slack, state)
    register_extras(app, host)  # assistant pane, feedback buttons, App Home, shortcut
    return app


def run(settings: Settings, redis_url: str) -> None:
    """Run the Slack bot until interrupted (blocking)."""
    slack = load_slack_settings()
    try:
        asyncio.run(_serve(settings, slack, redis_url, pick_mode(settings, slack)))
    except KeyboardInterrupt:
        pass
    except SlackApiError as exc:
        # Only Slack's error code: the exception text could echo request details.
        raise SettingsError(
            f"Slack refused the app's tokens ({exc.response.get('error')}): "
            "check SLACK_BOT_TOKEN and SLACK_APP_TOKEN"
        ) from None
    except ClientError as exc:
        log.error("slack: cannot reach Slack: %s", exc)
        raise SystemExit(1) from None


async def _serve(settings: Settings, slack: SlackSettings, redis_url: str, mode: str) -> None:
    turns = TurnClient(settings, redis_url)
    try:
        app = build_app(settings, turns, slack, socket_mode=mode == "socket")
        # Fail at start on a wrong or revoked bot token, not at the first message.
        identity = await app.client.auth_test()
        log.info("slack: signed in as %s in %s", identity.get("user"), identity.get("team"))
        if mode == "socket":
            await _serve_socket_mode(app, settings)
        else:
            await _serve_http(app, slack)
    finally:
        await turns.close()


async def _serve_socket_mode(app: AsyncApp, settings: Settings) -> None:
    # Imported here: HTTP-only deployments never load the websocket client.
    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

    if settings.slack_app_token is None:
        raise SettingsError("SLACK_APP_TOKEN is not set: Socket Mode needs the app token (xapp-…)")
    handler = AsyncSocketModeHandler(app, settings.slack_app_token.get_secret_value())
    log.info("slack: connecting in Socket Mode")
    try:
        await handler.start_async()  # returns only when the connection is closed for good
    finally:
        await handler.close_async()


async def _serve_http(app: AsyncApp, slack: SlackSettings) -> None:
    runner = web.AppRunner(app.web_app(path=slack.path, port=slack.port))
    await runner.setup()
    try:
        await web.TCPSite(runner, slack.host, slack.port).start()
        log.info(
            "slack: listening for Events API requests on %s:%d%s",
            slack.host,
            slack.port,
            slack.path,
        )
        await asyncio.Event().wait()  # until cancelled (Ctrl-C)
    finally:
        await runner.cleanup()
