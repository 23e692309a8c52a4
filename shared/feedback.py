"""👍/👎 on answers, recorded with the turn in Redis, summed per day for admins.

- ``corral:feedback:turn:<job id>``: a hash of ``<platform>:<user>`` → ``up``/``down``
  (one vote per person and answer; voting again changes the vote), plus the answer's
  ``_channel``; kept ``KEEP_DAYS``.
- ``corral:feedback:answer:<platform>:<message id>`` → job id: which turn an answer
  message belongs to (Discord reactions arrive naming only the message).
- ``corral:feedback:<day>``: a hash of ``<platform>:up`` / ``<platform>:down`` counts
  and ``<platform>:<channel>:up`` / ``…:down`` per channel, for the summary.

A vote is one Lua script: reading the previous vote and moving the counts happen
together, so two quick clicks never count twice.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Literal

from redis.asyncio import Redis as AsyncRedis

PREFIX = "corral:feedback"
KEEP_DAYS = 90
Vote = Literal["up", "down"]
VOTES: tuple[Vote, ...] = ("up", "down")

# KEYS: turn hash, day hash. ARGV: voter, vote, platform, channel, ttl.
# Returns 1 when the vote was new or changed, 0 when it repeated the previous one.
_RECORD = """
local previous = redis.call('HGET', KEYS[1], ARGV[1])
if previous == ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], '_channel', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
if previous then
  redis.call('HINCRBY', KEYS[2], ARGV[3] .. ':' .. previous, -1)
  redis.call('HINCRBY', KEYS[2], ARGV[3] .. ':' .. ARGV[4] .. ':' .. previous, -1)
end
redis.call('HINCRBY', KEYS[2], ARGV[3] .. ':' .. ARGV[2], 1)
redis.call('HINCRBY', KEYS[2], ARGV[3] .. ':' .. ARGV[4] .. ':' .. ARGV[2], 1)
redis.call('EXPIRE', KEYS[2], ARGV[5])
return 1
"""


def _day(offset: int = 0) -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(days=offset)).strftime("%Y-%m-%d")


def turn_key(job_id: str) -> str:
    return f"{PREFIX}:turn:{job_id}"


def answer_key(platform: str, message_id: str) -> str:
    return f"{PREFIX}:answer:{platform}:{message_id}"


def day_key(day: str) -> str:
    return f"{PREFIX}:{day}"


async def remember_answer(redis: AsyncRedis, platform: str, message_id: str, job_id: str) -> None:
    """Note that ``message_id`` shows the answer of turn ``job_id``."""
    await redis.set(answer_key(platform, message_id), job_id, ex=KEEP_DAYS * 86400)


async def answer_of(redis: AsyncRedis, platform: str, message_id: str) -> str | None:
    raw = await redis.get(answer_key(platform, message_id))
    if raw is None:
        return None
    return raw.decode() if isinstance(raw, bytes) else str(raw)


async def record(
    redis: AsyncRedis,
    *,
    platform: str,
    job_id: str,
    user: str,
    vote: Vote,
    channel: str,
) -> bool:
    """Record ``user``'s vote on turn ``job_id``; False when it repeats their last vote."""
    if vote not in VOTES:
        raise ValueError(f"unknown vote {vote!r}")
    keys = [turn_key(job_id), day_key(_day())]
    args: list[str | int] = [
        f"{platform}:{user}",
        vote,
        platform,
        channel or "-",
        KEEP_DAYS * 86400,
    ]
    changed = await redis.eval(_RECORD, len(keys), *keys, *args)
    return bool(changed)


async def votes_on(redis: AsyncRedis, job_id: str) -> dict[str, str]:
    """Who voted what on one turn (``<platform>:<user>`` → vote)."""
    raw = await redis.hgetall(turn_key(job_id))
    decoded = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }
    return {k: v for k, v in decoded.items() if not k.startswith("_")}


@dataclass
class Summary:
    days: int
    up: int = 0
    down: int = 0
    channels: dict[str, tuple[int, int]] = field(default_factory=dict)  # channel -> (up, down)

    @property
    def helpful(self) -> int | None:
        """Percent of votes that were 👍 (None without votes)."""
        total = self.up + self.down
        return round(100 * self.up / total) if total else None


async def summary(redis: AsyncRedis, platform: str, days: int = 7) -> Summary:
    """The votes of the last ``days`` days (today included) on one platform."""
    found = Summary(days)
    per_channel: dict[str, list[int]] = {}
    for offset in range(days):
        raw = await redis.hgetall(day_key(_day(offset)))
        for key_raw, value in raw.items():
            name = key_raw.decode() if isinstance(key_raw, bytes) else str(key_raw)
            parts = name.split(":")
            if parts[0] != platform:
                continue
            count = int(value)
            if len(parts) == 2:
                found.up += count if parts[1] == "up" else 0
                found.down += count if parts[1] == "down" else 0
            elif len(parts) >= 3:
                counts = per_channel.setdefault(":".join(parts[1:-1]), [0, 0])
                counts[0 if parts[-1] == "up" else 1] += count
    found.channels = {ch: (c[0], c[1]) for ch, c in per_channel.items() if c[0] or c[1]}
    return found


def format_summary(found: Summary, channel_name: dict[str, str] | None = None) -> str:
    """One or two lines for admins: totals, the share that helped, the channels."""
    if not (found.up or found.down):
        return f"Feedback, last {found.days} days: no votes yet."
    text = (
        f"Feedback, last {found.days} days: 👍 {found.up} · 👎 {found.down} "
        f"({found.helpful}% helpful)"
    )
    if found.channels:
        names = channel_name or {}
        ranked = sorted(found.channels.items(), key=lambda item: -(item[1][0] + item[1][1]))
        shown = ", ".join(f"{names.get(ch, ch)}: 👍 {u} 👎 {d}" for ch, (u, d) in ranked[:10])
        text += f"\nBy channel: {shown}"
    return text
