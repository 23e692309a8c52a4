"""The Slack entry point: mode choice, start-up errors, and Socket Mode dispatch."""

from __future__ import annotations

import asyncio

import pytest
from fakes.slack_api import FakeSlack
from fakes.slack_harness import BOT_TOKEN, FakeWorker, event_body, mention
from pydantic import SecretStr
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from slack_bolt.adapter.socket_mode.async_internals import run_async_bolt_app
from slack_sdk.socket_mode.request import SocketModeRequest

from bots.client import TurnClient
from bots.slack.bot import build_app, pick_mode
from bots.slack.settings import SlackSettings
from bots.slack.state import SlackState
from shared.settings import Settings, SettingsError


def test_mode_follows_the_tokens(settings: Settings) -> None:
    auto = SlackSettings(_env_file=None)  # type: ignore[call-arg]
    assert pick_mode(settings, auto) == "http"
    with_app_token = settings.model_copy(update={"slack_app_token": SecretStr("xapp-1")})
    assert pick_mode(with_app_token, auto) == "socket"
    forced = SlackSettings(mode="http", _env_file=None)  # type: ignore[call-arg]
    assert pick_mode(with_app_token, forced) == "http"


def test_missing_secrets_fail_with_one_line_and_no_secret(
    settings: Settings, redis_url: str
) -> None:
    async def main() -> None:
        turns = TurnClient(settings, redis_url)
        try:
            with pytest.raises(SettingsError, match="SLACK_BOT_TOKEN"):
                build_app(settings, turns, SlackSettings(_env_file=None))  # type: ignore[call-arg]
            only_token = settings.model_copy(
                update={"slack_bot_token": SecretStr("xoxb-very-secret")}
            )
            with pytest.raises(SettingsError, match="SLACK_SIGNING_SECRET") as caught:
                build_app(only_token, turns, SlackSettings(_env_file=None))  # type: ignore[call-arg]
            assert "very-secret" not in str(caught.value)
            # Socket Mode needs no signing secret.
            build_app(only_token, turns, SlackSettings(_env_file=None), socket_mode=True)  # type: ignore[call-arg]
        finally:
            await turns.close()

    asyncio.run(main())


def test_socket_mode_request_is_answered(
    settings: Settings, redis_url: str, redis_conn: Redis
) -> None:
    """An event as Socket Mode delivers it (unsigned, over the websocket) goes the whole way."""
    worker = FakeWorker(redis_conn)

    async def main() -> None:
        fake = FakeSlack()
        await fake.start()
        configured = settings.model_copy(update={"slack_bot_token": SecretStr(BOT_TOKEN)})
        turns = TurnClient(configured, redis_url)
        slack = SlackSettings(update_interval=0.2, _env_file=None)  # type: ignore[call-arg]
        app = build_app(configured, turns, slack, socket_mode=True, base_url=fake.api_url)
        try:
            envelope = {
                "envelope_id": "env-1",
                "type": "events_api",
                "accepts_response_payload": False,
                "payload": event_body(mention("over the socket", ts="8.0")),
            }
            response = await run_async_bolt_app(app, SocketModeRequest.from_dict(envelope))
            assert response.status == 200
            job_id, turn = await worker.take()
            assert turn.text == "over the socket"
            worker.answer(job_id, "Socket answer.")
            await fake.wait_for(
                lambda: [m for m in fake.bot_messages("C1", "8.0") if m.text == "Socket answer."]
            )
        finally:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await turns.close()
            await fake.close()

    asyncio.run(main())


def test_delivery_claims_are_set_nx_with_a_ttl(redis_url: str, redis_conn: Redis) -> None:
    async def main() -> None:
        aredis = AsyncRedis.from_url(redis_url)
        state = SlackState(aredis, dedup_ttl=3600, thread_ttl=60)
        try:
            assert await state.claim_event("Ev1") and not await state.claim_event("Ev1")
            assert await state.claim_message("C1", "1.0")
            assert not await state.claim_message("C1", "1.0")
            assert await state.claim_message("C1", "1.1")  # another message
            assert await state.claim_event("")  # nothing to key on: never blocks
        finally:
            await aredis.aclose()

    asyncio.run(main())
    assert 3500 < redis_conn.ttl("corral:slack:event:Ev1") <= 3600
