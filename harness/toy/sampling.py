"""Drawing items for a split: the one loop every toy generator shares.

An item is a JSON-able dict with a ``question``; a split holds distinct questions and none of a set to
exclude (the questions of the splits drawn before it), which is what keeps the splits disjoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator


def distinct(sample: Callable[[], dict], n: int, exclude: set[str] | frozenset[str], what: str) -> list[dict]:
    """``n`` items from ``sample()`` with distinct questions, none in ``exclude`` (at most 50 n draws).

    Deterministic given ``sample``'s random state: rejected draws still consume it, in order.
    """
    seen: set[str] = set()
    out: list[dict] = []
    for _ in range(n * 50):
        if len(out) == n:
            break
        item = sample()
        if item["question"] in seen or item["question"] in exclude:
            continue
        seen.add(item["question"])
        out.append(item)
    if len(out) < n:
        raise RuntimeError(f"{what}: only {len(out)} distinct items of {n} requested")
    return out


def endless(sample: Callable[[], dict], exclude: set[str]) -> Iterator[dict]:
    """Items from ``sample()`` forever (repeats allowed), skipping questions in ``exclude``."""
    while True:
        item = sample()
        if item["question"] not in exclude:
            yield item
