"""A message's attachments as a turn takes them: text files become prompt text,
checked images are stored for the worker, and the user hears what was left out.

Both bots call :func:`read_attachments` with their platform's files wrapped as
:class:`SharedFile`, so the limits and wording are the same on Discord and Slack.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp
from redis.asyncio import Redis as AsyncRedis

from shared.contract import IMAGE_ONLY_TEXT, Attachment
from shared.images import check_image, looks_like_image, sniff, store_image
from shared.team_config import Limits

log = logging.getLogger(__name__)


def looks_binary(data: bytes) -> bool:
    sample = data[:8192]
    if b"\x00" in sample:
        return True
    text = sample.decode("utf-8", errors="replace")
    bad = text.count("\ufffd") + sum(1 for c in text if ord(c) < 32 and c not in "\t\n\r\f\b")
    return bool(text) and bad / len(text) > 0.1


def attachment_block(name: str, data: bytes | None, size: int, limit: int) -> str:
    """One attachment as prompt text: its content fenced, or a note why it is not included."""
    safe = name.replace("`", "'").replace("\n", " ")[:200]
    if size > limit or (data is not None and len(data) > limit):
        return f"[Attached file {safe}: not included, {size:,} bytes is over the {limit:,} limit]"
    if data is None or looks_binary(data):
        return f"[Attached file {safe}: not included, it is not a text file]"
    text = data.decode("utf-8", errors="replace")
    fence = "```"
    while fence in text:
        fence += "`"
    return f"Attached file {safe}:\n{fence}\n{text.rstrip()}\n{fence}"


def with_attachments(text: str, blocks: list[str]) -> str:
    return "\n\n".join([text, *blocks]) if blocks else text


# Attachments of one message: text files, images, and what the user is told


FILE_ONLY_TEXT = "Please look at the attached file."


def text_for_files(files: Sequence[tuple[str, str]]) -> str:
    """What a message without text asks, given its attachments' (name, content type)."""
    if files and all(looks_like_image(name, kind) for name, kind in files):
        return IMAGE_ONLY_TEXT
    return FILE_ONLY_TEXT


@dataclass(frozen=True)
class SharedFile:
    """One attachment as a platform gives it; ``fetch(n)`` downloads at most ``n`` bytes
    and returns None when the download failed (the platform logs why, without secrets)."""

    name: str
    size: int
    content_type: str
    fetch: Callable[[int], Awaitable[bytes | None]]


def url_file(
    name: str, size: int, content_type: str, url: str | None, headers: Mapping[str, str]
) -> SharedFile:
    """A file downloaded over HTTP on demand (``headers`` carry the platform's token)."""

    async def fetch(most: int) -> bytes | None:
        if not url:
            return None
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(url, headers=dict(headers)) as resp:
                    resp.raise_for_status()
                    data = bytearray()  # read() returns what arrived so far: loop up to `most`
                    while len(data) < most:
                        chunk = await resp.content.read(most - len(data))
                        if not chunk:
                            break
                        data += chunk
                    return bytes(data)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The exception names the URL and status, never the request headers (the token).
            log.warning("could not download file %s: %s", name, exc)
            return None

    return SharedFile(name, size, content_type, fetch)


@dataclass
class ReadAttachments:
    blocks: list[str] = field(default_factory=list)  # prompt text, in attachment order
    attachments: list[Attachment] = field(default_factory=list)  # for the Turn
    problems: list[str] = field(default_factory=list)  # images left out, one line each

    def hint(self) -> str:
        """One line for the user about images left out ("" when none was)."""
        if not self.problems:
            return ""
        return "I left out " + "; ".join(self.problems) + "."


def _listed(item: SharedFile) -> Attachment:
    """The Turn's record of a file whose bytes the worker does not get."""
    return Attachment(name=item.name, size=item.size, content_type=item.content_type)


async def read_attachments(
    files: Sequence[SharedFile], limits: Limits, redis: AsyncRedis, ttl: int
) -> ReadAttachments:
    """Text files become prompt blocks; images are checked (size before downloading,
    then the bytes' real type) and stored for the worker, or noted as left out."""
    out = ReadAttachments()
    for index, item in enumerate(files):
        if index >= limits.attachments_max:
            out.attachments.append(_listed(item))
            continue
        if looks_like_image(item.name, item.content_type):
            await _read_image(item, limits.image_max_bytes, redis, ttl, out)
            continue
        out.attachments.append(_listed(item))
        limit = limits.attachment_max_bytes
        data = None
        if item.size <= limit:
            data = await item.fetch(limit + 1)
            if data is None:
                safe = item.name.replace("`", "'").replace("\n", " ")[:200]
                out.blocks.append(f"[Attached file {safe}: could not be downloaded]")
                continue
        out.blocks.append(
            attachment_block(item.name, data, max(item.size, len(data or b"")), limit)
        )
    return out


async def _read_image(
    item: SharedFile, limit: int, redis: AsyncRedis, ttl: int, out: ReadAttachments
) -> None:
    # check_image with no bytes reports the size, or else "could not be downloaded":
    # only an oversized file is judged before the download.
    data = await item.fetch(limit + 1) if item.size <= limit else None
    checked = check_image(item.name, item.size, data, limit)
    if checked.data is None:
        reason = checked.problem.removeprefix(f"{checked.name}: ")
        out.blocks.append(f"[Attached image {checked.name}: not included, {reason}]")
        out.problems.append(checked.problem)
        out.attachments.append(_listed(item))
        return
    ident = await store_image(redis, checked.data, ttl)
    out.attachments.append(
        Attachment(
            name=item.name,
            size=item.size or len(checked.data),
            content_type=sniff(checked.data) or item.content_type,
            image_id=ident,
        )
    )
