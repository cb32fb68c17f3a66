"""kaset.weighted: weights honoured (by key and at random), a key always on the same option."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest

from kaset.weighted import hash_point, weighted_pick

# Chi-square critical values at p = 0.001 by degrees of freedom: a fair split fails 1 run in 1000
# (and the keyed runs below are deterministic: they either pass or fail for good).
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27}


@dataclass(frozen=True)
class Option:
    name: str
    weight: float


def chi_square(counts: Counter[str], options: list[Option]) -> float:
    total = sum(counts.values())
    weights = sum(o.weight for o in options if o.weight > 0)
    expected = {o.name: total * o.weight / weights for o in options if o.weight > 0}
    return sum((counts[name] - e) ** 2 / e for name, e in expected.items())


SPLITS = [
    [Option("a", 9), Option("b", 1)],
    [Option("a", 5), Option("b", 3), Option("c", 2)],
    [Option("a", 0.25), Option("b", 0.25), Option("c", 0.25), Option("d", 0.25)],
    [Option("a", 1), Option("off", 0), Option("b", 1)],
]


@pytest.mark.parametrize("options", SPLITS)
def test_keys_split_by_weight(options: list[Option]) -> None:
    counts = Counter(weighted_pick(options, salt="route", key=f"caller-{n}").name for n in range(20_000))
    assert "off" not in counts  # a weight of 0 is never chosen
    assert chi_square(counts, options) < CHI2_999[sum(o.weight > 0 for o in options) - 1], counts


@pytest.mark.parametrize("options", SPLITS)
def test_random_split_by_weight(options: list[Option]) -> None:
    rng = random.Random(12).random
    counts = Counter(weighted_pick(options, salt="route", key=None, rng=rng).name for _ in range(20_000))
    assert "off" not in counts
    assert chi_square(counts, options) < CHI2_999[sum(o.weight > 0 for o in options) - 1], counts


def test_a_key_always_gets_the_same_option() -> None:
    options = SPLITS[1]
    for key in ("alice", "device-42", "k:17", ""):
        picks = {weighted_pick(options, salt="route", key=key, rng=random.Random().random).name for _ in range(50)}
        assert len(picks) == 1, (key, picks)


def test_salts_split_independently() -> None:
    """The same callers under two salts: being on 'b' of one split says nothing of the other."""
    options = [Option("a", 1), Option("b", 1)]
    both = Counter((weighted_pick(options, salt="one", key=f"k{n}").name,
                    weighted_pick(options, salt="two", key=f"k{n}").name) for n in range(20_000))
    assert set(both) == {("a", "a"), ("a", "b"), ("b", "a"), ("b", "b")}
    assert all(4_500 < count < 5_500 for count in both.values()), both


def test_edges() -> None:
    only = Option("only", 1)
    assert weighted_pick([only], salt="s", key=None, rng=lambda: pytest.fail("one option needs no draw")) is only
    options = [Option("a", 1), Option("b", 1), Option("off", 0)]
    # A point at the very top of the range (rounding) goes to the last option with a weight.
    assert weighted_pick(options, salt="s", key=None, rng=lambda: 1.0).name == "b"
    assert weighted_pick(options, salt="s", key=None, rng=lambda: 0.0).name == "a"
    assert 0 <= hash_point("s", "alice") < 1 and hash_point("s", "alice") != hash_point("t", "alice")
