"""Runtime options: limits are checked when the runtime is made, before anything is
written."""

from __future__ import annotations

import math

import pytest

import agentbook as ab


@pytest.mark.parametrize(("option", "value"), [
    ("max_open", 0), ("max_batch", -1), ("max_payload_bytes", 1.5), ("max_state_bytes", True),
    ("max_queue", None), ("max_store_bytes", 0), ("hibernate_after", -1),
    ("hibernate_after", math.inf), ("max_query_seconds", 0), ("max_query_seconds", math.nan),
    ("max_query_seconds", "1"),
])
def test_bad_limits_are_refused_before_anything_is_written(tmp_path, option, value):
    with pytest.raises(ab.UsageError, match=option):
        ab.Runtime(tmp_path / "store", **{option: value})
    assert not (tmp_path / "store").exists()


def test_limits_that_may_be_off(tmp_path):
    rt = ab.Runtime(tmp_path / "store", max_store_bytes=None, max_query_seconds=None,
                    hibernate_after=0)
    assert rt.max_query_seconds is None and rt.max_store_bytes is None
    rt.close()
