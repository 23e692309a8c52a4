"""Markdown (what the model writes) to Slack mrkdwn (what Slack renders), and Slack
text back to the plain text the model reads.

Pure functions, no Slack calls. They also run on half-streamed text, so every
rule must tolerate an unfinished answer: an unclosed code fence is closed, and
half-written markers are left alone rather than guessed at.

Slack's rules that differ from Markdown: ``*bold*``, ``_italic_``, ``~strike~``,
links are ``<url|text>``, no headings or tables, and ``&``, ``<``, ``>`` must be
escaped everywhere (Slack unescapes them on display, code included).
"""

from __future__ import annotations

import html
import re

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_BULLET = re.compile(r"^(\s*)[-*+]\s+")
_RULE = re.compile(r"^\s{0,3}([-*_])(\s*\1){2,}\s*$")
_QUOTE = re.compile(r"^(\s*)>\s?")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")
_LINK = re.compile(r"!?\[([^\]\n]+)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_AUTOLINK = re.compile(r"<(https?://[^>\s]+)>")
_BOLD_ITALIC = re.compile(r"\*\*\*(?=\S)(.+?)(?<=\S)\*\*\*")
_BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*|__(?=\S)(.+?)(?<=\S)__")
_ITALIC = re.compile(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_SLOT = re.compile("\x00(\\d+)\x00")
_BOLD_MARK = "\x01"  # stands in for Slack's '*' until italics are converted

_LINK_TARGET = re.compile(r"^(?:https?|mailto):", re.IGNORECASE)
# What makes Slack notify people: <@U…> / <!here> / <!subteam^…> / <#C…>, and the bare
# @here-style words where a surface parses them.
_PING = re.compile(r"<(?=[@!#])")
_BROADCAST = re.compile(r"@(?=(?:here|channel|everyone)\b)", re.IGNORECASE)
WORD_JOINER = "\u2060"

RULE_TEXT = "──────────"

# Slack text, read back for the model.
_SLACK_LINK = re.compile(r"<((?:https?|mailto):[^|>]+)\|([^>]+)>")
_SLACK_BARE = re.compile(r"<((?:https?|mailto):[^|>]+)>")
_SLACK_CHANNEL = re.compile(r"<#[A-Z0-9]+\|([^>]*)>")
_SLACK_SPECIAL = re.compile(r"<!(here|channel|everyone)[^>]*>")


def escape(text: str) -> str:
    """Escape Slack's three control characters (``&`` first, so it is not doubled)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def defang(text: str) -> str:
    """Text for surfaces that read Markdown, not mrkdwn (native streaming): mention syntax
    stays visible but inert, so an answer can name people without pinging anyone."""
    return _BROADCAST.sub("@" + WORD_JOINER, _PING.sub("<" + WORD_JOINER, text))


def to_mrkdwn(markdown: str) -> str:
    """Convert one Markdown text (complete or still streaming) to Slack mrkdwn."""
    out: list[str] = []
    in_code = False
    for line in markdown.split("\n"):
        if _FENCE.match(line):
            # Slack has no language tags: ```python becomes ```.
            out.append("```")
            in_code = not in_code
        elif in_code:
            out.append(escape(line))
        else:
            out.append(_convert_line(line))
    if in_code:
        out.append("```")  # a streaming answer mid-block: close it so Slack renders it
    return "\n".join(out)


def _convert_line(line: str) -> str:
    if _RULE.match(line):
        return RULE_TEXT
    heading = _HEADING.match(line)
    if heading:
        # Slack has no headings; bold is the closest. Inner bold markers would nest badly.
        inner = heading.group(1).replace("**", "").replace("__", "")
        return f"*{_convert_inline(inner)}*" if inner else ""
    quote = _QUOTE.match(line)
    if quote:
        return f"{quote.group(1)}> {_convert_line(line[quote.end() :])}"
    bullet = _BULLET.match(line)
    if bullet:
        return f"{bullet.group(1)}• {_convert_inline(line[bullet.end() :])}"
    return _convert_inline(line)


def _convert_inline(text: str) -> str:
    """Convert one line outside code blocks; inline code spans are kept verbatim."""
    slots: list[str] = []

    def keep(value: str) -> str:
        slots.append(value)
        return f"\x00{len(slots) - 1}\x00"

    # Set aside what must not be touched by emphasis rules: code spans and links.
    text = _INLINE_CODE.sub(lambda m: keep(f"`{escape(m.group(2))}`"), text)
    text = _LINK.sub(lambda m: keep(_link(m.group(2), m.group(1))), text)
    text = _AUTOLINK.sub(lambda m: keep(f"<{escape(m.group(1))}>"), text)
    text = escape(text)
    text = _BOLD_ITALIC.sub(lambda m: f"{_BOLD_MARK}_{m.group(1)}_{_BOLD_MARK}", text)
    text = _BOLD.sub(lambda m: f"{_BOLD_MARK}{m.group(1) or m.group(2)}{_BOLD_MARK}", text)
    text = _ITALIC.sub(r"_\1_", text)
    text = _STRIKE.sub(r"~\1~", text)
    text = text.replace(_BOLD_MARK, "*")
    # Restore repeatedly: a link label may itself hold a code-span slot.
    while _SLOT.search(text):
        text = _SLOT.sub(lambda m: slots[int(m.group(1))], text)
    return text


def _link(url: str, label: str) -> str:
    label = _SLOT.sub(lambda m: "", label) or url
    if not _LINK_TARGET.match(url):
        # <@U…|x> or <!channel|x> would be a mention: only web and mail links become links.
        return escape(f"{label.replace('**', '')} ({url})")
    # '|' and '>' would end the label early inside <url|label>.
    label = escape(label.replace("|", "¦").replace("**", "").replace("`", ""))
    return f"<{escape(url)}|{label}>"


def strip_mention(text: str, bot_user_id: str) -> str:
    return (
        re.sub(rf"<@{re.escape(bot_user_id)}(\|[^>]*)?>", "", text).strip() if bot_user_id else text
    )


def slack_to_plain(text: str, bot_user_id: str = "") -> str:
    """Turn a Slack message into the plain text the model should see."""
    text = strip_mention(text, bot_user_id)
    text = _SLACK_LINK.sub(r"\2 (\1)", text)
    text = _SLACK_BARE.sub(r"\1", text)
    text = _SLACK_CHANNEL.sub(r"#\1", text)
    text = _SLACK_SPECIAL.sub(r"@\1", text)
    return html.unescape(text).strip()
