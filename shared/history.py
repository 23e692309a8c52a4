"""Per-conversation history in Redis, and the pure trimming rule.

The worker is the only writer of a conversation's history while a turn runs
(turns of one conversation never overlap), so it can rewrite the whole list
after each answer without a lock. Bots only read it (to decide whether to
rebuild from the platform) and delete it (``/reset``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from redis import Redis

from shared.contract import Message

MAX_STORED_MESSAGES = 200  # a hard cap, whatever the token budget


def history_key(conversation: str) -> str:
    return f"corral:history:{conversation}"


class ConversationStore:
    def __init__(self, conn: Redis, ttl: int) -> None:
        self.conn = conn
        self.ttl = ttl

    def load(self, conversation: str) -> list[Message]:
        raw = self.conn.lrange(history_key(conversation), 0, -1)
        return [Message.model_validate_json(item) for item in raw]

    def exists(self, conversation: str) -> bool:
        return bool(self.conn.exists(history_key(conversation)))

    def save(self, conversation: str, messages: Sequence[Message]) -> None:
        key = history_key(conversation)
        kept = list(messages)[-MAX_STORED_MESSAGES:]
        with self.conn.pipeline() as pipe:
            pipe.delete(key)
            if kept:
                pipe.rpush(key, *(m.model_dump_json() for m in kept))
                pipe.expire(key, self.ttl)
            pipe.execute()

    def reset(self, conversation: str) -> bool:
        return bool(self.conn.delete(history_key(conversation)))


@dataclass(frozen=True)
class Trimmed:
    messages: list[Message]  # system (if any) + the history that fits + the new turn
    dropped: int  # history messages left out


class ContextOverflow(ValueError):
    """Even the system prompt and the newest message alone exceed the budget."""

    def __init__(self, needed: int, budget: int) -> None:
        super().__init__(f"message too long: {needed} tokens, the limit is {budget}")
        self.needed = needed
        self.budget = budget


def trim_to_budget(
    system: Message | None,
    history: Sequence[Message],
    turn: Message,
    count_tokens: Callable[[Sequence[Message]], int],
    budget: int,
) -> Trimmed:
    """Keep the system prompt and the new turn; drop the oldest history first.

    History is dropped from the front a user/assistant exchange at a time, so
    what remains still starts with a user message (chat templates expect that).
    ``count_tokens`` measures a whole message list as the model will see it.
    """
    head = [system] if system else []
    floor = count_tokens([*head, turn])
    if floor > budget:
        raise ContextOverflow(floor, budget)
    start = 0
    while start < len(history):
        candidate = [*head, *history[start:], turn]
        if count_tokens(candidate) <= budget:
            break
        start += 1
        # Skip to the next user message so an assistant reply never opens the history.
        while start < len(history) and history[start].role != "user":
            start += 1
    kept = list(history[start:])
    return Trimmed([*head, *kept, turn], dropped=len(history) - len(kept))
