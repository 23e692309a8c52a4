"""Conversation store on a real Redis, and the pure trimming rule."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from redis import Redis

from shared.contract import Message
from shared.history import (
    MAX_STORED_MESSAGES,
    ContextOverflow,
    ConversationStore,
    history_key,
    trim_to_budget,
)


def words(messages: Sequence[Message]) -> int:
    """A stand-in token count: one token per word plus 2 per message of framing."""
    return sum(len(m.content.split()) + 2 for m in messages)


def exchange(n: int) -> list[Message]:
    out = []
    for i in range(n):
        out += [
            Message(role="user", content=f"q{i} " * 3),
            Message(role="assistant", content=f"a{i} " * 3),
        ]
    return out


def test_store_round_trip_ttl_and_reset(redis_conn: Redis) -> None:
    store = ConversationStore(redis_conn, ttl=120)
    assert store.load("discord:c:t") == [] and not store.exists("discord:c:t")
    store.save("discord:c:t", exchange(2))
    assert store.load("discord:c:t") == exchange(2)
    assert 0 < redis_conn.ttl(history_key("discord:c:t")) <= 120
    assert store.load("discord:c:other") == []
    assert store.reset("discord:c:t") and store.load("discord:c:t") == []


def test_store_caps_its_length(redis_conn: Redis) -> None:
    store = ConversationStore(redis_conn, ttl=60)
    store.save("k", exchange(MAX_STORED_MESSAGES))
    kept = store.load("k")
    assert len(kept) == MAX_STORED_MESSAGES and kept[-1] == exchange(MAX_STORED_MESSAGES)[-1]


def test_everything_kept_when_it_fits() -> None:
    system = Message(role="system", content="be nice")
    turn = Message(role="user", content="hello")
    result = trim_to_budget(system, exchange(2), turn, words, budget=1000)
    assert result.messages == [system, *exchange(2), turn] and result.dropped == 0


def test_oldest_dropped_first_system_and_turn_kept() -> None:
    system = Message(role="system", content="be nice")
    turn = Message(role="user", content="hello")
    history = exchange(5)  # 10 messages of 5 "tokens" each
    budget = words([system, turn]) + 5 * 4  # room for exactly two exchanges
    result = trim_to_budget(system, history, turn, words, budget)
    assert result.messages == [system, *history[-4:], turn]
    assert result.dropped == 6
    assert words(result.messages) <= budget


def test_trimmed_history_never_starts_with_the_assistant() -> None:
    turn = Message(role="user", content="hello")
    history = exchange(3)
    budget = words([turn]) + 5 * 3  # room for 3 messages: must drop to 2 to start on a user turn
    result = trim_to_budget(None, history, turn, words, budget)
    assert result.messages[0].role == "user"
    assert result.messages == [*history[-2:], turn]


def test_overflow_when_the_turn_alone_is_too_long() -> None:
    system = Message(role="system", content="be nice")
    turn = Message(role="user", content="word " * 500)
    with pytest.raises(ContextOverflow) as info:
        trim_to_budget(system, exchange(1), turn, words, budget=100)
    assert info.value.needed > 100 and "too long" in str(info.value)
