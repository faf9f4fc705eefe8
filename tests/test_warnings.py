"""Tests of osteo_tf._warnings.quiet: scoped, message-specific silencing."""

from __future__ import annotations

import warnings

import pytest

from osteo_tf._warnings import BOOTSTRAP_SKIPPED, RAN_OUT_OF_DATA, quiet


def _emit(message: str, category: type[Warning] = UserWarning) -> None:
    warnings.warn(message, category, stacklevel=2)


def test_hides_only_the_matching_warning_inside_the_block():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet(RAN_OUT_OF_DATA):
            _emit("Your input ran out of data; interrupting training.")
            _emit("something else")
        _emit("Your input ran out of data; interrupting training.")
    assert [str(w.message) for w in seen] == ["something else",
                                               "Your input ran out of data; interrupting training."]


def test_filters_are_restored_after_the_block_even_on_error():
    before = list(warnings.filters)
    with pytest.raises(RuntimeError):
        with quiet(BOOTSTRAP_SKIPPED):
            raise RuntimeError("boom")
    assert warnings.filters == before


def test_several_messages_and_the_category_restrict_what_is_hidden():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet("alpha", "beta", category=DeprecationWarning):
            _emit("alpha one", DeprecationWarning)
            _emit("beta two", DeprecationWarning)
            _emit("alpha as a user warning", UserWarning)
    assert [str(w.message) for w in seen] == ["alpha as a user warning"]


def test_message_is_matched_from_its_start():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet(BOOTSTRAP_SKIPPED):
            _emit("Bootstrap resamples skipped because the metric was undefined")
            _emit("Note: Bootstrap resamples skipped")
    assert [str(w.message) for w in seen] == ["Note: Bootstrap resamples skipped"]


def test_module_restricts_the_source():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet("x", module="some_library"):
            _emit("x from the tests")  # this module is not some_library: shown
    assert len(seen) == 1


@pytest.mark.parametrize("args, kwargs, error, match", [
    ((), {}, ValueError, r"Received: messages=\(\)"),
    (("(",), {}, ValueError, r"messages\[0\] must be a valid regular expression"),
    ((3,), {}, TypeError, r"Received: messages\[0\]=3"),
    (("x",), {"category": str}, TypeError, "Received: category=<class 'str'>"),
    (("x",), {"module": None}, TypeError, "Received: module=None"),
])
def test_bad_arguments_are_clear_errors(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        with quiet(*args, **kwargs):
            pass
