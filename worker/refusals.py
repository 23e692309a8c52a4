"""Which refusals are the caller's mistake, and their machine-readable codes.

A turn the worker refuses (it cannot be answered, and retrying cannot help)
ends with an ``error`` event; its ``code`` (shared/contract.py) tells the API
to answer 400 rather than 500. A payload the worker cannot read at all (a bot
and worker of different releases) is a fault of the deployment: no code.
"""

from __future__ import annotations

from shared.contract import (
    CONTEXT_LENGTH_EXCEEDED,
    IMAGES_NOT_SUPPORTED,
    INVALID_IMAGE,
    INVALID_REQUEST,
    ContractError,
)
from shared.history import ContextOverflow

from .prompt import TemplateError
from .vision import ImageError


class ImagesNotSupported(ContractError):
    """Images sent (through the API) to a model that cannot see them."""


class InvalidConversation(ContractError):
    """Messages that cannot make a prompt, e.g. the last one is not the user's."""


class UnsupportedRequest(ContractError):
    """What this worker's model cannot do as asked: a schema it cannot enforce, a raw
    prompt, a seed or a format for a model without them, a malformed tool."""


def refusal_code(exc: Exception) -> str:
    if isinstance(exc, ContextOverflow):
        return CONTEXT_LENGTH_EXCEEDED
    if isinstance(exc, ImagesNotSupported):
        return IMAGES_NOT_SUPPORTED
    if isinstance(exc, ImageError):
        return INVALID_IMAGE
    if isinstance(exc, (InvalidConversation, UnsupportedRequest, TemplateError)):
        return INVALID_REQUEST
    return ""
