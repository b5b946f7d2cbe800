"""The read-ahead of ``score --all``: every item once, in order; errors reach the consumer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from serving.cli_score import prefetched


def test_prefetched_gives_every_item_in_order() -> None:
    assert list(prefetched(iter(range(50)), depth=2)) == list(range(50))
    assert list(prefetched(iter([]))) == []


def test_an_error_of_the_producer_is_raised_in_the_consumer() -> None:
    def failing() -> Iterator[int]:
        yield 1
        raise ValueError("the store went away")

    got = []
    with pytest.raises(ValueError, match="the store went away"):
        for item in prefetched(failing()):
            got.append(item)
    assert got == [1]


def test_a_consumer_that_stops_early_stops_the_producer() -> None:
    produced = []

    def counting() -> Iterator[int]:
        for i in range(1000):
            produced.append(i)
            yield i

    items = prefetched(counting(), depth=1)
    assert next(items) == 0
    items.close()  # joins the producer thread
    assert len(produced) <= 3
