"""Which job answers which chat message, so a deleted message can cancel its turn.

:func:`shared.turnqueue.enqueue_turn` writes the index as it queues a chat
turn (the message's key → job id; the user's latest job ids in the channel,
for Slack's ``/ask cancel``); this module reads it. :func:`cancel_turn` cancels through
:func:`shared.cancel.cancel_job` and, when the turn was still waiting (RQ drops
it and no worker will ever speak for it), publishes its final ``done`` event
with ``finish_reason="cancelled"`` itself, so whoever follows the stream ends.
"""

from __future__ import annotations

from redis import Redis
from rq.job import Job, JobStatus

from shared.cancel import cancel_job
from shared.contract import StreamEvent
from shared.streams import publish
from shared.turnqueue import MESSAGE_KEY, RECENT_KEY

OVER = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.STOPPED}


def job_for(conn: Redis, platform: str, channel: str, message_id: str) -> str | None:
    """The job a message triggered, if it is still remembered."""
    key = MESSAGE_KEY.format(platform=platform, channel=channel, message_id=message_id)
    found = conn.get(key)
    return found.decode() if isinstance(found, bytes) else found


def recent_jobs(conn: Redis, platform: str, channel: str, user: str) -> list[str]:
    """``user``'s remembered jobs in ``channel``, newest first."""
    key = RECENT_KEY.format(platform=platform, channel=channel, user=user)
    return [j.decode() if isinstance(j, bytes) else j for j in conn.lrange(key, 0, -1)]


def is_over(conn: Redis, job_id: str) -> bool:
    """Has this job finished, failed, been cancelled or expired?"""
    if conn.exists(f"corral:cancel:{job_id}"):
        return True
    try:
        job = Job.fetch(job_id, connection=conn)
    except Exception:  # noqa: BLE001 - expired or unknown: nothing left to cancel
        return True
    return job.get_status(refresh=False) in OVER


def cancel_turn(conn: Redis, job_id: str) -> bool:
    """Cancel one turn; False when it was already over (nothing to do)."""
    if is_over(conn, job_id):
        return False
    if cancel_job(conn, job_id):
        # Dropped from the queue: no worker will publish for it, so end its stream here.
        publish(conn, StreamEvent(job_id=job_id, seq=0, kind="done", finish_reason="cancelled"))
    return True


def cancel_latest(conn: Redis, platform: str, channel: str, user: str) -> str | None:
    """Cancel ``user``'s most recent unfinished turn in ``channel``; its job id, or None."""
    for job_id in recent_jobs(conn, platform, channel, user):
        if cancel_turn(conn, job_id):
            return job_id
    return None
