"""bots.splitting.split_message: pure rules, shared by the Discord and Slack bots."""

from __future__ import annotations

import random
import re

import pytest

from bots.splitting import split_message


def words(text: str) -> str:
    """The text without fence markers and whitespace (a hard cut may split a word)."""
    return re.sub(r"\s+", "", re.sub(r"```[\w+-]*", " ", text))


def unfenced(pieces: list[str]) -> str:
    """Pieces joined back, ignoring the fences the splitter added and whitespace at cuts."""
    return words("\n".join(pieces))


def test_short_text_is_one_piece_and_empty_text_none() -> None:
    assert split_message("hello", 2000) == ["hello"]
    assert split_message("x" * 2000, 2000) == ["x" * 2000]
    assert split_message("", 2000) == []
    assert split_message("  \n ", 2000) == []


def test_cuts_prefer_paragraphs_then_lines_then_words() -> None:
    first = "a" * 60
    second = "b" * 60
    assert split_message(f"{first}\n\n{second}", 100) == [first, second]
    assert split_message(f"{first}\n{second}", 100) == [first, second]
    sentence = " ".join(["word"] * 40)  # 199 characters
    pieces = split_message(sentence, 100)
    assert all(piece.split(" ") == ["word"] * len(piece.split(" ")) for piece in pieces)
    assert unfenced(pieces) == words(sentence)


def test_a_paragraph_break_wins_over_a_later_line_break() -> None:
    text = "p" * 50 + "\n\n" + "q" * 20 + "\n" + "r" * 40
    assert split_message(text, 100)[0] == "p" * 50


def test_a_word_longer_than_the_limit_is_cut_hard() -> None:
    pieces = split_message("z" * 250, 100)
    assert pieces == ["z" * 100, "z" * 100, "z" * 50]


@pytest.mark.parametrize("limit", [100, 180, 2000])
def test_code_blocks_are_closed_and_reopened_with_their_language(limit: int) -> None:
    code = "\n".join(f"    line_{i} = compute({i})" for i in range(200))
    text = f"Intro paragraph.\n\n```python\n{code}\n```\n\nOutro."
    pieces = split_message(text, limit)
    assert len(pieces) > 1
    for index, piece in enumerate(pieces):
        assert len(piece) <= limit
        assert piece.count("```") % 2 == 0, f"piece {index} leaves a fence open"
    inside = [p for p in pieces if "line_" in p]
    for piece in inside[1:]:
        assert piece.startswith("```python\n")  # the language survives the cut
    # Indentation inside the code is kept across cuts.
    assert all(
        line.startswith("    line_") for p in inside for line in p.splitlines() if "line_" in line
    )
    assert unfenced(pieces) == words(text)


def test_a_block_that_ends_right_at_a_cut_gets_no_empty_reopened_block() -> None:
    code = "x = 1\n" * 14  # the closing fence lands just past the first cut
    text = f"```py\n{code}```\nafter"
    pieces = split_message(text, 100)
    assert all(piece.count("```") % 2 == 0 for piece in pieces)
    assert not any(re.search(r"```py\n```", piece) for piece in pieces)
    assert pieces[-1].endswith("after")


def test_inline_triple_backticks_on_one_line_do_not_open_a_block() -> None:
    text = "use ```inline``` here. " + "word " * 60
    pieces = split_message(text, 100)
    assert not any(piece.endswith("\n```") for piece in pieces)


def test_limits_too_small_for_a_fence_are_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        split_message("text", 10)


@pytest.mark.parametrize("seed", range(20))
def test_random_markdown_always_fits_and_keeps_fences_balanced(seed: int) -> None:
    rng = random.Random(seed)
    blocks = []
    for _ in range(rng.randint(3, 12)):
        if rng.random() < 0.4:
            lines = [" " * rng.randint(0, 8) + "x" * rng.randint(0, 90) for _ in range(30)]
            blocks.append(
                "```" + rng.choice(["", "py", "rust"]) + "\n" + "\n".join(lines) + "\n```"
            )
        else:
            blocks.append(" ".join("w" * rng.randint(1, 12) for _ in range(rng.randint(1, 150))))
    text = "\n\n".join(blocks)
    limit = rng.choice([60, 200, 2000])
    pieces = split_message(text, limit)
    assert all(0 < len(piece) <= limit for piece in pieces)
    assert all(piece.count("```") % 2 == 0 for piece in pieces)
    assert unfenced(pieces) == words(text)
