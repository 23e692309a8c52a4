"""Input/output safety checks: a configurable rule set, or a Llama Guard-style classifier.

Both produce a :class:`Verdict` with Llama Guard's hazard category codes, so
per-channel policy ("block S10 here, allow it there") reads the same either
way. A blocked turn gets a clear reply that does not say which rule fired
(naming the pattern teaches people how to get around it); the log records it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from shared.contract import Message

if TYPE_CHECKING:
    from .engines import Engine

log = logging.getLogger(__name__)

# Llama Guard 3's hazard taxonomy (MLCommons).
CATEGORIES = {
    "S1": "Violent Crimes.",
    "S2": "Non-Violent Crimes.",
    "S3": "Sex Crimes.",
    "S4": "Child Exploitation.",
    "S5": "Defamation.",
    "S6": "Specialized Advice.",
    "S7": "Privacy.",
    "S8": "Intellectual Property.",
    "S9": "Indiscriminate Weapons.",
    "S10": "Hate.",
    "S11": "Self-Harm.",
    "S12": "Sexual Content.",
    "S13": "Elections.",
    "S14": "Code Interpreter Abuse.",
}
BLOCKED_REPLY = "Sorry, I can't help with that here."
UNREADABLE = "S?"  # a classifier answer that is neither safe nor unsafe (fail closed)


class PolicyError(ValueError):
    """The moderation rules file is invalid; the message names the rule."""


@dataclass(frozen=True)
class Verdict:
    safe: bool
    categories: tuple[str, ...] = ()

    @classmethod
    def ok(cls) -> Verdict:
        return cls(True)


@dataclass(frozen=True)
class Rule:
    category: str
    pattern: re.Pattern[str]


@dataclass(frozen=True)
class Policy:
    """Which categories are blocked, per channel (``*`` is the default)."""

    rules: tuple[Rule, ...] = ()
    blocked: dict[str, frozenset[str]] = field(default_factory=dict)

    def blocks(self, channel: str, verdict: Verdict) -> bool:
        if verdict.safe:
            return False
        blocked = self.blocked.get(channel, self.blocked.get("*", frozenset(CATEGORIES)))
        # An unreadable verdict blocks wherever anything is blocked: nobody checked it.
        return bool(set(verdict.categories) & blocked) or (
            UNREADABLE in verdict.categories and bool(blocked)
        )


def load_policy(path: Path) -> Policy:
    """Read a rules file::

    rules:
      - category: S7
        pattern: '\\b\\d{3}-\\d{2}-\\d{4}\\b'   # US SSN
    block:
      "*": [S1, S7, S9]
      C0123: [S1]
    """
    data = yaml.safe_load(path.read_text()) or {}
    rules = []
    for index, item in enumerate(data.get("rules", [])):
        category = str(item.get("category", ""))
        if category not in CATEGORIES:
            raise PolicyError(f"{path}: rules[{index}].category {category!r} is not S1..S14")
        try:
            rules.append(Rule(category, re.compile(str(item["pattern"]), re.IGNORECASE)))
        except (KeyError, re.error) as exc:
            raise PolicyError(f"{path}: rules[{index}].pattern is invalid: {exc}") from None
    blocked = {
        str(channel): frozenset(str(c) for c in categories)
        for channel, categories in (data.get("block") or {}).items()
    }
    return Policy(tuple(rules), blocked)


@lru_cache(maxsize=4)
def _cached_policy(path: str, mtime: float) -> Policy:
    return load_policy(Path(path))


_last_good: dict[str, Policy] = {}


def current_policy(path: Path) -> Policy:
    """The rules file as it is now: an edit takes effect on the next turn, no restart.

    A broken edit is logged and the last good rules stay in force (never none at all).
    """
    try:
        policy = _cached_policy(str(path), path.stat().st_mtime)
    except (OSError, PolicyError, yaml.YAMLError) as exc:
        if str(path) not in _last_good:
            raise
        log.error("moderation rules %s rejected, keeping the previous ones: %s", path, exc)
        return _last_good[str(path)]
    _last_good[str(path)] = policy
    return policy


def check_rules(policy: Policy, text: str) -> Verdict:
    hits = sorted({rule.category for rule in policy.rules if rule.pattern.search(text)})
    return Verdict(not hits, tuple(hits))


def guard_prompt(messages: Sequence[Message], categories: Iterable[str] = CATEGORIES) -> str:
    """The user turn Llama Guard 3 expects, judging the last message of ``messages``."""
    role = "Agent" if messages and messages[-1].role == "assistant" else "User"
    listed = "\n".join(f"{code}: {CATEGORIES[code]}" for code in categories)
    conversation = "\n\n".join(
        f"{'Agent' if m.role == 'assistant' else 'User'}: {m.content}"
        for m in messages
        if m.role in ("user", "assistant")
    )
    return (
        f"Task: Check if there is unsafe content in '{role}' messages in conversations "
        "according our safety policy with the below categories.\n\n"
        f"<BEGIN UNSAFE CONTENT CATEGORIES>\n{listed}\n<END UNSAFE CONTENT CATEGORIES>\n\n"
        f"<BEGIN CONVERSATION>\n\n{conversation}\n\n<END CONVERSATION>\n\n"
        f"Provide your safety assessment for ONLY THE LAST {role} message in the above "
        "conversation:\n - First line must read 'safe' or 'unsafe'.\n"
        " - If unsafe, a second line must include a comma-separated list of violated categories."
    )


def parse_guard(output: str, fail_closed: bool = True) -> Verdict:
    """Read a classifier's answer; an unreadable one counts as unsafe unless told otherwise."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    first = lines[0].lower() if lines else ""
    if first == "safe":
        return Verdict.ok()
    if first == "unsafe":
        codes = re.findall(r"S\d{1,2}", lines[1]) if len(lines) > 1 else []
        return Verdict(False, tuple(c for c in codes if c in CATEGORIES) or (UNREADABLE,))
    return Verdict(not fail_closed, () if not fail_closed else (UNREADABLE,))


def guard_check(engine: Engine, messages: Sequence[Message], fail_closed: bool = True) -> Verdict:
    """Run a Llama Guard-style model (an :class:`~worker.engines.Engine`) greedily on the
    conversation, judging its last message.

    Meta's Llama Guard 3 checkpoints carry a chat template that writes the whole task
    (categories, conversation, instructions) itself: they get the conversation as it
    is. A guard model with a plain chat template gets :func:`guard_prompt` as one user
    message instead. Either way message text is tokenized as plain text.
    """
    from .prompt import build_prompt

    conversation = [m for m in messages if m.role in ("user", "assistant")]
    template = str(getattr(engine.tokenizer, "chat_template", "") or "")
    if "UNSAFE CONTENT CATEGORIES" not in template:
        conversation = [Message(role="user", content=guard_prompt(conversation))]
    prompt = build_prompt(engine.tokenizer, conversation)
    completion = engine.generate(prompt.input_ids, max_new_tokens=20, temperature=0.0)
    return parse_guard(completion.text, fail_closed)


def describe(verdict: Verdict) -> str:
    return ", ".join(f"{c} {CATEGORIES.get(c, 'unreadable verdict')}" for c in verdict.categories)
