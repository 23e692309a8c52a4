"""Putting turns on the RQ queue, and reading where they stand.

Turns of one conversation run strictly in order: each job carries
``RateLimit(conversation, concurrency=1)``, so RQ holds the next turn of a
conversation back until the previous one finished, while other
conversations' turns flow past it. This also keeps a flooding channel from
starving the rest: it never has more than one turn in the queue proper.

RQ 3.0 scores held-back jobs by enqueue time in whole seconds and breaks
ties by job id, so two turns of one conversation sent within a second could
swap. Job ids therefore start with a Redis counter, making id order equal
enqueue order.

The job function is named by string so that bots never import torch.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from redis import Redis
from rq import Queue, Retry
from rq.job import Job, JobStatus
from rq.rate_limit import RateLimit

# enqueue_turn raises QueueFull (or UserRateLimited); bots import them from here.
from shared.admission import QueueFull, UserRateLimited, admit, release  # noqa: F401
from shared.contract import Turn
from shared.settings import Settings

JOB_FUNC = "worker.turn.run_turn"
MODEL_KEY = "corral:worker-models"  # hash: worker name -> model it serves
SEQUENCE_KEY = "corral:turn-seq"


def turn_queue(conn: Redis, settings: Settings) -> Queue:
    return Queue(settings.queue_name, connection=conn, default_timeout=settings.job_timeout)


def model_queue(conn: Redis, settings: Settings, model: str | None) -> Queue:
    """Turns naming a model go to ``<queue_name>:<model>``; the default model's to the plain one."""
    if not model:
        return turn_queue(conn, settings)
    name = f"{settings.queue_name}:{model}"
    return Queue(name, connection=conn, default_timeout=settings.job_timeout)


def serving_queues(conn: Redis, settings: Settings, is_default: bool) -> list[Queue]:
    """What a worker listens on: exactly one queue, the plain one for the default model.

    One, because RQ dequeues from a single queue with BLMOVE into its intermediate
    list, where a turn taken by a worker that then dies or freezes stays findable;
    from several queues it uses BLPOP, and such a turn is in no list at all.
    Bots send turns for the default model to the plain queue (``Turn.model`` None).
    """
    if is_default:
        return [turn_queue(conn, settings)]
    return [model_queue(conn, settings, settings.display_model_name)]


def enqueue_turn(conn: Redis, settings: Settings, turn: Turn) -> Job:
    """Enqueue one turn; returns the RQ job whose id names its event stream."""
    queue = model_queue(conn, settings, turn.model)
    job_id = f"turn-{conn.incr(SEQUENCE_KEY):012d}-{uuid.uuid4().hex[:8]}"
    admit(conn, settings, turn, job_id)  # raises QueueFull when too much waits
    try:
        return _enqueue(queue, settings, turn, job_id)
    except BaseException:
        release(conn, turn, job_id)
        raise


def _enqueue(queue: Queue, settings: Settings, turn: Turn, job_id: str) -> Job:
    return queue.enqueue(
        JOB_FUNC,
        turn.to_payload(),
        job_id=job_id,
        ttl=settings.job_ttl,
        job_timeout=settings.job_timeout,
        result_ttl=3600,
        failure_ttl=24 * 3600,
        # A retried turn (its worker died or failed) goes to the front of the queue.
        retry=Retry(max=2, enqueue_at_front=True),
        rate_limit=RateLimit(f"corral:{turn.conversation_key}", concurrency=1),
        description=f"turn {turn.platform}:{turn.channel}:{turn.message_id}",
    )


@dataclass(frozen=True)
class Position:
    """Where a job stands: ``ahead`` is how many turns run or wait before it."""

    status: str
    ahead: int


def position(conn: Redis, settings: Settings, job_id: str) -> Position:
    try:
        job = Job.fetch(job_id, connection=conn)
    except Exception:  # noqa: BLE001 - an expired or unknown job has no position
        return Position("unknown", 0)
    # The queue the turn waits in: a model's own queue when the turn named one.
    queue = Queue(job.origin or settings.queue_name, connection=conn)
    status = JobStatus(job.get_status(refresh=False) or JobStatus.QUEUED)
    if status == JobStatus.QUEUED:
        return Position(status.value, queue.get_job_position(job_id) or 0)
    if status == JobStatus.RATE_LIMITED:
        # Held back behind this conversation's previous turn: everything queued is ahead too.
        return Position(status.value, queue.count + 1)
    return Position(status.value, 0)


def queue_depth(conn: Redis, settings: Settings) -> int:
    return turn_queue(conn, settings).count
