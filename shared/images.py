"""Images attached to a question: what counts as one, and where they wait for the worker.

A bot checks an attachment (declared type, size, the bytes' own signature),
then keeps the bytes in Redis under their SHA-256 and sends only that id in
the turn: RQ payloads stay small, the same picture posted twice is stored
once, and a follow-up question can show the model the picture again while
the conversation is kept (the blob lives as long as the conversation's TTL).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import cast

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

# Signatures of the formats vision processors read (Pillow decodes all four).
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
SUPPORTED = "PNG, JPEG, GIF and WebP"
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "gif", "webp", "bmp", "tif", "tiff", "heic", "avif")


def image_key(image_id: str) -> str:
    return f"corral:image:{image_id}"


def sniff(data: bytes) -> str | None:
    """The image type the bytes really are, or None when they are not a supported image."""
    for signature, kind in _SIGNATURES:
        if data.startswith(signature):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def looks_like_image(name: str, content_type: str) -> bool:
    """Did the platform say this attachment is a picture (by type, else by file name)?"""
    if content_type:
        return content_type.split(";")[0].strip().lower().startswith("image/")
    _stem, dot, ext = name.lower().rpartition(".")
    return bool(dot) and ext in IMAGE_EXTENSIONS


def _megabytes(size: int) -> str:
    # Small limits (a team may set one) would all read "0.0 MB".
    if size >= 1_000_000:
        return f"{size / 1_000_000:.1f} MB"
    if size >= 1_000:
        return f"{size / 1_000:.0f} kB"
    return f"{size:,} bytes"


@dataclass(frozen=True)
class Checked:
    """An attachment declared as an image, after the checks: bytes to keep, or why not."""

    name: str
    data: bytes | None
    problem: str = ""  # one line for the user when the image is left out


def check_image(name: str, size: int, data: bytes | None, limit: int) -> Checked:
    """Size first (so an oversized file need not be downloaded), then the real type."""
    safe = name.replace("`", "'").replace("\n", " ")[:100]
    actual = max(size, len(data or b""))
    if actual > limit:
        return Checked(
            safe, None, f"{safe}: {_megabytes(actual)} is over the {_megabytes(limit)} image limit"
        )
    if data is None:
        return Checked(safe, None, f"{safe}: it could not be downloaded")
    if sniff(data) is None:
        return Checked(safe, None, f"{safe}: only {SUPPORTED} images are supported")
    return Checked(safe, data)


def image_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def store_image(conn: AsyncRedis, data: bytes, ttl: int) -> str:
    """Keep an image for the worker (and later turns of the conversation); returns its id."""
    ident = image_id(data)
    key = image_key(ident)
    if await conn.set(key, data, ex=ttl, nx=True):
        return ident
    # Stored already (the same picture elsewhere): keep the longer of the two lives, so a
    # short-lived API turn never cuts short a conversation's copy.
    left = await conn.ttl(key)
    if left == -2:  # expired in between
        await conn.set(key, data, ex=ttl)
    elif 0 <= left < ttl:
        await conn.expire(key, ttl)
    return ident


def load_image(conn: Redis, ident: str) -> bytes | None:
    """The stored bytes, or None once they expired (or the id is not one of ours)."""
    if len(ident) != 64 or any(c not in "0123456789abcdef" for c in ident):
        return None
    data = cast("bytes | None", conn.get(image_key(ident)))  # not decode_responses: bytes
    return bytes(data) if data is not None else None
