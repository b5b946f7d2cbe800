"""The bounded cache shared by the score, view and recent-decision caches."""

from __future__ import annotations

from collections import OrderedDict

from nextbest.caches import keep


def test_keep_holds_the_newest_entries_up_to_the_limit() -> None:
    cache: OrderedDict[str, int] = OrderedDict()
    for n, key in enumerate("abcd"):
        keep(cache, key, n, 3)
    assert list(cache.items()) == [("b", 1), ("c", 2), ("d", 3)]
    cache.move_to_end("b")  # a reader's use makes it recent: "c" goes next
    keep(cache, "e", 4, 3)
    assert list(cache) == ["d", "b", "e"]


def test_a_limit_of_zero_keeps_nothing() -> None:
    cache: OrderedDict[str, int] = OrderedDict()
    keep(cache, "a", 1, 0)
    assert not cache
