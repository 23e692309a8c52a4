"""👍/👎 buttons under each finished Slack answer, and what a click does.

A natively streamed answer gets the buttons from ``chat.stopStream`` (blocks at
the bottom of the finished message); an answer written with ``chat.update``
gets them by one more update of its last message. A click is a
``block_actions`` interaction: recorded with the turn (:mod:`shared.feedback`),
thanked privately, and never enqueues anything.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bots.slack.native_stream import NativeStreamWriter
from bots.slack.writer import SlackStreamWriter
from bots.team import TeamControls
from shared import feedback
from shared.contract import StreamEvent

log = logging.getLogger(__name__)

BLOCK_ID = "corral_feedback"
ACTION = re.compile(r"^corral_feedback_(up|down)$")
THANKS = "Thanks for the feedback: it helps your team tune corral."
SECTION_LIMIT = 3000  # Slack's limit on a section block's text
JOB_ID_LIMIT = 64


def feedback_blocks(job_id: str) -> list[dict[str, Any]]:
    """The buttons under an answer; the value names the turn they judge."""

    def button(vote: str, emoji: str, label: str) -> dict[str, Any]:
        return {
            "type": "button",
            "action_id": f"corral_feedback_{vote}",
            "text": {"type": "plain_text", "text": f"{emoji} {label}", "emoji": True},
            "value": job_id,
        }

    return [
        {
            "type": "actions",
            "block_id": BLOCK_ID,
            "elements": [button("up", "👍", "Helpful"), button("down", "👎", "Not helpful")],
        }
    ]


async def stream_with_feedback(
    client: AsyncWebClient,
    writer: SlackStreamWriter | NativeStreamWriter,
    events: AsyncIterator[StreamEvent],
    job_id: str,
) -> StreamEvent | None:
    """``writer.stream(events)``, with the feedback buttons under a finished answer."""
    if isinstance(writer, NativeStreamWriter):
        writer.final_blocks = lambda: feedback_blocks(job_id)
    final = await writer.stream(events)
    finished = final is not None and final.kind == "done" and final.finish_reason != "cancelled"
    edited = writer.fallback if isinstance(writer, NativeStreamWriter) else writer
    if finished and final is not None and final.text.strip() and edited is not None:
        await _add_buttons(client, edited, job_id)
    return final


async def _add_buttons(client: AsyncWebClient, writer: SlackStreamWriter, job_id: str) -> None:
    """One more update of the answer's last message: its text as blocks, then the buttons."""
    if not writer.posted:
        return
    last = writer.posted[-1]
    text = last.text
    sections = [
        {"type": "section", "text": {"type": "mrkdwn", "text": text[i : i + SECTION_LIMIT]}}
        for i in range(0, len(text), SECTION_LIMIT)
    ]
    try:
        await client.chat_update(
            channel=writer.channel,
            ts=last.ts,
            text=text,  # notifications and old clients still read the text
            blocks=[*sections, *feedback_blocks(job_id)],
        )
    except SlackApiError as exc:  # the answer stands without buttons
        log.warning("slack: could not add feedback buttons: %s", exc.response.get("error"))


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
