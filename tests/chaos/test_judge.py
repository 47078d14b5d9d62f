"""The judge of every chaos and soak request: it must see each kind of damage, or the fault
tests could pass without looking."""

from __future__ import annotations

import pytest

from saguaro_loadtest.load import judge

EXPECTED = [5, 6, 7, 8]


@pytest.mark.parametrize("received,finish,code,kind", [
    ([5, 6, 7, 8], "length", None, "completed"),
    ([5, 6, 9, 8], "length", None, "corrupted"),  # a wrong token
    ([5, 6, 6, 7], "length", None, "corrupted"),  # a repeated one
    ([5, 7, 8], "length", None, "corrupted"),  # a lost one
    ([5, 6], "stop", None, "corrupted"),  # finished early as if it were complete
    ([5, 6, 7, 8, 9], "length", None, "corrupted"),  # ran past the reference
    ([], None, "UNAVAILABLE", "failed_retryable"),
    ([], None, "RESOURCE_EXHAUSTED", "failed_retryable"),
    ([5, 6], None, "UNAVAILABLE", "failed"),  # broke off after tokens were streamed
    ([5, 6], "error", None, "failed"),  # a final error message mid-stream
    ([], None, "INVALID_ARGUMENT", "failed"),
    ([], None, "DEADLINE_EXCEEDED", "failed"),
    ([9], None, "UNAVAILABLE", "corrupted"),  # a wrong token outweighs the error
])
def test_judge_names_every_outcome(received, finish, code, kind):
    assert judge(received, EXPECTED, finish, code) == kind
