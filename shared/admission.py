"""Admission control: a bounded queue, per user and in all, and a per-user rate limit.

Checked in one Lua script when a turn is enqueued, so concurrent bots cannot
overshoot. Turns that wait or run are tracked in sorted sets (job id, scored
by admission time); a set is pruned only when it looks full: entries whose
RQ job finished, failed, was cancelled or expired stop counting. The rate
limit is a token bucket per user (``rate`` tokens per second, up to
``burst``). A refused turn raises :class:`QueueFull` (or its subclass
:class:`UserRateLimited`) whose ``user_message`` the bots show as is.
"""

from __future__ import annotations

import time
from typing import Any

from redis import Redis

from shared.contract import Turn
from shared.settings import Settings

PENDING_KEY = "corral:pending"  # every admitted turn not yet over
USER_PENDING_KEY = "corral:pending:user:{user}"
BUCKET_KEY = "corral:bucket:{user}"
JOB_KEY_PREFIX = "rq:job:"


class QueueFull(RuntimeError):
    """The turn was not enqueued: too many turns wait. ``user_message`` is one polite line."""

    def __init__(self, user_message: str, retry_after: float = 0.0) -> None:
        super().__init__(user_message)
        self.user_message = user_message
        self.retry_after = retry_after


class UserRateLimited(QueueFull):
    """The turn was not enqueued: this user sent too many too fast."""


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


def user_key(turn: Turn) -> str:
    return f"{turn.platform}:{turn.workspace}:{turn.user}"


def _keys(turn: Turn) -> list[str]:
    user = user_key(turn)
    return [PENDING_KEY, USER_PENDING_KEY.format(user=user), BUCKET_KEY.format(user=user)]


def admit(conn: Redis, settings: Settings, turn: Turn, job_id: str) -> None:
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


def release(conn: Redis, turn: Turn, job_id: str) -> None:
    """Give back a reservation whose enqueue failed."""
    keys = _keys(turn)
    with conn.pipeline(transaction=False) as pipe:
        pipe.zrem(keys[0], job_id)
        pipe.zrem(keys[1], job_id)
        pipe.execute()
