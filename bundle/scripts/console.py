"""What a bundle command prints when bad input stops it: one line naming the file and the problem, not a traceback.

``python -m monai.bundle run ...`` wraps every error of a config item in ``RuntimeError("Failed to instantiate ...")``
and prints the whole chain (60 lines and more) with the useful message in the middle. The configs' ``initialize``
calls :func:`install_excepthook`: an uncaught exception whose chain holds a :class:`scripts.data.EchoDataError`
(a missing data folder, an unreadable file) then ends the command with ``error: <file>: <problem>`` and exit status
1. Any other exception keeps Python's traceback, and ``GDKVM_TRACEBACK=1`` keeps it for these too.

An error raised while MONAI's ``CacheDataset`` fills its cache leaves its ``ThreadPool`` workers running transforms
(torch operations) when the main thread ends; Python's shutdown then aborted the process (``terminate called
without an active exception``, exit status 134) after the message. So when other threads are still alive, the hook
flushes the streams and the log handlers and ends the process at once with status 1 (130 after Ctrl-C, as Python).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from types import TracebackType

from scripts.data.errors import EchoDataError

__all__ = ["echo_data_error_in", "exception_chain", "failure_reason", "install_excepthook"]


def exception_chain(error: BaseException) -> list[BaseException]:
    """``error`` and its causes (or contexts), outermost first, each once."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def echo_data_error_in(error: BaseException) -> EchoDataError | None:
    """The first :class:`EchoDataError` in ``error``'s chain of causes and contexts, or None."""
    return next((e for e in exception_chain(error) if isinstance(e, EchoDataError)), None)


def failure_reason(error: BaseException, source: str | Path) -> str:
    """The problem of an input that failed, on one line (at most 1000 characters); its path shortened to the name.

    The :class:`scripts.data.EchoDataError` inside MONAI's ``RuntimeError("applying transform ...")`` chain gives its
    problem (with its file if that is not ``source``); any other error gives ``"<Type>: <message>"`` of the innermost
    exception.
    """
    echo = echo_data_error_in(error)
    if echo is not None:
        text = echo.problem if Path(echo.path) == Path(source) else str(echo)
    else:
        root = exception_chain(error)[-1]
        message = str(root).replace(str(source), Path(source).name)
        text = f"{type(root).__name__}: {message}" if message.strip() else type(root).__name__
    return " ".join(text.split())[:1000]


def _excepthook(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
    found = echo_data_error_in(error)
    if found is None or os.environ.get("GDKVM_TRACEBACK"):
        sys.__excepthook__(kind, error, trace)
    else:
        print(f"error: {found} (GDKVM_TRACEBACK=1 shows the traceback)", file=sys.stderr)
    if threading.active_count() > 1:  # e.g. CacheDataset's loader threads: shutting down around them aborts
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130 if issubclass(kind, KeyboardInterrupt) else 1)


def install_excepthook() -> None:
    """Make bad echo input end a bundle command with one line (see the module). Idempotent."""
    sys.excepthook = _excepthook
