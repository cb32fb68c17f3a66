"""Weighted, sticky choice: one of several options, by weight, the same one for the same key.

Used wherever traffic is split between variants: a route's targets (`Router.pick`, A/B and
canary) and a Crop Guardian slot's model variants (`DiagnosisService.choose_variant`).

With a key (a caller, a device), `hash_point(salt, key)` places it at a point in [0, 1) and
the option whose share of the summed weights covers that point is chosen: the same key gets
the same option for as long as the weights stay the same, and a weight change moves only the
keys near the boundaries it shifts. The salt (the route's or slot's name) keeps two splits
independent: a caller on the canary of one route is not thereby on the canary of every route.
Without a key the point is random.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar


class Weighted(Protocol):
    @property
    def weight(self) -> float: ...


W = TypeVar("W", bound=Weighted)


def hash_point(salt: str, key: str) -> float:
    """A point in [0, 1) fixed by (salt, key)."""
    # blake2b with an 8-byte digest: a keyed split needs uniform, not secret, and it is the
    # cheapest of hashlib's uniform hashes for a short input.
    digest = hashlib.blake2b(f"{salt}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def weighted_pick(options: Sequence[W], *, salt: str, key: str | None,
                  rng: Callable[[], float] = random.random) -> W:
    """One of `options` (weights >= 0, at least one above 0), with a chance proportional to its
    weight: at the point `hash_point(salt, key)` when a key is given, else at `rng()`."""
    if len(options) == 1:
        return options[0]  # the common case: no hashing, no random draw
    total = sum(o.weight for o in options)
    point = (hash_point(salt, key) if key is not None else rng()) * total
    for option in options:
        point -= option.weight
        if point < 0 and option.weight > 0:
            return option
    # Rounding can leave a point just below `total` uncovered: it belongs to the last weighted option.
    return next(o for o in reversed(options) if o.weight > 0)
