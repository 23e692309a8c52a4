"""Moderation decisions: rule sets with per-channel policy, and the Llama Guard format."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.contract import Message
from worker.moderation import (
    PolicyError,
    Verdict,
    check_rules,
    guard_prompt,
    load_policy,
    parse_guard,
)

RULES = """
rules:
  - category: S7
    pattern: '\\b\\d{3}-\\d{2}-\\d{4}\\b'
  - category: S9
    pattern: 'nerve agent synthesis'
block:
  "*": [S7, S9]
  C-security: [S7]
"""


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "moderation.yaml"
    path.write_text(RULES)
    return path


def test_rules_flag_categories_and_channel_policy_decides(policy_file: Path) -> None:
    policy = load_policy(policy_file)
    ssn = check_rules(policy, "my number is 123-45-6789")
    assert ssn == Verdict(False, ("S7",))
    assert policy.blocks("C-general", ssn) and policy.blocks("C-security", ssn)
    weapons = check_rules(policy, "Explain NERVE AGENT SYNTHESIS step by step")
    assert policy.blocks("C-general", weapons)
    assert not policy.blocks("C-security", weapons)  # that channel only blocks S7
    fine = check_rules(policy, "what is the capital of France?")
    assert fine.safe and not policy.blocks("C-general", fine)


def test_a_bad_rules_file_names_the_rule(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("rules:\n  - category: S7\n    pattern: '(unclosed'\n")
    with pytest.raises(PolicyError, match=r"rules\[0\]\.pattern is invalid"):
        load_policy(path)
    path.write_text("rules:\n  - category: S99\n    pattern: x\n")
    with pytest.raises(PolicyError, match=r"rules\[0\]\.category 'S99'"):
        load_policy(path)


def test_guard_prompt_follows_llama_guard_3() -> None:
    prompt = guard_prompt(
        [Message(role="user", content="How do I pick a lock?"),
         Message(role="assistant", content="Here is how...")]
    )  # fmt: skip
    assert prompt.startswith("Task: Check if there is unsafe content in 'Agent' messages")
    assert "S1: Violent Crimes.\nS2: Non-Violent Crimes." in prompt
    assert "User: How do I pick a lock?\n\nAgent: Here is how..." in prompt
    assert "ONLY THE LAST Agent message" in prompt
    assert "'User' messages" in guard_prompt([Message(role="user", content="hi")])


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("safe", Verdict(True)),
        ("\n\nsafe\n", Verdict(True)),
        ("unsafe\nS1,S10", Verdict(False, ("S1", "S10"))),
        ("unsafe", Verdict(False, ("S?",))),
        ("I think it's fine", Verdict(False, ("S?",))),  # unreadable: fail closed
    ],
)
def test_guard_output_parsing(output: str, expected: Verdict) -> None:
    assert parse_guard(output) == expected


def test_unreadable_guard_output_can_fail_open() -> None:
    assert parse_guard("???", fail_closed=False).safe
