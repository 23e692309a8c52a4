"""Child processes that belong to their parent: own session, and gone when it is.

`corral run` starts Redis, the worker and the bots each in a new session, so
the terminal's Ctrl-C (sent to the foreground process group) reaches only the
supervisor, which then stops them in order. Being in another session also
means a SIGKILLed supervisor would leave them running; so on Linux each child
asks the kernel for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``) and
then stops the way it does on any SIGTERM.

The kernel sends that signal when the *thread* that forked the child ends,
so only call :func:`spawn_options` with ``die_with_parent`` from a thread
that lives as long as the child should (the main thread, normally).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> Callable[[], None]:
    def preexec() -> None:  # runs in the child between fork and exec
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def spawn_options(die_with_parent: bool = True) -> dict[str, Any]:
    """Keyword arguments for :class:`subprocess.Popen`: a new session, and (Linux)
    SIGTERM to the child when this process dies."""
    options: dict[str, Any] = {"start_new_session": True}
    if die_with_parent and sys.platform == "linux":
        options["preexec_fn"] = _die_with(os.getpid())
    return options
