"""Putting turns on the RQ queue (admitted, indexed, in order), and reading where they stand.

Turns of one conversation run strictly in order: each job carries
``RateLimit(conversation, concurrency=1)``, so RQ holds the next turn of a
conversation back until the previous one finished, while other
conversations' turns flow past it. This also keeps a flooding channel from
starving the rest: it never has more than one turn in the queue proper.

RQ 3.0 scores held-back jobs by enqueue time in whole seconds and breaks
ties by job id, so two turns of one conversation sent within a second could
swap. Job ids therefore start with a Redis counter, making id order equal
enqueue order.

Admission control comes first: a bounded queue, per user and in all, and a
per-user rate limit, checked in one Lua script so concurrent bots cannot
overshoot. Turns that wait or run are tracked in sorted sets (job id, scored
by admission time); a set is pruned only when it looks full: entries whose
RQ job finished, failed, was cancelled or expired stop counting. The rate
limit is a token bucket per user (``rate`` tokens per second, up to
``burst``). A refused turn raises :class:`QueueFull` (or its subclass
:class:`UserRateLimited`) whose ``user_message`` the bots show as is.

A chat turn is then indexed by the message that asked it, before it is
queued, so deleting that message (or Slack's ``/ask cancel``) finds it from
the first instant (``shared/turn_index.py`` reads the index and cancels):

- ``corral:turn-msg:<platform>:<channel>:<message id>`` → job id;
- ``corral:turn-recent:<platform>:<channel>:<user>`` → that user's latest job
  ids in the channel, newest first (a short list).

Both expire after ``CORRAL_JOB_TTL`` + ``CORRAL_JOB_TIMEOUT``: by then the
turn can no longer run.

The job function is named by string so that bots never import torch.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from redis import Redis
from rq import Queue, Retry
from rq.job import Job, JobStatus
from rq.rate_limit import RateLimit

from shared.contract import Turn
from shared.settings import Settings

JOB_FUNC = "worker.turn.run_turn"
MODEL_KEY = "corral:worker-models"  # hash: worker name -> model it serves
SEQUENCE_KEY = "corral:turn-seq"
PENDING_KEY = "corral:pending"  # every admitted turn not yet over
USER_PENDING_KEY = "corral:pending:user:{user}"
BUCKET_KEY = "corral:bucket:{user}"
JOB_KEY_PREFIX = "rq:job:"
MESSAGE_KEY = "corral:turn-msg:{platform}:{channel}:{message_id}"
RECENT_KEY = "corral:turn-recent:{platform}:{channel}:{user}"
RECENT_MAX = 20


class QueueFull(RuntimeError):
    """The turn was not enqueued: too many turns wait. ``user_message`` is one polite line."""

    def __init__(self, user_message: str, retry_after: float = 0.0) -> None:
        super().__init__(user_message)
        self.user_message = user_message
        self.retry_after = retry_after


class UserRateLimited(QueueFull):
    """The turn was not enqueued: this user sent too many too fast."""


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


def enqueue_turn(conn: Redis, settings: Settings, turn: Turn, asked_in: str = "") -> Job:
    """Admit, index (when ``asked_in`` names the question's channel) and enqueue one turn.

    Returns the RQ job, whose id names the turn's event stream; raises
    :class:`QueueFull` (or :class:`UserRateLimited`) when the turn is refused.
    """
    queue = model_queue(conn, settings, turn.model)
    job_id = f"turn-{conn.incr(SEQUENCE_KEY):012d}-{uuid.uuid4().hex[:8]}"
    _admit(conn, settings, turn, job_id)
    try:
        if asked_in:
            _index(conn, settings, turn, asked_in, job_id)
        return _enqueue(queue, settings, turn, job_id)
    except BaseException:
        _release(conn, turn, job_id)
        raise


def _index(conn: Redis, settings: Settings, turn: Turn, asked_in: str, job_id: str) -> None:
    """Note that the message ``turn.message_id`` in ``asked_in`` asked ``job_id``."""
    ttl = settings.job_ttl + settings.job_timeout
    where = {"platform": turn.platform, "channel": asked_in}
    with conn.pipeline(transaction=False) as pipe:
        pipe.set(MESSAGE_KEY.format(**where, message_id=turn.message_id), job_id, ex=ttl)
        if turn.user:
            recent = RECENT_KEY.format(**where, user=turn.user)
            pipe.lpush(recent, job_id)
            pipe.ltrim(recent, 0, RECENT_MAX - 1)
            pipe.expire(recent, ttl)
        pipe.execute()


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


# Admission

BUSY_MESSAGE = "I'm busy right now (too many questions are waiting). Please try again in a minute."
USER_BUSY_MESSAGE = (
    "You already have the most questions waiting that I take at once ({n}); "
    "please wait for those answers first."
)
RATE_MESSAGE = "You're sending questions faster than I can take them; try again in {s} seconds."

_ADMIT = """
local now = tonumber(ARGV[1])
local job_id = ARGV[2]
local global_max = tonumber(ARGV[3])
local user_max = tonumber(ARGV[4])
local rate = tonumber(ARGV[5])
local burst = tonumber(ARGV[6])
local horizon = tonumber(ARGV[7])
local prefix = ARGV[8]
local live = {queued=true, started=true, deferred=true, scheduled=true,
              rate_limited=true, created=true, ready_to_enqueue=true}

local function count(key)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - horizon)
  return redis.call('ZCARD', key)
