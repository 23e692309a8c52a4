"""What a click on the 👍/👎 buttons under a Slack answer does.

The buttons come with the finished answer (:func:`bots.slack.surface.feedback_blocks`:
from ``chat.stopStream`` when it was streamed natively, else one more
``chat.update``). A click is a ``block_actions`` interaction: recorded with the
turn (:mod:`shared.feedback`), thanked privately, and never enqueues anything.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bots.slack.surface import FEEDBACK
from bots.team import TeamControls
from shared import feedback

log = logging.getLogger(__name__)

ACTION = re.compile(rf"^{FEEDBACK}_(up|down)$")
THANKS = "Thanks for the feedback: it helps your team tune corral."
JOB_ID_LIMIT = 64


def register_feedback(app: AsyncApp, team: TeamControls) -> None:
    async def ack_click(ack: AsyncAck) -> None:
        await ack()  # at once: Slack wants an answer within 3 seconds

    async def record_click(body: dict[str, Any], client: AsyncWebClient) -> None:
        action = (body.get("actions") or [{}])[0]
        match = ACTION.match(str(action.get("action_id", "")))
        job_id = str(action.get("value") or "")
        user = str((body.get("user") or {}).get("id") or "")
        channel = str((body.get("channel") or {}).get("id") or "")
        if match is None or not job_id or len(job_id) > JOB_ID_LIMIT or not user:
            return  # not one of our buttons (job ids are short uuids)
        vote: feedback.Vote = "up" if match.group(1) == "up" else "down"
        await feedback.record(
            team.redis, platform="slack", job_id=job_id, user=user, vote=vote, channel=channel
        )
        message = body.get("message") or {}
        thread = message.get("thread_ts") or (body.get("container") or {}).get("thread_ts")
        try:
            await client.chat_postEphemeral(
                channel=channel, user=user, text=THANKS, thread_ts=thread or None
            )
        except SlackApiError as exc:
            log.info("slack: could not thank for feedback: %s", exc.response.get("error"))

    app.action(ACTION)(ack=ack_click, lazy=[record_click])
