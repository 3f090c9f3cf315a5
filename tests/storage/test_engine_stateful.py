"""The engine against a dict model, driven by Hypothesis' stateful testing.

Rules: put, delete, batches, get, scan (start/end/prefix/limit/reverse), flush, compact, clean
reopen, and crash reopen (close without flushing: the memtable is lost and the engine must
come back at exactly its durable applied index, holding exactly the model's state at that
index). Background flushes and compactions run on their own threads the whole time, with tiny
memtables and tables so that every few ops cross a flush or a merge.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from minikv_core.storage.engine import Delete, Engine, EngineOptions, Op, Put

OPTIONS = EngineOptions(
    memtable_size_bytes=1024,
    block_size_bytes=64,
    table_size_bytes=512,
    tier_fanout=2,
    flush_on_close=False,  # a close is a crash unless a rule flushes first
)

# Few distinct keys (84), including 0x00 and 0xff bytes, so that writes collide and prefix
# bounds hit the edges of the byte range.
keys = st.lists(st.sampled_from([0x00, 0x61, 0x62, 0xFF]), min_size=1, max_size=3).map(bytes)
values = st.binary(max_size=24)
bounds = st.none() | st.lists(st.sampled_from([0x00, 0x61, 0x62, 0xFF]), max_size=3).map(bytes)


class EngineVersusDict(RuleBasedStateMachine):
    options = OPTIONS

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="minikv-lsm-stateful-"))
        self.engine = Engine.open(self.directory, self.options)
        self.model: dict[bytes, bytes] = {}
        self.index = 0
        # The model after each applied index, to know the state a crash must come back to.
        self.history: dict[int, dict[bytes, bytes]] = {0: {}}

    def _apply(self, ops: list[Op]) -> None:
        self.index += 1
        self.engine.apply(ops, self.index)
        for op in ops:
            if isinstance(op, Put):
                self.model[op.key] = op.value
            else:
                self.model.pop(op.key, None)
        self.history[self.index] = dict(self.model)

    @rule(key=keys, value=values)
    def put(self, key: bytes, value: bytes) -> None:
        self._apply([Put(key, value)])

    @rule(key=keys)
    def delete(self, key: bytes) -> None:
        self._apply([Delete(key)])

    @rule(batch=st.lists(st.tuples(keys, st.none() | values), max_size=8))
    def apply_batch(self, batch: list[tuple[bytes, bytes | None]]) -> None:
        self._apply([Delete(k) if v is None else Put(k, v) for k, v in batch])

    @rule(key=keys)
    def get(self, key: bytes) -> None:
        assert self.engine.get(key) == self.model.get(key)

    @rule(start=bounds, end=bounds, prefix=bounds, limit=st.none() | st.integers(0, 6),
          reverse=st.booleans())  # fmt: skip
    def scan(
        self,
        start: bytes | None,
        end: bytes | None,
        prefix: bytes | None,
        limit: int | None,
        reverse: bool,
    ) -> None:
        expected = sorted(
            (k, v)
            for k, v in self.model.items()
            if (start is None or k >= start)
            and (end is None or k < end)
            and (prefix is None or k.startswith(prefix))
        )
        if reverse:
            expected.reverse()
        if limit is not None:
            expected = expected[:limit]
        assert self.engine.scan(start, end, prefix, limit, reverse) == expected

    @rule()
    def flush(self) -> None:
        assert self.engine.flush() == self.index
        assert self.engine.durable_applied_index == self.index

    @rule()
    def compact(self) -> None:
        self.engine.compact()
        assert self.engine.stats().runs <= 1
        assert self.engine.scan() == sorted(self.model.items())

    @rule()
    def clean_reopen(self) -> None:
        self.engine.flush()
        self.engine.close()
        self.engine = Engine.open(self.directory, self.options)
        assert self.engine.applied_index == self.index

    @precondition(lambda self: self.index > 0)
    @rule()
    def crash_reopen(self) -> None:
        durable = self.engine.durable_applied_index
        self.engine.close()
        self.engine = Engine.open(self.directory, self.options)
        assert self.engine.applied_index == self.engine.durable_applied_index == durable
        # The host would replay its log from durable + 1; the model rewinds to that state.
        self.index = durable
        self.model = dict(self.history[durable])
        self.history = {i: m for i, m in self.history.items() if i <= durable}
        assert self.engine.scan() == sorted(self.model.items())

    @invariant()
    def applied_index_matches(self) -> None:
        assert self.engine.applied_index == self.index

    def teardown(self) -> None:
        try:
            self.engine.close()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


class EngineVersusDictWithoutBackgroundCompaction(EngineVersusDict):
    """The same rules with flushes in the writer's thread and compaction only on `compact()`:
    every run of a failing example is then identical, so Hypothesis can shrink it."""

    options = replace(OPTIONS, background_flush=False, background_compaction=False)


def _settings(max_examples: int) -> settings:
    return settings(
        derandomize=True,  # the same examples every run; a failure prints its steps
        max_examples=max_examples,
        stateful_step_count=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


EngineVersusDict.TestCase.settings = _settings(120)
EngineVersusDictWithoutBackgroundCompaction.TestCase.settings = _settings(100)
TestEngineVersusDict = EngineVersusDict.TestCase
TestEngineVersusDictWithoutBackgroundCompaction = (
    EngineVersusDictWithoutBackgroundCompaction.TestCase
)