end
local function prune(key)
  for _, id in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    local status = redis.call('HGET', prefix .. id, 'status')
    if not status or not live[status] then redis.call('ZREM', key, id) end
  end
  return redis.call('ZCARD', key)
end

if global_max > 0 and count(KEYS[1]) >= global_max and prune(KEYS[1]) >= global_max then
  return {'global', '0', tostring(global_max)}
end
if user_max > 0 and count(KEYS[2]) >= user_max and prune(KEYS[2]) >= user_max then
  return {'user', '0', tostring(user_max)}
end
if rate > 0 then
  local bucket = redis.call('HMGET', KEYS[3], 'tokens', 'ts')
  local tokens = tonumber(bucket[1]) or burst
  local ts = tonumber(bucket[2]) or now
  tokens = math.min(burst, tokens + math.max(now - ts, 0) * rate)
  if tokens < 1 then
    return {'rate', tostring((1 - tokens) / rate), '0'}
  end
  redis.call('HSET', KEYS[3], 'tokens', tostring(tokens - 1), 'ts', tostring(now))
  redis.call('EXPIRE', KEYS[3], math.ceil(burst / rate) + 60)
end
redis.call('ZADD', KEYS[1], now, job_id)
redis.call('EXPIRE', KEYS[1], horizon)
redis.call('ZADD', KEYS[2], now, job_id)
redis.call('EXPIRE', KEYS[2], horizon)
return {'ok', '0', '0'}
"""


def _user_key(turn: Turn) -> str:
    return f"{turn.platform}:{turn.workspace}:{turn.user}"


def _keys(turn: Turn) -> list[str]:
    user = _user_key(turn)
    return [PENDING_KEY, USER_PENDING_KEY.format(user=user), BUCKET_KEY.format(user=user)]


def _admit(conn: Redis, settings: Settings, turn: Turn, job_id: str) -> None:
    """Reserve a place for ``job_id`` or raise :class:`QueueFull` / :class:`UserRateLimited`."""
    # A turn counts until it can no longer run: queued up to job_ttl, then every attempt.
    horizon = settings.job_ttl + 3 * settings.job_timeout
    args: list[Any] = [
        repr(time.time()),
        job_id,
        settings.queue_max,
        settings.queue_max_per_user,
        repr(settings.user_turns_per_minute / 60.0),
        settings.user_burst,
        horizon,
        JOB_KEY_PREFIX,
    ]
    verdict, wait, limit = (
        part.decode() if isinstance(part, bytes) else str(part)
        for part in conn.eval(_ADMIT, 3, *_keys(turn), *args)
    )
    if verdict == "global":
        raise QueueFull(BUSY_MESSAGE)
    if verdict == "user":
        raise QueueFull(USER_BUSY_MESSAGE.format(n=limit))
    if verdict == "rate":
        seconds = max(1, round(float(wait) + 0.5))
        raise UserRateLimited(RATE_MESSAGE.format(s=seconds), retry_after=seconds)


def _release(conn: Redis, turn: Turn, job_id: str) -> None:
    """Give back a reservation whose enqueue failed."""
    keys = _keys(turn)
    with conn.pipeline(transaction=False) as pipe:
        pipe.zrem(keys[0], job_id)
        pipe.zrem(keys[1], job_id)
        pipe.execute()
