"""Quiet a known library warning inside one block, never globally.

:func:`quiet` is the package's one way to hide a warning that is expected and carries no news for
the reader of a report (the facts it would announce are already recorded elsewhere). It wraps
``warnings.catch_warnings()``, so the filter is undone when the block ends, and it hides only
warnings whose message matches one of the given regular expressions (matched from the start of
the message, as ``warnings.filterwarnings`` does). The messages the package expects are named
constants here, so every caller quiets the same text the same way.

Like ``warnings.catch_warnings`` itself, the filter is process-wide while the block runs: it is
not meant for code that runs other threads which must keep their warnings.

:func:`quiet_retracing` does the same for TensorFlow's "frequent retracing" notice, which
TensorFlow logs instead of warning, for the named functions only.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator

__all__ = ["BOOTSTRAP_SKIPPED", "KERAS_PREDICT_FUNCTION", "RAN_OUT_OF_DATA", "quiet", "quiet_retracing"]

RAN_OUT_OF_DATA = ".*ran out of data.*"
"""Keras, at the end of every epoch or ``predict`` over a finite ``tf.data`` input whose
cardinality is unknown (pipelines that skip unreadable files): expected, not a fault."""

BOOTSTRAP_SKIPPED = "Bootstrap resamples skipped"
"""``evaluation.bootstrap_ci``, when a metric is undefined in some resamples; a result record
keeps the counts in ``ci.skipped``."""


KERAS_PREDICT_FUNCTION = "TensorFlowTrainer.make_predict_function.<locals>.one_step_on_data_distributed"
"""Keras' predict step: one ``tf.function`` per model, traced for the batch shape and the last,
smaller batch. TensorFlow counts the traces of every model's predict step together (per Python
code object), so a loop over models reaches its "frequent retracing" notice."""

_RETRACING = "triggered tf.function retracing"


class _RetracingNotice(logging.Filter):
    def __init__(self, functions: tuple[str, ...]) -> None:
        super().__init__()
        self.functions = functions

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (_RETRACING in message and any(f"<function {f} at " in message for f in self.functions))


@contextlib.contextmanager
def quiet_retracing(*functions: str) -> Iterator[None]:
    """Hide TensorFlow's "N out of the last M calls to <function F> triggered tf.function
    retracing" notice for the named functions, only inside the block.

    TensorFlow logs it (logger ``tensorflow``, not the ``warnings`` module) when recent calls
    traced often, counting every ``tf.function`` made from the same Python function together: one
    function per model, each traced once, adds up in a loop over models although nothing
    retraces per call. Other notices, and this one about any other function, are kept.

    Args:
        functions: qualified names as the notice prints them, e.g. :data:`KERAS_PREDICT_FUNCTION`.

    Raises:
        ValueError: no function name.
        TypeError: a name that is not a str.
    """
    if not functions:
        raise ValueError("quiet_retracing needs at least one function name. Received: functions=()")
    for i, name in enumerate(functions):
        if not isinstance(name, str):
            raise TypeError(f"functions[{i}] must be a str (a function's qualified name). "
                            f"Received: functions[{i}]={name!r}")
    logger = logging.getLogger("tensorflow")
    notice = _RetracingNotice(functions)
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


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
