"""Progress bars for long loops, on the terminal only: never in a notebook's outputs or a report.

:func:`progress` wraps an iterable in a ``tqdm`` bar written to :func:`terminal_stream`, the
terminal this process writes to, and returns the iterable unchanged when there is none.

Inside a Jupyter kernel (``osteo-tf run``'s papermill kernels, JupyterLab), ``sys.stderr`` is
ipykernel's stream to the notebook, and file descriptor 2 is a pipe whose content ipykernel also
copies into the notebook; ``sys.stderr.fileno()`` however is ipykernel's copy of the kernel's
original stderr (the terminal that started it). The bar is written there, so it shows in the
terminal and nothing of it lands in the executed notebook or its HTML report. Without a TTY
(CI, output redirected to a file, pytest's capture) there is no bar at all.
"""

from __future__ import annotations

import functools
import io
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

__all__ = ["progress", "terminal_stream"]

T = TypeVar("T")


@functools.lru_cache(maxsize=None)
def _stream_on(fd: int) -> TextIO:
    return os.fdopen(os.dup(fd), "w", buffering=1, encoding="utf-8", errors="replace")


def terminal_stream() -> TextIO | None:
    """A text stream on this process's terminal, or ``None`` when its stderr is not a terminal.

    Uses the file descriptor behind ``sys.stderr`` (in a Jupyter kernel: the kernel's original
    stderr, not the pipe into the notebook); ``None`` when ``sys.stderr`` has no descriptor or
    the descriptor is not a TTY.
    """
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    try:
        if not os.isatty(fd):
            return None
    except OSError:
        return None
    return _stream_on(fd)


def progress(iterable: Iterable[T], *, total: int | None = None, desc: str = "",
             unit: str = "it") -> Iterator[T] | Iterable[T]:
    """``iterable`` with a terminal progress bar (``tqdm``), or unchanged when there is no terminal.

    The bar updates at most once a second and is removed when the loop ends (``leave=False``),
    so the terminal keeps only the lines the caller prints. An empty loop draws no bar.

    Args:
        iterable: the loop's items.
        total: the number of items (default ``len(iterable)`` when it has one).
        desc: the bar's label, e.g. ``"bm3d"``.
        unit: what one item is, e.g. ``"image"``.
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    stream = terminal_stream()
    if stream is None or total == 0:
        return iterable
    from tqdm.std import tqdm  # the plain bar: tqdm.auto would pick Jupyter widgets in a kernel

    return tqdm(iterable, total=total, desc=desc, unit=unit, file=stream, leave=False, mininterval=1.0)
