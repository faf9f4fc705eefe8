"""Quiet a known library warning inside one block, never globally.

:func:`quiet` is the package's one way to hide a warning that is expected and carries no news for
the reader of a report (the facts it would announce are already recorded elsewhere). It wraps
``warnings.catch_warnings()``, so the filter is undone when the block ends, and it hides only
warnings whose message matches one of the given regular expressions (matched from the start of
the message, as ``warnings.filterwarnings`` does). The messages the package expects are named
constants here, so every caller quiets the same text the same way.

Like ``warnings.catch_warnings`` itself, the filter is process-wide while the block runs: it is
not meant for code that runs other threads which must keep their warnings.

"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator

__all__ = ["BOOTSTRAP_SKIPPED", "RAN_OUT_OF_DATA", "quiet"]

RAN_OUT_OF_DATA = ".*ran out of data.*"
"""Keras, at the end of every epoch or ``predict`` over a finite ``tf.data`` input whose
cardinality is unknown (pipelines that skip unreadable files): expected, not a fault."""

BOOTSTRAP_SKIPPED = "Bootstrap resamples skipped"
"""``evaluation.bootstrap_ci``, when a metric is undefined in some resamples; a result record
keeps the counts in ``ci.skipped``."""


@contextlib.contextmanager
def quiet(*messages: str, category: type[Warning] = Warning, module: str = "") -> Iterator[None]:
    """Hide the warnings whose message matches one of ``messages``, only inside the block.

    Example::

        with quiet(RAN_OUT_OF_DATA):
            model.fit(ds, epochs=3)

    Args:
        messages: one or more regular expressions, each matched against the start of a warning's
            message (case-insensitive, as in ``warnings.filterwarnings``).
        category: hide only warnings of this class (and its subclasses); default every warning.
        module: a regular expression the warning's module must match (default: any module).

    Yields:
        Nothing; every other warning, and every warning after the block, is shown as before.

    Raises:
        ValueError: no message, or a message or ``module`` that is not a valid regular expression.
        TypeError: a message or ``module`` that is not a str, or a ``category`` that is not a
            ``Warning`` subclass.
    """
    if not messages:
        raise ValueError("quiet needs at least one message regular expression. Received: messages=()")
    for i, message in enumerate(messages):
        _check_regex(message, f"messages[{i}]")
    _check_regex(module, "module")
    if not (isinstance(category, type) and issubclass(category, Warning)):
        raise TypeError(f"category must be a Warning subclass. Received: category={category!r}")
    with warnings.catch_warnings():
        for message in messages:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)
        yield


def _check_regex(value: object, name: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str (a regular expression). Received: {name}={value!r}")
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"{name} must be a valid regular expression ({exc}). Received: {name}={value!r}") from None
