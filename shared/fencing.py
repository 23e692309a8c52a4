"""Which attempt owns a turn: the fencing token both sides agree on.

A turn can be attempted more than once: its worker died, froze (SIGSTOP, a
stalled GPU host, a partition) or was presumed dead because its heartbeats
stopped. A frozen worker keeps its TCP connections and may wake up much
later, still holding the turn; without a fence it would publish a second
answer. So every attempt must *claim* the turn before running it:

* ``corral:owner:<job id>`` holds the RQ execution id of the attempt that
  owns the turn; an empty value means "free" (never claimed, or its owner was
  declared dead). A claim succeeds only on a free turn.
* A worker publishes events only through :func:`publish_owned`, a Lua script
  that appends to the stream only while the publisher still owns the turn,
  so a stale attempt cannot add a single event once it lost the turn.
* Whoever declares an attempt dead (the keeper of another worker) frees the
  turn with :func:`release` before RQ re-queues it; an attempt that fails on
  its own releases it before RQ retries it. A finished turn keeps its owner
  forever, so a late duplicate can never claim it.

Events carry the attempt (``StreamEvent.attempt``); readers
(:mod:`shared.streams`) also ignore events of attempts that were superseded.
"""

from __future__ import annotations

from redis import Redis

from shared.contract import StreamEvent

OWNER_KEY = "corral:owner:{job_id}"
# Long enough to outlive every attempt of a turn (queued up to job_ttl, then retried).
OWNER_TTL = 2 * 24 * 3600

_CLAIM = """
local owner = redis.call('GET', KEYS[1])
if not owner or owner == '' or owner == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], '', 'KEEPTTL')
  return 1
end
return 0
"""

_PUBLISH = """
local owner = redis.call('GET', KEYS[1])
if owner ~= ARGV[1] then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', tonumber(ARGV[4]), '*', 'e', ARGV[2])
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
return 1
"""


def owner_key(job_id: str) -> str:
    return OWNER_KEY.format(job_id=job_id)


def owner(conn: Redis, job_id: str) -> str:
    """The execution id owning ``job_id`` ("" when free)."""
    value = conn.get(owner_key(job_id))
    return value.decode() if isinstance(value, bytes) else (value or "")


def claim(conn: Redis, job_id: str, attempt: str) -> bool:
    """Make ``attempt`` the owner of a free turn; False if another attempt owns it."""
    return bool(conn.eval(_CLAIM, 1, owner_key(job_id), attempt, OWNER_TTL))


def release(conn: Redis, job_id: str, attempt: str) -> bool:
    """Free the turn if ``attempt`` owns it (it died, or failed and will be retried)."""
    return bool(conn.eval(_RELEASE, 1, owner_key(job_id), attempt))


def publish_owned(conn: Redis, event: StreamEvent, stream: str, ttl: int, maxlen: int) -> bool:
    """Append ``event`` to ``stream`` only while ``event.attempt`` owns the turn."""
    body = event.model_dump_json(exclude_defaults=True)
    keys = (owner_key(event.job_id), stream)
    return bool(conn.eval(_PUBLISH, 2, *keys, event.attempt, body, ttl, maxlen))
