"""The register-history checker (tests/linearizability.py) against hand-made anomalies and,
on random small histories, against brute force over every order."""

from __future__ import annotations

import itertools
import random

import pytest

from tests.linearizability import Op, check_history, check_register

K = b"k"


def put(client: int, value: str, start: float, end: float | None) -> Op:
    return Op(client, "put", K, value.encode(), start, end)


def get(client: int, value: str | None, start: float, end: float) -> Op:
    return Op(client, "get", K, None if value is None else value.encode(), start, end)


def test_a_read_after_a_write_sees_it() -> None:
    assert check_register([put(1, "a", 0, 1), get(2, "a", 2, 3)]) is None


def test_a_read_after_an_acknowledged_write_that_misses_it_is_stale() -> None:
    violation = check_register([put(1, "a", 0, 1), get(2, None, 2, 3)])
    assert violation is not None
    assert violation.ops == (put(1, "a", 0, 1), get(2, None, 2, 3))
    assert "client 2 get -> absent [2.000, 3.000]" in str(violation)


def test_a_read_of_a_value_before_it_was_written_is_a_violation() -> None:
    violation = check_register([get(2, "a", 0, 1), put(1, "a", 2, 3)])
    assert violation is not None and "before the put of it was sent" in violation.reason


def test_a_read_of_a_value_nobody_wrote_is_a_violation() -> None:
    violation = check_register([put(1, "a", 0, 1), get(2, "b", 2, 3)])
    assert violation is not None and "which no put wrote" in violation.reason


def test_a_read_concurrent_with_a_write_may_see_either() -> None:
    assert check_register([put(1, "a", 0, 10), get(2, "a", 1, 2)]) is None
    assert check_register([put(1, "a", 0, 10), get(2, None, 1, 2)]) is None


def test_a_value_seen_and_then_unseen_is_a_violation() -> None:
    history = [
        put(1, "a", 0, 1),
        put(1, "b", 2, 3),
        get(2, "b", 4, 5),
        get(2, "a", 6, 7),
    ]
    violation = check_register(history)
    assert violation is not None
    assert history[-1] in violation.ops


def test_reads_that_disagree_on_the_order_of_two_concurrent_writes() -> None:
    """Both writes overlap both reads' start, but once one read saw b after a, a later read
    may not see a again."""
    history = [
        put(1, "a", 0, 10),
        put(2, "b", 0, 10),
        get(3, "a", 1, 2),
        get(3, "b", 3, 4),
        get(4, "a", 5, 6),
    ]
    assert check_register(history) is not None
    assert check_register(history[:-1]) is None


def test_an_unknown_put_may_have_happened_or_not() -> None:
    assert check_register([put(1, "a", 0, None), get(2, "a", 5, 6)]) is None
    assert check_register([put(1, "a", 0, None), get(2, None, 5, 6)]) is None
    # ...but never before it was sent.
    assert check_register([get(2, "a", 0, 1), put(1, "a", 2, None)]) is not None


def test_an_unknown_put_seen_once_cannot_vanish_before_a_later_write() -> None:
    history = [
        put(1, "a", 0, None),
        get(2, "a", 1, 2),
        get(2, None, 3, 4),
    ]
    assert check_register(history) is not None


def test_keys_are_checked_apart() -> None:
    other = Op(3, "get", b"other", b"a", 0, 1)  # "a" was written to k, not to other
    found = check_history([put(1, "a", 0, 1), get(2, "a", 2, 3), other])
    assert [v.key for v in found] == [b"other"]


def brute_force(ops: list[Op]) -> bool:
    """Some order of the ops (unknown puts: in or out) respecting real time explains all."""
    optional = [op for op in ops if op.completed is None]
    required = [op for op in ops if op.completed is not None]
    for chosen in itertools.product([False, True], repeat=len(optional)):
        included = required + [op for op, keep in zip(optional, chosen, strict=True) if keep]
        for order in itertools.permutations(included):
            if not respects_real_time(order):
                continue
            state: bytes | None = None
            for op in order:
                if op.kind == "put":
                    state = op.value
                elif op.value != state:
                    break
            else:
                return True
    return False


def respects_real_time(order: tuple[Op, ...]) -> bool:
    """No op is placed before one that completed before it was invoked."""
    for position, later in enumerate(order):
        for earlier in order[position + 1 :]:
            if earlier.completed is not None and earlier.completed < later.invoked:
                return False
    return True


def random_history(rng: random.Random, size: int) -> list[Op]:
    """Small, dense histories: reads see any written value or absent, intervals overlap."""
    ops: list[Op] = []
    written: list[str] = []
    for number in range(size):
        start = rng.uniform(0, 10)
        end = start + rng.uniform(0.1, 4)
        if rng.random() < 0.5:
            written.append(f"v{number}")
            ops.append(put(number, written[-1], start, None if rng.random() < 0.2 else end))
        else:
            seen = rng.choice([None, *written, "never-written"])
            ops.append(get(number, seen, start, end))
    return ops


def test_agrees_with_brute_force_on_random_small_histories() -> None:
    """1,500 seeded histories of up to 7 ops; about a third of them are linearizable."""
    verdicts = []
    for seed in range(1500):
        rng = random.Random(seed)
        history = random_history(rng, rng.randint(1, 7))
        expected = brute_force(history)
        assert (check_register(history) is None) == expected, f"seed {seed}: {history}"
        verdicts.append(expected)
    assert 300 < sum(verdicts) < 1200, "the generator should make both kinds of history"


@pytest.mark.parametrize("seed", range(20))
def test_histories_of_a_real_register_are_linearizable(seed: int) -> None:
    """Each op takes effect at a random instant inside its interval, on one real register:
    always linearizable, however many ops overlap."""
    rng = random.Random(seed)
    instants = sorted(rng.uniform(0, 100) for _ in range(2000))
    state: bytes | None = None
    history = []
    for number, instant in enumerate(instants):
        start, end = instant - rng.uniform(0, 3), instant + rng.uniform(0, 3)
        if rng.random() < 0.4:
            state = f"v{number}".encode()
            unknown = rng.random() < 0.05
            history.append(Op(number % 8, "put", K, state, start, None if unknown else end))
        else:
            history.append(Op(number % 8, "get", K, state, start, end))
    assert check_register(history) is None, f"seed {seed}"
