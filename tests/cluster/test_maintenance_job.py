"""A job step's record: what the CLI's progress bar and the dashboard's job panel show."""

from __future__ import annotations

import pytest

from minikv_core.cluster.maintenance_job import StepRecord


def test_a_step_that_returns_is_done_and_timed() -> None:
    record = StepRecord({"kind": "verify"})
    with record.running():
        assert record.state == "running"
        record.detail = "3 replicas agree"
    assert (record.state, record.detail) == ("done", "3 replicas agree")
    assert record.seconds >= 0.0
    assert record.to_json()["state"] == "done"


def test_a_step_that_raises_is_failed_with_the_error_as_detail() -> None:
    record = StepRecord({"kind": "add"})
    with pytest.raises(TimeoutError), record.running():
        raise TimeoutError("learner did not catch up")
    assert (record.state, record.detail) == ("failed", "learner did not catch up")
    with pytest.raises(TimeoutError), record.running():
        raise TimeoutError  # no message: the error's type names it
    assert (record.state, record.detail) == ("failed", "TimeoutError")
